package flock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain doubles as the lock holder of TestOtherProcess: with
// FLOCK_TEST_HOLD set, the test binary takes that lock, says "held" on
// stdout and keeps it until its stdin closes or it is killed.
func TestMain(m *testing.M) {
	if p := os.Getenv("FLOCK_TEST_HOLD"); p != "" {
		mode := Exclusive
		if os.Getenv("FLOCK_TEST_MODE") == "shared" {
			mode = Shared
		}
		l, err := Try(p, mode)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("held")
		_, _ = io.Copy(io.Discard, os.Stdin)
		l.Unlock()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func lockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "x.lock")
}

func mustTry(t *testing.T, p string, mode Mode) *Lock {
	t.Helper()
	l, err := Try(p, mode)
	if err != nil {
		t.Fatalf("Try(%s) = %v", p, err)
	}
	t.Cleanup(func() { l.Unlock() })
	return l
}

// Two opens of one file contend, even in one process: the matrix of modes.
func TestTryModes(t *testing.T) {
	for _, c := range []struct {
		first, second Mode
		busy          bool
	}{
		{Exclusive, Exclusive, true},
		{Exclusive, Shared, true},
		{Shared, Exclusive, true},
		{Shared, Shared, false},
	} {
		p := lockPath(t)
		mustTry(t, p, c.first)
		l, err := Try(p, c.second)
		if got := errors.Is(err, ErrBusy); got != c.busy {
			t.Errorf("Try(%v) while %v is held = %v, want busy %v", c.second, c.first, err, c.busy)
		}
		if err == nil {
			l.Unlock()
		}
	}
}

func TestTryBusyError(t *testing.T) {
	p := lockPath(t)
	mustTry(t, p, Exclusive)
	_, err := Try(p, Exclusive)
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Try of a held lock = %v, want ErrBusy", err)
	}
	if want := "lock " + p + ": busy: another process holds the lock"; err.Error() != want {
		t.Errorf("Try of a held lock = %q, want %q", err, want)
	}
}

func TestUnlockFrees(t *testing.T) {
	p := lockPath(t)
	a := mustTry(t, p, Exclusive)
	if err := a.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(); err != nil {
		t.Errorf("second Unlock = %v, want nil", err)
	}
	mustTry(t, p, Exclusive)
}

func TestWaitContext(t *testing.T) {
	p := lockPath(t)
	mustTry(t, p, Exclusive)
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("job cancelled")
	cancel(cause)
	if _, err := Wait(ctx, p, Exclusive); !errors.Is(err, cause) {
		t.Errorf("Wait on a held lock with a cancelled ctx = %v, want its cause", err)
	}
	dl, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := Wait(dl, p, Exclusive); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a held lock past the deadline = %v, want DeadlineExceeded", err)
	}
	// A free lock is taken even with a done ctx.
	q := lockPath(t)
	l, err := Wait(ctx, q, Exclusive)
	if err != nil {
		t.Fatalf("Wait on a free lock with a done ctx = %v", err)
	}
	l.Unlock()
}

func TestWaitGetsReleasedLock(t *testing.T) {
	p := lockPath(t)
	a := mustTry(t, p, Exclusive)
	got := waitAndRelease(p)
	a.Unlock()
	expectLock(t, got, "Unlock")
}

// waitAndRelease waits for the lock on p in the background, releases it
// at once, and sends Wait's error.
func waitAndRelease(p string) <-chan error {
	got := make(chan error, 1)
	go func() {
		l, err := Wait(context.Background(), p, Exclusive)
		if err == nil {
			l.Unlock()
		}
		got <- err
	}()
	return got
}

// expectLock fails unless the waiter of waitAndRelease got the lock after
// what released it.
func expectLock(t *testing.T, got <-chan error, after string) {
	t.Helper()
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("Wait after %s = %v", after, err)
		}
	case <-time.After(time.Minute):
		t.Fatalf("Wait still waiting a minute after %s", after)
	}
}

