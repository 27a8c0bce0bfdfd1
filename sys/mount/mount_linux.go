package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// Mount is a handle on one mount made by this package. Unmount undoes it.
type Mount struct {
	Target string // the mount point
	Fstype string // "bind", "overlay", "tmpfs"

	mu   sync.Mutex
	done bool
}

// Unmount detaches the mount (umount2 with MNT_DETACH, so busy files do not
// block teardown). It is idempotent: after the first success it does
// nothing, so a mount stacked later on the same target is left alone, and a
// target that is no longer mounted is not an error.
func (m *Mount) Unmount() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.done {
		return nil
	}
	if err := Unmount(m.Target); err != nil {
		return err
	}
	m.done = true
	return nil
}

// Option changes how Bind works.
type Option int

const (
	// ReadOnly makes the bind mount read-only; the source stays writable.
	ReadOnly Option = 1 << iota
	// Recursive binds the submounts of the source too (MS_REC). With
	// ReadOnly, every submount is made read-only as well.
	Recursive
)

func mount(op, source, target, fstype string, flags uintptr, data string) error {
	err := eintr.Retry(func() error { return unix.Mount(source, target, fstype, flags, data) })
	if err != nil {
		return &Error{Op: op, Source: source, Target: target, Fstype: fstype, Flags: flags, Data: data, Err: err}
	}
	return nil
}

// Bind mounts src on dst (MS_BIND). dst must exist and be of the same kind
// (directory or file) as src.
func Bind(src, dst string, opts ...Option) (*Mount, error) {
	var o Option
	for _, x := range opts {
		o |= x
	}
	flags := uintptr(unix.MS_BIND)
	if o&Recursive != 0 {
		flags |= unix.MS_REC
	}
	if err := mount("bind", src, dst, "", flags, ""); err != nil {
		return nil, err
	}
	m := &Mount{Target: dst, Fstype: "bind"}
	if o&ReadOnly != 0 {
		if err := readOnly(src, dst, o&Recursive != 0); err != nil {
			_ = m.Unmount()
			return nil, err
		}
	}
	return m, nil
}

// lockedFlags maps the statfs(2) f_flags the kernel refuses to drop on a
// bind remount (MNT_LOCK_* in fs/namespace.c, for mounts inherited by a
// less privileged namespace) to their MS_* values. Dropping them silently
// would also loosen a nosuid or noexec source outside user namespaces.
var lockedFlags = [...]struct{ st, ms uintptr }{
	{unix.ST_NOSUID, unix.MS_NOSUID},
	{unix.ST_NODEV, unix.MS_NODEV},
	{unix.ST_NOEXEC, unix.MS_NOEXEC},
	{unix.ST_NOATIME, unix.MS_NOATIME},
	{unix.ST_NODIRATIME, unix.MS_NODIRATIME},
	{unix.ST_RELATIME, unix.MS_RELATIME},
}

