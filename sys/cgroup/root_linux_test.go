package cgroup_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
)

func TestCreateKillRemove(t *testing.T) {
	testutil.RequireRoot(t)
	h := detect(t)
	rel := "nrt-lc-cgtest/m1"
	t.Cleanup(func() {
		_ = h.Kill(context.Background(), "nrt-lc-cgtest")
		_ = h.Remove("nrt-lc-cgtest")
	})
	missing, err := h.Create(rel, cgroup.Limits{MemoryMax: 1 << 30, CPUWeight: 50}.Wanted())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("controllers missing here: %v", missing)
	if _, err := h.SetLimits(rel, cgroup.Limits{MemoryMax: 1 << 30, CPUWeight: 50, PidsMax: 100}); err != nil {
		t.Fatal(err)
	}
	f, err := h.Open(rel)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sh", "-c", "sleep 1000 & sleep 1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, _ := h.Procs(rel)
		if len(pids) == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pids, _ := h.Procs(rel); len(pids) != 3 {
		t.Fatalf("Procs = %v, want 3 pids", pids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Kill(ctx, rel); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if err := h.Remove("nrt-lc-cgtest"); err != nil {
		t.Fatal(err)
	}
	if h.Exists(rel) {
		t.Errorf("group %s still exists", rel)
	}
	if err := h.Remove("nrt-lc-cgtest"); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

// A command started in a Group is in it from its first instruction, and
// Close kills it and removes the group with what was made below it (as
// systemd-nspawn --keep-unit makes payload/ and supervisor/).
func TestGroup(t *testing.T) {
	testutil.RequireRoot(t)
	h := detect(t)
	parent := "nrt-cg-group"
	t.Cleanup(func() {
		_ = h.Kill(context.Background(), parent)
		_ = h.Remove(parent)
	})
	cmd := exec.Command("sleep", "1000")
	grp, err := cgroup.Start(cmd, parent+"/one")
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if pids, err := h.Procs(parent + "/one"); err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Errorf("Procs(group) = %v, %v; want [%d]", pids, err, cmd.Process.Pid)
	}
	if err := os.Mkdir(filepath.Join(h.Path(parent+"/one"), "payload"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := grp.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := cmd.Wait(); err == nil {
		t.Errorf("the command survived Close")
	}
	if h.Exists(parent + "/one") {
		t.Errorf("group %s/one still exists after Close", parent)
	}
	var nilGroup *cgroup.Group
	if err := nilGroup.Close(ctx); err != nil {
		t.Errorf("Close of a nil Group = %v", err)
	}
}

// detect returns the host's cgroup v2 hierarchy; without one the test is
// skipped, or fails in CI, whose machines have one.
func detect(t *testing.T) cgroup.Hierarchy {
	t.Helper()
	h, err := cgroup.Detect()
	if err != nil {
		if testutil.InCI() {
			t.Fatalf("%v (CI=true: gated tests must run in CI)", err)
		}
		t.Skip(err)
	}
	return h
}
