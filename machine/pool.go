package machine

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/sys/flock"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
	"github.com/nspawn-runner/nspawn-runner/sys/ns"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// The warm pool (machine.pool): per image, booted machines that wait,
// recorded in StatePooled, for a prepare to claim one. A pooled machine is
// an ordinary machine started without a job (no binds, its own name
// PREFIX + "pool-" + 13 hex digits, which no job's name can be: those end
// in "-" and 12 hex digits). Claiming it (claim) renames its record, run
// directory, storage and network allocation to the job's machine name,
// attaches the job's binds and host name inside it, and marks it running;
// from then on run, cleanup and gc treat it as the job's machine. Its
// cgroup keeps the pooled name (cgroup v2 cannot rename): the record
// names it.
//
// Only a machine whose record has the job's configuration (PoolKey) and
// whose image tree is still the image's (dev and inode: maintenance swaps
// in a new tree) is claimed; FillPool retires the others. There is no
// resident daemon: a prepare that used (or found empty) a pool starts a
// detached `pool-fill` (RefillCommand), and gc tops pools up and trims
// them.

// poolInfix follows the name prefix in pooled machines' names.
const poolInfix = "pool-"

// errPoolEmpty: no pooled machine could be claimed.
var errPoolEmpty = errors.New("no ready pooled machine")

// prefix is the machine-name prefix.
func (m *Manager) prefix() string {
	if m.NamePrefix != "" {
		return m.NamePrefix
	}
	return DefaultNamePrefix
}

// newPoolName returns a fresh pooled machine name.
func (m *Manager) newPoolName() (string, error) {
	var b [7]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return nspawn.MachineName(m.prefix()+poolInfix, "", hex.EncodeToString(b[:])[:13])
}

