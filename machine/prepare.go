package machine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
	"github.com/nspawn-runner/nspawn-runner/sys/netns"
	"github.com/nspawn-runner/nspawn-runner/sys/ns"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// scriptsSize bounds the tmpfs holding a machine's stage scripts.
const scriptsSize = 64 << 20

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
	// Services are started beside the job's machine, on its network
	// (see services.go); ServiceEnv is the job's variables for their
	// commands; JobLog receives warnings about them (the job log) and,
	// with DebugServices, their output during prepare.
	Services      []Service
	ServiceEnv    []string
	JobLog        io.Writer
	DebugServices bool
}

// startOpts is one machine to start: the job's, or one of its services.
type startOpts struct {
	req             PrepareRequest
	l               Layout
	mode, imagePath string
	// Services only: the job machine's name, the service's name and
	// aliases, the job's network namespace and resolv.conf to join, and
	// the command run instead of sleep (fast mode) with its environment.
	job, service  string
	aliases       []string
	netns, resolv string
	command       []string
	env           []string
	// hosts, when not empty, is the machine's /etc/hosts.
	hosts string
	// netReady is called once the machine's network exists, before
	// systemd-nspawn starts (the job machine starts its services there).
	netReady func(netns, resolvConf string)
	// ready bounds the wait for the machine (else readyContext).
	ready context.Context
	// stayPreparing leaves the record preparing once the machine is up:
	// a job machine with services is running only when they are ready,
	// so that a prepare killed while it waits for them leaves garbage gc
	// recognises.
	stayPreparing bool
	// poolKey, set for a machine of the warm pool, is its configuration's
	// digest (poolKey); it is left pooled instead of running.
	poolKey string
}

// Prepared is the machine a prepare gave a job.
type Prepared struct {
	Name string
	// Pooled is the pooled machine the job claimed ("" for a fresh one).
	Pooled string
}

// Prepare starts the job's machine and returns its name once it is ready.
// A machine the job already had (a retried prepare) is removed first. On
// failure everything started is torn down.
func (m *Manager) Prepare(ctx context.Context, req PrepareRequest) (string, error) {
	p, err := m.PrepareJob(ctx, req)
	return p.Name, err
}

