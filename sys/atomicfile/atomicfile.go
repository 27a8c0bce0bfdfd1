// Package atomicfile replaces files and trees atomically: readers (a
// textfile collector, sysctl --system, a machine starting from an image)
// see the old one or the new one, never half of one. Write replaces a
// file's contents; Rename is renameat2(2), whose RENAME_EXCHANGE swaps two
// trees in one step and RENAME_NOREPLACE never overwrites.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// Rename is renameat2(2) of from to to with flags (0, unix.RENAME_NOREPLACE
// or unix.RENAME_EXCHANGE; Linux 3.15, and on btrfs, ext4, xfs, tmpfs),
// retried when a signal interrupts it. The error is the bare errno, for
// callers to tell EEXIST (NOREPLACE) and ENOENT apart.
func Rename(from, to string, flags uint) error {
	return eintr.Retry(func() error { return unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, flags) })
}

// Write writes b to path through a temporary file in path's directory,
// with mode, synced to disk and renamed over path. On failure path is
// unchanged and the temporary file is removed.
func Write(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(b)
	err = errors.Join(werr, f.Chmod(mode), f.Sync(), f.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
