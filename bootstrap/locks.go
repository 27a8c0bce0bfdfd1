package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/sys/flock"
)

// Lock takes the exclusive lock of an image (ROOT/.lock/NAME, flock(2)), so
// that create, remove and maintenance of one image never overlap. It waits
// until the lock is free or ctx is done, logging that it waits. The lock is
// released by unlock, or by the kernel when the process dies: a SIGKILLed
// holder never leaves a stale lock.
func (s *Store) Lock(ctx context.Context, name string) (unlock func(), err error) {
	unlock, err = s.TryLock(name)
	if !errors.Is(err, flock.ErrBusy) {
		return unlock, err
	}
	p := filepath.Join(s.path(lockDir), name)
	s.log().Warn("waiting for another create, remove or maintenance of this image to finish", "image", name, "lock", p)
	l, err := flock.Wait(ctx, p, flock.Exclusive)
	if err != nil {
		return nil, fmt.Errorf("lock image %s: %w", name, err)
	}
	return func() { l.Unlock() }, nil
}

// TryLock takes the image lock of Lock without waiting: when another
// process (or another open of the lock in this process) holds it, the
// error wraps flock.ErrBusy.
func (s *Store) TryLock(name string) (unlock func(), err error) {
	if err := config.CheckImageName(name); err != nil {
		return nil, err
	}
	dir := s.path(lockDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock image %s: %w", name, err)
	}
	l, err := flock.Try(filepath.Join(dir, name), flock.Exclusive)
	if err != nil {
		return nil, fmt.Errorf("lock image %s: %w", name, err)
	}
	return func() { l.Unlock() }, nil
}
