package integration

// TestVMReboot spans two boots of a make vm-test guest (scripts/vm/guest.sh
// resets the guest in between when this test leaves its state file):
//
//  1. `setup --loopback` mounts a btrfs file on an image root of the guest's
//     ext4 and prints the fstab line, which goes into /etc/fstab; a job is
//     prepared (booted) and its build_script left running.
//  2. After the reset (a crash, not a shutdown) the fstab line has mounted
//     the btrfs again, the run directory (a tmpfs) is empty, the machine's
//     tree is still under ROOT; gc removes it and leaves nothing: no
//     subvolume but the image, no machine known to machined, no unit.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

const (
	// rebootDir is on the guest's persistent root filesystem (ext4);
	// guest.sh reboots when rebootDir/state.json exists.
	rebootDir = "/var/lib/nr-vm-reboot"
	// rebootRunDir is a tmpfs, as the product's /run/nspawn-runner is.
	rebootRunDir = "/run/nr-vm-reboot"
	rebootID     = "nr-vm-reboot-1"
)

// rebootState is what the first boot leaves for the second.
type rebootState struct {
	Root    string `json:"root"`
	Config  string `json:"config"`
	Fstab   string `json:"fstab"`
	Machine string `json:"machine"`
	Cgroup  string `json:"cgroup"`
	BootID  string `json:"boot_id"`
}

func (s rebootState) global() []string {
	return []string{"--config", s.Config, "--root", s.Root, "--run-dir", rebootRunDir}
}

func TestVMReboot(t *testing.T) {
	vmGuest(t)
	testutil.RequireRoot(t)
	if os.Getenv("NSPAWN_RUNNER_VM_GUEST") != "bookworm" {
		// The root filesystem must not be btrfs for setup --loopback.
		t.Skip("runs in the bookworm profile (ext4 root) only")
	}
	b, err := os.ReadFile(filepath.Join(rebootDir, "state.json"))
	switch {
	case os.IsNotExist(err):
		rebootBefore(t)
	case err != nil:
		t.Fatal(err)
	default:
		var s rebootState
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("state of the first boot: %v", err)
		}
		rebootAfter(t, s)
	}
}

// exe runs the binary with the stage exit codes set; it returns stdout,
// then stdout and stderr together (for messages), and the exit code.
func exe(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	r := &Runner{Bin: binary(t)}
	out, errOut, code := r.call(context.Background(), "/", append(os.Environ(), "BUILD_FAILURE_EXIT_CODE=1", "SYSTEM_FAILURE_EXIT_CODE=2"), args...)
	return out, out + errOut, code
}

