package machine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// errBusy is returned by tryLock when another process holds the lock.
var errBusy = errors.New("machine is busy")

// machineLock is an flock(2) on RUN_DIR/machines/NAME.lock. Prepare,
// cleanup and gc hold it while they change a machine; the kernel drops it
// when its holder dies, so a SIGKILLed prepare never blocks gc.
type machineLock struct {
	f    *os.File
	path string
}

// lock takes the lock, waiting until ctx ends; with wait false it returns
// errBusy at once when the lock is held.
func lock(ctx context.Context, path string, wait bool) (*machineLock, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		for {
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if err != unix.EWOULDBLOCK && err != unix.EINTR {
				break
			}
			if !wait {
				f.Close()
				return nil, errBusy
			}
			select {
			case <-ctx.Done():
				f.Close()
				return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		// The holder before us may have removed the file after we opened
		// it: then our lock is on an orphaned inode. Try again.
		var a, b unix.Stat_t
		if unix.Fstat(int(f.Fd()), &a) == nil && unix.Stat(path, &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev {
			return &machineLock{f: f, path: path}, nil
		}
		f.Close()
	}
}

// release drops the lock; with remove it first removes the lock file (the
// machine is gone).
func (l *machineLock) release(remove bool) {
	if remove {
		_ = os.Remove(l.path)
	}
	l.f.Close()
}
