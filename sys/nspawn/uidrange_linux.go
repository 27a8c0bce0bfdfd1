package nspawn

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// UIDLockDir is where systemd-nspawn --private-users=pick keeps one lock
// file per uid range it picked, named after the range's first uid, with
// an open file description lock held while the machine runs (systemd
// 252, src/nspawn/nspawn.c and lockfile-util.c). A systemd-nspawn that is
// killed leaves its file behind.
const UIDLockDir = "/run/systemd/nspawn-uid"

// ReleaseUIDRange removes the lock file of the range starting at shift
// when no systemd-nspawn holds it, as systemd-nspawn itself does when it
// exits: lock it, check that the path still names the file locked, and
// unlink it while holding the lock (a systemd-nspawn that opened it
// meanwhile sees it unlinked once it gets the lock, and makes a new one).
// It reports whether it removed the file; a held or missing one is no
// error.
func ReleaseUIDRange(shift uint32) (bool, error) {
	return releaseUIDRange(UIDLockDir, shift)
}

func releaseUIDRange(dir string, shift uint32) (bool, error) {
	p := filepath.Join(dir, strconv.FormatUint(uint64(shift), 10))
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("open %s: %w", p, err)
	}
	defer unix.Close(fd)
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return false, nil
		}
		return false, fmt.Errorf("lock %s: %w", p, err)
	}
	var locked, named unix.Stat_t
	if err := unix.Fstat(fd, &locked); err != nil {
		return false, fmt.Errorf("stat %s: %w", p, err)
	}
	if err := unix.Lstat(p, &named); err != nil || named.Ino != locked.Ino || named.Dev != locked.Dev || locked.Nlink == 0 {
		// Released (and perhaps made again) in between: not ours to remove.
		return false, nil
	}
	if err := unix.Unlink(p); err != nil && !errors.Is(err, unix.ENOENT) {
		return false, fmt.Errorf("remove %s: %w", p, err)
	}
	return true, nil
}
