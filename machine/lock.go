package machine

import (
	"context"

	"github.com/nspawn-runner/nspawn-runner/sys/flock"
)

// machineLock is the exclusive flock of RUN_DIR/machines/NAME.lock.
// Prepare, cleanup and gc hold it while they change a machine; the kernel
// drops it when its holder dies, so a SIGKILLed prepare never blocks gc.
type machineLock struct{ l *flock.Lock }

// lock takes the lock, waiting until ctx ends; with wait false it fails at
// once, with an error wrapping flock.ErrBusy, when the lock is held.
func lock(ctx context.Context, path string, wait bool) (*machineLock, error) {
	var l *flock.Lock
	var err error
	if wait {
		l, err = flock.Wait(ctx, path, flock.Exclusive)
	} else {
		l, err = flock.Try(path, flock.Exclusive)
	}
	if err != nil {
		return nil, err
	}
	return &machineLock{l: l}, nil
}

// release drops the lock; with remove it first removes the lock file (the
// machine is gone), which waiters notice and start again.
func (m *machineLock) release(remove bool) {
	if remove {
		_ = m.l.Remove()
		return
	}
	_ = m.l.Unlock()
}
