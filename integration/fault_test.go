package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// faultDelays are when the stage under test is killed: at once, during
// the steps of a prepare (record, storage, nspawn start, boot), of a run
// (entering, the script) and of a cleanup (graceful stop, kill, storage).
var faultDelays = []time.Duration{0, 20 * time.Millisecond, 80 * time.Millisecond, 300 * time.Millisecond}

// TestFaultInjection kills prepare, run and cleanup with SIGKILL or
// SIGTERM (as gitlab-runner does on cancel and timeout, to the stage's
// process group) at increasing delays, in every storage and both modes,
// then runs the documented recovery (cleanup, as gitlab-runner does after
// any stage, then gc) and checks that nothing is left: no process, record,
// machine tree, mount, subvolume or cgroup.
func TestFaultInjection(t *testing.T) {
	for _, tc := range []struct{ mode, storage string }{
		{"boot", "btrfs"}, {"fast", "btrfs"}, {"boot", "overlay"}, {"fast", "overlay"}, {"boot", "volatile"}, {"fast", "volatile"},
	} {
		t.Run(tc.mode+"-"+tc.storage, func(t *testing.T) {
			r := NewRunner(t, Options{Machine: fmt.Sprintf("  mode: %s\n  storage: %s\n", tc.mode, tc.storage)})
			script := filepath.Join(t.TempDir(), "script")
			if err := os.WriteFile(script, []byte("#!/usr/bin/env bash\necho started; sleep 60\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			for i, d := range faultDelays {
				sig := syscall.SIGKILL
				if i%2 == 1 {
					sig = syscall.SIGTERM
				}
				for _, stage := range []string{"prepare", "run", "cleanup"} {
					id := r.ID()
					point := fmt.Sprintf("%s %v after %v", stage, sig, d)
					if stage != "prepare" {
						r.mustMachine(t, point, "prepare", "--id", id, BaseImage)
					}
					var args []string
					switch stage {
					case "prepare":
						args = []string{"prepare", "--id", id, BaseImage}
					case "run":
						args = []string{"run", "--id", id, script, "build_script"}
					case "cleanup":
						args = []string{"cleanup", "--id", id}
					}
					r.killAfter(t, d, sig, args[0], args[1:]...)
					// The recovery: gitlab-runner's cleanup, then gc.
					r.mustMachine(t, point, "cleanup", "--id", id)
					r.mustMachine(t, point, "gc")
					r.assertNothingLeft(t, point)
				}
			}
		})
	}
}

// assertNothingLeft checks, after the recovery from a fault at point,
// that no process, record, machine tree, mount, subvolume or cgroup is
// left (and removes what is).
func (r *Runner) assertNothingLeft(t *testing.T, point string) {
	t.Helper()
	if left := r.leftovers(); len(left) > 0 {
		t.Errorf("%s: left behind:\n  %s", point, strings.Join(left, "\n  "))
		r.forceClean()
	}
	if ents, _ := os.ReadDir(filepath.Join(r.Root, ".machines")); len(ents) > 0 {
		t.Errorf("%s: machine trees left in %s/.machines: %d", point, r.Root, len(ents))
	}
	if ents, _ := filepath.Glob(filepath.Join(r.RunDir, "machines", "*.json")); len(ents) > 0 {
		t.Errorf("%s: records left: %q", point, ents)
	}
}

// mustMachine runs a machine command that must succeed.
func (r *Runner) mustMachine(t *testing.T, point string, cmd string, args ...string) {
	t.Helper()
	if _, errOut, code := r.call(context.Background(), "/", os.Environ(), r.machineCmd(cmd, args...)...); code != 0 {
		t.Fatalf("%s: %s %q: exit %d: %s", point, cmd, args, code, errOut)
	}
}

// killAfter starts a machine command in its own process group, sends sig
// to the group after d (as gitlab-runner signals a stage), then SIGKILL
// when it has not exited 10 s later, and reaps it.
func (r *Runner) killAfter(t *testing.T, d time.Duration, sig syscall.Signal, cmd string, args ...string) {
	t.Helper()
	c := exec.Command(r.Bin, r.machineCmd(cmd, args...)...)
	c.Dir = "/"
	c.Env = append(os.Environ(), "BUILD_FAILURE_EXIT_CODE=1", "SYSTEM_FAILURE_EXIT_CODE=2")
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	select {
	case <-done:
		return // finished before the fault: recovery must cope too
	case <-time.After(d):
	}
	_ = syscall.Kill(-c.Process.Pid, sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		<-done
	}
}
