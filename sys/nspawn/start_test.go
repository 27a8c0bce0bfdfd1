package nspawn_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// TestStartExitsEarly: a systemd-nspawn that cannot start ends WaitReady
// with nspawn.ErrExited and the tail of its log, instead of waiting for the
// timeout.
func TestStartExitsEarly(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "systemd-nspawn")
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cgf := ownCgroup(t, "fail")
	p, err := nspawn.Start(nspawn.StartOptions{Args: nspawn.Args(nspawn.Spec{Directory: filepath.Join(dir, "missing"), Machine: "nrt-lc-nspawn-fail", NoRegister: true, Command: []string{"true"}}), Log: logf, CgroupFD: int(cgf.Fd())})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err = p.WaitReady(ctx, false)
	if !errors.Is(err, nspawn.ErrExited) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("WaitReady = %v, want nspawn.ErrExited with nspawn's complaint about the directory", err)
	}
}

// TestStartNotify: a non-booted machine reports its leader.
func TestStartNotify(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "systemd-nspawn")
	image := testutil.Image(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cgf := ownCgroup(t, "notify")
	// --volatile=overlay --read-only: the shared test image stays untouched.
	p, err := nspawn.Start(nspawn.StartOptions{Args: nspawn.Args(nspawn.Spec{Directory: image, Machine: "nrt-lc-nspawn-notify", NoRegister: true, Volatile: "overlay", ReadOnly: true, AsPID2: true, Quiet: true, Command: []string{"sleep", "infinity"}}), Log: logf, CgroupFD: int(cgf.Fd())})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	t.Cleanup(func() {
		proc, _ := os.FindProcess(p.PID)
		proc.Kill()
		<-p.Exited()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader, err := p.WaitReady(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if leader <= 1 || leader == p.PID {
		t.Errorf("leader = %d (nspawn %d)", leader, p.PID)
	}
	proc, _ := os.FindProcess(p.PID)
	proc.Signal(os.Interrupt)
	select {
	case <-p.Exited():
	case <-time.After(30 * time.Second):
		t.Error("systemd-nspawn did not stop on SIGINT")
	}
}

// ownCgroup makes a cgroup for one test's systemd-nspawn and removes it
// after: without one, systemd-nspawn --keep-unit makes payload/ and
// supervisor/ next to whatever runs the test, and leaves them.
func ownCgroup(t *testing.T, name string) *os.File {
	t.Helper()
	h, err := cgroup.Detect()
	if err != nil {
		if testutil.InCI() {
			t.Fatalf("%v (CI=true: gated tests must run in CI)", err)
		}
		t.Skip(err)
	}
	cg := fmt.Sprintf("nrt-lc-nspawn-%s-%d", name, os.Getpid())
	if _, err := h.Create(cg, nil); err != nil {
		t.Fatal(err)
	}
	cgf, err := h.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cgf.Close()
		h.Kill(context.Background(), cg)
		if err := h.Remove(cg); err != nil {
			t.Error(err)
		}
	})
	return cgf
}
