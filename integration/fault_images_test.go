package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
)

// fakeDebootstrap stands in for debootstrap(8) in the image fault suite:
// it prints the "I:" lines debootstrap prints, fills the target with a
// copy of $NRT_FAKE_SRC (a real image, so that ansible and systemd-nspawn
// work in it) and keeps /proc mounted in the target while it "unpacks"
// and "configures", as debootstrap does. NRT_FAKE_FAIL=debootstrap makes
// it fail there, with /proc still mounted. It runs in seconds where the
// real one takes minutes, so that every step can be interrupted.
const fakeDebootstrap = `#!/bin/bash
set -e
pos=()
for a in "$@"; do case $a in --*) ;; *) pos+=("$a") ;; esac; done
target=${pos[1]}
echo "I: Retrieving InRelease"
echo "I: Retrieving Packages"
sleep 0.3
echo "I: Retrieving adduser 3.134"
echo "I: Validating adduser 3.134"
cp -a --reflink=auto "$NRT_FAKE_SRC/." "$target/"
mkdir -p "$target/debootstrap"
echo "I: Extracting adduser..."
mount -t proc proc "$target/proc"
echo "I: Unpacking required packages..."
sleep 0.3
if [ "$NRT_FAKE_FAIL" = debootstrap ]; then
	echo "E: injected failure (unpacking)"
	exit 1
fi
echo "I: Configuring the base system..."
sleep 0.3
umount "$target/proc"
rmdir "$target/debootstrap"
echo "I: Base system installed successfully."
`

// faultPlaybook writes generation gen into /etc/nrt-gen of the image, then
// holds the machine a moment (or fails there, with fail).
func faultPlaybook(gen int, fail bool) string {
	hold := "      command: sleep 1\n"
	if fail {
		hold = "      fail:\n        msg: injected failure\n"
	}
	return fmt.Sprintf(`- hosts: all
  gather_facts: false
  tasks:
    - name: generation
      copy:
        dest: /etc/nrt-gen
        content: "%d\n"
    - name: hold the machine
%s`, gen, hold)
}

// faultPoint is when an image command is interrupted: after a delay, on
// the first stderr line containing a marker (a step it announces), or
// never (fail: the command is made to fail there instead).
type faultPoint struct {
	delay time.Duration
	line  string
	fail  string // "debootstrap" or "playbook"
}

func (p faultPoint) String() string {
	switch {
	case p.fail != "":
		return "failing " + p.fail
	case p.line != "":
		return fmt.Sprintf("on %q", p.line)
	}
	return fmt.Sprintf("after %v", p.delay)
}

// faultHost is an image root with a playbook directory, the stand-in
// debootstrap on PATH and a cgroup parent of its own.
type faultHost struct {
	*imHost
	src, pbDir, name, cgParent string
	// tmp is TMPDIR of every command: playbook runs make their
	// directories there.
	tmp string
	env []string
}

// TestFaultInjectionImages interrupts chroot-create (with and without a
// playbook) and chroot-maintenance at each of their steps (at once, during
// debootstrap with /proc mounted in the workspace, while the playbook's
// machine runs, after the playbook before the swap) with SIGKILL or SIGTERM,
// and makes debootstrap and the playbook fail, on a btrfs root (images are
// subvolumes, maintenance snapshots them) and on a plain directory
// (copies). After each fault the image is the old one intact or the new
// one complete, never a mix; after the recovery (gc, or the next create or
// maintenance, alternately) no workspace, swap or retired tree, mount,
// process or cgroup is left. The failures of a rename in the swap are
// bootstrap's TestReplaceFailures.
func TestFaultInjectionImages(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "systemd-nspawn")
	testutil.RequireBinary(t, "ansible-playbook")
	image := testutil.Image(t)
	bin := binary(t)
	for _, storage := range []string{"btrfs", "directory"} {
		t.Run(storage, func(t *testing.T) {
			var base string
			if storage == "btrfs" {
				testutil.RequireBinary(t, "btrfs")
				base = testutil.NewBtrfs(t, 6<<30)
			} else {
				base = t.TempDir()
			}
			h := newFaultHost(t, bin, base, image, "nrtops-"+storage[:3])
			h.createPoints(t)
			h.maintenancePoints(t)
		})
	}
}

