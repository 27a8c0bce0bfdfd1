package eintr

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRetry(t *testing.T) {
	calls := 0
	err := Retry(func() error {
		calls++
		if calls < 3 {
			return unix.EINTR
		}
		return unix.EBADF
	})
	if !errors.Is(err, unix.EBADF) || calls != 3 {
		t.Errorf("Retry = %v after %d calls, want EBADF after 3", err, calls)
	}
}

func TestRetry1(t *testing.T) {
	calls := 0
	n, err := Retry1(func() (int, error) {
		calls++
		if calls < 2 {
			return -1, unix.EINTR
		}
		return 7, nil
	})
	if n != 7 || err != nil || calls != 2 {
		t.Errorf("Retry1 = %d, %v after %d calls, want 7, nil after 2", n, err, calls)
	}
}
