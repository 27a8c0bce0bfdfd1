package mount

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// Tree is a detached copy of a mount tree (open_tree(2) with
// OPEN_TREE_CLONE): it belongs to no mount namespace until MoveTo attaches
// it, so it can be made in one namespace and attached in another (the
// caller enters the other namespace between Clone and MoveTo). Closing a
// tree that was never attached unmounts it.
type Tree struct {
	// Source is the path the tree was cloned from.
	Source string
	// Dir tells whether the source is a directory (else a file).
	Dir bool
	f   *os.File
}

// Clone makes a detached recursive bind of src (OPEN_TREE_CLONE |
// AT_RECURSIVE, as mount --rbind), read-only throughout when readOnly
// (mount_setattr(2) with MOUNT_ATTR_RDONLY and AT_RECURSIVE; the source
// stays writable). Linux 5.12.
func Clone(src string, readOnly bool) (*Tree, error) {
	fd, err := eintr.Retry1(func() (int, error) {
		return unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	})
	if err != nil {
		return nil, fmt.Errorf("open_tree %s: %w", src, err)
	}
	t := &Tree{Source: src, f: os.NewFile(uintptr(fd), src)}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Close()
		return nil, fmt.Errorf("stat %s: %w", src, err)
	}
	t.Dir = st.Mode&unix.S_IFMT == unix.S_IFDIR
	if readOnly {
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
			t.Close()
			return nil, fmt.Errorf("mount_setattr read-only %s: %w", src, err)
		}
	}
	return t, nil
}

// IDMap makes the tree an idmapped mount with the mapping of the user
// namespace userns (mount_setattr(2) MOUNT_ATTR_IDMAP, recursive; Linux
// 5.12, per filesystem): a file owned by uid U on disk shows as the uid
// that U maps to in that namespace, so the namespace's root owns what the
// host's root owns, and what it writes is stored as the host's root.
func (t *Tree) IDMap(userns *os.File) error {
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP, Userns_fd: uint64(userns.Fd())}
	if err := unix.MountSetattr(int(t.f.Fd()), "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("idmap %s: %w", t.Source, err)
	}
	return nil
}

// MoveTo attaches the tree on dst (move_mount(2) with
// MOVE_MOUNT_F_EMPTY_PATH) in the calling thread's mount namespace; dst
// must exist and be of the tree's kind.
func (t *Tree) MoveTo(dst string) error {
	err := eintr.Retry(func() error {
		return unix.MoveMount(int(t.f.Fd()), "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH)
	})
	if err != nil {
		return fmt.Errorf("move_mount %s -> %s: %w", t.Source, dst, err)
	}
	return nil
}

// Close releases the tree's file descriptor; a tree never attached is
// unmounted with it (the kernel dissolves a detached tree on last close).
func (t *Tree) Close() error {
	if t == nil || t.f == nil {
		return nil
	}
	return t.f.Close()
}
