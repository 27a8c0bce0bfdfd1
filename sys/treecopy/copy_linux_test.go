package treecopy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
	"github.com/nspawn-runner/nspawn-runner/sys/treecopy"
	"golang.org/x/sys/unix"
)

// capNetRaw is a struct vfs_cap_data (linux/capability.h), revision 2,
// effective, permitting CAP_NET_RAW (13): what setcap cap_net_raw+ep writes.
func capNetRaw() []byte {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|0x1) // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
	binary.LittleEndian.PutUint32(b[4:], 1<<13)          // data[0].permitted
	return b
}

// aclUser1000 is a POSIX ACL in its xattr form (posix_acl_xattr_header and
// entries of linux/posix_acl_xattr.h): u::rw-,u:1000:r--,g::r--,m::r--,o::r--.
func aclUser1000() []byte {
	var b bytes.Buffer
	w := func(v any) { _ = binary.Write(&b, binary.LittleEndian, v) }
	w(uint32(2)) // POSIX_ACL_XATTR_VERSION
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 6, 0xffffffff}, {0x02, 4, 1000}, {0x04, 4, 0xffffffff}, {0x10, 4, 0xffffffff}, {0x20, 4, 0xffffffff}} {
		w(e.tag)
		w(e.perm)
		w(e.id)
	}
	return b.Bytes()
}

var fixedTime = time.Date(2001, 2, 3, 4, 5, 6, 789012345, time.UTC)

// makeFixture builds a tree with every kind of thing mount.Copy must keep.
func makeFixture(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	file := func(rel, content string, mode uint32, uid, gid int) {
		t.Helper()
		p := filepath.Join(root, rel)
		must(os.WriteFile(p, []byte(content), 0o600))
		must(os.Lchown(p, uid, gid))
		must(unix.Chmod(p, mode))
	}
	dir := func(rel string, mode uint32, uid, gid int) {
		t.Helper()
		p := filepath.Join(root, rel)
		must(os.Mkdir(p, 0o700))
		must(os.Lchown(p, uid, gid))
		must(unix.Chmod(p, mode))
	}
	dir("d", 0o750, 1000, 1000)
	dir("d/e", 0o755, 0, 0)
	dir("d/e/f", 0o700, 123, 456)
	dir("sticky", 0o1777, 0, 0)
	dir("setgid", 0o2775, 0, 50)
	dir("readonly", 0o555, 0, 0)
	file("readonly/inside", "ro dir content", 0o444, 0, 0)
	file("plain", "plain content\n", 0o644, 123, 456)
	file("empty", "", 0o600, 0, 0)
	file("setuid", "#!/bin/sh\n", 0o4755, 0, 0)
	file("setgid/prog", "sgid", 0o2711, 1000, 50)
	file("d/e/f/deep", strings.Repeat("deep\n", 10000), 0o640, 123, 456)
	// File capabilities, on a file not owned by root so that a chown
	// after the xattr would drop them.
	file("cap", "ping", 0o755, 1000, 1000)
	must(unix.Setxattr(filepath.Join(root, "cap"), "security.capability", capNetRaw(), 0))
	file("xattrs", "x", 0o644, 0, 0)
	must(unix.Setxattr(filepath.Join(root, "xattrs"), "user.one", []byte("1"), 0))
	must(unix.Setxattr(filepath.Join(root, "xattrs"), "user.binary", []byte{0, 1, 2, 255}, 0))
	must(unix.Setxattr(filepath.Join(root, "xattrs"), "trusted.t", []byte("trusted"), 0))
	must(unix.Setxattr(filepath.Join(root, "d"), "user.dir", []byte("on a dir"), 0))
	file("acl", "acl", 0o644, 0, 0)
	must(unix.Setxattr(filepath.Join(root, "acl"), "system.posix_acl_access", aclUser1000(), 0))
	must(unix.Setxattr(filepath.Join(root, "d/e"), "system.posix_acl_default", aclUser1000(), 0))

	// Hard links across directories, one of them setuid.
	file("hl1", "linked", 0o4750, 0, 1000)
	must(os.Link(filepath.Join(root, "hl1"), filepath.Join(root, "d/hl2")))
	must(os.Link(filepath.Join(root, "hl1"), filepath.Join(root, "d/e/hl3")))
	// Many files in one directory, to spread over several batches.
	dir("many", 0o755, 0, 0)
	for i := 0; i < 200; i++ {
		file(filepath.Join("many", "f"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+time.Duration(i).String()), strings.Repeat("m", i), 0o644, i%3, i%5)
	}
	// Symlinks: relative, absolute out of the tree, to a directory outside
	// (must not be followed), dangling, and one to a directory inside.
	must(os.Symlink("plain", filepath.Join(root, "rel")))
	must(os.Symlink("/etc/passwd", filepath.Join(root, "abs")))
	must(os.Symlink("/usr", filepath.Join(root, "outdir")))
	must(os.Symlink("../nowhere", filepath.Join(root, "d/dangling")))
	must(os.Symlink("d/e", filepath.Join(root, "indir")))
	must(os.Lchown(filepath.Join(root, "rel"), 1000, 1000))
	must(os.Link(filepath.Join(root, "rel"), filepath.Join(root, "d/rel-hardlink")))
	// Device nodes, a fifo and a socket.
	must(unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mknod(filepath.Join(root, "loopdev"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 200))))
	must(os.Lchown(filepath.Join(root, "loopdev"), 0, 6))
	must(unix.Mkfifo(filepath.Join(root, "fifo"), 0o640))
	must(unix.Mknod(filepath.Join(root, "sock"), unix.S_IFSOCK|0o755, 0))
	// A big sparse file: data at both ends of 256 MiB.
	sp := filepath.Join(root, "sparse")
	f, err := os.Create(sp)
	must(err)
	_, err = f.WriteAt(bytes.Repeat([]byte("head"), 1024), 0)
	must(err)
	_, err = f.WriteAt(bytes.Repeat([]byte("mid!"), 1024), 128<<20)
	must(err)
	must(f.Truncate(256 << 20))
	must(f.Close())

	// Times last, children before parents.
	var all []string
	must(filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		all = append(all, p)
		return err
	}))
	slices.Reverse(all)
	for i, p := range all {
		ts := fixedTime.Add(time.Duration(i) * time.Hour)
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{unix.NsecToTimespec(ts.UnixNano() - 7), unix.NsecToTimespec(ts.UnixNano())}, unix.AT_SYMLINK_NOFOLLOW))
	}
}

