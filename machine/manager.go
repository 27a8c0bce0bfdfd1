package machine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/logx"
	"github.com/nspawn-runner/nspawn-runner/network"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
	"github.com/nspawn-runner/nspawn-runner/sys/ns"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// Images is what the manager needs of the image store (bootstrap.Store).
type Images interface {
	// Path returns the tree of an existing image; the error lists the
	// images that exist.
	Path(name string) (string, error)
	// Retired lists old image trees swapped out by maintenance.
	Retired() ([]string, error)
	// RemoveTree removes an image tree.
	RemoveTree(path string) error
}

// WorkspaceCleaner is an image store that gc asks to clear what killed
// creates and maintenances left (bootstrap.Store): Images that have it
// get it called.
type WorkspaceCleaner interface {
	// CleanWorkspaces clears the leftovers of images whose lock nobody
	// holds (held names one the caller holds; "" none).
	CleanWorkspaces(ctx context.Context, held string) error
}

// scriptsSize bounds the tmpfs holding a machine's stage scripts.
const scriptsSize = 64 << 20

// DefaultCgroupParent is the cgroup under which machines get their own.
const DefaultCgroupParent = config.DefaultCgroupParent

// Manager prepares, enters, stops and collects machines.
type Manager struct {
	// Root is the image root; per-machine storage goes in ROOT/.machines.
	Root string
	// RunDir holds the state records.
	RunDir string
	Config config.Machine
	Log    *slog.Logger
	Images Images
	// NamePrefix starts machine names (DefaultNamePrefix when empty).
	NamePrefix string
	// CgroupParent is the parent cgroup of machines, relative to the
	// cgroup2 root (DefaultCgroupParent when empty).
	CgroupParent string
	// Nspawn is the systemd-nspawn binary ("systemd-nspawn" when empty).
	Nspawn string
	// HostMemory is the host's RAM in bytes for percentage limits; 0
	// reads it from sysinfo(2).
	HostMemory uint64

	// destroyGrace overrides the package's destroyGrace (tests).
	destroyGrace time.Duration

	// Net attaches private machines; nil builds it from Config (state in
	// RUN_DIR/network).
	Net *network.Network

	once sync.Once
	cg   cgroup.Hierarchy
	cgOK error
}

// network returns the private network of machines.
func (m *Manager) network() (*network.Network, error) {
	if m.Net != nil {
		return m.Net, nil
	}
	s, err := network.FromConfig(m.Config)
	if err != nil {
		return nil, err
	}
	m.Net = &network.Network{Settings: s, StateDir: filepath.Join(m.RunDir, "network"), Log: m.log()}
	return m.Net, nil
}

// attachNetwork gives a private machine its network (nothing for the
// other modes).
func (m *Manager) attachNetwork(l Layout, rec *Record, in *PlanInput) error {
	in.Network = rec.Network
	if rec.Network != config.NetworkPrivate {
		return nil
	}
	n, err := m.network()
	if err != nil {
		return err
	}
	a, err := n.Attach(l.Name, l.RunDir)
	if err != nil {
		return fmt.Errorf("private network: %w", err)
	}
	rec.Address = a.Addr.String()
	in.NetNS, in.ResolvConf = a.Namespace, a.ResolvConf
	return nil
}

// detachNetwork removes what attachNetwork made (nothing to remove is
// fine).
func (m *Manager) detachNetwork(l Layout) error {
	n, err := m.network()
	if err != nil {
		return err
	}
	return n.Detach(l.Name, l.RunDir)
}

func (m *Manager) log() *slog.Logger {
	return logx.OrDiscard(m.Log)
}

func (m *Manager) cgroups() (cgroup.Hierarchy, error) {
	m.once.Do(func() { m.cg, m.cgOK = cgroup.Detect() })
	return m.cg, m.cgOK
}

func (m *Manager) parent() string {
	if m.CgroupParent != "" {
		return m.CgroupParent
	}
	return DefaultCgroupParent
}

// Name is the machine name of a job.
func (m *Manager) Name(jobID, key string) (string, error) {
	return Name(m.NamePrefix, jobID, key)
}

