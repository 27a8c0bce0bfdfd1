package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// New creates a network namespace and pins it at path, a new empty file
// the namespace is bind-mounted on. Its only link is a loopback device,
// down. An existing path is an error (fs.ErrExist).
func New(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY|unix.O_CLOEXEC, 0o400)
	if err != nil {
		return fmt.Errorf("create netns file %s: %w", path, err)
	}
	f.Close()
	err = onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare CLONE_NEWNET: %w", err)
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s on %s: %w", self, path, err)
		}
		return nil
	})
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("new netns %s: %w", path, err)
	}
	return nil
}

// Open opens the network namespace pinned at path (or /proc/PID/ns/net)
// for setns(2), nftables.WithNetNSFd or netlink.NsFd. It checks the file
// is a network namespace: a path whose pin was unmounted is an empty file.
func Open(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || st.Type != unix.NSFS_MAGIC {
		f.Close()
		return nil, fmt.Errorf("open netns %s: %w", path, ErrNotNamespace)
	}
	return f, nil
}

// ErrNotNamespace: the path is not (or no longer) a namespace.
var ErrNotNamespace = errors.New("not a network namespace (no longer pinned?)")

// Pinned reports whether path holds a pinned namespace.
func Pinned(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// Remove unpins the namespace at path and removes the file. The namespace
// itself goes away when nothing else (a process, an open fd, another pin)
// holds it. A missing path is not an error.
func Remove(path string) error {
	err := eintr.Retry(func() error { return unix.Unmount(path, unix.MNT_DETACH) })
	// EINVAL: not a mount point (already unpinned); ENOENT: gone.
	if err != nil && err != unix.EINVAL && err != unix.ENOENT {
		return fmt.Errorf("unpin netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove netns file %s: %w", path, err)
	}
	return nil
}

// Do runs fn on an OS thread inside the network namespace ns (from Open),
// then returns the thread to its namespace. Sockets fn opens (a netlink
// handle, a listener) stay in ns after Do returns.
func Do(ns *os.File, fn func() error) error {
	return onThread(func() error {
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("setns into netns %s: %w", ns.Name(), err)
		}
		return fn()
	})
}

// onThread runs fn on a fresh locked OS thread and puts the thread back
// into its network namespace afterwards; if that fails the thread stays
// locked and the runtime discards it when the goroutine ends.
func onThread(fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.OpenFile(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), os.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer orig.Close()
		err = fn()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}
