package machine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
	"github.com/nspawn-runner/nspawn-runner/sys/ns"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

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
	// A job's services go with it (and first: they use its network).
	if err := m.destroyServices(ctx, name); err != nil {
		return fmt.Errorf("cleanup %s: services: %w", name, err)
	}
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
	prop := filepath.Join("/run/systemd/nspawn/propagate", cmp.Or(rec.Machine, l.Name))
	if err := mount.UnmountAll(prop); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(prop); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	// A private-users machine's systemd-nspawn that was killed leaves
	// the lock file of its uid range (the range itself is free once the
	// machine's processes are gone).
	if rec.UIDShift != 0 {
		if _, err := nspawn.ReleaseUIDRange(rec.UIDShift); err != nil {
			errs = append(errs, err)
		}
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