// readOnly makes the bind mount at dst read-only. A bind mount ignores
// MS_RDONLY on creation, so it takes a second call: MS_REMOUNT|MS_BIND|
// MS_RDONLY with the per-mount flags the new mount already has, read via
// statfs(2) (see mount(2), "Creating a bind mount").
func readOnly(src, dst string, recursive bool) error {
	if recursive {
		// mount_setattr(2) (Linux 5.12) is the only way to change every
		// submount at once; a remount changes just the top one.
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := eintr.Retry(func() error { return unix.MountSetattr(unix.AT_FDCWD, dst, unix.AT_RECURSIVE, &attr) }); err != nil {
			return &Error{Op: "mount_setattr", Source: src, Target: dst, Flags: unix.MOUNT_ATTR_RDONLY, Err: err}
		}
		return nil
	}
	var st unix.Statfs_t
	if err := eintr.Retry(func() error { return unix.Statfs(dst, &st) }); err != nil {
		return fmt.Errorf("statfs %s: %w", dst, err)
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY)
	for _, f := range lockedFlags {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	return mount("remount", "", dst, "", flags, "")
}

// escapeOverlay escapes a path for an overlayfs option: the kernel splits
// the option string at ',' and lowerdir at ':', honouring a backslash
// before either, and removes one level of backslashes from every path
// (ovl_unescape in fs/overlayfs/params.c).
func escapeOverlay(p string) string {
	if !strings.ContainsAny(p, `\:,`) {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '\\', ':', ',':
			b.WriteByte('\\')
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// OverlayOptions returns the mount(2) data string for an overlay of lower
// (topmost first, as in lowerdir=) with upper and work (both empty for a
// read-only overlay), and checks it against the kernel's one-page limit.
func OverlayOptions(lower []string, upper, work string) (string, error) {
	if len(lower) == 0 {
		return "", errors.New("overlay: no lower directory")
	}
	if (upper == "") != (work == "") {
		return "", errors.New("overlay: upper and work directories go together")
	}
	if upper == "" && len(lower) < 2 {
		return "", errors.New("overlay: a read-only overlay needs at least two lower directories")
	}
	var b strings.Builder
	b.WriteString("lowerdir=")
	for i, l := range lower {
		if l == "" {
			return "", errors.New("overlay: empty lower directory")
		}
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(escapeOverlay(l))
	}
	if upper != "" {
		b.WriteString(",upperdir=" + escapeOverlay(upper) + ",workdir=" + escapeOverlay(work))
	}
	data := b.String()
	// copy_mount_options() copies at most one page and the string needs
	// its terminating NUL inside it.
	if len(data) >= os.Getpagesize() {
		return "", fmt.Errorf("overlay: options are %d bytes, the limit is %d (shorten the layer paths, e.g. mount from a common parent): %w",
			len(data), os.Getpagesize()-1, ErrOptionsTooLong)
	}
	return data, nil
}

// Overlay mounts an overlayfs on dst: lower are the read-only layers,
// topmost first; writes go to upper, using work as overlayfs's scratch
// directory (an empty directory on the same filesystem as upper). With
// upper and work empty the overlay is read-only.
func Overlay(dst string, lower []string, upper, work string) (*Mount, error) {
	data, err := OverlayOptions(lower, upper, work)
	if err != nil {
		return nil, fmt.Errorf("mount overlay on %s: %w", dst, err)
	}
	if err := mount("mount", "overlay", dst, "overlay", 0, data); err != nil {
		return nil, err
	}
	return &Mount{Target: dst, Fstype: "overlay"}, nil
}

// Tmpfs mounts a tmpfs of at most size bytes (0: the kernel's default,
// half of RAM) whose root directory has mode (permissions plus setuid,
// setgid and sticky).
func Tmpfs(dst string, size int64, mode os.FileMode) (*Mount, error) {
	if size < 0 {
		return nil, fmt.Errorf("mount tmpfs on %s: negative size %d", dst, size)
	}
	data := "mode=" + strconv.FormatUint(uint64(unixMode(mode)), 8)
	if size > 0 {
		data += ",size=" + strconv.FormatInt(size, 10)
	}
	if err := mount("mount", "tmpfs", dst, "tmpfs", 0, data); err != nil {
		return nil, err
	}
	return &Mount{Target: dst, Fstype: "tmpfs"}, nil
}

// unixMode converts the permission and special bits of an os.FileMode to
// the st_mode bits of chmod(2).
func unixMode(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= unix.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		u |= unix.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		u |= unix.S_ISVTX
	}
	return u
}

func propagate(op string, path string, flag uintptr, recursive bool) error {
	if recursive {
		flag |= unix.MS_REC
	}
	return mount(op, "", path, "", flag, "")
}

// MakePrivate stops mount and unmount events propagating to and from the
// mount at path (MS_PRIVATE; see mount_namespaces(7)).
func MakePrivate(path string, recursive bool) error {
	return propagate("make-private", path, unix.MS_PRIVATE, recursive)
}

// MakeSlave lets events propagate into the mount at path but not out of it
// (MS_SLAVE).
func MakeSlave(path string, recursive bool) error {
	return propagate("make-slave", path, unix.MS_SLAVE, recursive)
}

// MakeShared makes the mount at path a member of a peer group (MS_SHARED).
func MakeShared(path string, recursive bool) error {
	return propagate("make-shared", path, unix.MS_SHARED, recursive)
}

// Unmount detaches whatever is mounted on path (the topmost mount only),
// with MNT_DETACH. A path that is not a mount point, or does not exist, is
// not an error: umount2(2) returns EINVAL and ENOENT for those.
func Unmount(path string) error {
	switch err := eintr.Retry(func() error { return unix.Unmount(path, unix.MNT_DETACH) }); err {
	case nil, unix.EINVAL, unix.ENOENT:
		return nil
	default:
		return &Error{Op: "unmount", Target: path, Flags: unix.MNT_DETACH, Err: err}
	}
}

// UnmountAll detaches every mount at or below prefix, deepest first and the
// most recent of stacked mounts first, as listed in /proc/self/mountinfo.
// Mounts that vanish meanwhile (a parent's detach takes its children along)
// are not errors. It repeats until nothing below prefix is mounted, since
// propagation can add mounts while it works.
func UnmountAll(prefix string) error {
	prefix, err := filepath.Abs(prefix)
	if err != nil {
		return fmt.Errorf("unmount all under %s: %w", prefix, err)
	}
	// mountinfo shows resolved absolute paths; a prefix through a symlink
	// would otherwise match nothing.
	if p, err := filepath.EvalSymlinks(prefix); err == nil {
		prefix = p
	} else if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var last error
	for pass := 0; pass < 8; pass++ {
		infos, err := Mountinfo()
		if err != nil {
			return fmt.Errorf("unmount all under %s: %w", prefix, err)
		}
		targets := Below(infos, prefix)
		if len(targets) == 0 {
			return nil
		}
		last = nil
		for _, t := range targets {
			if err := Unmount(t); err != nil && last == nil {
				last = err
			}
		}
	}
	if last != nil {
		return fmt.Errorf("unmount all under %s: %w", prefix, last)
	}
	return fmt.Errorf("unmount all under %s: mounts keep appearing", prefix)
}
