package flock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// Mode says whether a lock excludes every other holder or only exclusive
// ones.
type Mode int

const (
	// Exclusive (LOCK_EX) excludes every other holder.
	Exclusive Mode = iota
	// Shared (LOCK_SH) may be held by many at once, never together with
	// an exclusive one.
	Shared
)

func (m Mode) how() int {
	if m == Shared {
		return unix.LOCK_SH
	}
	return unix.LOCK_EX
}

// ErrBusy is what Try returns when another open file description holds a
// conflicting lock.
var ErrBusy = errors.New("busy: another process holds the lock")

// Wait backs off between these bounds while the lock is held elsewhere.
const (
	minPoll = 2 * time.Millisecond
	maxPoll = 100 * time.Millisecond
)

// Lock is a held lock. Its zero value is not usable.
type Lock struct {
	f    *os.File
	path string
}

// Try takes the lock on path (a file, created with mode 0600 when missing;
// a symlink is refused) without waiting: when another holder has it, the
// error wraps ErrBusy.
func Try(path string, mode Mode) (*Lock, error) {
	for {
		l, err := attempt(path, mode)
		if l != nil || err != nil {
			return l, err
		}
	}
}

// Wait takes the lock on path like Try, waiting while another holder has
// it, until ctx is done; the error then wraps context.Cause(ctx). A free
// lock is taken even when ctx is already done.
func Wait(ctx context.Context, path string, mode Mode) (*Lock, error) {
	poll := minPoll
	for {
		l, err := attempt(path, mode)
		if l != nil {
			return l, nil
		}
		if err != nil && !errors.Is(err, ErrBusy) {
			return nil, err
		}
		if err == nil {
			// The lock was on an orphaned inode: try again at once.
			continue
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("lock %s: %w", path, context.Cause(ctx))
		case <-t.C:
		}
		poll = min(2*poll, maxPoll)
	}
}

// attempt opens path and takes the lock without waiting. It returns nil,
// nil when it got the lock on an inode that path no longer names (see the
// package documentation): the caller starts again.
func attempt(path string, mode Mode) (*Lock, error) {
	fd, err := eintr.Retry1(func() (int, error) {
		return unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	})
	if err != nil {
		return nil, fmt.Errorf("lock %s: open: %w", path, err)
	}
	return acquire(os.NewFile(uintptr(fd), path), path, mode)
}

// acquire locks f, opened from path, without waiting, and checks that path
// still names f's inode: when it does not, it returns nil, nil. It closes
// f unless it returns a Lock.
func acquire(f *os.File, path string, mode Mode) (*Lock, error) {
	fd := int(f.Fd())
	err := eintr.Retry(func() error { return unix.Flock(fd, mode.how()|unix.LOCK_NB) })
	if errors.Is(err, unix.EWOULDBLOCK) {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, ErrBusy)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: flock: %w", path, err)
	}
	var held, named unix.Stat_t
	if err := unix.Fstat(fd, &held); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: fstat: %w", path, err)
	}
	err = unix.Lstat(path, &named)
	if errors.Is(err, unix.ENOENT) || err == nil && (named.Ino != held.Ino || named.Dev != held.Dev) {
		f.Close()
		return nil, nil
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: lstat: %w", path, err)
	}
	return &Lock{f: f, path: path}, nil
}

// Path is the lock file.
func (l *Lock) Path() string { return l.path }

// Unlock releases the lock (closing its descriptor). Unlocking twice is
// fine.
func (l *Lock) Unlock() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("unlock %s: %w", l.path, err)
	}
	return nil
}

// Remove removes the lock file while still holding the lock, then
// releases it: for when the lock's subject is gone. Waiters that opened
// the file before find it orphaned and start again on a fresh one.
func (l *Lock) Remove() error {
	if l.f == nil {
		return fmt.Errorf("remove lock %s: not held", l.path)
	}
	var err error
	if e := unix.Unlink(l.path); e != nil && !errors.Is(e, unix.ENOENT) {
		err = fmt.Errorf("remove lock %s: %w", l.path, e)
	}
	return errors.Join(err, l.Unlock())
}

func (m Mode) String() string {
	if m == Shared {
		return "shared"
	}
	return "exclusive"
}