func (m *Manager) layout(name string) Layout {
	return LayoutOf(m.Root, m.RunDir, m.parent(), name)
}

// PrepareRequest asks for a job's machine.
type PrepareRequest struct {
	JobID string
	// Key tells this job from others with the same id (gitlab.Job.Key).
	Key   string
	Image string
	// Mode overrides the configured mode when not empty.
	Mode string
	// Binds are extra host -> machine bind mounts.
	Binds []Bind
	// Path and Env extend every stage's environment inside the machine.
	Path []string
	Env  []string
}

// Prepare starts the job's machine and returns its name once it is ready.
// A machine the job already had (a retried prepare) is removed first. On
// failure everything started is torn down.
func (m *Manager) Prepare(ctx context.Context, req PrepareRequest) (name string, err error) {
	name, err = m.Name(req.JobID, req.Key)
	if err != nil {
		return "", err
	}
	mode := req.Mode
	if mode == "" {
		mode = m.Config.Mode
	}
	if mode != config.ModeBoot && mode != config.ModeFast {
		return "", fmt.Errorf("prepare %s: unknown mode %q", name, mode)
	}
	imagePath, err := m.Images.Path(req.Image)
	if err != nil {
		return "", err
	}
	l := m.layout(name)
	lk, err := m.lockMachine(ctx, l, true)
	if err != nil {
		return "", fmt.Errorf("prepare %s: %w", name, err)
	}
	removed := false
	defer func() { lk.release(removed) }()
	if m.exists(l) {
		m.log().Info("removing what an earlier prepare of this job left", "machine", name)
		dctx, cancel := m.destroyContext(ctx)
		err := m.destroy(dctx, l)
		cancel()
		if err != nil {
			return "", fmt.Errorf("prepare %s: remove earlier machine: %w", name, err)
		}
	}
	defer func() {
		if err != nil {
			cctx, cancel := m.destroyContext(ctx)
			defer cancel()
			if cerr := m.destroy(cctx, l); cerr != nil {
				m.log().Error("tearing down the failed machine", "machine", name, "err", cerr)
			} else {
				removed = true
			}
		}
	}()
	if err := m.prepare(ctx, req, l, mode, imagePath); err != nil {
		return "", fmt.Errorf("prepare %s: %w", name, err)
	}
	return name, nil
}