// isPoolName reports whether name is a pooled machine's.
func (m *Manager) isPoolName(name string) bool {
	rest, ok := strings.CutPrefix(name, m.prefix()+poolInfix)
	if !ok || len(rest) != 13 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if c := rest[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// poolKey is the digest of everything a machine's start depends on
// besides its image and the job: the machine configuration (without the
// pool settings and what only later stages read), the mode and the
// cgroup parent. A change of any retires the pooled machines.
func (m *Manager) poolKey(mode string) string {
	c := m.Config
	c.Pool, c.PoolMaxAge, c.Shell, c.ReadyTimeout, c.StopTimeout = nil, 0, "", 0, 0
	b, _ := json.Marshal(struct {
		Config       config.Machine
		Mode, Parent string
	}{c, mode, m.parent()})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// poolLockPath is the lock a fill of image's pool holds.
func (m *Manager) poolLockPath(image string) string {
	return filepath.Join(m.RunDir, "pool", image+".lock")
}

// pooledRecords returns the records of pooled machines (any state); with
// image set, only that image's.
func (m *Manager) pooledRecords(image string) ([]*Record, error) {
	dir := filepath.Join(m.RunDir, "machines")
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	var out []*Record
	for _, e := range ents {
		n, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !m.isPoolName(n) {
			continue
		}
		rec, err := readRecord(filepath.Join(dir, e.Name()))
		if err != nil || rec.Name != n || (image != "" && rec.Image != image) {
			continue
		}
		out = append(out, rec)
	}
	return out, nil
}

// ready reports whether pooled machine rec may serve a job with this
// pool key on the image tree of st at now.
func (m *Manager) ready(rec *Record, key string, st *unix.Stat_t, now time.Time) bool {
	return rec.State == StatePooled && rec.PoolKey == key &&
		rec.ImageDev == uint64(st.Dev) && rec.ImageIno == st.Ino &&
		!Expired(rec.Created, now, m.Config.PoolMaxAge.D()) &&
		ns.Alive(rec.NspawnPID, rec.NspawnStart)
}

// claim takes over a ready pooled machine of req.Image as the job's
// machine l (whose lock the caller holds and of which nothing exists),
// calling taken once the pooled machine is the job's (before its attach).
// errPoolEmpty: none was ready. Any other error: one was taken but could
// not be given to the job; it is destroyed and nothing of l is left.
func (m *Manager) claim(ctx context.Context, req PrepareRequest, l Layout, mode, imagePath string, taken func()) (string, error) {
	t0 := time.Now()
	var st unix.Stat_t
	if err := unix.Stat(imagePath, &st); err != nil {
		return "", fmt.Errorf("stat image %s: %w", imagePath, err)
	}
	recs, err := m.pooledRecords(req.Image)
	if err != nil {
		return "", err
	}
	key, now := m.poolKey(mode), time.Now()
	// A random order: concurrent prepares mostly try different machines
	// first instead of queueing on the same lock.
	for i := len(recs) - 1; i > 0; i-- {
		j, _ := rand.Int(rand.Reader, big.NewInt(int64(i+1)))
		recs[i], recs[j.Int64()] = recs[j.Int64()], recs[i]
	}
	for _, r := range recs {
		if !m.ready(r, key, &st, now) {
			continue
		}
		pl := m.layout(r.Name)
		lk, err := m.lockMachine(ctx, pl, false)
		if err != nil {
			continue // another prepare (or gc) has it
		}
		// Read again under the lock: a prepare that held it before may
		// have claimed it meanwhile.
		rec, err := readRecord(pl.Record)
		if err != nil || !m.ready(rec, key, &st, now) {
			lk.release(false)
			continue
		}
		tLocked := time.Now()
		err = m.takeOver(rec, pl, l, req)
		if err != nil {
			// Nothing of it may serve anyone: destroy it under both
			// names (its parts may be under either).
			dctx, cancel := m.destroyContext(ctx)
			derr := errors.Join(m.destroy(dctx, l), m.destroy(dctx, pl))
			cancel()
			if derr != nil {
				m.log().Error("destroying a pooled machine whose takeover failed", "machine", l.Name, "pooled", pl.Name, "err", derr)
			}
			lk.release(derr == nil)
			return "", fmt.Errorf("claim pooled machine %s: %w", pl.Name, err)
		}
		lk.release(true)
		taken()
		tTaken := time.Now()
		if err := m.attach(ctx, l, req); err != nil {
			dctx, cancel := m.destroyContext(ctx)
			if derr := m.destroy(dctx, l); derr != nil {
				m.log().Error("destroying a pooled machine whose attach failed", "machine", l.Name, "pooled", pl.Name, "err", derr)
			}
			cancel()
			return "", fmt.Errorf("attach pooled machine %s: %w", pl.Name, err)
		}
		m.log().Info("claimed a pooled machine", "machine", l.Name, "pooled", pl.Name, "image", req.Image,
			"find", tLocked.Sub(t0), "take_over", tTaken.Sub(tLocked), "attach", time.Since(tTaken))
		return pl.Name, nil
	}
	return "", errPoolEmpty
}

// takeOver moves pooled machine rec (layout pl, locked) to the job's
// layout l, in an order that lets cleanup and gc remove everything after
// a crash at any step: the pooled record is marked claimed (no one else
// takes it; garbage once its lock is free), the job's record is written
// (naming the machine's processes and cgroup), then the network
// allocation, run directory and storage are renamed, and the pooled
// record goes. The job's record says preparing until attach is done.
func (m *Manager) takeOver(rec *Record, pl, l Layout, req PrepareRequest) error {
	rec.State = StateClaimed
	if err := writeRecord(pl.Record, rec); err != nil {
		return err
	}
	job := *rec
	job.Name, job.JobID, job.State, job.PoolKey = l.Name, req.JobID, StatePreparing, ""
	job.Machine = cmp.Or(rec.Machine, pl.Name)
	job.RunDir, job.Path, job.Env, job.Binds = l.RunDir, req.Path, req.Env, req.Binds
	// The shell is not part of the pool key: this prepare's configuration
	// says it.
	job.Shell, job.MemoryMax = m.Config.Shell, m.limits().MemoryMax
	// The job's age counts from its claim (gc --max-age).
	job.Created = time.Now().UTC()
	if rec.MachineDir != "" {
		job.Tree, job.MachineDir = l.Tree, l.MachineDir
	}
	if err := writeRecord(l.Record, &job); err != nil {
		return err
	}
	if rec.Network == config.NetworkPrivate {
		n, err := m.network()
		if err != nil {
			return err
		}
		if err := n.Rename(pl.Name, l.Name, l.RunDir); err != nil {
			return fmt.Errorf("private network: %w", err)
		}
	}
	if err := os.Rename(pl.RunDir, l.RunDir); err != nil {
		return fmt.Errorf("take over run directory: %w", err)
	}
	if rec.MachineDir != "" {
		if err := os.Rename(pl.MachineDir, l.MachineDir); err != nil {
			return fmt.Errorf("take over storage: %w", err)
		}
	}
	if err := os.Remove(pl.Record); err != nil {
		return fmt.Errorf("remove pooled record: %w", err)
	}
	return nil
}

// attach gives the claimed machine l the job's binds (detached clones of
// the host paths, moved into the machine's mount namespace, with their
// mount points made as systemd-nspawn makes them) and the host name a
// fresh machine would have, then marks it running.
func (m *Manager) attach(ctx context.Context, l Layout, req PrepareRequest) error {
	rec, err := readRecord(l.Record)
	if err != nil {
		return err
	}
	leader, err := ns.Open(rec.LeaderPID, rec.LeaderStart)
	if err != nil {
		return fmt.Errorf("machine leader: %w", err)
	}
	defer leader.Close()
	trees := make([]*mount.Tree, 0, len(req.Binds))
	defer func() {
		for _, t := range trees {
			t.Close()
		}
	}()
	for _, b := range req.Binds {
		if !filepath.IsAbs(b.Machine) {
			return fmt.Errorf("bind %s: the machine path %q is not absolute", b.Host, b.Machine)
		}
		t, err := mount.Clone(b.Host, b.ReadOnly)
		if err != nil {
			return err
		}
		trees = append(trees, t)
		if rec.PrivateUsers && !b.ReadOnly {
			// As systemd-nspawn's idmap bind option (plan.go): the
			// machine's root writes as the host's root.
			if err := idmapTree(t, leader); err != nil {
				return err
			}
		}
	}
	err = ns.Do(leader, unix.CLONE_NEWNS|unix.CLONE_NEWUTS, func() error {
		// This thread's root is the machine's: paths, symlinks
		// included, resolve inside it. The tree is the image's, never
		// touched by a job yet.
		for i, b := range req.Binds {
			if err := mountPoint(filepath.Clean(b.Machine), trees[i].Dir); err != nil {
				return err
			}
			if err := trees[i].MoveTo(b.Machine); err != nil {
				return err
			}
		}
		if m.attachFault != nil {
			return m.attachFault
		}
		// systemd-nspawn names the host after the machine, and a booted
		// machine's systemd then sets /etc/hostname's name when the image
		// has one: only the first is the pooled name, to be replaced by
		// what a fresh machine of this job would have had.
		var uts unix.Utsname
		if err := unix.Uname(&uts); err != nil {
			return fmt.Errorf("uname: %w", err)
		}
		if unix.ByteSliceToString(uts.Nodename[:]) != rec.Machine {
			return nil
		}
		return unix.Sethostname([]byte(l.Name))
	})
	if err != nil {
		return err
	}
	rec.State = StateRunning
	return writeRecord(l.Record, rec)
}

// idmapTree idmaps t with the user namespace of the pinned leader.
func idmapTree(t *mount.Tree, leader *ns.Proc) error {
	userns, err := os.Open("/proc/" + strconv.Itoa(leader.PID) + "/ns/user")
	if err != nil {
		return fmt.Errorf("machine user namespace: %w", err)
	}
	defer userns.Close()
	// Opened by pid: still the leader's if the leader still lives.
	if !leader.Alive() {
		return fmt.Errorf("machine leader %d: %w", leader.PID, ns.ErrGone)
	}
	return t.IDMap(userns)
}

// mountPoint makes path (and its parents) for a bind, a directory or an
// empty file, unless it exists.
func mountPoint(path string, dir bool) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("bind mount point: %w", err)
	}
	if dir {
		if err := os.Mkdir(path, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("bind mount point: %w", err)
		}
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return fmt.Errorf("bind mount point: %w", err)
	}
	return f.Close()
}

// PoolResult is what a fill of the pool did.
type PoolResult struct {
	// Started are the machines it added, Retired those it removed (stale,
	// too old, dead, or beyond the pool's size).
	Started, Retired []string
}

// fillParallel bounds the machines one fill starts at once: boots are CPU
// bound (about 5.7 per second on 2 cores).
const fillParallel = 4

// FillPool brings image's pool to its configured size: it removes pooled
// machines that are dead, stale (another image tree, configuration or a
// pool_max_age exceeded) or beyond the size, then starts new ones until
// the size is reached (again if prepares claimed some meanwhile). It
// holds the image's pool lock throughout; with wait false it returns at
// once when another fill holds it (that fill does the work).
func (m *Manager) FillPool(ctx context.Context, image string, wait bool) (PoolResult, error) {
	var res PoolResult
	if err := config.CheckImageName(image); err != nil {
		return res, err
	}
	p := m.poolLockPath(image)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return res, fmt.Errorf("pool lock: %w", err)
	}
	var lk *flock.Lock
	var err error
	if wait {
		lk, err = flock.Wait(ctx, p, flock.Exclusive)
	} else {
		lk, err = flock.Try(p, flock.Exclusive)
	}
	if errors.Is(err, flock.ErrBusy) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("pool %s: %w", image, err)
	}
	defer lk.Unlock()
	size := m.Config.Pool[image]
	imagePath, err := m.Images.Path(image)
	if err != nil {
		// The image is gone: so is its pool.
		size = 0
	}
	var st unix.Stat_t
	if size > 0 {
		if err := unix.Stat(imagePath, &st); err != nil {
			return res, fmt.Errorf("stat image %s: %w", imagePath, err)
		}
	}
	mode := cmp.Or(m.Config.Mode, config.ModeBoot)
	key := m.poolKey(mode)
	var errs []error
	for round := 0; round < 3; round++ {
		recs, err := m.pooledRecords(image)
		if err != nil {
			return res, err
		}
		// Newest first: the excess retired is the oldest.
		slices.SortFunc(recs, func(a, b *Record) int { return b.Created.Compare(a.Created) })
		ready := 0
		now := time.Now()
		for _, r := range recs {
			if size > 0 && ready < size && m.ready(r, key, &st, now) {
				ready++
				continue
			}
			if r.State == StatePreparing && r.PoolKey != "" && m.isLocked(r.Name) {
				continue // another fill's machine, still starting
			}
			if m.retire(ctx, r.Name) {
				res.Retired = append(res.Retired, r.Name)
			}
		}
		if ready >= size {
			break
		}
		started, err := m.startPooled(ctx, image, imagePath, mode, key, size-ready)
		res.Started = append(res.Started, started...)
		if err != nil {
			errs = append(errs, err)
			break
		}
	}
	return res, errors.Join(errs...)
}