// holder starts this test binary holding the lock on p in another process
// and returns it once it holds the lock.
func holder(t *testing.T, p, mode string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FLOCK_TEST_HOLD="+p, "FLOCK_TEST_MODE="+mode)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "held\n" {
		t.Fatalf("lock holder said %q, %v", line, err)
	}
	return cmd
}

// Another process's lock makes Try busy, and its death (SIGKILL, no
// cleanup of its own) frees the lock for a waiter.
func TestOtherProcess(t *testing.T) {
	p := lockPath(t)
	cmd := holder(t, p, "exclusive")
	if _, err := Try(p, Shared); !errors.Is(err, ErrBusy) {
		t.Fatalf("Try while another process holds the lock = %v, want ErrBusy", err)
	}
	got := waitAndRelease(p)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	expectLock(t, got, "the holder was killed")
}

func TestSharedAcrossProcesses(t *testing.T) {
	p := lockPath(t)
	holder(t, p, "shared")
	mustTry(t, p, Shared)
	if _, err := Try(p, Exclusive); !errors.Is(err, ErrBusy) {
		t.Errorf("exclusive Try while two share the lock = %v, want ErrBusy", err)
	}
}

// A descriptor opened before its path was unlinked, or before another file
// was renamed over the path, locks an orphan: acquire refuses it, and Try
// and Wait then lock what the path names.
func TestOrphanedInode(t *testing.T) {
	for _, how := range []string{"unlink", "rename"} {
		t.Run(how, func(t *testing.T) {
			p := lockPath(t)
			f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			switch how {
			case "unlink":
				err = os.Remove(p)
			case "rename":
				other := p + ".new"
				if err = os.WriteFile(other, nil, 0o600); err == nil {
					err = os.Rename(other, p)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			l, err := acquire(f, p, Exclusive)
			if l != nil || err != nil {
				t.Fatalf("acquire of an orphaned inode = %v, %v; want nil, nil", l, err)
			}
			if _, err := f.Stat(); err == nil {
				t.Error("acquire left the orphan's descriptor open")
			}
			l = mustTry(t, p, Exclusive)
			checkNames(t, l)
		})
	}
}

// A waiter behind a holder that removes the lock file gets a lock on a
// file the path names, not on the removed one.
func TestWaitAfterRemove(t *testing.T) {
	p := lockPath(t)
	a := mustTry(t, p, Exclusive)
	got := make(chan *Lock, 1)
	go func() {
		l, err := Wait(context.Background(), p, Exclusive)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	if err := a.Remove(); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-got:
		if l == nil {
			return
		}
		checkNames(t, l)
		// And it excludes a newcomer.
		if _, err := Try(p, Exclusive); !errors.Is(err, ErrBusy) {
			t.Errorf("Try after the waiter took the fresh lock = %v, want ErrBusy", err)
		}
		l.Unlock()
	case <-time.After(time.Minute):
		t.Fatal("Wait still waiting a minute after Remove")
	}
}

func TestRemove(t *testing.T) {
	p := lockPath(t)
	a := mustTry(t, p, Exclusive)
	if err := a.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file after Remove: %v, want it gone", err)
	}
	if err := a.Remove(); err == nil {
		t.Error("Remove of a released lock = nil, want an error")
	}
}

func TestRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	p := filepath.Join(dir, "x.lock")
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	if l, err := Try(p, Exclusive); !errors.Is(err, unix.ELOOP) {
		t.Errorf("Try on a symlink = %v, %v; want ELOOP", l, err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Try created the symlink's target: %v", err)
	}
}

// checkNames fails unless l's path names the inode l holds.
func checkNames(t *testing.T, l *Lock) {
	t.Helper()
	var held, named unix.Stat_t
	if err := unix.Fstat(int(l.f.Fd()), &held); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(l.Path(), &named); err != nil {
		t.Fatalf("lock file of a held lock: %v", err)
	}
	if held.Ino != named.Ino || held.Dev != named.Dev {
		t.Errorf("the lock holds inode %d, its path names %d", held.Ino, named.Ino)
	}
}
