package machine

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

// oneImage is an image store with a single image (the test never gets as
// far as starting it).
type oneImage string

func (i oneImage) Path(string) (string, error)  { return string(i), nil }
func (i oneImage) Retired() ([]string, error)   { return nil, nil }
func (i oneImage) RemoveTree(path string) error { return os.RemoveAll(path) }

// TestCancelledPrepareUnkillableEarlierMachine: a prepare that finds an
// earlier machine of its job destroys it first; when a process of that
// machine cannot be killed, the destroy must end at its time budget
// (with an error) even though the prepare's context is cancelled, not
// block forever (issue 13, bug 4). The unkillable process is one frozen
// by the cgroup v1 freezer, which keeps SIGKILL pending until it thaws.
func TestCancelledPrepareUnkillableEarlierMachine(t *testing.T) {
	testutil.RequireRoot(t)
	freezer := "/sys/fs/cgroup/freezer"
	if _, err := os.Stat(filepath.Join(freezer, "cgroup.procs")); err != nil {
		t.Skip("needs the cgroup v1 freezer (hybrid cgroups) to make a process SIGKILL cannot end")
	}
	root := t.TempDir()
	m := &Manager{
		Root: root, RunDir: filepath.Join(root, "run"), Images: oneImage(t.TempDir()),
		NamePrefix: "nrt-rm-", CgroupParent: "nrt-r-machine-" + strconv.Itoa(os.Getpid()),
		Config:       config.Machine{Mode: config.ModeFast, StopTimeout: config.Duration(100 * time.Millisecond)},
		destroyGrace: time.Second,
	}
	h, err := m.cgroups()
	if err != nil {
		t.Skipf("needs cgroup v2: %v", err)
	}
	const jobID, key = "1", "0123456789abcdef"
	name, err := m.Name(jobID, key)
	if err != nil {
		t.Fatal(err)
	}
	l := m.layout(name)
	// The earlier machine: its run directory and its cgroup, holding a
	// frozen process.
	if err := os.MkdirAll(l.RunDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Create(l.Cgroup, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Remove(m.parent()) })
	cg, err := h.Open(l.Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	frozen := filepath.Join(freezer, m.parent())
	if err := os.Mkdir(frozen, 0o755); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.WriteFile(filepath.Join(frozen, "freezer.state"), []byte("THAWED"), 0)
		cmd.Process.Kill()
		cmd.Wait()
		_ = os.Remove(frozen)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = h.Kill(ctx, l.Cgroup)
		_ = h.Remove(m.parent())
	})
	if err := os.WriteFile(filepath.Join(frozen, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(frozen, "freezer.state"), []byte("FROZEN"), 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		b, _ := os.ReadFile(filepath.Join(frozen, "freezer.state"))
		if strings.TrimSpace(string(b)) == "FROZEN" {
			break
		}
		if i == 1000 {
			t.Fatalf("freezer.state = %q, want FROZEN", b)
		}
		time.Sleep(10 * time.Millisecond)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // gitlab-runner cancelled the job
	done := make(chan error, 1)
	go func() {
		_, err := m.Prepare(ctx, PrepareRequest{JobID: jobID, Key: key, Image: "any"})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "remove earlier machine") || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Prepare = %v, want the earlier machine's removal to fail at its deadline", err)
		}
	case <-time.After(2 * time.Minute):
		// Far beyond the budget (0.1 s + 1 s): the destroy is stuck.
		t.Fatal("a cancelled Prepare is still waiting for a process that cannot be killed")
	}
}
