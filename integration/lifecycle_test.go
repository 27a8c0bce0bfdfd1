package integration

// End-to-end tests of the machine lifecycle (issue 3) through the real
// binary: prepare -> run* -> cleanup in both storages and both modes,
// exit codes, cancellation, SIGKILL at various points followed by gc, 8
// concurrent jobs, hostile input. Everything this file creates is named
// nrt-lc-*.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
	"github.com/nspawn-runner/nspawn-runner/sys/netns"
	"github.com/nspawn-runner/nspawn-runner/sys/treecopy"
)

// lcBinary is the binary this package's TestMain builds once and removes
// (harness_test.go).
func lcBinary(t testing.TB) string {
	t.Helper()
	return binary(t)
}

// lcHost is one runner host: a root with the image "bookworm", a run dir,
// a config, and its own machine-name prefix and cgroup parent.
type lcHost struct {
	t        testing.TB
	bin      string
	root     string
	runDir   string
	config   string
	cgParent string
	prefix   string
	ids      atomic.Int64
	// runBin runs the run stages: nspawn-runner-stage, built next to bin
	// (what toml names as run_exec), or bin itself (runWith).
	runBin string
	// netNS, when set, is a pinned network namespace every call of the
	// binary runs in (the network tests' stand-in for the host's).
	netNS string
}

// start starts cmd, inside netNS when the host has one: the child
// inherits the network namespace of the thread that forks it.
func (h *lcHost) start(cmd *exec.Cmd) error {
	if h.netNS == "" {
		return cmd.Start()
	}
	f, err := netns.Open(h.netNS)
	if err != nil {
		return err
	}
	defer f.Close()
	return netns.Do(f, cmd.Start)
}

// newLCHost makes a host whose root is on a loopback btrfs (the image a
// subvolume) when btrfsRoot, else on a plain directory of the host's
// filesystem (ext4 here: overlay storage).
func newLCHost(t testing.TB, btrfsRoot bool, machineYAML string) *lcHost {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "systemd-nspawn")
	image := testutil.Image(t)
	h := &lcHost{t: t, bin: lcBinary(t)}
	h.runBin = stageBinary(h.bin)
	if btrfsRoot {
		testutil.RequireBinary(t, "mkfs.btrfs")
		h.root = filepath.Join(testutil.NewBtrfs(t, 6<<30), "images")
	} else {
		h.root = filepath.Join(t.TempDir(), "images")
	}
	if err := os.MkdirAll(h.root, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(h.root, "bookworm")
	if btrfsRoot {
		if err := btrfs.Create(dst); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := treecopy.Copy(context.Background(), image, dst, treecopy.Options{}); err != nil {
		t.Fatalf("copy the test image: %v", err)
	}
	run, err := os.MkdirTemp("", "nrt-lc-run-")
	if err != nil {
		t.Fatal(err)
	}
	h.runDir = run
	h.cgParent = filepath.Base(run)
	h.prefix = "nrt-lc-"
	h.config = filepath.Join(t.TempDir(), "nspawn-runner.yaml")
	// The image commands (chroot-login, chroot-maintenance) take their
	// cgroup parent from the config, the job stages from --cgroup-parent:
	// both this test's own, never the default one shared by other tests.
	cfg := "machine:\n  ready_timeout: 120s\n  stop_timeout: 20s\n  cgroup_parent: " + h.cgParent + "\n" + hostNetwork(machineYAML) + machineYAML
	if err := os.WriteFile(h.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever a failed test left: gc with a zero max age stops it all.
		h.exec(context.Background(), nil, "", "gc", "--max-age", "1ns")
		if left := h.leftovers(); len(left) > 0 {
			t.Errorf("left behind after the test: %s", strings.Join(left, "; "))
		}
		_ = mount.UnmountAll(h.root)
		os.RemoveAll(run)
		for _, r := range lcCgroupRoots() {
			os.Remove(filepath.Join(r, h.cgParent))
		}
	})
	return h
}

