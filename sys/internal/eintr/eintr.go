// Package eintr retries system calls that a signal interrupted (EINTR, see
// signal(7), "Interruption of system calls and library functions by signal
// handlers"). The Go runtime installs its handlers with SA_RESTART, but
// calls the kernel never restarts (those with a timeout, some ioctls, and
// any call on a filesystem such as FUSE or NFS that chooses to return
// EINTR) still return it, and the runtime's own preemption signals make
// that happen in practice. The one set of these helpers for sys/*.
package eintr

import (
	"errors"

	"golang.org/x/sys/unix"
)

// Retry calls f until it returns something other than EINTR.
func Retry(f func() error) error {
	for {
		if err := f(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Retry1 calls f until it returns something other than EINTR, and returns
// f's value with its error.
func Retry1[T any](f func() (T, error)) (T, error) {
	for {
		v, err := f()
		if !errors.Is(err, unix.EINTR) {
			return v, err
		}
	}
}
