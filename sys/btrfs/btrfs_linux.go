package btrfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	cbtrfs "github.com/containerd/btrfs/v2"
	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// ErrNotBtrfs is returned when a path is not on a btrfs filesystem.
var ErrNotBtrfs = errors.New("not on a btrfs filesystem")

// ErrNotSubvolume is returned when a path on btrfs is not a subvolume root.
var ErrNotSubvolume = errors.New("not a btrfs subvolume")

// btrfsFirstFreeObjectID is BTRFS_FIRST_FREE_OBJECTID: the inode number of
// every subvolume's root directory (linux/include/uapi/linux/btrfs_tree.h).
const btrfsFirstFreeObjectID = 256

// subvolReadOnly is BTRFS_SUBVOL_RDONLY (linux/include/uapi/linux/btrfs.h).
const subvolReadOnly = 1 << 1

// ioctl numbers from linux/include/uapi/linux/btrfs.h:
// _IOR(BTRFS_IOCTL_MAGIC, 25, __u64) and _IOW(BTRFS_IOCTL_MAGIC, 26, __u64).
const (
	iocSubvolGetFlags = 0x80089419
	iocSubvolSetFlags = 0x4008941a
	// BTRFS_IOC_WAIT_SYNC: _IOW(BTRFS_IOCTL_MAGIC, 22, __u64)
	iocWaitSync = 0x40089416
	// BTRFS_IOC_START_SYNC: _IOR(BTRFS_IOCTL_MAGIC, 24, __u64)
	iocStartSync = 0x80089418
)

// IsBtrfs reports whether path lies on a btrfs filesystem.
func IsBtrfs(path string) (bool, error) {
	var st unix.Statfs_t
	if err := statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BTRFS_SUPER_MAGIC, nil
}

func statfs(path string, st *unix.Statfs_t) error {
	return eintr.Retry(func() error { return unix.Statfs(path, st) })
}

// IsSubvolume reports whether path is the root of a btrfs subvolume. It
// returns ErrNotBtrfs when path is not on btrfs at all.
func IsSubvolume(path string) (bool, error) {
	ok, err := IsBtrfs(path)
	if err != nil {
		return false, err
	}
	if !ok {
		return false, fmt.Errorf("%s: %w", path, ErrNotBtrfs)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Ino == btrfsFirstFreeObjectID, nil
}

// Create makes a new empty subvolume at path.
func Create(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("create subvolume %s: %w", path, err)
	}
	// containerd/btrfs splits the path and opens the parent: a bare
	// relative name would leave it an empty directory name.
	if err := cbtrfs.SubvolCreate(abs); err != nil {
		return fmt.Errorf("create subvolume %s: %w", path, err)
	}
	return nil
}

// SnapshotOption changes how Snapshot works.
type SnapshotOption int

const (
	// ReadOnly makes the snapshot read-only.
	ReadOnly SnapshotOption = 1 << iota
)

// Snapshot makes dst a snapshot of the subvolume src. Nested subvolumes
// of src appear as empty directories in dst, as in btrfs-subvolume(8).
func Snapshot(src, dst string, opts ...SnapshotOption) error {
	ro := false
	for _, o := range opts {
		if o&ReadOnly != 0 {
			ro = true
		}
	}
	if ok, err := IsSubvolume(src); err != nil {
		return fmt.Errorf("snapshot %s -> %s: %w", src, dst, err)
	} else if !ok {
		return fmt.Errorf("snapshot %s -> %s: %s: %w", src, dst, src, ErrNotSubvolume)
	}
	absDst, err := filepath.Abs(dst)
	if err != nil {
		return fmt.Errorf("snapshot %s -> %s: %w", src, dst, err)
	}
	if err := cbtrfs.SubvolSnapshot(absDst, filepath.Clean(src), ro); err != nil {
		return fmt.Errorf("snapshot %s -> %s: %w", src, dst, err)
	}
	return nil
}

// DeleteOption changes how Delete works.
type DeleteOption int

const (
	// WaitCommit makes Delete wait until the deletion is committed to disk,
	// like `btrfs subvolume delete --commit-after`.
	WaitCommit DeleteOption = 1 << iota
)

// Delete removes the subvolume at path and every subvolume nested in it,
// deepest first. A path that does not exist is not an error; a directory
// that is not a subvolume is ErrNotSubvolume.
//
// It tries BTRFS_IOC_SNAP_DESTROY at once; only when the kernel refuses
// with ENOTEMPTY (the subvolume has nested subvolumes, may_destroy_subvol()
// in fs/btrfs/inode.c) does it walk the directories to find them. The
// parents of nested subvolumes, read-only ones included, are made writable
// first, because removing an entry from a read-only subvolume fails.
func Delete(path string, opts ...DeleteOption) error {
	path, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("delete subvolume %s: %w", path, err)
	}
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	ok, err := IsSubvolume(path)
	if err != nil {
		return fmt.Errorf("delete subvolume %s: %w", path, err)
	}
	if !ok {
		return fmt.Errorf("delete subvolume %s: %w", path, ErrNotSubvolume)
	}
	if err := deleteTree(path); err != nil {
		return fmt.Errorf("delete subvolume %s: %w", path, err)
	}
	for _, o := range opts {
		if o&WaitCommit != 0 {
			if err := Sync(filepath.Dir(path)); err != nil {
				return fmt.Errorf("delete subvolume %s: %w", path, err)
			}
		}
	}
	return nil
}