type node struct {
	mode       uint32
	uid, gid   uint32
	size       int64
	mtime      unix.Timespec
	rdev       uint64
	nlink      uint64
	link       string
	xattrs     map[string]string
	hash       [32]byte
	ino        uint64
	hashed     bool
	allocBytes int64
}

// scan walks root without following symlinks and describes every entry;
// regular files are hashed when hash(rel) says so.
func scan(t *testing.T, root string, hash func(rel string) bool) map[string]node {
	t.Helper()
	out := map[string]node{}
	xl := make([]byte, 64*1024)
	xv := make([]byte, 64*1024)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		n := node{mode: st.Mode, uid: st.Uid, gid: st.Gid, mtime: st.Mtim, nlink: st.Nlink, ino: st.Ino, allocBytes: st.Blocks * 512}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			n.size = st.Size
			if hash(rel) {
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				h := sha256.New()
				_, err = io.Copy(h, f)
				f.Close()
				if err != nil {
					return err
				}
				copy(n.hash[:], h.Sum(nil))
				n.hashed = true
			}
		case unix.S_IFLNK:
			n.link, err = os.Readlink(p)
			if err != nil {
				return err
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			n.rdev = uint64(st.Rdev)
		}
		sz, err := unix.Llistxattr(p, xl)
		if err != nil && err != unix.ENOTSUP {
			return err
		}
		for _, name := range splitNames(xl[:max(sz, 0)]) {
			if skipXattr(name) {
				continue // xfs's second name for ACLs
			}
			v, err := unix.Lgetxattr(p, name, xv)
			if err != nil {
				return err
			}
			if n.xattrs == nil {
				n.xattrs = map[string]string{}
			}
			n.xattrs[name] = string(xv[:v])
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// compareTrees checks that dst reproduces src: the same names, types,
// modes, owners, mtimes, sizes, contents (where hashed), symlink targets,
// device numbers, xattrs, and the same hard-link structure.
func compareTrees(t *testing.T, src, dst string, hash func(rel string) bool) map[string]node {
	t.Helper()
	a, b := scan(t, src, hash), scan(t, dst, hash)
	for rel := range b {
		if _, ok := a[rel]; !ok {
			t.Errorf("%s: in the copy only", rel)
		}
	}
	srcToDst := map[uint64]uint64{}
	bad := 0
	for rel, x := range a {
		y, ok := b[rel]
		if !ok {
			t.Errorf("%s: missing in the copy", rel)
			bad++
			continue
		}
		check := func(what string, got, want any) {
			t.Helper()
			if !equal(got, want) {
				t.Errorf("%s: %s = %v, want %v", rel, what, got, want)
				bad++
			}
		}
		check("mode", y.mode, x.mode)
		check("owner", [2]uint32{y.uid, y.gid}, [2]uint32{x.uid, x.gid})
		check("mtime", y.mtime, x.mtime)
		check("size", y.size, x.size)
		check("symlink target", y.link, x.link)
		check("rdev", y.rdev, x.rdev)
		check("xattrs", y.xattrs, x.xattrs)
		check("nlink", y.nlink, x.nlink)
		if x.hashed {
			check("content hash", y.hash, x.hash)
		}
		if x.mode&unix.S_IFMT != unix.S_IFDIR && x.nlink > 1 {
			if d, ok := srcToDst[x.ino]; ok {
				check("hard link inode", y.ino, d)
			} else {
				srcToDst[x.ino] = y.ino
			}
		}
		if bad > 20 {
			t.Fatalf("too many differences")
		}
	}
	return b
}

func equal(a, b any) bool {
	switch x := a.(type) {
	case map[string]string:
		y := b.(map[string]string)
		if len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || w != v {
				return false
			}
		}
		return true
	}
	return a == b
}

func all(string) bool { return true }

// skipXattr: xfs lists ACLs a second time under its on-disk names; Copy
// copies the system.posix_acl_* ones.
func skipXattr(name string) bool {
	return name == "trusted.SGI_ACL_FILE" || name == "trusted.SGI_ACL_DEFAULT"
}

func splitNames(b []byte) []string {
	var out []string
	for _, n := range bytes.Split(b, []byte{0}) {
		if len(n) > 0 {
			out = append(out, string(n))
		}
	}
	return out
}

func copyFixture(t *testing.T, base string, opts treecopy.Options) (treecopy.Stats, map[string]node) {
	t.Helper()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	makeFixture(t, src)
	stats, err := treecopy.Copy(context.Background(), src, dst, opts)
	if err != nil {
		t.Fatalf("Copy: %v", err)
	}
	t.Logf("mount.Copy stats: %+v", stats)
	got := compareTrees(t, src, dst, all)
	if stats.HardLinks != 3 { // d/hl2, d/e/hl3, d/rel-hardlink
		t.Errorf("HardLinks = %d, want 3", stats.HardLinks)
	}
	if stats.Specials != 4 || stats.Symlinks != 5 || stats.Dirs != 8 {
		t.Errorf("Specials, Symlinks, Dirs = %d, %d, %d, want 4, 5, 8", stats.Specials, stats.Symlinks, stats.Dirs)
	}
	// The symlink to /usr was not followed into.
	if _, ok := got["outdir/bin"]; ok {
		t.Errorf("mount.Copy followed a symlink out of the tree")
	}
	if n := got["sparse"].allocBytes; n > 8<<20 {
		t.Errorf("the sparse file takes %d bytes in the copy: holes were filled", n)
	}
	return stats, got
}

func TestCopyTreeXFS(t *testing.T) {
	base := testutil.NewXFS(t, 1<<30)
	stats, _ := copyFixture(t, base, treecopy.Options{})
	if stats.Cloned == 0 {
		t.Errorf("Cloned = 0 on xfs with reflink")
	}
	if stats.CopiedBytes != 0 {
		t.Errorf("CopiedBytes = %d on xfs, want everything cloned", stats.CopiedBytes)
	}
}

func TestCopyTreeBtrfs(t *testing.T) {
	base := testutil.NewBtrfs(t, 1<<30)
	stats, _ := copyFixture(t, base, treecopy.Options{})
	if stats.Cloned == 0 {
		t.Errorf("Cloned = 0 on btrfs")
	}
}

func TestCopyTreeExt4(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(base, &fs); err != nil {
		t.Fatal(err)
	}
	stats, _ := copyFixture(t, base, treecopy.Options{})
	if fs.Type == unix.EXT4_SUPER_MAGIC && stats.Cloned != 0 {
		t.Errorf("Cloned = %d on ext4, which cannot clone", stats.Cloned)
	}
	if stats.CopiedBytes == 0 && stats.Cloned == 0 {
		t.Errorf("no data copied: %+v", stats)
	}
}

func TestCopyTreeNoReflink(t *testing.T) {
	base := testutil.NewXFS(t, 1<<30)
	stats, _ := copyFixture(t, base, treecopy.Options{NoReflink: true})
	if stats.Cloned != 0 || stats.CopiedBytes == 0 {
		t.Errorf("NoReflink: %+v, want no clones", stats)
	}
}

// Across filesystems neither FICLONE nor copy_file_range work; mount.Copy
// falls back per file.
func TestCopyTreeAcrossFilesystems(t *testing.T) {
	testutil.RequireRoot(t)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	makeFixture(t, src)
	dst := filepath.Join(testutil.NewXFS(t, 1<<30), "dst")
	stats, err := treecopy.Copy(context.Background(), src, dst, treecopy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, dst, all)
	if stats.Cloned != 0 || stats.CopiedBytes == 0 {
		t.Errorf("stats %+v, want plain copies", stats)
	}
}

// put writes content to p, making its directories.
func put(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCopyTreeDestination(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	put(t, filepath.Join(src, "sub", "f"), "f")
	ctx := context.Background()

	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := treecopy.Copy(ctx, src, empty, treecopy.Options{}); err != nil {
		t.Errorf("treecopy.Copy into an empty directory: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(empty, "sub", "f")); string(got) != "f" {
		t.Errorf("copy has %q, %v", got, err)
	}
	if _, err := treecopy.Copy(ctx, src, empty, treecopy.Options{}); err == nil {
		t.Errorf("treecopy.Copy into a non-empty directory succeeded")
	}
	if _, err := treecopy.Copy(ctx, src, filepath.Join(src, "sub", "into-itself"), treecopy.Options{}); err == nil {
		t.Errorf("Copy into its own source succeeded")
	}
	file := filepath.Join(dir, "file")
	put(t, file, "")
	if _, err := treecopy.Copy(ctx, src, file, treecopy.Options{}); err == nil {
		t.Errorf("treecopy.Copy onto a file succeeded")
	}
	if _, err := treecopy.Copy(ctx, filepath.Join(dir, "missing"), filepath.Join(dir, "x"), treecopy.Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("treecopy.Copy of a missing source: %v, want ErrNotExist", err)
	}
}

// The cached base image, copied the way bootstrap does without btrfs.
func TestCopyTreeImage(t *testing.T) {
	img := testutil.Image(t)
	dst := filepath.Join(testutil.NewXFS(t, 1<<30), "copy")
	stats, err := treecopy.Copy(context.Background(), img, dst, treecopy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image copy: %+v", stats)
	// Hash one file in 16 (and every setuid or capability-carrying one).
	i := 0
	got := compareTrees(t, img, dst, func(rel string) bool {
		i++
		return i%16 == 0 || strings.HasPrefix(rel, "usr/bin/")
	})
	files := 0
	for _, n := range got {
		if n.mode&unix.S_IFMT == unix.S_IFREG {
			files++
		}
	}
	if files < 1000 || stats.Files+stats.HardLinks != files {
		t.Errorf("the copy has %d regular file names, stats say %d files + %d links", files, stats.Files, stats.HardLinks)
	}
}

// A default ACL on dst's parent must not leak into the copy: dst inherits
// it on creation and would pass it on to every entry.
func TestCopyTreeParentDefaultACL(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	src, parent := filepath.Join(dir, "src"), filepath.Join(dir, "parent")
	put(t, filepath.Join(src, "sub", "f"), "f")
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(parent, "system.posix_acl_default", aclUser1000(), 0); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(parent, "dst")
	if _, err := treecopy.Copy(context.Background(), src, dst, treecopy.Options{}); err != nil {
		t.Fatal(err)
	}
	compareTrees(t, src, dst, all)
}

// A failing copy (the destination fills up) returns the error from the
// worker that met it, and does not hang the others.
func TestCopyTreeError(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	src, small := filepath.Join(dir, "src"), filepath.Join(dir, "small")
	manyFiles(t, src, 20, 50, strings.Repeat("x", 64*1024))
	if err := os.Mkdir(small, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := mount.Tmpfs(small, 1<<20, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
	})
	_, err = treecopy.Copy(context.Background(), src, filepath.Join(small, "dst"), treecopy.Options{})
	if !errors.Is(err, unix.ENOSPC) {
		t.Errorf("Copy onto a full tmpfs: %v, want ENOSPC", err)
	}
}

// manyFiles fills root with dirs directories of files files each.
func manyFiles(t *testing.T, root string, dirs, files int, content string) {
	t.Helper()
	for i := range dirs {
		d := filepath.Join(root, fmt.Sprintf("d%03d", i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for j := range files {
			if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%04d", j)), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// openFDs counts the descriptors of this process.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// A copy that fails after it opened the source (the destination is not
// empty, or is a file) closes what it opened.
func TestCopyTreeFailureClosesFDs(t *testing.T) {
	dir := t.TempDir()
	src, full, file := filepath.Join(dir, "src"), filepath.Join(dir, "full"), filepath.Join(dir, "file")
	put(t, filepath.Join(src, "f"), "f")
	put(t, filepath.Join(full, "x"), "x")
	put(t, file, "")
	before := openFDs(t)
	for range 10 {
		for _, dst := range []string{full, file} {
			if _, err := treecopy.Copy(context.Background(), src, dst, treecopy.Options{}); err == nil {
				t.Fatalf("Copy(%s, %s) succeeded", src, dst)
			}
		}
	}
	if after := openFDs(t); after != before {
		t.Errorf("open descriptors after 20 failed copies: %d, before: %d", after, before)
	}
}

// A copy whose context is already done copies nothing, not even dst.
func TestCopyTreeCancelledBefore(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	put(t, filepath.Join(src, "f"), "f")
	ctx, cancel := context.WithCancelCause(context.Background())
	stop := errors.New("maintenance cancelled")
	cancel(stop)
	if _, err := treecopy.Copy(ctx, src, dst, treecopy.Options{}); !errors.Is(err, stop) {
		t.Errorf("Copy with a cancelled context = %v, want its cause", err)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Copy with a cancelled context made %s: %v", dst, err)
	}
}

// Cancelled while it runs, a copy stops and returns the cause; it leaves
// the source as it was, writes nothing beside dst, removes nothing, and
// closes every descriptor. (The copy of 6,000 files takes far longer than
// the wait for its first entry, after which the test cancels it.)
func TestCopyTreeCancelledDuring(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	manyFiles(t, src, 30, 200, "data")
	before := scan(t, src, all)
	fds := openFDs(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan error, 1)
	go func() {
		_, err := treecopy.Copy(ctx, src, dst, treecopy.Options{NoReflink: true})
		done <- err
	}()
	for {
		if names, _ := readNames(dst); len(names) > 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Copy ended before the test saw its first entry: %v", err)
		default:
		}
	}
	stop := errors.New("job cancelled")
	cancel(stop)
	if err := <-done; !errors.Is(err, stop) {
		t.Fatalf("Copy cancelled while it runs = %v, want its cause", err)
	}
	if after := scan(t, src, all); !reflect.DeepEqual(before, after) {
		t.Error("the cancelled copy changed its source")
	}
	if names, err := readNames(dir); err != nil || len(names) != 2 {
		t.Errorf("beside the copy: %q, %v; want only src and dst", names, err)
	}
	if after := openFDs(t); after != fds {
		t.Errorf("open descriptors after a cancelled copy: %d, before: %d", after, fds)
	}
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