func newFaultHost(t *testing.T, bin, base, image, name string) *faultHost {
	t.Helper()
	im := newIMHost(t, bin)
	im.root = filepath.Join(base, "root")
	h := &faultHost{imHost: im, src: filepath.Join(base, "src"), pbDir: filepath.Join(im.dir, "playbooks"), name: name}
	// The source of the stand-in on the same filesystem as the root: its
	// copies are reflinks on btrfs.
	testutil.Run(t, "cp", "-a", "--reflink=auto", image, h.src)
	standins := filepath.Join(im.dir, "bin")
	for _, d := range []string{standins, h.pbDir, im.root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(standins, "debootstrap"), []byte(fakeDebootstrap), 0o755); err != nil {
		t.Fatal(err)
	}
	runDir, err := os.MkdirTemp("", "nrt-ops-run-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	h.cgParent = "nrt-ops-fault-" + filepath.Base(runDir)
	t.Cleanup(func() { removeCgroupTree(t, h.cgParent) })
	cfg := fmt.Sprintf("root: %s\nrun_dir: %s\nplaybook_dirs: [%s]\nmachine:\n  network: host\n  cgroup_parent: %s\n", im.root, runDir, h.pbDir, h.cgParent)
	if err := os.WriteFile(im.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.tmp = filepath.Join(im.dir, "tmp")
	if err := os.MkdirAll(h.tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	h.env = append(os.Environ(), "LC_ALL=C", "PATH="+standins+":"+os.Getenv("PATH"), "NRT_FAKE_SRC="+h.src, "TMPDIR="+h.tmp)
	return h
}

// createPoints: chroot-create without a playbook (debootstrap, install)
// and with one (debootstrap, the playbook on the new tree, install).
func (h *faultHost) createPoints(t *testing.T) {
	plain := []faultPoint{{delay: 0}, {delay: 100 * time.Millisecond},
		{line: "debootstrap: reading the package lists"}, {line: "debootstrap: unpacking required packages"},
		{line: "debootstrap: configuring the base system"}, {fail: "debootstrap"}}
	withPlaybook := []faultPoint{{line: "debootstrap: unpacking required packages"},
		{line: "running playbook"}, {line: "TASK [hold the machine]"}, {line: "PLAY RECAP"}, {fail: "playbook"}}
	i := 0
	for _, pb := range []bool{false, true} {
		points := plain
		if pb {
			points = withPlaybook
		}
		for _, p := range points {
			i++
			h.removeImage(t)
			h.setPlaybook(t, pb, 1, p.fail == "playbook")
			sig := faultSignal(i)
			point := fmt.Sprintf("chroot-create (playbook %v) %v %s", pb, sig, p)
			code := h.interrupt(t, p, sig, "chroot-create", h.name, "--suite", "bookworm")
			if p.fail != "" {
				// A failure is not a kill: the command cleans up after
				// itself, before any recovery.
				if code == 0 {
					t.Errorf("%s: exit 0, want a failure", point)
				}
				if _, err := os.Lstat(filepath.Join(h.root, h.name)); err == nil {
					t.Errorf("%s: a failed create left an image", point)
				}
				h.checkClean(t, point+", right after")
			}
			want := 0
			if pb {
				want = 1
			}
			h.checkImage(t, point, true, want, want)
			h.setPlaybook(t, pb, want, false)
			h.recover(t, point, i, true, want)
		}
	}
}

// maintenancePoints: chroot-maintenance of an existing image (a copy or a
// snapshot, the playbook on it, the swap).
func (h *faultHost) maintenancePoints(t *testing.T) {
	if _, err := os.Lstat(filepath.Join(h.root, h.name)); err != nil {
		h.setPlaybook(t, true, 1, false)
		h.must(t, "chroot-create", h.name, "--suite", "bookworm")
	}
	points := []faultPoint{{delay: 0}, {delay: 100 * time.Millisecond}, {line: "copying the image"},
		{line: "running playbook"}, {line: "TASK [generation]"}, {line: "TASK [hold the machine]"},
		{line: "PLAY RECAP"}, {fail: "playbook"}}
	for i, p := range points {
		gen := h.generation(t)
		h.setPlaybook(t, true, gen+1, p.fail == "playbook")
		sig := faultSignal(i)
		point := fmt.Sprintf("chroot-maintenance %v %s", sig, p)
		code := h.interrupt(t, p, sig, "chroot-maintenance", h.name)
		if p.fail != "" {
			if code == 0 {
				t.Errorf("%s: exit 0, want a failure", point)
			}
			h.checkImage(t, point, false, gen, gen)
			h.checkClean(t, point+", right after")
		}
		h.checkImage(t, point, false, gen, gen+1)
		h.setPlaybook(t, true, gen+1, false)
		h.recover(t, point, i, false, gen+1)
	}
	// And the image still maintains.
	gen := h.generation(t)
	h.setPlaybook(t, true, gen+1, false)
	h.must(t, "chroot-maintenance", h.name)
	h.checkImage(t, "the last maintenance", false, gen+1, gen+1)
	h.checkClean(t, "the last maintenance")
}

func faultSignal(i int) syscall.Signal {
	if i%2 == 1 {
		return syscall.SIGTERM
	}
	return syscall.SIGKILL
}

// recover runs the documented recovery, gc or (every other point) the
// next create or maintenance (with the playbook of generation gen), and
// checks that it left nothing.
func (h *faultHost) recover(t *testing.T, point string, i int, create bool, gen int) {
	t.Helper()
	_, err := os.Lstat(filepath.Join(h.root, h.name))
	switch {
	case i%2 == 0 || create && err == nil:
		h.must(t, "gc")
		h.checkClean(t, point+", after gc")
		return
	case create:
		h.must(t, "chroot-create", h.name, "--suite", "bookworm")
	default:
		h.must(t, "chroot-maintenance", h.name)
	}
	h.checkClean(t, point+", after the next "+map[bool]string{true: "create", false: "maintenance"}[create])
	h.checkImage(t, point+", after the recovery", false, gen, gen)
}

// setPlaybook writes (pb) or removes the image's playbook.
func (h *faultHost) setPlaybook(t *testing.T, pb bool, gen int, fail bool) {
	t.Helper()
	p := filepath.Join(h.pbDir, h.name+".yaml")
	if !pb {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return
	}
	if err := os.WriteFile(p, []byte(faultPlaybook(gen, fail)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (h *faultHost) removeImage(t *testing.T) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(h.root, h.name)); err == nil {
		h.must(t, "chroot-remove", h.name)
	}
}

func (h *faultHost) must(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := h.command(ctx, args...)
	cmd.Env = h.env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nspawn-runner %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// generation is the image's /etc/nrt-gen, 0 when it has none.
func (h *faultHost) generation(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.root, h.name, "etc", "nrt-gen"))
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	n, cerr := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || cerr != nil {
		t.Fatalf("image generation: %q, %v", b, err)
	}
	return n
}

// interrupt runs an image command in its own process group and sends sig
// to the group at p (gitlab-runner's way, and a timer's or an admin's
// Ctrl-C); SIGKILL 60 s later if it is still running. It returns the exit
// code (-1 for a signal).
func (h *faultHost) interrupt(t *testing.T, p faultPoint, sig syscall.Signal, args ...string) int {
	t.Helper()
	what := strings.Join(args, " ") + " " + p.String()
	cmd := h.command(context.Background(), args...)
	cmd.Env = h.env
	if p.fail != "" {
		cmd.Env = append(cmd.Env, "NRT_FAKE_FAIL="+p.fail)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A pipe of ours, not StderrPipe: Wait must not wait for a process
	// the killed command left holding it.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		pw.Close()
		t.Fatal(err)
	}
	pw.Close()
	hit := make(chan struct{})
	var log strings.Builder
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		found := false
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if !found && p.line != "" && strings.Contains(sc.Text(), p.line) {
				found = true
				close(hit)
			}
		}
	}()
	var timer <-chan time.Time
	if p.line == "" && p.fail == "" {
		timer = time.After(p.delay)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	exited := false
	select {
	case werr = <-done:
		exited = true
	case <-hit:
	case <-timer:
	}
	if !exited {
		_ = syscall.Kill(-cmd.Process.Pid, sig)
		select {
		case werr = <-done:
		case <-time.After(60 * time.Second):
			t.Logf("%s: still running 60 s after %v: SIGKILL", what, sig)
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			werr = <-done
		}
	}
	select {
	case <-scanned:
	case <-time.After(5 * time.Second):
		pr.Close()
		<-scanned
	}
	if exited && p.fail == "" {
		t.Logf("%s: ended before the fault (%v)", what, werr)
	}
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		if p.fail != "" {
			t.Logf("%s: exit %d:\n%s", what, ee.ExitCode(), lastLines(log.String(), 6))
		}
		return ee.ExitCode()
	}
	return 0
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// checkImage checks that the image is whole (a full tree, not a
// half-copied one) and of a generation between lo and hi (the old one or
// the new one; 0: no playbook ran on it). absent accepts no image at all.
func (h *faultHost) checkImage(t *testing.T, point string, absent bool, lo, hi int) {
	t.Helper()
	img := filepath.Join(h.root, h.name)
	if _, err := os.Lstat(img); err != nil {
		if !absent || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: image %s: %v, want it of generation %d..%d", point, h.name, err, lo, hi)
		}
		return
	}
	if gen := h.generation(t); gen < lo || gen > hi {
		t.Errorf("%s: image of generation %d, want %d..%d", point, gen, lo, hi)
	}
	for _, rel := range []string{"usr/bin/python3", "usr/lib/systemd/systemd", "etc/os-release", "usr/bin/bash"} {
		if _, err := os.Stat(filepath.Join(img, rel)); err != nil {
			t.Errorf("%s: the image lacks %s: %v", point, rel, err)
		}
	}
	want, _ := os.ReadDir(filepath.Join(h.src, "usr", "bin"))
	got, _ := os.ReadDir(filepath.Join(img, "usr", "bin"))
	if len(got) != len(want) {
		t.Errorf("%s: the image has %d entries in /usr/bin, want %d: a partial tree", point, len(got), len(want))
	}
	if _, err := os.Lstat(filepath.Join(img, "debootstrap")); err == nil {
		t.Errorf("%s: the image holds debootstrap's work directory: an unfinished tree", point)
	}
}

// checkClean checks that no workspace, swap or retired tree, mount,
// process or cgroup is left.
func (h *faultHost) checkClean(t *testing.T, point string) {
	t.Helper()
	for _, e := range h.entries(t) {
		for _, pre := range []string{".tmp-", ".swap-", ".retired-"} {
			if strings.HasPrefix(e, pre) {
				t.Errorf("%s: %s left in the root", point, e)
			}
		}
	}
	if m := imMountsBelow(h.root); len(m) > 0 {
		t.Errorf("%s: mounts left: %q", point, m)
	}
	if left, _ := filepath.Glob(filepath.Join(h.tmp, "nspawn-runner-ansible-*")); len(left) > 0 {
		t.Errorf("%s: playbook run directories left: %q", point, left)
	}
	if p := imProcessesIn(h.root); len(p) > 0 {
		t.Errorf("%s: processes left in the root: %v", point, p)
		imKillAndUnmount(t, h.root)
	}
	if left := cgroupsBelow(h.cgParent, true); len(left) > 0 {
		t.Errorf("%s: cgroups left: %q", point, left)
		removeCgroupTree(t, h.cgParent)
	}
}

// cgroupsBelow lists the cgroups below parent in the cgroup v2 hierarchy
// (v2only) or in every one.
func cgroupsBelow(parent string, v2only bool) []string {
	var out []string
	roots := cgroupRoots()
	if v2only {
		roots = nil
		if h, err := cgroup.Detect(); err == nil {
			roots = []string{h.Root}
		}
	}
	for _, root := range roots {
		filepath.WalkDir(filepath.Join(root, parent), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && p != filepath.Join(root, parent) {
				out = append(out, p)
			}
			return nil
		})
	}
	return out
}

// removeCgroupTree kills what runs in parent's cgroups (by cgroup.kill)
// and removes them, deepest first, in every hierarchy.
func removeCgroupTree(t *testing.T, parent string) {
	for _, root := range cgroupRoots() {
		top := filepath.Join(root, parent)
		var dirs []string
		filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if len(dirs) > 0 {
			_ = os.WriteFile(filepath.Join(top, "cgroup.kill"), []byte("1"), 0o644)
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			var err error
			for range 50 {
				if err = os.Remove(dirs[i]); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Logf("remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}
