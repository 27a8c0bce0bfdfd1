package provision

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/machine"
)

// machine.Manager.Run enters a machine from a locked thread that it never
// unlocks, so the runtime retires that thread; were it the main thread, it
// would be parked instead, still in the machine's mount namespace, and
// /proc/self/mountinfo (which follows the main thread) would show the
// machine's mounts to the rest of this process. The nspawn-runner binary
// runs each stage in its own process; a test running stages in-process
// keeps the main thread for the main goroutine, as runtime.LockOSThread
// documents for init functions.
func init() { runtime.LockOSThread() }

// TestMaintainWhileJobsRun maintains an image while four jobs run on it:
// each job sees the old image from start to end and succeeds, a job
// prepared after the swap sees the new one, and the old tree goes at once
// with btrfs snapshots (machines do not use the image tree: the
// maintenance itself deletes it), and with overlays only at the gc after
// the jobs' cleanup (the old tree is their lower layer).
func TestMaintainWhileJobsRun(t *testing.T) {
	requireAnsible(t)
	for _, storage := range []string{config.StorageBtrfs, config.StorageOverlay} {
		t.Run(storage, func(t *testing.T) { testMaintainWhileJobsRun(t, storage) })
	}
}

func testMaintainWhileJobsRun(t *testing.T, storage string) {
	root, dir := testutil.NewBtrfs(t, 6<<30), t.TempDir()
	live := seedImage(t, root, "nrt-pv-img")
	if err := os.WriteFile(filepath.Join(live, "etc/nrt-pv-version"), []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	writePlaybook(t, dir, "nrt-pv-img.yaml", `- hosts: all
  gather_facts: false
  tasks:
    - name: new version
      copy:
        dest: /etc/nrt-pv-version
        content: "new\n"
    - name: new file
      copy:
        dest: /etc/nrt-pv-new-only
        content: ""
`)
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	store := &bootstrap.Store{Root: root}
	cfg := config.Default().Machine
	cfg.Storage = storage
	// Private networks are integration/network_test.go's: this test's
	// machines stay off the host's network configuration.
	cfg.Network = config.NetworkHost
	mgr := &machine.Manager{
		Root:         root,
		RunDir:       t.TempDir(),
		Config:       cfg,
		Images:       store,
		NamePrefix:   "nrt-pv-",
		CgroupParent: "nrt-pv-" + hex.EncodeToString(rnd[:]),
	}
	signal := t.TempDir()
	binds := []machine.Bind{{Host: signal, Machine: "/nrt-pv-signal"}}
	key := "0123456789abcdef"
	ids := []string{"1", "2", "3", "4"}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		for _, id := range append(ids, "5") {
			if err := mgr.Cleanup(ctx, id, key); err != nil {
				t.Logf("cleanup %s: %v", id, err)
			}
		}
		if _, err := mgr.GC(ctx, time.Nanosecond); err != nil {
			t.Logf("gc: %v", err)
		}
		testutil.RemoveCgroups(t, mgr.CgroupParent)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	script := func(name, body string) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, id := range ids {
		if _, err := mgr.Prepare(ctx, machine.PrepareRequest{JobID: id, Key: key, Image: "nrt-pv-img", Binds: binds}); err != nil {
			t.Fatalf("prepare job %s: %v", id, err)
		}
	}
	type result struct {
		out string
		err error
	}
	results := make([]result, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		s := script("job"+id, fmt.Sprintf(`set -e
cat /etc/nrt-pv-version
touch /nrt-pv-signal/started-%s
while [ ! -e /nrt-pv-signal/go ]; do sleep 0.1; done
cat /etc/nrt-pv-version
test ! -e /etc/nrt-pv-new-only
echo job-done
`, id))
		outPath := filepath.Join(t.TempDir(), "out")
		out, err := os.Create(outPath)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer out.Close()
			err := mgr.Run(ctx, machine.RunRequest{JobID: id, Key: key, Script: s, Stage: "build_script", Stdout: out, Stderr: out})
			b, _ := os.ReadFile(outPath)
			results[i] = result{string(b), err}
		}()
	}
	// Every job is past its first look at the image.
	deadline := time.Now().Add(5 * time.Minute)
	for _, id := range ids {
		for {
			if _, err := os.Stat(filepath.Join(signal, "started-"+id)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				os.WriteFile(filepath.Join(signal, "go"), nil, 0o644)
				wg.Wait()
				t.Fatalf("job %s never started: %+v", id, results)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	var progress syncBuffer
	m := newMaintainer(t, root, dir, &progress)
	m.Store = store
	m.Collector = mgr
	merr := m.Maintain(ctx, "nrt-pv-img")

	// A job prepared after the swap, while the four still run.
	_, perr := mgr.Prepare(ctx, machine.PrepareRequest{JobID: "5", Key: key, Image: "nrt-pv-img", Binds: binds})

	if err := os.WriteFile(filepath.Join(signal, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if merr != nil {
		t.Fatalf("Maintain while jobs run: %v\n%s", merr, progress.String())
	}
	for i, r := range results {
		if r.err != nil || r.out != "old\nold\njob-done\n" {
			t.Errorf("job %s: %v, output %q; want the old image throughout", ids[i], r.err, r.out)
		}
	}
	if perr != nil {
		t.Fatalf("prepare job 5: %v", perr)
	}
	out5 := filepath.Join(t.TempDir(), "out5")
	f, err := os.Create(out5)
	if err != nil {
		t.Fatal(err)
	}
	err = mgr.Run(ctx, machine.RunRequest{JobID: "5", Key: key, Script: script("job5", "set -e\ncat /etc/nrt-pv-version\ntest -e /etc/nrt-pv-new-only\n"), Stage: "build_script", Stdout: f, Stderr: f})
	f.Close()
	if b, _ := os.ReadFile(out5); err != nil || string(b) != "new\n" {
		t.Errorf("job 5 after the maintenance: %v, output %q; want the new image", err, b)
	}

	retired, err := store.Retired()
	if storage == config.StorageBtrfs {
		if err != nil || len(retired) != 0 {
			t.Errorf("retired trees after a maintenance nothing uses the old image of = %v, %v; want it deleted at once\n%s", retired, err, progress.String())
		}
		if !strings.Contains(progress.String(), "the old one, unused, is deleted") {
			t.Errorf("progress does not say the old image was deleted:\n%s", progress.String())
		}
	} else {
		if err != nil || len(retired) != 1 {
			t.Fatalf("retired trees = %v, %v; want the old image", retired, err)
		}
		// The old tree is the lower layer of jobs 1-4: gc keeps it.
		if res, err := mgr.GC(ctx, 0); err != nil || len(res.Images) != 0 {
			t.Errorf("gc with jobs on the old image: %+v, %v; want it kept", res, err)
		}
	}
	for _, id := range append(ids, "5") {
		if err := mgr.Cleanup(ctx, id, key); err != nil {
			t.Errorf("cleanup job %s: %v", id, err)
		}
	}
	res, err := mgr.GC(ctx, 0)
	if storage == config.StorageOverlay && (err != nil || len(res.Images) != 1 || !strings.HasPrefix(filepath.Base(res.Images[0]), ".retired-nrt-pv-img-")) {
		t.Errorf("gc after the jobs: %+v, %v; want the old image removed", res, err)
	}
	if r, _ := store.Retired(); len(r) != 0 {
		t.Errorf("retired trees left after gc: %v", r)
	}
}

// testCgroupParent is the test's own cgroup parent for machines and
// playbook runs.
func testCgroupParent(t *testing.T) string {
	t.Helper()
	return testutil.CgroupParent(t, "nrt-pv-cg-")
}