// lcCgroupRoots are the hierarchies where a machine's cgroup can appear.
func lcCgroupRoots() []string {
	var out []string
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"} {
		if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// result is one call of the binary.
type result struct {
	stdout, stderr string
	code           int
}

// exec runs the binary with the global flags, a gitlab-runner-like
// environment plus env, in dir (a per-job directory; "" for a fresh one).
func (h *lcHost) exec(ctx context.Context, env []string, dir string, args ...string) result {
	h.t.Helper()
	cmd := h.command(ctx, env, dir, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := h.start(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatalf("%v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

func (h *lcHost) command(ctx context.Context, env []string, dir string, args ...string) *exec.Cmd {
	if dir == "" {
		dir = os.TempDir()
	}
	full := append([]string{"--config", h.config, "--root", h.root, "--run-dir", h.runDir}, args...)
	if len(args) > 0 {
		switch args[0] {
		case "prepare", "run", "cleanup", "gc", "ps":
			full = append(full, "--name-prefix", h.prefix, "--cgroup-parent", h.cgParent)
		}
	}
	bin := h.bin
	if len(args) > 0 && args[0] == "run" {
		bin = h.runBin
	}
	cmd := exec.CommandContext(ctx, bin, full...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "BUILD_FAILURE_EXIT_CODE=1", "SYSTEM_FAILURE_EXIT_CODE=2", "HOST_ONLY=leak"}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// runWith runs the subtests of fn once with each run stage executable
// (runExecs): the executor contract holds with both.
func (h *lcHost) runWith(t *testing.T, fn func(t *testing.T)) {
	saved := h.runBin
	defer func() { h.runBin = saved }()
	for _, x := range runExecs {
		h.runBin = stageBinary(h.bin)
		if x.main {
			h.runBin = h.bin
		}
		t.Run(x.name, fn)
	}
}

// job is one CI job on a host: its id and its own temporary directory.
type job struct {
	h   *lcHost
	id  string
	dir string
}

func (h *lcHost) newJob() *job {
	n := h.ids.Add(1)
	return &job{h: h, id: fmt.Sprintf("nrt-lc-%d", n), dir: h.t.TempDir()}
}

func (j *job) call(args ...string) result {
	j.h.t.Helper()
	return j.h.exec(context.Background(), []string{"BUILD_EXIT_CODE_FILE=" + filepath.Join(j.dir, "code")}, j.dir, append(args, "--id", j.id)...)
}

func (j *job) must(args ...string) result {
	j.h.t.Helper()
	r := j.call(args...)
	if r.code != 0 {
		j.h.t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// script writes a stage script into the job's directory.
func (j *job) script(name, body string) string {
	p := filepath.Join(j.dir, name)
	if err := os.WriteFile(p, []byte("set -eo pipefail\n"+body+"\n"), 0o644); err != nil {
		j.h.t.Fatal(err)
	}
	return p
}

// record reads the job machine's state record.
func (h *lcHost) records() []map[string]any {
	var out []map[string]any
	files, _ := filepath.Glob(filepath.Join(h.runDir, "machines", "*.json"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var m map[string]any
		if json.Unmarshal(b, &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func (h *lcHost) recordOf(j *job) map[string]any {
	for _, r := range h.records() {
		// A job's services carry its id too, and the job's machine name.
		if r["job_id"] == j.id && r["job"] == nil {
			return r
		}
	}
	return nil
}

// leftovers lists what a host still has of machines: records and locks,
// machine storage, mounts, btrfs subvolumes other than the image, cgroups,
// and live processes started for this host's machines.
func (h *lcHost) leftovers() []string {
	var left []string
	ents, _ := os.ReadDir(filepath.Join(h.runDir, "machines"))
	for _, e := range ents {
		left = append(left, "run dir entry "+e.Name())
	}
	ents, _ = os.ReadDir(filepath.Join(h.root, ".machines"))
	for _, e := range ents {
		left = append(left, "machine dir "+e.Name())
	}
	if infos, err := mount.Mountinfo(); err == nil {
		for _, m := range append(mount.Below(infos, h.root), mount.Below(infos, h.runDir)...) {
			if m != h.root {
				left = append(left, "mount "+m)
			}
		}
	}
	_ = filepath.WalkDir(h.root, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if filepath.Dir(p) == h.root && !strings.HasPrefix(filepath.Base(p), ".") {
			// An image (bookworm, or one a test made).
			return filepath.SkipDir
		}
		if ok, _ := btrfs.IsSubvolume(p); ok && p != h.root && filepath.Dir(h.root) != p {
			left = append(left, "subvolume "+p)
		}
		return nil
	})
	for _, r := range lcCgroupRoots() {
		ents, _ := os.ReadDir(filepath.Join(r, h.cgParent))
		for _, e := range ents {
			if e.IsDir() {
				left = append(left, "cgroup "+filepath.Join(r, h.cgParent, e.Name()))
			}
		}
	}
	// By this host's own paths: other tests (and other runs of this one)
	// use the same name prefix at the same time.
	for _, p := range lcProcesses(h.runDir, h.root) {
		left = append(left, "process "+p)
	}
	return left
}

// lcProcesses lists live (not zombie) processes whose command line names
// one of the markers.
func lcProcesses(markers ...string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
			continue
		}
		cl, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		s := string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '}))
		for _, m := range markers {
			if strings.Contains(s, m) && strings.Contains(s, "nspawn") {
				out = append(out, e.Name()+" "+s)
				break
			}
		}
	}
	return out
}

func (h *lcHost) assertClean(t testing.TB) {
	t.Helper()
	if left := h.leftovers(); len(left) > 0 {
		t.Errorf("left behind: %s", strings.Join(left, "; "))
	}
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func num(v any) int {
	f, _ := v.(float64)
	return int(f)
}

// lcStages runs a multi-stage job: state persists between stages, the
// environment is clean, the working directory is /, a failing script is a
// build failure with its own code in the code file.
func lcStages(t *testing.T, h *lcHost, mode, wantStorage string) {
	j := h.newJob()
	j.must("prepare", "bookworm", "--mode", mode)
	rec := h.recordOf(j)
	if rec == nil || rec["storage"] != wantStorage || rec["mode"] != mode || rec["state"] != "running" {
		t.Fatalf("record = %v, want storage %s mode %s running", rec, wantStorage, mode)
	}
	r := j.must("run", "prepare_script-arg", j.script("s1", `echo "pwd=$(pwd) home=$HOME ci=${CI_JOB_ID:-unset} host=${HOST_ONLY:-unset}"; echo persisted > /root/state; echo to-stderr >&2`), "get_sources")
	if !strings.Contains(r.stdout, "pwd=/ home=/root ci=unset host=unset") || !strings.Contains(r.stderr, "to-stderr") {
		t.Errorf("stage 1 output: %q / %q", r.stdout, r.stderr)
	}
	r = j.must("run", j.script("s2", `cat /root/state; test "$(id -u)" = 0; echo pid1=$(cat /proc/1/comm)`), "build_script")
	if !strings.Contains(r.stdout, "persisted") {
		t.Errorf("state did not persist between stages: %q", r.stdout)
	}
	if mode == "boot" && !strings.Contains(r.stdout, "pid1=systemd") {
		t.Errorf("boot mode: PID 1 is not systemd: %q", r.stdout)
	}
	r = j.call("run", j.script("s3", "echo failing; exit 42"), "step_script")
	if r.code != 1 {
		t.Errorf("failing script: exit %d, want the build failure code 1\n%s", r.code, r.stderr)
	}
	if b, err := os.ReadFile(filepath.Join(j.dir, "code")); err != nil || strings.TrimSpace(string(b)) != "42" {
		t.Errorf("BUILD_EXIT_CODE_FILE = %q, %v; want 42", b, err)
	}
	j.must("run", j.script("s4", "test -f /root/state"), "after_script")
	ps := h.exec(context.Background(), nil, "", "ps", "--json")
	var list []map[string]any
	if err := json.Unmarshal([]byte(ps.stdout), &list); err != nil || len(list) != 1 || list[0]["state"] != "running" {
		t.Errorf("ps --json = %s (%v)", ps.stdout, err)
	}
	j.must("cleanup")
	h.assertClean(t)
	// Twice is fine.
	j.must("cleanup")
}

func TestLifecycleBtrfs(t *testing.T) {
	h := newLCHost(t, true, "")
	for _, mode := range []string{"boot", "fast"} {
		t.Run(mode, func(t *testing.T) {
			h.runWith(t, func(t *testing.T) { lcStages(t, h, mode, "btrfs") })
		})
	}
	t.Run("volatile", func(t *testing.T) {
		saved := h.config
		defer func() { h.config = saved }()
		h.config = filepath.Join(t.TempDir(), "volatile.yaml")
		if err := os.WriteFile(h.config, []byte("machine:\n  storage: volatile\n  ready_timeout: 120s\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		lcStages(t, h, "fast", "volatile")
	})
	t.Run("ready timeout", func(t *testing.T) {
		saved := h.config
		defer func() { h.config = saved }()
		h.config = filepath.Join(t.TempDir(), "slow.yaml")
		if err := os.WriteFile(h.config, []byte("machine:\n  ready_timeout: 50ms\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		j := h.newJob()
		r := j.call("prepare", "bookworm", "--mode", "boot")
		if r.code != 2 || !strings.Contains(r.stderr, "waiting for") {
			t.Errorf("prepare that times out: exit %d, stderr %q; want 2 and what it waited for", r.code, r.stderr)
		}
		h.assertClean(t)
	})
	t.Run("gc max-age", func(t *testing.T) {
		j := h.newJob()
		j.must("prepare", "bookworm", "--mode", "fast")
		for _, args := range [][]string{{"gc"}, {"gc", "--max-age", "1h"}} {
			if r := h.exec(context.Background(), nil, "", args...); r.code != 0 || h.recordOf(j) == nil {
				t.Fatalf("%v removed a live young machine (exit %d: %s)", args, r.code, r.stderr)
			}
		}
		if r := h.exec(context.Background(), nil, "", "gc", "--max-age", "1ns"); r.code != 0 || !strings.Contains(r.stdout, "removed machine") {
			t.Errorf("gc --max-age 1ns: exit %d, stdout %q", r.code, r.stdout)
		}
		h.assertClean(t)
		if r := j.call("run", j.script("s", "true"), "build_script"); r.code != 2 {
			t.Errorf("run after gc stopped the machine: exit %d, want 2", r.code)
		}
		j.must("cleanup")
	})
	t.Run("dead machine", func(t *testing.T) { h.runWith(t, func(t *testing.T) { lcDeadMachine(t, h) }) })
	t.Run("gc after reboot", func(t *testing.T) { lcAfterReboot(t, h) })
	t.Run("nspawn died", func(t *testing.T) { lcNspawnDied(t, h) })
	t.Run("sigterm during run", func(t *testing.T) { h.runWith(t, func(t *testing.T) { lcSigterm(t, h) }) })
	t.Run("sigkill", func(t *testing.T) { lcSigkill(t, h) })
	t.Run("concurrent", func(t *testing.T) { lcConcurrent(t, h, "boot") })
	t.Run("hostile", func(t *testing.T) { lcHostile(t, h) })
}

func TestLifecycleOverlay(t *testing.T) {
	h := newLCHost(t, false, "")
	for _, mode := range []string{"boot", "fast"} {
		t.Run(mode, func(t *testing.T) { lcStages(t, h, mode, "overlay") })
	}
	t.Run("concurrent", func(t *testing.T) { lcConcurrent(t, h, "fast") })
	t.Run("sigkill", func(t *testing.T) { lcSigkill(t, h) })
	t.Run("remove image in use", func(t *testing.T) { lcRemoveInUse(t, h) })
}

// lcRemoveInUse: chroot-remove of an image that an overlay machine runs
// from takes the name away at once (no new job can pick it) but keeps the
// tree, the machine's lower layer, until the machine is gone; gc then
// deletes it.
func lcRemoveInUse(t *testing.T, h *lcHost) {
	ctx := context.Background()
	if _, err := treecopy.Copy(context.Background(), filepath.Join(h.root, "bookworm"), filepath.Join(h.root, "doomed"), treecopy.Options{}); err != nil {
		t.Fatalf("copy the image: %v", err)
	}
	j := h.newJob()
	j.must("prepare", "doomed", "--mode", "fast")
	r := h.exec(ctx, nil, "", "chroot-remove", "doomed")
	if r.code != 0 || !strings.Contains(r.stderr, "stays until") {
		t.Fatalf("chroot-remove of an image in use: exit %d, stderr %q; want 0 and that its tree stays", r.code, r.stderr)
	}
	if r := h.exec(ctx, nil, "", "chroot-list"); strings.Contains(r.stdout, "doomed") {
		t.Errorf("chroot-list still shows the removed image:\n%s", r.stdout)
	}
	if r := h.newJob().call("prepare", "doomed", "--mode", "fast"); r.code != 2 || !strings.Contains(r.stderr, "does not exist") {
		t.Errorf("prepare of the removed image: exit %d, stderr %q; want 2 and does not exist", r.code, r.stderr)
	}
	// The running machine still reads its lower layer.
	if r := j.call("run", j.script("s", "test -x /usr/bin/bash && md5sum /usr/bin/bash"), "build_script"); r.code != 0 {
		t.Errorf("run in the machine whose image was removed: exit %d, stderr %q", r.code, r.stderr)
	}
	retired, _ := filepath.Glob(filepath.Join(h.root, ".retired-doomed-*"))
	if len(retired) != 1 {
		t.Fatalf("retired trees = %q, want one while the machine runs", retired)
	}
	if r := h.exec(ctx, nil, "", "gc"); r.code != 0 {
		t.Fatalf("gc: exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(retired[0]); err != nil {
		t.Errorf("gc deleted the tree of a running machine: %v", err)
	}
	j.must("cleanup")
	if r := h.exec(ctx, nil, "", "gc"); r.code != 0 {
		t.Fatalf("gc: exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(retired[0]); !os.IsNotExist(err) {
		t.Errorf("gc after cleanup left the retired tree %s (%v)", retired[0], err)
	}
	h.assertClean(t)
}

// lcDeadMachine: nspawn killed after prepare -> run is a system failure;
// gc then removes everything.
func lcDeadMachine(t *testing.T, h *lcHost) {
	j, _ := h.killedMachine(t, "fast", "nspawn_pid", "leader_pid")
	r := j.call("run", j.script("s", "true"), "build_script")
	if r.code != 2 {
		t.Errorf("run in a dead machine: exit %d, want the system failure code 2\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(j.dir, "code")); err == nil {
		t.Errorf("a system failure wrote BUILD_EXIT_CODE_FILE")
	}
	if r := h.exec(context.Background(), nil, "", "gc"); r.code != 0 {
		t.Fatalf("gc: %d %s", r.code, r.stderr)
	}
	h.assertClean(t)
}

// lcAfterReboot: a reboot ends every machine and empties the run
// directory (a tmpfs) while the machines' storage stays under
// ROOT/.machines: gc removes it (issue 13, bug 3).
func lcAfterReboot(t *testing.T, h *lcHost) {
	_, rec := h.killedMachine(t, "fast", "nspawn_pid", "leader_pid")
	if err := mount.UnmountAll(h.runDir); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(h.runDir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(h.root, ".machines", rec["name"].(string))); err != nil {
		t.Fatalf("the machine's storage is not there to test with: %v", err)
	}
	if r := h.exec(context.Background(), nil, "", "gc"); r.code != 0 || !strings.Contains(r.stdout, "removed machine "+rec["name"].(string)) {
		t.Fatalf("gc after a reboot: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	h.assertClean(t)
}

// lcNspawnDied: in boot mode the machine's init outlives a killed
// systemd-nspawn; ps calls such a machine dead, and run agrees: a system
// failure saying the machine is gone, not a stage run in what is left of
// it. Cleanup then stops and removes the rest (issue 12, rough edge 1).
func lcNspawnDied(t *testing.T, h *lcHost) {
	j, rec := h.killedMachine(t, "boot", "nspawn_pid")
	if !alive(num(rec["leader_pid"])) {
		t.Fatal("the machine's init died with systemd-nspawn: nothing to test")
	}
	ps := h.exec(context.Background(), nil, "", "ps", "--json")
	if !strings.Contains(ps.stdout, `"state": "dead"`) {
		t.Errorf("ps after systemd-nspawn died: %s", ps.stdout)
	}
	r := j.call("run", j.script("s", "echo ran-in-a-dead-machine"), "build_script")
	if r.code != 2 || strings.Contains(r.stdout, "ran-in-a-dead-machine") {
		t.Errorf("run in a machine whose systemd-nspawn died: exit %d, stdout %q; want the system failure code 2 and no stage run", r.code, r.stdout)
	}
	if lines := strings.Split(strings.TrimSpace(r.stderr), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "is gone") || !strings.Contains(lines[0], "retry the job") {
		t.Errorf("run in a dead machine: stderr %q, want one line saying the machine is gone and to retry the job", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(j.dir, "code")); err == nil {
		t.Errorf("a system failure wrote BUILD_EXIT_CODE_FILE")
	}
	j.must("cleanup")
	if alive(num(rec["leader_pid"])) {
		t.Errorf("cleanup left the machine's init (pid %d) running", num(rec["leader_pid"]))
	}
	h.assertClean(t)
}

// killedMachine prepares a job's machine in mode, SIGKILLs the processes
// its record names under the keys pids ("nspawn_pid", "leader_pid") and
// waits until they are gone; it returns the job and the record.
func (h *lcHost) killedMachine(t *testing.T, mode string, pids ...string) (*job, map[string]any) {
	t.Helper()
	j := h.newJob()
	j.must("prepare", "bookworm", "--mode", mode)
	rec := h.recordOf(j)
	for _, k := range pids {
		syscall.Kill(num(rec[k]), syscall.SIGKILL)
	}
	for _, k := range pids {
		waitGone(t, num(rec[k]))
	}
	return j, rec
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lcSigterm: SIGTERM to run's process group during `sleep 1000` ends it
// promptly with nothing of the stage left; the machine stays usable.
func lcSigterm(t *testing.T, h *lcHost) {
	for _, mode := range []string{"boot", "fast"} {
		t.Run(mode, func(t *testing.T) {
			j := h.newJob()
			j.must("prepare", "bookworm", "--mode", mode)
			cmd := h.command(context.Background(), nil, j.dir, "run", "--id", j.id, j.script("s", "echo started; sleep 1000 & sleep 1000"), "build_script")
			out, _ := cmd.StdoutPipe()
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, _ := bufio.NewReader(out).ReadString('\n')
			if line != "started\n" {
				t.Fatalf("stage output %q", line)
			}
			cg := filepath.Join(h.cgParent, h.recordName(j))
			start := time.Now()
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
					t.Errorf("cancelled run: %v, want exit 2\n%s", err, errb.String())
				}
				t.Logf("run ended %v after SIGTERM", time.Since(start).Round(time.Millisecond))
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				t.Fatal("run did not end after SIGTERM")
			}
			if n := sleepers(cg); n > 0 {
				t.Errorf("%d sleep processes of the cancelled stage still run", n)
			}
			j.must("run", j.script("s2", "echo still-usable"), "after_script")
			j.must("cleanup")
		})
	}
	h.assertClean(t)
}

func (h *lcHost) recordName(j *job) string {
	if r := h.recordOf(j); r != nil {
		return r["name"].(string)
	}
	return ""
}

// sleepers counts live `sleep` processes in a cgroup tree.
func sleepers(cg string) int {
	n := 0
	for _, r := range lcCgroupRoots() {
		filepath.WalkDir(filepath.Join(r, cg), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				c, _ := os.ReadFile("/proc/" + f + "/cmdline")
				if bytes.HasPrefix(c, []byte("sleep\x001000")) {
					pid, _ := strconv.Atoi(f)
					if alive(pid) {
						n++
					}
				}
			}
			return nil
		})
		break
	}
	return n
}

// lcSigkill kills nspawn, prepare, run and cleanup at various points;
// gc (or cleanup) afterwards leaves nothing.
func lcSigkill(t *testing.T, h *lcHost) {
	ctx := context.Background()
	gc := func() {
		t.Helper()
		if r := h.exec(ctx, nil, "", "gc"); r.code != 0 {
			t.Fatalf("gc: exit %d: %s", r.code, r.stderr)
		}
	}
	t.Run("nspawn", func(t *testing.T) {
		h.killedMachine(t, "boot", "nspawn_pid")
		// The machine's systemd lives on as an orphan: gc kills it.
		gc()
		h.assertClean(t)
	})
	// prepare killed early (record only), while nspawn starts, and while
	// the machine boots.
	for _, delay := range []time.Duration{0, 20 * time.Millisecond, 60 * time.Millisecond, 150 * time.Millisecond} {
		t.Run(fmt.Sprintf("prepare after %v", delay), func(t *testing.T) {
			j := h.newJob()
			cmd := h.command(ctx, nil, j.dir, "prepare", "bookworm", "--mode", "boot", "--id", j.id)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			if delay == 0 {
				// As soon as the record exists.
				for i := 0; i < 5000 && h.recordOf(j) == nil; i++ {
					time.Sleep(time.Millisecond)
				}
			} else {
				time.Sleep(delay)
			}
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			gc()
			h.assertClean(t)
		})
	}
	t.Run("run", func(t *testing.T) {
		j := h.newJob()
		j.must("prepare", "bookworm", "--mode", "fast")
		cmd := h.command(ctx, nil, j.dir, "run", "--id", j.id, j.script("s", "sleep 1000"), "build_script")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		// The machine still runs: gc leaves it alone, cleanup removes it.
		gc()
		if h.recordOf(j) == nil {
			t.Fatal("gc removed a live machine")
		}
		j.must("cleanup")
		h.assertClean(t)
	})
	// cleanup killed once it has begun (it marks the record first; a
	// cleanup killed before that left a live machine, which only
	// gc --max-age or another cleanup removes), during the shutdown, and
	// during the removal.
	for _, delay := range []time.Duration{0, 40 * time.Millisecond, 100 * time.Millisecond, 170 * time.Millisecond} {
		t.Run(fmt.Sprintf("cleanup after %v", delay), func(t *testing.T) {
			j := h.newJob()
			j.must("prepare", "bookworm", "--mode", "boot")
			cmd := h.command(ctx, nil, j.dir, "cleanup", "--id", j.id)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 5000; i++ {
				if r := h.recordOf(j); r == nil || r["state"] == "stopping" {
					break
				}
				time.Sleep(time.Millisecond)
			}
			time.Sleep(delay)
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			gc()
			h.assertClean(t)
		})
	}
}

// lcConcurrent runs 8 jobs from one image at once.
// prepareAtOnce starts n prepares of new jobs at the same time and waits
// for them all.
func prepareAtOnce(h *lcHost, n int, mode string) ([]*job, []result) {
	var wg sync.WaitGroup
	jobs := make([]*job, n)
	codes := make([]result, n)
	for i := range jobs {
		jobs[i] = h.newJob()
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = jobs[i].call("prepare", "bookworm", "--mode", mode)
		}()
	}
	wg.Wait()
	return jobs, codes
}

func lcConcurrent(t *testing.T, h *lcHost, mode string) {
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for i := 0; i < 8; i++ {
		j := h.newJob()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, args := range [][]string{
				{"prepare", "bookworm", "--mode", mode},
				{"run", j.script("a", "echo "+j.id+" > /root/id"), "build_script"},
				{"run", j.script("b", "test \"$(cat /root/id)\" = "+j.id), "after_script"},
				{"cleanup"},
			} {
				if r := j.call(args...); r.code != 0 {
					errs <- fmt.Sprintf("%s %s: exit %d: %s", j.id, args[0], r.code, r.stderr)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	h.assertClean(t)
}

// lcHostile: ids and images that could name paths or other jobs are
// refused as system failures, and nothing is created.
func lcHostile(t *testing.T, h *lcHost) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"id path", nil, []string{"prepare", "bookworm", "--id", "../../etc"}, "invalid --id"},
		{"id space", nil, []string{"prepare", "bookworm", "--id", "a b"}, "invalid --id"},
		// Job variables never name the machine (gitlab.job_id_from_variables
		// is off), whatever they hold.
		{"variable id", []string{"CUSTOM_ENV_CI_JOB_ID=1/../2"}, []string{"prepare", "bookworm"}, "no job id"},
		{"variable id digits", []string{"CUSTOM_ENV_CI_JOB_ID=12"}, []string{"prepare", "bookworm"}, "no job id"},
		{"image path", nil, []string{"prepare", "../bookworm", "--id", "nrt-lc-h"}, "invalid image name"},
		{"image dot", []string{"CUSTOM_ENV_CI_JOB_IMAGE=registry.example/x/../../etc:.."}, []string{"prepare", "--id", "nrt-lc-h"}, "invalid image name"},
		{"image hidden", nil, []string{"prepare", ".machines", "--id", "nrt-lc-h"}, "invalid image name"},
		{"image missing", []string{"CUSTOM_ENV_CI_JOB_IMAGE=registry.example/group/base:nope"}, []string{"prepare", "--id", "nrt-lc-h"}, "images available to jobs: bookworm"},
		{"run no machine", nil, []string{"run", "--id", "nrt-lc-none", "/dev/null", "build_script"}, "no machine"},
	} {
		r := h.exec(ctx, tc.env, "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q", tc.name, r.code, r.stderr, tc.want)
		}
	}
	h.assertClean(t)
}
