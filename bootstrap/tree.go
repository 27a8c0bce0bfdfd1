package bootstrap

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
)

// unmountBelow detaches everything mounted at or below dir, deepest
// first (sys/mount.UnmountAll).
func unmountBelow(dir string) error {
	return mount.UnmountAll(dir)
}

// removeTree deletes a tree that has nothing mounted below it: as one
// subvolume when it is one, else its nested subvolumes first (rmdir cannot
// remove them) and the rest with RemoveAll.
func removeTree(path string) error {
	onBtrfs, err := btrfs.IsBtrfs(path)
	if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if onBtrfs {
		sub, err := isSubvolume(path)
		if err != nil {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		if sub {
			return btrfs.Delete(path)
		}
		subs, err := nestedSubvolumes(path)
		if err != nil {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		for _, sv := range subs {
			if err := btrfs.Delete(sv); err != nil {
				return fmt.Errorf("remove %s: %w", path, err)
			}
		}
	}
	if err := os.RemoveAll(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// isSubvolume reports whether path is a btrfs subvolume: false on other
// filesystems, an error when it cannot tell (an EPERM or EIO must not
// silently make a subvolume a directory).
func isSubvolume(path string) (bool, error) {
	ok, err := btrfs.IsSubvolume(path)
	if errors.Is(err, btrfs.ErrNotBtrfs) {
		return false, nil
	}
	return ok, err
}

// nestedSubvolumes returns the outermost subvolumes inside a directory tree
// on btrfs (btrfs.Delete takes care of those nested in them).
func nestedSubvolumes(root string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if p == root || !d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return nil
		}
		if isSubvolRoot(&st) {
			out = append(out, p)
			return fs.SkipDir
		}
		return nil
	})
	return out, err
}

// killInside SIGKILLs every process whose root or working directory lies
// in dir, or whose command line names it: what a killed debootstrap of an
// older version left running (its subshells, dpkg, chroot'ed maintainer
// scripts) would otherwise keep writing into a tree being removed. Errors
// are ignored: a process may exit while we look.
func killInside(dir string) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid <= 1 {
			continue
		}
		if processIn(e.Name(), dir) {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

func processIn(pid, dir string) bool {
	for _, l := range []string{"root", "cwd"} {
		t, err := os.Readlink(filepath.Join("/proc", pid, l))
		if err == nil && (t == dir || strings.HasPrefix(t, dir+"/")) {
			return true
		}
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
	if err != nil {
		return false
	}
	for _, arg := range strings.Split(string(cmdline), "\x00") {
		if arg == dir || strings.HasPrefix(arg, dir+"/") {
			return true
		}
	}
	return false
}