// PrepareJob is Prepare, saying whether the machine came from the warm
// pool: with machine.pool set for the image, a ready pooled machine is
// claimed and given the job's binds and name; when there is none, or
// taking it over fails, a fresh machine is started. Either way a
// detached refill tops the pool up again.
func (m *Manager) PrepareJob(ctx context.Context, req PrepareRequest) (res Prepared, err error) {
	name, err := m.Name(req.JobID, req.Key)
	if err != nil {
		return res, err
	}
	res.Name = name
	mode := req.Mode
	if mode == "" {
		mode = m.Config.Mode
	}
	if mode != config.ModeBoot && mode != config.ModeFast {
		return res, fmt.Errorf("prepare %s: unknown mode %q", name, mode)
	}
	imagePath, err := m.Images.Path(req.Image)
	if err != nil {
		return res, err
	}
	l := m.layout(name)
	lk, err := m.lockMachine(ctx, l, true)
	if err != nil {
		return res, fmt.Errorf("prepare %s: %w", name, err)
	}
	removed := false
	defer func() { lk.release(removed) }()
	if len(req.Services) > 0 && cmp.Or(m.Config.Network, config.NetworkHost) == config.NetworkNone {
		return res, fmt.Errorf("prepare %s: the job has services: but machine.network is none; services need private (or host)", name)
	}
	if len(req.Services) > MaxServices {
		return res, fmt.Errorf("prepare %s: %d services; at most %d", name, len(req.Services), MaxServices)
	}
	// Services of an earlier prepare of this job go first.
	if err := m.destroyServices(ctx, name); err != nil {
		return res, fmt.Errorf("prepare %s: remove earlier services: %w", name, err)
	}
	if m.exists(l) {
		m.log().Info("removing what an earlier prepare of this job left", "machine", name)
		dctx, cancel := m.destroyContext(ctx)
		err := m.destroy(dctx, l)
		cancel()
		if err != nil {
			return res, fmt.Errorf("prepare %s: remove earlier machine: %w", name, err)
		}
	}
	// A job with services starts fresh: its services join the network
	// namespace its machine gets before systemd-nspawn starts.
	if m.Config.Pool[req.Image] > 0 && len(req.Services) == 0 {
		// The refill starts as soon as a pooled machine is taken (it no
		// longer counts as ready), alongside the attach; with none taken,
		// at the end.
		refilling, wait := false, func() {}
		defer func() {
			if !refilling {
				m.startRefill(req.Image)
			}
			wait()
		}()
		taken := func() { refilling, wait = true, m.startRefillAsync(req.Image) }
		pooled, err := m.claim(ctx, req, l, mode, imagePath, taken)
		if err == nil {
			res.Pooled = pooled
			return res, nil
		}
		if !errors.Is(err, errPoolEmpty) {
			if m.exists(l) {
				// Its destroy failed too (logged): gc retries it.
				return res, fmt.Errorf("prepare %s: %w", name, err)
			}
			m.log().Warn("taking over a pooled machine failed: starting a fresh one", "machine", name, "err", err)
		}
	}
	var svc *serviceStart
	defer func() {
		if svc != nil {
			// Services hold their locks (gc leaves them alone) until
			// the job's machine is ready or gone.
			svc.wait()
			if err != nil {
				svc.abandon()
			}
			svc.release()
		}
		if err != nil {
			if cerr := m.destroyServices(ctx, name); cerr != nil {
				m.log().Error("tearing down the failed job's services", "machine", name, "err", cerr)
			}
			cctx, cancel := m.destroyContext(ctx)
			defer cancel()
			if cerr := m.destroy(cctx, l); cerr != nil {
				m.log().Error("tearing down the failed machine", "machine", name, "err", cerr)
			} else {
				removed = true
			}
		}
	}()
	o := startOpts{req: req, l: l, mode: mode, imagePath: imagePath}
	if len(req.Services) > 0 {
		o.hosts = hostsFile(req.Services)
		o.stayPreparing = true
		o.netReady = func(netns, resolv string) {
			svc = m.startServices(ctx, req, name, netns, resolv, o.hosts)
		}
	}
	if err := m.prepare(ctx, o); err != nil {
		return res, fmt.Errorf("prepare %s: %w", name, err)
	}
	if svc != nil {
		svc.wait()
		svc.report()
		rec, err := readRecord(l.Record)
		if err != nil {
			return res, fmt.Errorf("prepare %s: %w", name, err)
		}
		rec.State = StateRunning
		if err := writeRecord(l.Record, rec); err != nil {
			return res, fmt.Errorf("prepare %s: %w", name, err)
		}
	}
	return res, nil
}