func deleteTree(path string) error {
	err := destroy(path)
	if err != unix.ENOTEMPTY {
		return err
	}
	if ro, err := IsReadOnly(path); err != nil {
		return err
	} else if ro {
		if err := SetReadOnly(path, false); err != nil {
			return err
		}
	}
	nested, err := nestedSubvolumes(path)
	if err != nil {
		return err
	}
	for _, n := range nested {
		if err := deleteTree(n); err != nil {
			return err
		}
	}
	if err := destroy(path); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// btrfsIoctlVolArgs mirrors struct btrfs_ioctl_vol_args
// (linux/include/uapi/linux/btrfs.h): __s64 fd; char name[BTRFS_PATH_NAME_MAX + 1].
type btrfsIoctlVolArgs struct {
	fd   int64
	name [4088]byte
}

// iocSnapDestroy is BTRFS_IOC_SNAP_DESTROY: _IOW(BTRFS_IOCTL_MAGIC, 15, struct btrfs_ioctl_vol_args).
const iocSnapDestroy = 0x5000940f

// destroy deletes the one subvolume at path (an absolute, clean path); the
// kernel fails with ENOTEMPTY if it holds nested subvolumes.
func destroy(path string) error {
	dir, name := filepath.Split(path)
	var args btrfsIoctlVolArgs
	if len(name) == 0 || len(name) >= len(args.name) {
		return fmt.Errorf("subvolume name %q: %w", name, unix.EINVAL)
	}
	copy(args.name[:], name)
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return ioctl(f.Fd(), iocSnapDestroy, uintptr(unsafe.Pointer(&args)))
}

// nestedSubvolumes returns the subvolumes nested directly in the subvolume
// at root: directories with the subvolume root inode number, not descending
// into them. Only directories are looked at (d_type from getdents), so a
// tree of many files costs little.
func nestedSubvolumes(root string) ([]string, error) {
	var out []string
	var walk func(dir string) error
	walk = func(dir string) error {
		f, err := os.Open(dir)
		if err != nil {
			return err
		}
		ents, err := f.ReadDir(-1)
		f.Close()
		if err != nil {
			return err
		}
		for _, e := range ents {
			if !e.IsDir() {
				continue
			}
			p := filepath.Join(dir, e.Name())
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				return fmt.Errorf("stat %s: %w", p, err)
			}
			if st.Ino == btrfsFirstFreeObjectID {
				out = append(out, p)
				continue
			}
			if err := walk(p); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(root); err != nil {
		return nil, fmt.Errorf("find nested subvolumes of %s: %w", root, err)
	}
	return out, nil
}

// Sync starts a transaction commit on the filesystem holding path and waits
// for it (BTRFS_IOC_START_SYNC + BTRFS_IOC_WAIT_SYNC).
func Sync(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	defer f.Close()
	var transid uint64
	if err := ioctl(f.Fd(), iocStartSync, uintptr(unsafe.Pointer(&transid))); err != nil {
		return fmt.Errorf("sync %s: start: %w", path, err)
	}
	if err := ioctl(f.Fd(), iocWaitSync, uintptr(unsafe.Pointer(&transid))); err != nil {
		return fmt.Errorf("sync %s: wait: %w", path, err)
	}
	return nil
}

// IsReadOnly reports whether the subvolume at path is read-only.
func IsReadOnly(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("get subvolume flags %s: %w", path, err)
	}
	defer f.Close()
	var flags uint64
	if err := ioctl(f.Fd(), iocSubvolGetFlags, uintptr(unsafe.Pointer(&flags))); err != nil {
		return false, fmt.Errorf("get subvolume flags %s: %w", path, err)
	}
	return flags&subvolReadOnly != 0, nil
}

// SetReadOnly sets or clears the read-only flag of the subvolume at path.
func SetReadOnly(path string, ro bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("set subvolume flags %s: %w", path, err)
	}
	defer f.Close()
	var flags uint64
	if err := ioctl(f.Fd(), iocSubvolGetFlags, uintptr(unsafe.Pointer(&flags))); err != nil {
		return fmt.Errorf("set subvolume flags %s: %w", path, err)
	}
	if ro {
		flags |= subvolReadOnly
	} else {
		flags &^= subvolReadOnly
	}
	if err := ioctl(f.Fd(), iocSubvolSetFlags, uintptr(unsafe.Pointer(&flags))); err != nil {
		return fmt.Errorf("set subvolume flags %s: %w", path, err)
	}
	return nil
}

func ioctl(fd, req, arg uintptr) error {
	return eintr.Retry(func() error {
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, req, arg); errno != 0 {
			return errno
		}
		return nil
	})
}
