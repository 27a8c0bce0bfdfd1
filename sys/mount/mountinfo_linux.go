package mount

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// Mountinfo returns the mounts of the calling thread's mount namespace,
// from /proc/thread-self/mountinfo (Linux 3.17). Not /proc/self: that is
// the main thread's view, and a process that entered a machine from a
// locked thread (which the Go runtime may have placed on the main thread,
// then parked there for good) would see the machine's mounts instead of
// its own.
func Mountinfo() ([]Info, error) {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseMountinfo(f)
}

// IsMountPoint reports whether path (symlinks followed) is the root of a
// mount, including a bind mount of a directory of the same filesystem,
// which comparing st_dev with the parent cannot see.
func IsMountPoint(path string) (bool, error) {
	var stx unix.Statx_t
	if err := eintr.Retry(func() error { return unix.Statx(unix.AT_FDCWD, path, 0, unix.STATX_TYPE, &stx) }); err != nil {
		return false, fmt.Errorf("is mount point %s: %w", path, &os.PathError{Op: "statx", Path: path, Err: err})
	}
	// STATX_ATTR_MOUNT_ROOT exists since Linux 5.8; older kernels leave it
	// out of the mask and mountinfo decides.
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return false, fmt.Errorf("is mount point %s: %w", path, err)
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return false, fmt.Errorf("is mount point %s: %w", path, err)
	}
	infos, err := Mountinfo()
	if err != nil {
		return false, fmt.Errorf("is mount point %s: %w", path, err)
	}
	for _, in := range infos {
		if in.Mountpoint == real {
			return true, nil
		}
	}
	return false, nil
}