func (m *Manager) prepare(ctx context.Context, req PrepareRequest, l Layout, mode, imagePath string) error {
	var st unix.Stat_t
	if err := unix.Stat(imagePath, &st); err != nil {
		return fmt.Errorf("stat image %s: %w", imagePath, err)
	}
	isSub, _ := btrfs.IsSubvolume(imagePath)
	storage, err := ChooseStorage(m.Config.Storage, isSub)
	if err != nil {
		return err
	}
	rec := &Record{
		Name: l.Name, JobID: req.JobID, State: StatePreparing, Mode: mode, Storage: storage,
		Image: req.Image, ImagePath: imagePath, ImageDev: uint64(st.Dev), ImageIno: st.Ino,
		RunDir: l.RunDir, Cgroup: l.Cgroup,
		// An empty mode (a Config not from config.Load) is host.
		Network: cmp.Or(m.Config.Network, config.NetworkHost),
		Path:    req.Path, Env: req.Env, Binds: req.Binds, Created: time.Now().UTC(),
	}
	if storage != StorageVolatile {
		rec.Tree, rec.MachineDir = l.Tree, l.MachineDir
	} else {
		rec.Tree = imagePath
	}
	// The record comes first: whatever exists later, cleanup and gc find
	// it by this name.
	if err := writeRecord(l.Record, rec); err != nil {
		return err
	}
	if err := os.MkdirAll(l.Scripts, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", l.Scripts, err)
	}
	// Stage scripts (which carry the job's secrets) go through a small
	// tmpfs of their own: never on disk, and written in microseconds
	// whatever filesystem the run directory is on.
	if _, err := mount.Tmpfs(l.Scripts, scriptsSize, 0o700); err != nil {
		return err
	}
	if err := m.makeStorage(l, storage, imagePath); err != nil {
		return err
	}
	prog, err := findNspawn(ctx, m.Nspawn, m.RunDir)
	if err != nil {
		return err
	}
	host := Host{NoBus: !nspawn.HasSystemd() || !nspawn.HasSystemBus(), NspawnVersion: prog.Version}
	h, cgErr := m.cgroups()
	cgFD := -1
	switch {
	case !host.NoBus:
		// systemd makes the machine's scope (with our limits as
		// properties); nspawn moves itself there.
	case cgErr == nil:
		f, err := m.makeCgroup(h, l)
		if err != nil {
			return err
		}
		defer f.Close()
		cgFD = int(f.Fd())
	default:
		m.log().Warn("no cgroup v2: machines share our cgroup and limits cannot be applied", "err", cgErr)
	}
	in := PlanInput{Layout: l, ImagePath: imagePath, Storage: storage, Mode: mode, Seccomp: m.Config.Seccomp, Binds: req.Binds, Host: host, Limits: m.limits()}
	if err := m.attachNetwork(l, rec, &in); err != nil {
		return err
	}
	spec, env := Plan(in)
	logf, err := os.OpenFile(l.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("open nspawn log: %w", err)
	}
	defer logf.Close()
	m.log().Debug("starting systemd-nspawn", "machine", l.Name, "args", nspawn.Args(spec))
	p, err := nspawn.Start(nspawn.StartOptions{Binary: prog.Path, Args: nspawn.Args(spec), Env: env, Log: logf, CgroupFD: cgFD, NotifyDir: m.RunDir})
	if err != nil {
		return err
	}
	defer p.Release()
	rec.NspawnPID = p.PID
	if s, err := ns.ReadStat(p.PID); err == nil {
		rec.NspawnStart = s.StartTime
	}
	if err := writeRecord(l.Record, rec); err != nil {
		return err
	}
	rctx, stop := m.readyContext(ctx, l.Log)
	defer stop()
	leader, err := p.WaitReady(rctx, mode == config.ModeBoot)
	if err != nil {
		// A host limit that ran out fails at once, naming the limit.
		return limitCause(rctx, err)
	}
	ls, err := ns.ReadStat(leader)
	if err != nil {
		return fmt.Errorf("machine leader: %w", err)
	}
	rec.LeaderPID, rec.LeaderStart, rec.State = leader, ls.StartTime, StateRunning
	if !host.NoBus {
		// systemd made the scope: find it from the leader.
		if cg := ownCgroup(leader); cg != "" {
			rec.Cgroup = cg
		}
	}
	if err := writeRecord(l.Record, rec); err != nil {
		return err
	}
	m.log().Info("machine ready", "machine", l.Name, "image", req.Image, "mode", mode, "storage", storage, "network", rec.Network, "address", rec.Address, "leader", leader)
	return nil
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

func (m *Manager) makeStorage(l Layout, storage, imagePath string) error {
	switch storage {
	case StorageBtrfs:
		if err := os.MkdirAll(l.MachineDir, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", l.MachineDir, err)
		}
		return btrfs.Snapshot(imagePath, l.Tree)
	case StorageOverlay:
		for _, d := range []string{l.Upper, l.Work, l.Tree} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", d, err)
			}
		}
		_, err := mount.Overlay(l.Tree, []string{imagePath}, l.Upper, l.Work)
		return err
	}
	return nil
}

