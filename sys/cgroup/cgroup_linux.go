package cgroup

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// ErrNoCgroup2 is returned when no cgroup v2 hierarchy is mounted.
var ErrNoCgroup2 = errors.New("no cgroup v2 hierarchy mounted")

// Hierarchy is the mounted cgroup v2 hierarchy of this host.
type Hierarchy struct {
	// Root is the mount point of cgroup2.
	Root string
	// Mirrors are other hierarchies in which systemd-nspawn mirrors the
	// groups it makes (the v1 name=systemd hierarchy of a hybrid host);
	// Remove removes the same relative path there.
	Mirrors []string
}

// Detect finds the cgroup v2 hierarchy: /sys/fs/cgroup on a unified host,
// /sys/fs/cgroup/unified on a hybrid one.
func Detect() (Hierarchy, error) {
	const base = "/sys/fs/cgroup"
	if isCgroup2(base) {
		return Hierarchy{Root: base}, nil
	}
	if uni := filepath.Join(base, "unified"); isCgroup2(uni) {
		h := Hierarchy{Root: uni}
		if sd := filepath.Join(base, "systemd"); isCgroupFS(sd) {
			h.Mirrors = append(h.Mirrors, sd)
		}
		return h, nil
	}
	return Hierarchy{}, ErrNoCgroup2
}