func bootID(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func rebootBefore(t *testing.T) {
	s := rebootState{Root: filepath.Join(rebootDir, "images"), Config: filepath.Join(rebootDir, "config.yaml"), BootID: bootID(t)}
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("root: %s\nrun_dir: %s\nmachine:\n  ready_timeout: 300s\n  mode: boot\n  network: host\n", s.Root, rebootRunDir)
	if err := os.WriteFile(s.Config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out, msg, code := exe(t, append(s.global(), "setup", "--loopback", "4G", "--loopback-file", filepath.Join(rebootDir, "images.btrfs"),
		"--sysctl-file", filepath.Join(rebootDir, "sysctl.conf"))...)
	if code != 0 {
		t.Fatalf("setup --loopback: exit %d\n%s", code, msg)
	}
	_, after, ok := strings.Cut(out, "add this line to /etc/fstab:\n")
	if s.Fstab, _, _ = strings.Cut(after, "\n"); !ok || s.Fstab == "" {
		t.Fatalf("setup --loopback printed no fstab line:\n%s", out)
	}
	f, err := os.OpenFile("/etc/fstab", os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintln(f, s.Fstab)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	if fs := fsType(t, s.Root); fs != "btrfs" {
		t.Fatalf("after setup --loopback, %s is %q, want btrfs", s.Root, fs)
	}
	img := filepath.Join(s.Root, BaseImage)
	testutil.Run(t, "btrfs", "-q", "subvolume", "create", img)
	testutil.Run(t, "cp", "-a", testutil.Image(t)+"/.", img+"/")

	_, msg, code = exe(t, append(s.global(), "prepare", "--id", rebootID, BaseImage)...)
	if code != 0 {
		t.Fatalf("prepare: exit %d\n%s", code, msg)
	}
	recs := machineRecords(t, &Runner{RunDir: rebootRunDir})
	if len(recs) != 1 {
		t.Fatalf("%d machine records after prepare, want 1", len(recs))
	}
	s.Machine, _ = recs[0]["name"].(string)
	s.Cgroup, _ = recs[0]["cgroup"].(string)

	// A stage in the middle of its script when the guest resets: run
	// stays running after this test ends (guest.sh resets the guest).
	script := filepath.Join(rebootDir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/bash\necho stage-started\nexec sleep 100000\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	run := exec.Command(binary(t), append(s.global(), "run", "--id", rebootID, script, "build_script")...)
	run.Dir = "/"
	run.Env = append(os.Environ(), "BUILD_FAILURE_EXIT_CODE=1", "SYSTEM_FAILURE_EXIT_CODE=2")
	// A file, not a pipe to this test, which ends before the stage.
	stageLog := filepath.Join(rebootDir, "stage.log")
	so, err := os.Create(stageLog)
	if err != nil {
		t.Fatal(err)
	}
	defer so.Close()
	run.Stdout, run.Stderr = so, so
	run.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for !hasComm(cgroupComms(s.Cgroup), "sleep") {
		if time.Now().After(deadline) {
			run.Process.Kill()
			b, _ := os.ReadFile(stageLog)
			t.Fatalf("the stage did not start its sleep in %s:\n%s", s.Cgroup, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rebootDir, "state.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	syscall.Sync()
	t.Logf("machine %s runs a stage; guest.sh resets the guest now and the next boot checks what is left (%s)", s.Machine, s.Fstab)
}

func rebootAfter(t *testing.T, s rebootState) {
	if id := bootID(t); id == s.BootID {
		t.Fatalf("state file of this same boot (%s): the guest did not reboot", id)
	}
	// Whatever happens below, a third boot must not find the state.
	t.Cleanup(func() { os.Remove(filepath.Join(rebootDir, "state.json")) })

	if fs := fsType(t, s.Root); fs != "btrfs" {
		t.Fatalf("after the reboot %s is %q, not the btrfs of the fstab line %q", s.Root, fs, s.Fstab)
	}
	if ents, err := os.ReadDir(filepath.Join(rebootRunDir, "machines")); err == nil && len(ents) > 0 {
		t.Errorf("the run directory %s survived the reboot: %d entries", rebootRunDir, len(ents))
	}
	tree := filepath.Join(s.Root, ".machines", s.Machine)
	if _, err := os.Stat(tree); err != nil {
		t.Fatalf("the machine's tree %s is gone before gc, so the test proves nothing: %v", tree, err)
	}

	_, msg, code := exe(t, append(s.global(), "gc")...)
	if code != 0 {
		t.Fatalf("gc after the reboot: exit %d\n%s", code, msg)
	}
	t.Logf("gc after the reboot:\n%s", msg)
	if _, err := os.Stat(tree); !os.IsNotExist(err) {
		t.Errorf("gc left the machine's tree %s (%v)", tree, err)
	}
	sv, err := exec.Command("btrfs", "subvolume", "list", "-o", s.Root).Output()
	if err != nil {
		t.Fatalf("btrfs subvolume list %s: %v", s.Root, err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(sv)), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[len(f)-1] != BaseImage {
			t.Errorf("subvolume left after gc: %s", l)
		}
	}
	var ps []json.RawMessage
	if out, _, code := exe(t, append(s.global(), "ps", "--json")...); code != 0 || json.Unmarshal([]byte(out), &ps) != nil || len(ps) > 0 {
		t.Errorf("ps --json after gc: exit %d, %s; want no machine", code, out)
	}
	if _, err := os.Stat(filepath.Join("/run/systemd/machines", s.Machine)); err == nil {
		t.Errorf("machined knows %s after the reboot and gc", s.Machine)
	}
	if c := cgroupComms(s.Cgroup); len(c) > 0 {
		t.Errorf("processes in %s: %v", s.Cgroup, c)
	}
	assertNoMachineUnits(t)
	// cleanup of the job, as gitlab-runner would still call it, has
	// nothing left to do and succeeds.
	if _, msg, code := exe(t, append(s.global(), "cleanup", "--id", rebootID)...); code != 0 {
		t.Errorf("cleanup after gc: exit %d\n%s", code, msg)
	}
}

// fsType is the filesystem type of the mount at dir ("" when dir is not
// a mount point).
func fsType(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	typ := ""
	for _, l := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f := strings.Fields(pre)
		if ok && len(f) >= 5 && unescapeMount(f[4]) == dir {
			typ, _, _ = strings.Cut(post, " ")
		}
	}
	return typ
}

func hasComm(comms []string, comm string) bool {
	for _, c := range comms {
		if strings.HasSuffix(c, ":"+comm) {
			return true
		}
	}
	return false
}