// isLocked reports whether machine name's lock is held.
func (m *Manager) isLocked(name string) bool {
	lk, err := lock(context.Background(), m.layout(name).Lock, false)
	if err != nil {
		return errors.Is(err, flock.ErrBusy)
	}
	lk.release(false)
	return false
}

// retire destroys a pooled machine unless a prepare is claiming it.
func (m *Manager) retire(ctx context.Context, name string) bool {
	l := m.layout(name)
	lk, err := m.lockMachine(ctx, l, false)
	if err != nil {
		return false
	}
	rec, err := readRecord(l.Record)
	if err == nil && rec.State == StateRunning {
		// Not pooled (any more): not ours to retire.
		lk.release(false)
		return false
	}
	dctx, cancel := m.destroyContext(ctx)
	defer cancel()
	if err := m.destroy(dctx, l); err != nil {
		m.log().Warn("retiring a pooled machine", "machine", name, "err", err)
		lk.release(false)
		return false
	}
	lk.release(true)
	m.log().Info("retired a pooled machine", "machine", name)
	return true
}

// startPooled starts n pooled machines of image, fillParallel at a time.
func (m *Manager) startPooled(ctx context.Context, image, imagePath, mode, key string, n int) ([]string, error) {
	var mu sync.Mutex
	var started []string
	var errs []error
	sem := make(chan struct{}, fillParallel)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			name, err := m.startOnePooled(ctx, image, imagePath, mode, key)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			started = append(started, name)
		}()
	}
	wg.Wait()
	return started, errors.Join(errs...)
}

