package bootstrap

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
)

// mountsBelow returns the mount points at or below dir in this process's
// mount namespace (proc_pid_mountinfo(5), field 5), deepest first.
func mountsBelow(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	// Deepest first; a path mounted twice is listed twice and unmounted twice.
	slices.SortStableFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, \011, \012,
// \134) the kernel writes in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountBelow lazily unmounts everything mounted at or below dir, deepest
// first. EINVAL (not a mount point any more: a parent's detach took it)
// and ENOENT are not errors.
func unmountBelow(dir string) error {
	for range 8 {
		mps, err := mountsBelow(dir)
		if err != nil {
			return fmt.Errorf("read mounts: %w", err)
		}
		if len(mps) == 0 {
			return nil
		}
		for _, mp := range mps {
			if err := umount(mp); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("unmount %s: %w", mp, err)
			}
		}
	}
	return fmt.Errorf("unmount below %s: mounts keep reappearing", dir)
}

func umount(mp string) error {
	for {
		err := unix.Unmount(mp, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		if err != unix.EINTR {
			return err
		}
	}
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
		if ok, err := btrfs.IsSubvolume(path); err == nil && ok {
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