// prepare starts machine o.l. With o.poolKey set it is a machine of the
// warm pool: recorded with that key and left pooled instead of running.
func (m *Manager) prepare(ctx context.Context, o startOpts) error {
	req, l, mode, imagePath := o.req, o.l, o.mode, o.imagePath
	var st unix.Stat_t
	if err := unix.Stat(imagePath, &st); err != nil {
		return fmt.Errorf("stat image %s: %w", imagePath, err)
	}
	// Not btrfs means overlay; any other error (EPERM, EIO) must not
	// silently make a subvolume an overlay's lower layer.
	isSub, err := btrfs.IsSubvolume(imagePath)
	if err != nil && !errors.Is(err, btrfs.ErrNotBtrfs) {
		return fmt.Errorf("image %s: %w", imagePath, err)
	}
	storage, err := ChooseStorage(m.Config.Storage, isSub)
	if err != nil {
		return err
	}
	if m.Config.PrivateUsers {
		if err := checkPrivateUsers(storage, imagePath); err != nil {
			return err
		}
	}
	rec := &Record{
		Name: l.Name, JobID: req.JobID, State: StatePreparing, Mode: mode, Storage: storage,
		Image: req.Image, ImagePath: imagePath, ImageDev: uint64(st.Dev), ImageIno: st.Ino,
		RunDir: l.RunDir, Cgroup: l.Cgroup,
		// An empty mode (a Config not from config.Load) is host.
		Network:      cmp.Or(m.Config.Network, config.NetworkHost),
		PrivateUsers: m.Config.PrivateUsers,
		Path:         req.Path, Env: req.Env, Binds: req.Binds, Created: time.Now().UTC(),
		Job: o.job, Service: o.service, Aliases: o.aliases, PoolKey: o.poolKey,
		DebugServices: o.job == "" && len(req.Services) > 0 && req.DebugServices,
		// What the run stages need of the configuration (package stage
		// reads no configuration file).
		Shell: m.Config.Shell, MemoryMax: m.limits().MemoryMax,
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
	if len(o.command) > 0 {
		if err := writeServiceEnv(l, o.env, m.Config.PrivateUsers); err != nil {
			return err
		}
	}
	if o.hosts != "" {
		if err := os.WriteFile(l.Hosts, []byte(o.hosts), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", l.Hosts, err)
		}
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
	in := PlanInput{Layout: l, ImagePath: imagePath, Storage: storage, Mode: mode, Seccomp: m.Config.Seccomp, Binds: req.Binds, Host: host, Limits: m.limits(), PrivateUsers: m.Config.PrivateUsers}
	if o.hosts != "" {
		in.Hosts = l.Hosts
	}
	if len(o.command) > 0 {
		in.Command = serviceCommand(o.command)
		in.ServiceEnv = l.ServiceEnv
	}
	if o.job != "" {
		// A service joins its job's network namespace (or the host's).
		in.Network = rec.Network
		if rec.Network == config.NetworkPrivate {
			in.NetNS, in.ResolvConf = o.netns, o.resolv
		}
	} else if err := m.attachNetwork(l, rec, &in); err != nil {
		return err
	}
	if o.netReady != nil {
		o.netReady(in.NetNS, in.ResolvConf)
	}
	spec, env := Plan(in)
	logf, err := os.OpenFile(l.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("open nspawn log: %w", err)
	}
	defer logf.Close()
	m.log().Debug("starting systemd-nspawn", "machine", l.Name, "args", nspawn.Args(spec))
	so := nspawn.StartOptions{Binary: prog.Path, Args: nspawn.Args(spec), Env: env, Log: logf, CgroupFD: cgFD, NotifyDir: m.RunDir}
	if StartsInNetNS(in) {
		nsf, err := netns.Open(in.NetNS)
		if err != nil {
			return fmt.Errorf("machine's network namespace: %w", err)
		}
		defer nsf.Close()
		// The child inherits the namespace of the thread that forks it.
		so.ForkIn = func(fork func() error) error { return netns.Do(nsf, fork) }
	}
	p, err := nspawn.Start(so)
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
	rctx, stop := m.readyContext(cmp.Or(o.ready, ctx), l.Log)
	defer stop()
	leader, err := p.WaitReady(rctx, mode == config.ModeBoot)
	if err != nil {
		// A host limit that ran out fails at once, naming the limit.
		return idmapCause(l.Log, l.Tree, limitCause(rctx, err))
	}
	ls, err := ns.ReadStat(leader)
	if err != nil {
		return fmt.Errorf("machine leader: %w", err)
	}
	rec.LeaderPID, rec.LeaderStart, rec.State = leader, ls.StartTime, StateRunning
	if rec.PrivateUsers {
		if rec.UIDShift, err = m.adoptRunFiles(l, leader); err != nil {
			return err
		}
	}
	if o.stayPreparing {
		rec.State = StatePreparing
	}
	if o.poolKey != "" {
		rec.State = StatePooled
	}
	if !host.NoBus {
		// systemd made the scope: find it from the leader.
		if cg := ownCgroup(leader); cg != "" {
			rec.Cgroup = cg
		}
	}
	if err := writeRecord(l.Record, rec); err != nil {
		return err
	}
	m.log().Info("machine ready", "machine", l.Name, "service", o.service, "image", req.Image, "mode", mode, "storage", storage, "network", rec.Network, "address", rec.Address, "leader", leader, "private_users", rec.PrivateUsers, "uid_shift", rec.UIDShift)
	return nil
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
