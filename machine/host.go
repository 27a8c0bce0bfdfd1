package machine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// cgroups finds the cgroup v2 hierarchy once per manager.
func (m *Manager) cgroups() (cgroup.Hierarchy, error) {
	m.once.Do(func() { m.cg, m.cgOK = cgroup.Detect() })
	return m.cg, m.cgOK
}

// ownCgroup returns the v2 cgroup of pid's parent group (the scope holding
// nspawn and its payload), or "" when unknown.
func ownCgroup(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			p = strings.TrimSuffix(filepath.Dir(p), "/payload")
			if p == "/" || p == "." {
				return ""
			}
			return strings.TrimPrefix(p, "/")
		}
	}
	return ""
}

func (m *Manager) limits() cgroup.Limits {
	mem := m.HostMemory
	if mem == 0 {
		var si unix.Sysinfo_t
		if unix.Sysinfo(&si) == nil {
			mem = uint64(si.Totalram) * uint64(si.Unit)
		}
	}
	return cgroup.Limits{
		MemoryHigh: m.Config.MemoryHigh.Resolve(mem),
		MemoryMax:  m.Config.MemoryMax.Resolve(mem),
		CPUWeight:  m.Config.CPUWeight,
		PidsMax:    m.Config.TasksMax,
	}
}

// findNspawn is nspawn.Find with the version cached in the run
// directory, keyed by the program's identity (asking costs a few ms per
// prepare otherwise).
func findNspawn(ctx context.Context, binary, runDir string) (nspawn.Program, error) {
	path, err := nspawn.LookPath(binary)
	if err != nil {
		return nspawn.Program{}, err
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nspawn.Program{}, fmt.Errorf("stat %s: %w", path, err)
	}
	key := fmt.Sprintf("%s %d %d %d", path, st.Ino, st.Size, st.Mtim.Nano())
	cache := filepath.Join(runDir, "nspawn-version")
	if b, err := os.ReadFile(cache); err == nil {
		if k, v, ok := strings.Cut(strings.TrimSpace(string(b)), "\n"); ok && k == key {
			if n, err := strconv.Atoi(v); err == nil {
				return nspawn.Program{Path: path, Version: n}, nil
			}
		}
	}
	n, err := nspawn.Version(ctx, path)
	if err != nil {
		return nspawn.Program{}, err
	}
	tmp := cache + ".tmp" + strconv.Itoa(os.Getpid())
	if os.WriteFile(tmp, []byte(key+"\n"+strconv.Itoa(n)+"\n"), 0o600) == nil {
		_ = os.Rename(tmp, cache)
	}
	return nspawn.Program{Path: path, Version: n}, nil
}
