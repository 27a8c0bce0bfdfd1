package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/flock"
)

// GCResult is what GC removed.
type GCResult struct {
	Machines []string
	Images   []string
	// Pooled are the machines it started to top warm pools up.
	Pooled []string
}

// GC removes everything of machines whose systemd-nspawn is gone (crash,
// reboot, SIGKILL at any point) and, with maxAge > 0, stops and removes
// machines older than that; then it removes retired image trees that no
// running machine uses. Machines being prepared or cleaned up (their lock
// is held) are left alone, so GC is safe while jobs run.
func (m *Manager) GC(ctx context.Context, maxAge time.Duration) (GCResult, error) {
	var res GCResult
	names, err := m.names()
	if err != nil {
		return res, err
	}
	var errs []error
	now := time.Now()
	for _, name := range names {
		l := m.layout(name)
		lk, err := m.lockMachine(ctx, l, false)
		if errors.Is(err, flock.ErrBusy) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rec, rerr := readRecord(l.Record)
		live := rerr == nil && rec.IsUp()
		if live && rec.Job != "" {
			// A service lives as long as its job's machine runs.
			jr, err := readRecord(m.layout(rec.Job).Record)
			live = err == nil && jr.IsRunning()
		}
		if live && !Expired(rec.Created, now, maxAge) {
			lk.release(false)
			continue
		}
		if live {
			m.log().Info("stopping a machine older than the maximum age", "machine", name, "age", now.Sub(rec.Created).Round(time.Second))
		} else {
			m.log().Info("removing what a machine that is gone left behind", "machine", name)
		}
		dctx, cancel := m.destroyContext(ctx)
		// A job's services go first (they use its network).
		err = m.destroyServices(dctx, name)
		if err == nil {
			err = m.destroy(dctx, l)
		}
		cancel()
		if err != nil {
			lk.release(false)
			errs = append(errs, fmt.Errorf("gc %s: %w", name, err))
			continue
		}
		lk.release(true)
		res.Machines = append(res.Machines, name)
	}
	// The warm pools: retire stale and excess pooled machines, remove the
	// pools of images that are gone or no longer configured, top the
	// others up. A running refill is waited for.
	if imgs, err := m.poolImages(); err != nil {
		errs = append(errs, err)
	} else {
		for _, img := range imgs {
			pr, err := m.FillPool(ctx, img, true)
			res.Machines = append(res.Machines, pr.Retired...)
			res.Pooled = append(res.Pooled, pr.Started...)
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	if h, err := m.cgroups(); err == nil {
		// Refills that ended leave their cgroup empty.
		h.RemoveIfEmpty(filepath.Join(m.parent(), refillCgroup))
	}
	// Private networks of machines that are gone (their state removed
	// by hand, or never recorded), then the bridge and tables once no
	// machine uses them.
	if n, err := m.network(); err != nil {
		errs = append(errs, err)
	} else if _, err := n.Reclaim(func(name string) bool { return m.exists(m.layout(name)) }); err != nil {
		errs = append(errs, fmt.Errorf("gc networks: %w", err))
	}
	if m.Images != nil {
		if c, ok := m.Images.(WorkspaceCleaner); ok {
			if err := c.CleanWorkspaces(ctx, ""); err != nil {
				errs = append(errs, fmt.Errorf("gc image workspaces: %w", err))
			}
		}
		removed, err := m.GCImages()
		res.Images = removed
		if err != nil {
			errs = append(errs, err)
		}
	}
	return res, errors.Join(errs...)
}

// GCImages removes retired image trees that no machine still uses as its
// lower layer. A machine being prepared counts as using its image.
func (m *Manager) GCImages() ([]string, error) {
	retired, err := m.Images.Retired()
	if err != nil || len(retired) == 0 {
		return nil, err
	}
	inUse := map[[2]uint64]bool{}
	names, err := m.names()
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		rec, err := readRecord(m.layout(n).Record)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			// Unknown: keep every retired tree this round.
			return nil, err
		}
		if rec.Storage == StorageBtrfs && (rec.State == StateRunning || rec.State == StatePooled) {
			// A snapshot does not use its image afterwards.
			continue
		}
		inUse[[2]uint64{rec.ImageDev, rec.ImageIno}] = true
	}
	var removed []string
	var errs []error
	for _, t := range retired {
		var st unix.Stat_t
		if err := unix.Stat(t, &st); err != nil {
			continue
		}
		if inUse[[2]uint64{uint64(st.Dev), st.Ino}] {
			continue
		}
		if err := m.Images.RemoveTree(t); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, t)
	}
	return removed, errors.Join(errs...)
}

// Status is one machine as ps shows it.
type Status struct {
	Name    string    `json:"name"`
	JobID   string    `json:"job_id"`
	Image   string    `json:"image"`
	Mode    string    `json:"mode"`
	Storage string    `json:"storage"`
	Created time.Time `json:"created"`
	Age     string    `json:"age"`
	// Memory is memory.current of the machine's cgroup, else the summed
	// RSS of its processes, in bytes.
	Memory uint64 `json:"memory"`
	// State is running, pooled (a machine of the warm pool, ready to be
	// claimed), preparing, claimed, stopping, or dead (systemd-nspawn is
	// gone, or its prepare or cleanup died: gc removes it).
	State     string `json:"state"`
	LeaderPID int    `json:"leader_pid,omitempty"`
	// Job is, for a service, its job's machine; Service its name in the
	// job and Aliases its host names.
	Job     string   `json:"job,omitempty"`
	Service string   `json:"service,omitempty"`
	Aliases []string `json:"aliases,omitempty"`
}

// List returns the machines of this run directory.
func (m *Manager) List(ctx context.Context) ([]Status, error) {
	names, err := m.names()
	if err != nil {
		return nil, err
	}
	var out []Status
	now := time.Now()
	for _, n := range names {
		rec, err := readRecord(m.layout(n).Record)
		if err != nil {
			out = append(out, Status{Name: n, State: StateDead})
			continue
		}
		s := Status{Name: n, JobID: rec.JobID, Image: rec.Image, Mode: rec.Mode, Storage: rec.Storage,
			Created: rec.Created, Age: now.Sub(rec.Created).Round(time.Second).String(), LeaderPID: rec.LeaderPID,
			Job: rec.Job, Service: rec.Service, Aliases: rec.Aliases}
		switch rec.State {
		case StateRunning, StatePooled:
			s.State = StateDead
			if rec.IsUp() {
				s.State = rec.State
			}
		default:
			// Preparing or stopping: true while a prepare or cleanup
			// holds the lock; left by one that died otherwise.
			s.State = rec.State
			if lk, err := lock(ctx, m.layout(n).Lock, false); err == nil {
				lk.release(false)
				s.State = StateDead
			}
		}
		s.Memory = m.memory(rec.Cgroup)
		out = append(out, s)
	}
	return out, nil
}

func (m *Manager) memory(cg string) uint64 {
	h, err := m.cgroups()
	if err != nil || cg == "" {
		return 0
	}
	if v, ok := h.MemoryCurrent(cg); ok {
		return v
	}
	pids, err := h.Procs(cg)
	if err != nil {
		return 0
	}
	var sum uint64
	for _, p := range pids {
		sum += rss(p)
	}
	return sum
}

// rss reads VmRSS of a process (proc(5)), in bytes.
func rss(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				n, _ := strconv.ParseUint(f[0], 10, 64)
				return n * 1024
			}
		}
	}
	return 0
}
