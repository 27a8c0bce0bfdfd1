package machine

import (
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/config"
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
