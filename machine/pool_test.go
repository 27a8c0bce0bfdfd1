package machine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
)

// Pooled machines' names are valid machine names that no job's machine
// name can ever be (a job could otherwise claim or gc retire another
// job's machine).
func TestPoolNames(t *testing.T) {
	for _, prefix := range []string{"", "nrt-x-"} {
		m := &Manager{NamePrefix: prefix}
		seen := map[string]bool{}
		for range 100 {
			n, err := m.newPoolName()
			if err != nil {
				t.Fatal(err)
			}
			if !m.isPoolName(n) || seen[n] {
				t.Fatalf("newPoolName() = %q: isPoolName %v, seen before %v", n, m.isPoolName(n), seen[n])
			}
			seen[n] = true
		}
		for _, id := range []string{"pool", "pool-0123456789abc", "pool-0123456789ab", "1", "pool_"} {
			for _, key := range []string{"0123456789abcdef", "abcdefabcdefabcd"} {
				n, err := m.Name(id, key)
				if err != nil {
					continue
				}
				if m.isPoolName(n) {
					t.Errorf("job %q key %q: machine name %q passes for a pooled machine's", id, key, n)
				}
			}
		}
		for _, bad := range []string{m.prefix() + "pool-0123456789ab", m.prefix() + "pool-0123456789abX", m.prefix() + "pool-0123456789ABC", "other-pool-0123456789abc"} {
			if m.isPoolName(bad) {
				t.Errorf("isPoolName(%q) = true", bad)
			}
		}
	}
}

// The pool key changes with everything a machine's start depends on, and
// not with what only later stages or the pool itself read.
func TestPoolKey(t *testing.T) {
	base := config.Default().Machine
	key := func(mod func(c *config.Machine), mode, parent string) string {
		c := base
		c.Pool = map[string]int{"bookworm": 2}
		mod(&c)
		return (&Manager{Config: c, CgroupParent: parent}).poolKey(mode)
	}
	same := func(*config.Machine) {}
	k := key(same, config.ModeBoot, "")
	if len(k) != 24 || strings.Trim(k, "0123456789abcdef") != "" {
		t.Errorf("poolKey = %q, want 24 hex digits", k)
	}
	for name, mod := range map[string]func(*config.Machine){
		"pool size":    func(c *config.Machine) { c.Pool = map[string]int{"bookworm": 9} },
		"pool max age": func(c *config.Machine) { c.PoolMaxAge = 1 },
		"shell":        func(c *config.Machine) { c.Shell = "sh" },
		"timeouts":     func(c *config.Machine) { c.ReadyTimeout, c.StopTimeout = 1, 1 },
	} {
		if got := key(mod, config.ModeBoot, ""); got != k {
			t.Errorf("%s changed the pool key", name)
		}
	}
	for name, mod := range map[string]func(*config.Machine){
		"storage":  func(c *config.Machine) { c.Storage = config.StorageOverlay },
		"seccomp":  func(c *config.Machine) { c.Seccomp = !c.Seccomp },
		"memory":   func(c *config.Machine) { c.MemoryMax = config.Size{Bytes: 1 << 30} },
		"network":  func(c *config.Machine) { c.Network = config.NetworkNone },
		"deny":     func(c *config.Machine) { c.DenyNetworks = []string{"10.0.0.0/8"} },
		"dns":      func(c *config.Machine) { c.DNS = []string{"192.0.2.1"} },
		"mode cfg": func(c *config.Machine) { c.Mode = config.ModeFast },
	} {
		if got := key(mod, config.ModeBoot, ""); got == k {
			t.Errorf("%s did not change the pool key", name)
		}
	}
	if key(same, config.ModeFast, "") == k {
		t.Errorf("the mode did not change the pool key")
	}
	if key(same, config.ModeBoot, "other/parent") == k {
		t.Errorf("the cgroup parent did not change the pool key")
	}
}