func (m *Manager) startOnePooled(ctx context.Context, image, imagePath, mode, key string) (string, error) {
	name, err := m.newPoolName()
	if err != nil {
		return "", err
	}
	l := m.layout(name)
	lk, err := m.lockMachine(ctx, l, true)
	if err != nil {
		return "", fmt.Errorf("pool %s: %w", name, err)
	}
	err = m.prepare(ctx, startOpts{req: PrepareRequest{Image: image}, l: l, mode: mode, imagePath: imagePath, poolKey: key})
	if err == nil {
		lk.release(false)
		m.log().Info("pooled machine ready", "machine", name, "image", image)
		return name, nil
	}
	dctx, cancel := m.destroyContext(ctx)
	defer cancel()
	derr := m.destroy(dctx, l)
	lk.release(derr == nil)
	return "", fmt.Errorf("pool %s: start %s: %w", image, name, errors.Join(err, derr))
}

// poolImages are the images that have a pool configured or pooled
// machines.
func (m *Manager) poolImages() ([]string, error) {
	set := map[string]bool{}
	for img, n := range m.Config.Pool {
		if n > 0 {
			set[img] = true
		}
	}
	recs, err := m.pooledRecords("")
	if err != nil {
		return nil, err
	}
	for _, r := range recs {
		if config.CheckImageName(r.Image) == nil {
			set[r.Image] = true
		}
	}
	out := make([]string, 0, len(set))
	for img := range set {
		out = append(out, img)
	}
	slices.Sort(out)
	return out, nil
}

