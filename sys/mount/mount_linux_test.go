package mount_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
	"golang.org/x/sys/unix"
)

// mountDir returns a fresh directory for test mounts; whatever is still
// mounted below it is detached before t.TempDir removes it, so a failed
// test never makes RemoveAll descend into a bind mount.
func mountDir(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	t.Cleanup(func() {
		if err := mount.UnmountAll(dir); err != nil {
			t.Errorf("mount.UnmountAll(%s): %v", dir, err)
		}
	})
	return dir
}

// keep(t)(mount.Bind(...)) fails the test on error and unmounts at its end.
func keep(t *testing.T) func(*mount.Mount, error) *mount.Mount {
	return func(m *mount.Mount, err error) *mount.Mount {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := m.Unmount(); err != nil {
				t.Errorf("mount.Unmount(%s): %v", m.Target, err)
			}
		})
		return m
	}
}

func mkdirs(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func findMount(t *testing.T, target string) (mount.Info, bool) {
	t.Helper()
	infos, err := mount.Mountinfo()
	if err != nil {
		t.Fatal(err)
	}
	var found mount.Info
	ok := false
	for _, in := range infos {
		if in.Mountpoint == target {
			found, ok = in, true
		}
	}
	return found, ok
}

func isMountPoint(t *testing.T, p string) bool {
	t.Helper()
	ok, err := mount.IsMountPoint(p)
	if err != nil {
		t.Fatalf("mount.IsMountPoint(%s): %v", p, err)
	}
	return ok
}

func TestBind(t *testing.T) {
	dir := mountDir(t)
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst with space")
	mkdirs(t, src, dst)
	writeFile(t, filepath.Join(src, "f"), "hello")

	if isMountPoint(t, dst) {
		t.Fatalf("mount.IsMountPoint(%s) = true before mounting", dst)
	}
	m := keep(t)(mount.Bind(src, dst))
	if got := readFile(t, filepath.Join(dst, "f")); got != "hello" {
		t.Errorf("bind mount shows %q, want hello", got)
	}
	if !isMountPoint(t, dst) {
		t.Errorf("mount.IsMountPoint(%s) = false after a bind of the same filesystem", dst)
	}
	in, ok := findMount(t, dst)
	if !ok {
		t.Fatalf("mountinfo has no entry for %q", dst)
	}
	if !strings.HasSuffix(in.Root, "/src") {
		t.Errorf("mountinfo root of %q = %q, want .../src", dst, in.Root)
	}
	writeFile(t, filepath.Join(dst, "g"), "through the bind")
	if got := readFile(t, filepath.Join(src, "g")); got != "through the bind" {
		t.Errorf("write through bind: source has %q", got)
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := m.Unmount(); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
	if err := mount.Unmount(dst); err != nil {
		t.Errorf("mount.Unmount of a path not mounted: %v", err)
	}
	if err := mount.Unmount(filepath.Join(dir, "missing")); err != nil {
		t.Errorf("mount.Unmount of a missing path: %v", err)
	}
	if isMountPoint(t, dst) {
		t.Errorf("mount.IsMountPoint(%s) = true after Unmount", dst)
	}
}

// A handle unmounts only its own mount, even when called again after
// something else was stacked on the same target.
func TestUnmountHandleIdempotentWithStack(t *testing.T) {
	dir := mountDir(t)
	a, b, dst := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "dst")
	mkdirs(t, a, b, dst)
	writeFile(t, filepath.Join(b, "which"), "b")
	m1, err := mount.Bind(a, dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := m1.Unmount(); err != nil {
		t.Fatal(err)
	}
	keep(t)(mount.Bind(b, dst))
	if err := m1.Unmount(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dst, "which")); got != "b" {
		t.Errorf("a repeated mount.Unmount removed a later mount: dst/which = %q", got)
	}
}

func TestBindReadOnly(t *testing.T) {
	dir := mountDir(t)
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	mkdirs(t, src, dst)
	writeFile(t, filepath.Join(src, "f"), "x")
	keep(t)(mount.Bind(src, dst, mount.ReadOnly))
	err := os.WriteFile(filepath.Join(dst, "f"), []byte("y"), 0o644)
	if !errors.Is(err, unix.EROFS) {
		t.Errorf("write into a read-only bind: %v, want EROFS", err)
	}
	writeFile(t, filepath.Join(src, "f"), "still writable")
	if got := readFile(t, filepath.Join(dst, "f")); got != "still writable" {
		t.Errorf("read-only bind shows %q", got)
	}
	in, _ := findMount(t, dst)
	if !slices.Contains(strings.Split(in.Options, ","), "ro") {
		t.Errorf("mount options of %s = %q, want ro", dst, in.Options)
	}
}

// A read-only rebind keeps the nosuid/nodev/noexec of the source mount,
// which the kernel requires when they are locked and which would otherwise
// be loosened silently.
func TestBindReadOnlyKeepsFlags(t *testing.T) {
	dir := mountDir(t)
	fs, dst := filepath.Join(dir, "tmpfs"), filepath.Join(dir, "dst")
	mkdirs(t, fs, dst)
	if err := unix.Mount("tmpfs", fs, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mount.Unmount(fs) })
	keep(t)(mount.Bind(fs, dst, mount.ReadOnly))
	in, _ := findMount(t, dst)
	opts := strings.Split(in.Options, ",")
	for _, o := range []string{"ro", "nosuid", "nodev", "noexec"} {
		if !slices.Contains(opts, o) {
			t.Errorf("options of the read-only bind = %q, lack %s", in.Options, o)
		}
	}
}