func (m *Manager) makeCgroup(h cgroup.Hierarchy, l Layout) (*os.File, error) {
	lim := m.limits()
	missing, err := h.Create(l.Cgroup, lim.Wanted())
	if err != nil {
		return nil, err
	}
	skipped, err := h.SetLimits(l.Cgroup, lim)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 || len(skipped) > 0 {
		m.log().Warn("cgroup v2 controllers missing here: these limits cannot be applied", "controllers", missing, "limits", skipped)
	}
	return h.Open(l.Cgroup)
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

// exists reports whether anything of machine l is on disk.
func (m *Manager) exists(l Layout) bool {
	for _, p := range []string{l.Record, l.RunDir, l.MachineDir} {
		if _, err := os.Lstat(p); err == nil {
			return true
		}
	}
	return false
}

// lockMachine takes machine l's lock (see lock), creating the directory
// of lock files first: the run directory is a tmpfs, so after a reboot it
// is empty while ROOT/.machines still holds what machines left.
func (m *Manager) lockMachine(ctx context.Context, l Layout, wait bool) (*machineLock, error) {
	if err := os.MkdirAll(filepath.Dir(l.Lock), 0o700); err != nil {
		return nil, fmt.Errorf("lock %s: %w", l.Lock, err)
	}
	return lock(ctx, l.Lock, wait)
}

// Cleanup stops and removes the job's machine. It works from the name and
// removes whatever exists; nothing to remove is not an error. It uses its
// own time budget: a cancelled ctx still cleans up.
func (m *Manager) Cleanup(ctx context.Context, jobID, key string) error {
	name, err := m.Name(jobID, key)
	if err != nil {
		return err
	}
	return m.CleanupName(ctx, name)
}

// CleanupName is Cleanup by machine name.
func (m *Manager) CleanupName(ctx context.Context, name string) error {
	if err := nspawn.CheckMachineName(name); err != nil {
		return err
	}
	ctx, cancel := m.destroyContext(ctx)
	defer cancel()
	l := m.layout(name)
	if !m.exists(l) && !m.cgroupExists(l) {
		return nil
	}
	lk, err := m.lockMachine(ctx, l, true)
	if err != nil {
		return fmt.Errorf("cleanup %s: %w", name, err)
	}
	if err := m.destroy(ctx, l); err != nil {
		lk.release(false)
		return fmt.Errorf("cleanup %s: %w", name, err)
	}
	lk.release(true)
	return nil
}

func (m *Manager) cgroupExists(l Layout) bool {
	h, err := m.cgroups()
	return err == nil && h.Exists(l.Cgroup)
}

// destroyGrace is what destroy gets beyond the graceful stop timeout to
// kill what is left and remove the storage.
const destroyGrace = 60 * time.Second

// destroyContext is the time budget of one destroy: it outlives ctx (a
// cancelled job still releases its machine) but is bounded, so that a
// process that will not die (stuck in the kernel, frozen) ends the
// destroy with an error and gc retries later, instead of blocking the
// prepare, cleanup or gc forever.
func (m *Manager) destroyContext(ctx context.Context) (context.Context, context.CancelFunc) {
	grace := m.destroyGrace
	if grace == 0 {
		grace = destroyGrace
	}
	return context.WithTimeout(context.WithoutCancel(ctx), m.Config.StopTimeout.D()+grace)
}

// destroy stops machine l and removes everything of it but its lock file.
// The caller holds the lock.
func (m *Manager) destroy(ctx context.Context, l Layout) error {
	rec, err := readRecord(l.Record)
	if err != nil && !errors.Is(err, ErrNotFound) {
		m.log().Warn("unreadable record: removing by name", "machine", l.Name, "err", err)
	}
	if rec == nil {
		rec = &Record{Name: l.Name, Cgroup: l.Cgroup}
	}
	var errs []error
	// Only a machine that was fully up gets a graceful shutdown; one whose
	// prepare died or whose cleanup was interrupted is killed at once.
	graceful := rec.State == StateRunning
	if err == nil && rec.State != StateStopping {
		// From here on the machine is garbage even if we die: gc takes
		// it without waiting for --max-age.
		rec.State = StateStopping
		if err := writeRecord(l.Record, rec); err != nil {
			m.log().Warn("marking the machine as stopping", "machine", l.Name, "err", err)
		}
	}
	// 1. Graceful: SIGTERM to systemd-nspawn shuts a booted machine down
	// (systemd-nspawn(1): SIGTERM -> SIGRTMIN+3 to the container's init).
	if p, err := ns.Open(rec.NspawnPID, rec.NspawnStart); err == nil && graceful {
		if err := p.Signal(unix.SIGTERM); err == nil {
			sctx, cancel := context.WithTimeout(ctx, m.Config.StopTimeout.D())
			if err := p.Wait(sctx); err != nil {
				m.log().Warn("machine did not stop in time: killing it", "machine", l.Name, "timeout", m.Config.StopTimeout.D())
			}
			cancel()
		}
		p.Close()
	} else if err == nil {
		p.Close()
	}
	// 2. Kill whatever is left: the cgroup holds nspawn and the machine.
	cgs := []string{l.Cgroup}
	if rec.Cgroup != "" && rec.Cgroup != l.Cgroup {
		cgs = append(cgs, rec.Cgroup)
	}
	if h, err := m.cgroups(); err == nil {
		for _, cg := range cgs {
			if err := h.Kill(ctx, cg); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Without a cgroup (none, or a foreign scope), kill the leader and
	// nspawn by pidfd.
	for _, pp := range [][2]uint64{{uint64(rec.LeaderPID), rec.LeaderStart}, {uint64(rec.NspawnPID), rec.NspawnStart}} {
		if p, err := ns.Open(int(pp[0]), pp[1]); err == nil {
			_ = p.Signal(unix.SIGKILL)
			_ = p.Wait(ctx)
			p.Close()
		}
	}
	// The private network: veth, rules, namespace pin, address.
	if err := m.detachNetwork(l); err != nil {
		errs = append(errs, err)
	}
	// 3. Storage: unmount the overlay, delete the snapshot, remove dirs.
	if err := m.removeStorage(l); err != nil {
		errs = append(errs, err)
	}
	// systemd-nspawn's own mount propagation directory is left behind
	// when it is killed (and always where /run is not a tmpfs).
	prop := filepath.Join("/run/systemd/nspawn/propagate", l.Name)
	if err := mount.UnmountAll(prop); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(prop); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if h, err := m.cgroups(); err == nil {
		for _, cg := range cgs {
			if err := h.Remove(cg); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		// Keep the record: gc retries from it.
		return errors.Join(errs...)
	}
	if err := mount.UnmountAll(l.RunDir); err != nil {
		return err
	}
	if err := os.RemoveAll(l.RunDir); err != nil {
		return fmt.Errorf("remove %s: %w", l.RunDir, err)
	}
	if err := os.Remove(l.Record); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove record: %w", err)
	}
	m.log().Info("machine removed", "machine", l.Name)
	return nil
}

func (m *Manager) removeStorage(l Layout) error {
	if _, err := os.Lstat(l.MachineDir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	// systemd-nspawn locks the tree it runs in
	// /run/systemd/nspawn/locks/inode-DEV:INO and removes that file when it
	// exits; a killed one leaves it. The tree is ours alone, so its lock
	// file is too.
	var st unix.Stat_t
	lockFile := ""
	if unix.Stat(l.Tree, &st) == nil {
		lockFile = fmt.Sprintf("/run/systemd/nspawn/locks/inode-%d:%d", st.Dev, st.Ino)
	}
	if err := mount.UnmountAll(l.MachineDir); err != nil {
		return err
	}
	if lockFile != "" {
		_ = os.Remove(lockFile)
	}
	if ok, err := btrfs.IsSubvolume(l.Tree); err == nil && ok {
		if err := btrfs.Delete(l.Tree); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(l.MachineDir); err != nil {
		return fmt.Errorf("remove %s: %w", l.MachineDir, err)
	}
	return nil
}

// names lists every machine name that has anything in the run directory
// or the machines directory.
func (m *Manager) names() ([]string, error) {
	set := map[string]bool{}
	rd := filepath.Join(m.RunDir, "machines")
	ents, err := os.ReadDir(rd)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list %s: %w", rd, err)
	}
	for _, e := range ents {
		n := e.Name()
		n = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, ".tmp"), ".json"), ".lock")
		if nspawn.CheckMachineName(n) == nil {
			set[n] = true
		}
	}
	md := filepath.Join(m.Root, MachinesDirName)
	ents, err = os.ReadDir(md)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list %s: %w", md, err)
	}
	for _, e := range ents {
		if nspawn.CheckMachineName(e.Name()) == nil {
			set[e.Name()] = true
		}
	}
	var out []string
	for n := range set {
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}