// TestPoolClaimAndFallback (root): a pooled machine is claimed with the
// job's bind working inside it; when its attach fails, it is destroyed
// and the job gets a fresh machine; pool 0 and GC leave nothing.
func TestPoolClaimAndFallback(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "systemd-nspawn")
	img := testutil.Image(t)
	// The run dir holds unix sockets: a short path.
	run, err := os.MkdirTemp("", "nrt-pool-run-")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	m := &Manager{
		Root: root, RunDir: run, Images: oneImage(img),
		NamePrefix: "nrt-pm-", CgroupParent: "nrt-pool-machine-" + strconv.Itoa(os.Getpid()),
		Config: config.Machine{
			Mode: config.ModeFast, Storage: config.StorageOverlay, Network: config.NetworkHost, Shell: "bash",
			ReadyTimeout: config.Duration(time.Minute), StopTimeout: config.Duration(5 * time.Second),
			Pool: map[string]int{"img": 1},
		},
	}
	ctx := context.Background()
	t.Cleanup(func() {
		m.Config.Pool = nil
		if _, err := m.GC(ctx, time.Nanosecond); err != nil {
			t.Errorf("GC: %v", err)
		}
		for _, d := range []string{filepath.Join(run, "machines"), filepath.Join(root, MachinesDirName)} {
			if ents, _ := os.ReadDir(d); len(ents) > 0 {
				t.Errorf("left in %s: %d entries", d, len(ents))
			}
		}
		if h, err := m.cgroups(); err == nil {
			if err := h.Remove(m.parent()); err != nil {
				t.Errorf("remove cgroup parent: %v", err)
			}
		}
		_ = mount.UnmountAll(run)
		os.RemoveAll(run)
	})
	hostDir := t.TempDir()
	binds := []Bind{{Host: hostDir, Machine: "/mnt/nrt/job"}}

	fill := func() string {
		t.Helper()
		res, err := m.FillPool(ctx, "img", true)
		if err != nil || len(res.Started) != 1 {
			t.Fatalf("FillPool = %+v, %v; want one machine started", res, err)
		}
		return res.Started[0]
	}
	pooled := fill()
	m.attachFault = errors.New("injected attach failure")
	p, err := m.PrepareJob(ctx, PrepareRequest{JobID: "1", Key: "0123456789abcdef", Image: "img", Binds: binds})
	if err != nil {
		t.Fatalf("PrepareJob with a failing attach = %v, want a fresh machine", err)
	}
	if p.Pooled != "" {
		t.Errorf("PrepareJob claimed %s although its attach failed", p.Pooled)
	}
	if _, err := os.Lstat(m.layout(pooled).Record); !os.IsNotExist(err) {
		t.Errorf("the pooled machine whose attach failed still has a record (%v)", err)
	}
	if h, err := m.cgroups(); err == nil && h.Exists(m.layout(pooled).Cgroup) {
		t.Errorf("the pooled machine whose attach failed still has its cgroup")
	}
	runIn := func(jobID, script string) string {
		t.Helper()
		sf := filepath.Join(t.TempDir(), "s")
		out := filepath.Join(t.TempDir(), "out")
		os.WriteFile(sf, []byte(script), 0o644)
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := m.Run(ctx, RunRequest{JobID: jobID, Key: "0123456789abcdef", Script: sf, Stage: "build_script", Stdout: f, Stderr: f}); err != nil {
			b, _ := os.ReadFile(out)
			t.Fatalf("Run in job %s: %v\n%s", jobID, err, b)
		}
		b, _ := os.ReadFile(out)
		return string(b)
	}
	runIn("1", "echo one > /mnt/nrt/job/one\n")
	if err := m.Cleanup(ctx, "1", "0123456789abcdef"); err != nil {
		t.Fatal(err)
	}

	m.attachFault = nil
	pooled = fill()
	p, err = m.PrepareJob(ctx, PrepareRequest{JobID: "2", Key: "0123456789abcdef", Image: "img", Binds: binds})
	if err != nil || p.Pooled != pooled {
		t.Fatalf("PrepareJob = %+v, %v; want pooled machine %s claimed", p, err, pooled)
	}
	out := runIn("2", "cat /mnt/nrt/job/one; echo two > /mnt/nrt/job/two; hostname\n")
	if want := "one\n" + p.Name + "\n"; out != want {
		t.Errorf("claimed machine: output %q, want %q", out, want)
	}
	if b, err := os.ReadFile(filepath.Join(hostDir, "two")); err != nil || string(b) != "two\n" {
		t.Errorf("file written through the bind: %q, %v", b, err)
	}
	list, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.Name == p.Name && s.State != StateRunning {
			t.Errorf("ps: claimed machine %s is %s, want running", s.Name, s.State)
		}
	}
	if err := m.Cleanup(ctx, "2", "0123456789abcdef"); err != nil {
		t.Fatal(err)
	}

	// The image is removed: gc removes its pool, configured or not.
	pooled = fill()
	m.Images = goneImage{}
	res, err := m.GC(ctx, 0)
	if err != nil {
		t.Fatalf("GC with the pool's image gone: %v", err)
	}
	if len(res.Machines) != 1 || res.Machines[0] != pooled || len(res.Pooled) != 0 {
		t.Errorf("GC with the pool's image gone = %+v, want %s removed and nothing started", res, pooled)
	}
}

// goneImage is an image store whose images were all removed.
type goneImage struct{}

func (goneImage) Path(name string) (string, error) {
	return "", errors.New("image " + name + " not found")
}
func (goneImage) Retired() ([]string, error) { return nil, nil }
func (goneImage) RemoveTree(string) error    { return nil }