func TestBindRecursiveReadOnly(t *testing.T) {
	dir := mountDir(t)
	src, sub, dst := filepath.Join(dir, "src"), filepath.Join(dir, "src", "sub"), filepath.Join(dir, "dst")
	mkdirs(t, sub, dst)
	keep(t)(mount.Tmpfs(sub, 1<<20, 0o755))
	writeFile(t, filepath.Join(sub, "f"), "in the submount")

	keep(t)(mount.Bind(src, dst, mount.Recursive, mount.ReadOnly))
	if got := readFile(t, filepath.Join(dst, "sub", "f")); got != "in the submount" {
		t.Errorf("recursive bind shows %q for the submount", got)
	}
	for _, p := range []string{filepath.Join(dst, "x"), filepath.Join(dst, "sub", "x")} {
		if err := os.WriteFile(p, nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("write %s: %v, want EROFS", p, err)
		}
	}
	writeFile(t, filepath.Join(sub, "x"), "source still writable")
}

func TestOverlay(t *testing.T) {
	dir := mountDir(t)
	l1, l2 := filepath.Join(dir, "lower:1"), filepath.Join(dir, "lower,2")
	upper, work, dst := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged")
	mkdirs(t, l1, l2, upper, work, dst)
	writeFile(t, filepath.Join(l1, "top"), "l1")
	writeFile(t, filepath.Join(l2, "top"), "l2")
	writeFile(t, filepath.Join(l2, "bottom"), "l2")
	writeFile(t, filepath.Join(l2, "gone"), "l2")

	m := keep(t)(mount.Overlay(dst, []string{l1, l2}, upper, work))
	if m.Fstype != "overlay" {
		t.Errorf("Fstype = %q", m.Fstype)
	}
	if got := readFile(t, filepath.Join(dst, "top")); got != "l1" {
		t.Errorf("merged/top = %q, want the topmost layer's l1", got)
	}
	writeFile(t, filepath.Join(dst, "bottom"), "changed")
	writeFile(t, filepath.Join(dst, "new"), "new")
	if err := os.Remove(filepath.Join(dst, "gone")); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(l2, "bottom")); got != "l2" {
		t.Errorf("lower changed: %q", got)
	}
	if _, err := os.Stat(filepath.Join(l2, "gone")); err != nil {
		t.Errorf("lower file removed: %v", err)
	}
	if got := readFile(t, filepath.Join(upper, "bottom")); got != "changed" {
		t.Errorf("upper/bottom = %q", got)
	}
	if got := readFile(t, filepath.Join(upper, "new")); got != "new" {
		t.Errorf("upper/new = %q", got)
	}
	// A whiteout is a 0/0 character device in upper.
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "gone"), &st); err != nil {
		t.Fatalf("no whiteout for a deleted lower file: %v", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout mode %#o rdev %d, want a 0/0 char device", st.Mode, st.Rdev)
	}
	if _, err := os.Stat(filepath.Join(dst, "gone")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("deleted file still visible: %v", err)
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if _, ok := findMount(t, dst); ok {
		t.Errorf("overlay still mounted after Unmount")
	}
}

func TestOverlayReadOnly(t *testing.T) {
	dir := mountDir(t)
	l1, l2, dst := filepath.Join(dir, "l1"), filepath.Join(dir, "l2"), filepath.Join(dir, "merged")
	mkdirs(t, l1, l2, dst)
	keep(t)(mount.Overlay(dst, []string{l1, l2}, "", ""))
	if err := os.WriteFile(filepath.Join(dst, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write into a read-only overlay: %v, want EROFS", err)
	}
}

func TestOverlayError(t *testing.T) {
	dir := mountDir(t)
	_, err := mount.Overlay(filepath.Join(dir, "missing"), []string{filepath.Join(dir, "nolower")}, filepath.Join(dir, "u"), filepath.Join(dir, "w"))
	var me *mount.Error
	if !errors.As(err, &me) {
		t.Fatalf("mount.Overlay with missing dirs: %v, want a *mount.Error", err)
	}
	if me.Fstype != "overlay" || !strings.Contains(me.Data, "lowerdir=") {
		t.Errorf("mount.Error = %+v", me)
	}
}

func TestTmpfs(t *testing.T) {
	dir := mountDir(t)
	dst := filepath.Join(dir, "tmp")
	mkdirs(t, dst)
	keep(t)(mount.Tmpfs(dst, 4<<20, 0o1777|os.ModeSticky))
	var st unix.Stat_t
	if err := unix.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o1777 {
		t.Errorf("tmpfs root mode = %#o, want 01777", st.Mode&0o7777)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dst, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type != unix.TMPFS_MAGIC || uint64(fs.Blocks)*uint64(fs.Bsize) != 4<<20 {
		t.Errorf("statfs: type %#x, %d blocks of %d, want tmpfs of 4 MiB", fs.Type, fs.Blocks, fs.Bsize)
	}
	in, ok := findMount(t, dst)
	if !ok || in.Fstype != "tmpfs" {
		t.Errorf("mountinfo: %+v, %v", in, ok)
	}
}

func TestPropagation(t *testing.T) {
	dir := mountDir(t)
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	mkdirs(t, a, b)
	keep(t)(mount.Tmpfs(a, 1<<20, 0o755))
	if err := mount.MakeShared(a, true); err != nil {
		t.Fatal(err)
	}
	if in, _ := findMount(t, a); !strings.Contains(in.Optional, "shared:") {
		t.Errorf("after mount.MakeShared optional fields = %q, want shared:N", in.Optional)
	}
	// b is a peer of a; as a slave it receives a's new mounts.
	keep(t)(mount.Bind(a, b))
	if err := mount.MakeSlave(b, false); err != nil {
		t.Fatal(err)
	}
	if in, _ := findMount(t, b); !strings.Contains(in.Optional, "master:") {
		t.Errorf("after mount.MakeSlave optional fields = %q, want master:N", in.Optional)
	}
	mkdirs(t, filepath.Join(a, "sub"))
	keep(t)(mount.Tmpfs(filepath.Join(a, "sub"), 1<<20, 0o755))
	if !isMountPoint(t, filepath.Join(b, "sub")) {
		t.Errorf("a mount under the master did not propagate to the slave")
	}
	if err := mount.MakePrivate(b, true); err != nil {
		t.Fatal(err)
	}
	if in, _ := findMount(t, b); in.Optional != "" {
		t.Errorf("after mount.MakePrivate optional fields = %q, want none", in.Optional)
	}
	if err := mount.MakePrivate(filepath.Join(dir, "missing"), false); err == nil {
		t.Errorf("mount.MakePrivate of a missing path succeeded")
	}
}

func TestUnmountAll(t *testing.T) {
	dir := mountDir(t)
	root := filepath.Join(dir, "root with space")
	mkdirs(t, root)
	if _, err := mount.Tmpfs(root, 8<<20, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a", "a/b", "a/b/c", "d"} {
		p := filepath.Join(root, d)
		mkdirs(t, p)
		if _, err := mount.Tmpfs(p, 1<<20, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Two mounts stacked on one point.
	if _, err := mount.Tmpfs(filepath.Join(root, "d"), 1<<20, 0o755); err != nil {
		t.Fatal(err)
	}
	// A sibling with a common string prefix must survive.
	sibling := root + "x"
	mkdirs(t, sibling)
	keep(t)(mount.Tmpfs(sibling, 1<<20, 0o755))

	if n := len(mountsBelow(t, root)); n != 6 {
		t.Fatalf("mountinfo shows %d mounts under %s, want 6", n, root)
	}
	if err := mount.UnmountAll(root); err != nil {
		t.Fatal(err)
	}
	if left := mountsBelow(t, root); len(left) != 0 {
		t.Errorf("left mounted: %q", left)
	}
	if _, ok := findMount(t, sibling); !ok {
		t.Errorf("mount.UnmountAll(%s) unmounted the sibling %s", root, sibling)
	}
	if err := mount.UnmountAll(root); err != nil {
		t.Errorf("second UnmountAll: %v", err)
	}
	if err := mount.UnmountAll(filepath.Join(dir, "missing")); err != nil {
		t.Errorf("mount.UnmountAll of a missing path: %v", err)
	}
}

func TestUnmountAllThroughSymlink(t *testing.T) {
	dir := mountDir(t)
	real := filepath.Join(dir, "real")
	mkdirs(t, filepath.Join(real, "m"))
	if _, err := mount.Tmpfs(filepath.Join(real, "m"), 1<<20, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := mount.UnmountAll(link); err != nil {
		t.Fatal(err)
	}
	if left := mountsBelow(t, real); len(left) != 0 {
		t.Errorf("left mounted: %q", left)
	}
}

func mountsBelow(t *testing.T, prefix string) []string {
	t.Helper()
	infos, err := mount.Mountinfo()
	if err != nil {
		t.Fatal(err)
	}
	return mount.Below(infos, prefix)
}

func TestIsMountPointMissing(t *testing.T) {
	if _, err := mount.IsMountPoint(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount.IsMountPoint(missing) error = %v, want ErrNotExist", err)
	}
	if ok, err := mount.IsMountPoint("/"); err != nil || !ok {
		t.Errorf("mount.IsMountPoint(/) = %v, %v", ok, err)
	}
}

func TestMountinfoSelf(t *testing.T) {
	infos, err := mount.Mountinfo()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range infos {
		if in.Mountpoint == "/proc" && in.Fstype == "proc" {
			return
		}
	}
	t.Errorf("mount.Mountinfo() has no proc on /proc: %+v", infos)
}

func TestBindFile(t *testing.T) {
	dir := mountDir(t)
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	writeFile(t, src, "file content")
	writeFile(t, dst, "")
	keep(t)(mount.Bind(src, dst, mount.ReadOnly))
	if got := readFile(t, dst); got != "file content" {
		t.Errorf("bound file reads %q", got)
	}
	if err := os.WriteFile(dst, []byte("x"), 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write to a read-only bound file: %v, want EROFS", err)
	}
}

func TestBindError(t *testing.T) {
	dir := mountDir(t)
	src, dst := filepath.Join(dir, "missing"), filepath.Join(dir, "dst")
	mkdirs(t, dst)
	_, err := mount.Bind(src, dst)
	var me *mount.Error
	if !errors.As(err, &me) || !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Bind(missing) = %v, want a *mount.Error wrapping ENOENT", err)
	}
	if me.Source != src || me.Target != dst || me.Flags&unix.MS_BIND == 0 {
		t.Errorf("Error = %+v", me)
	}
}