func isCgroup2(p string) bool {
	var st unix.Statfs_t
	return statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

func isCgroupFS(p string) bool {
	var st unix.Statfs_t
	return statfs(p, &st) == nil && st.Type == unix.CGROUP_SUPER_MAGIC
}

func statfs(p string, st *unix.Statfs_t) error {
	return eintr.Retry(func() error { return unix.Statfs(p, st) })
}

// Path returns the directory of the group rel (relative to the root).
func (h Hierarchy) Path(rel string) string {
	return filepath.Join(h.Root, filepath.Clean("/"+rel))
}

// Controllers returns the controllers available to children of the group
// rel (its cgroup.controllers).
func (h Hierarchy) Controllers(rel string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(h.Path(rel), "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("read controllers of %s: %w", h.Path(rel), err)
	}
	return strings.Fields(string(b)), nil
}

// Create makes the group rel and its parents, enabling in each parent's
// cgroup.subtree_control the wanted controllers that are available there,
// so the leaf can take limits. It returns the wanted controllers that the
// leaf does not have.
func (h Hierarchy) Create(rel string, want []string) (missing []string, err error) {
	rel = strings.Trim(filepath.Clean("/"+rel), "/")
	if rel == "" {
		return nil, fmt.Errorf("create cgroup: empty name")
	}
	parts := strings.Split(rel, "/")
	cur := ""
	for _, p := range parts {
		parent := cur
		cur = filepath.Join(cur, p)
		if len(want) > 0 {
			h.enable(parent, want)
		}
		if err := os.Mkdir(h.Path(cur), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create cgroup %s: %w", h.Path(cur), err)
		}
	}
	if len(want) == 0 {
		// A stage's group (once per run) wants nothing: no file to read.
		return nil, nil
	}
	have, err := h.Controllers(rel)
	if err != nil {
		return nil, err
	}
	for _, w := range want {
		if !slices.Contains(have, w) {
			missing = append(missing, w)
		}
	}
	return missing, nil
}

// enable turns on the available wanted controllers for the children of
// rel. Failures leave the controller missing, which Create reports.
func (h Hierarchy) enable(rel string, want []string) {
	have, err := h.Controllers(rel)
	if err != nil {
		return
	}
	var add []string
	for _, w := range want {
		if slices.Contains(have, w) {
			add = append(add, "+"+w)
		}
	}
	if len(add) == 0 {
		return
	}
	_ = os.WriteFile(filepath.Join(h.Path(rel), "cgroup.subtree_control"), []byte(strings.Join(add, " ")), 0)
}

// Open opens the group's directory, for SysProcAttr.CgroupFD (clone3
// CLONE_INTO_CGROUP, Linux 5.7).
func (h Hierarchy) Open(rel string) (*os.File, error) {
	f, err := os.OpenFile(h.Path(rel), unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup: %w", err)
	}
	return f, nil
}

// Limits are the resource limits of one group; zero values are not set.
type Limits struct {
	MemoryHigh uint64
	MemoryMax  uint64
	CPUWeight  int
	PidsMax    int
}

// Wanted returns the controllers these limits need.
func (l Limits) Wanted() []string {
	var w []string
	if l.MemoryHigh > 0 || l.MemoryMax > 0 {
		w = append(w, "memory")
	}
	if l.CPUWeight > 0 {
		w = append(w, "cpu")
	}
	if l.PidsMax > 0 {
		w = append(w, "pids")
	}
	return w
}

// files returns the interface files and values the limits set.
func (l Limits) files() [][2]string {
	var f [][2]string
	if l.MemoryHigh > 0 {
		f = append(f, [2]string{"memory.high", strconv.FormatUint(l.MemoryHigh, 10)})
	}
	if l.MemoryMax > 0 {
		f = append(f, [2]string{"memory.max", strconv.FormatUint(l.MemoryMax, 10)})
	}
	if l.CPUWeight > 0 {
		f = append(f, [2]string{"cpu.weight", strconv.Itoa(l.CPUWeight)})
	}
	if l.PidsMax > 0 {
		f = append(f, [2]string{"pids.max", strconv.Itoa(l.PidsMax)})
	}
	return f
}

// SetLimits writes the limits whose interface file exists in the group. It
// returns the files that do not exist (their controller is not enabled
// here), and an error for a write that failed.
func (h Hierarchy) SetLimits(rel string, l Limits) (skipped []string, err error) {
	dir := h.Path(rel)
	for _, kv := range l.files() {
		p := filepath.Join(dir, kv[0])
		if _, serr := os.Stat(p); serr != nil {
			skipped = append(skipped, kv[0])
			continue
		}
		if werr := os.WriteFile(p, []byte(kv[1]), 0); werr != nil {
			return skipped, fmt.Errorf("set %s=%s: %w", p, kv[1], werr)
		}
	}
	return skipped, nil
}

// Procs returns the pids in the group and all its descendants.
func (h Hierarchy) Procs(rel string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(h.Path(rel), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV) {
				return nil
			}
			return err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if n, err := strconv.Atoi(sc.Text()); err == nil {
				pids = append(pids, n)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list processes of cgroup %s: %w", h.Path(rel), err)
	}
	return pids, nil
}

// Exists reports whether the group exists.
func (h Hierarchy) Exists(rel string) bool {
	fi, err := os.Stat(h.Path(rel))
	return err == nil && fi.IsDir()
}

// OOMKills returns the oom_kill count of the group's memory.events: how
// many of its processes (and its descendants') the kernel's OOM killer has
// killed. ok is false when the memory controller is not enabled there.
func (h Hierarchy) OOMKills(rel string) (n uint64, ok bool) {
	b, err := os.ReadFile(filepath.Join(h.Path(rel), "memory.events"))
	if err != nil {
		return 0, false
	}
	return parseEvent(string(b), "oom_kill")
}

// parseEvent reads one "key value" line of a cgroup events file.
func parseEvent(data, key string) (uint64, bool) {
	for _, l := range strings.Split(data, "\n") {
		k, v, found := strings.Cut(l, " ")
		if found && k == key {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// MemoryCurrent returns memory.current of the group, or false when the
// memory controller is not enabled there.
func (h Hierarchy) MemoryCurrent(rel string) (uint64, bool) {
	b, err := os.ReadFile(filepath.Join(h.Path(rel), "memory.current"))
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n, err == nil
}

// Kill kills every process of the group and its descendants and waits
// until they are gone: cgroup.kill where the kernel has it (5.14), else
// SIGKILL to every listed pid, repeated because a forking process can add
// pids while we kill. A group that does not exist is already empty.
func (h Hierarchy) Kill(ctx context.Context, rel string) error {
	if !h.Exists(rel) {
		return nil
	}
	killFile := filepath.Join(h.Path(rel), "cgroup.kill")
	useKill := true
	if _, err := os.Stat(killFile); err != nil {
		useKill = false
	}
	delay := time.Millisecond
	for {
		pids, err := h.Procs(rel)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if useKill {
			if err := os.WriteFile(killFile, []byte("1"), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("kill cgroup %s: %w", h.Path(rel), err)
			}
		} else {
			for _, p := range pids {
				_ = unix.Kill(p, unix.SIGKILL)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kill cgroup %s: %d processes left: %w", h.Path(rel), len(pids), ctx.Err())
		case <-time.After(delay):
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}

// RemoveIfEmpty removes the group unless processes are left in it.
// Usually it is an empty leaf: one rmdir(2), which the kernel refuses
// (EBUSY) while the group has processes or children, and only then the
// walk (Procs, Remove) that finds out which. Errors are ignored: a group
// left behind is collected later.
func (h Hierarchy) RemoveIfEmpty(rel string) {
	if unix.Rmdir(h.Path(rel)) == nil {
		return
	}
	if pids, err := h.Procs(rel); err == nil && len(pids) == 0 {
		_ = h.Remove(rel)
	}
}

// Remove removes the group and its descendants, deepest first, in the
// hierarchy and its mirrors. The groups must be empty (Kill first). A group
// that does not exist is not an error.
func (h Hierarchy) Remove(rel string) error {
	var errs []error
	for _, root := range append([]string{h.Root}, h.Mirrors...) {
		if err := removeTree(filepath.Join(root, filepath.Clean("/"+rel))); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func removeTree(dir string) error {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := rmdir(dirs[i]); err != nil {
			return err
		}
	}
	return nil
}

// rmdir removes an empty group. EBUSY right after the last process died
// is transient (the kernel frees the css asynchronously): retry briefly.
// This is a wait for the kernel, not a signal's interruption: it sleeps
// and gives up, where EINTR is retried at once.
func rmdir(p string) error {
	var err error
	for i := 0; i < 50; i++ {
		err = eintr.Retry(func() error { return unix.Rmdir(p) })
		if err == nil || err == unix.ENOENT {
			return nil
		}
		if err != unix.EBUSY {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", p, err)
}

// Children lists the names of the direct child groups of rel.
func (h Hierarchy) Children(rel string) ([]string, error) {
	ents, err := os.ReadDir(h.Path(rel))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list cgroup %s: %w", h.Path(rel), err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