// refillCgroup is the cgroup, below the machines' parent, of detached
// refills.
const refillCgroup = "pool-fill"

// startRefill starts RefillCommand IMAGE detached: in a session of its
// own (gitlab-runner's SIGTERM and SIGKILL to prepare's process group do
// not reach it), in a cgroup of its own (a service stop of the runner
// does not kill it halfway), with a clean environment (nothing of the
// job's) and its output appended to RUN_DIR/pool/IMAGE.log. The refill
// takes the image's pool lock without waiting, so at most one runs per
// image. Failures are logged: the job has its machine already.
func (m *Manager) startRefill(image string) {
	if len(m.RefillCommand) == 0 {
		return
	}
	t0 := time.Now()
	if err := m.spawnRefill(image); err != nil {
		m.log().Warn("starting the pool's refill (gc tops it up instead)", "image", image, "err", err)
		return
	}
	m.log().Debug("refill started", "image", image, "took", time.Since(t0))
}

// startRefillAsync is startRefill on another goroutine; wait waits for
// it (the refill process itself is never waited for).
func (m *Manager) startRefillAsync(image string) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.startRefill(image)
	}()
	return func() { <-done }
}

func (m *Manager) spawnRefill(image string) error {
	logPath := filepath.Join(m.RunDir, "pool", image+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	argv := append(slices.Clone(m.RefillCommand), image)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=" + cmp.Or(os.Getenv("PATH"), "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG=C.UTF-8"}
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if h, err := m.cgroups(); err == nil {
		rel := filepath.Join(m.parent(), refillCgroup)
		if _, err := h.Create(rel, nil); err == nil {
			if f, err := h.Open(rel); err == nil {
				defer f.Close()
				cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(f.Fd())
			}
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", argv[0], err)
	}
	return cmd.Process.Release()
}
