package mount_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/mount"
)

// TestCloneMoveTo attaches detached clones of a directory (read-only,
// with a submount) and of a file, and checks what the targets show.
func TestCloneMoveTo(t *testing.T) {
	dir := mountDir(t)
	src, sub, dst := filepath.Join(dir, "src"), filepath.Join(dir, "src", "sub"), filepath.Join(dir, "dst")
	mkdirs(t, sub, dst)
	writeFile(t, filepath.Join(src, "a"), "A")
	keep(t)(mount.Tmpfs(sub, 1<<20, 0o755))
	writeFile(t, filepath.Join(sub, "b"), "B")

	tr, err := mount.Clone(src, true)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if !tr.Dir {
		t.Errorf("Clone(%s).Dir = false, want true", src)
	}
	if err := tr.MoveTo(dst); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dst, "a")); got != "A" {
		t.Errorf("dst/a = %q, want A", got)
	}
	// Recursive: the submount came along, read-only as well.
	if got := readFile(t, filepath.Join(dst, "sub", "b")); got != "B" {
		t.Errorf("dst/sub/b = %q, want B", got)
	}
	for _, p := range []string{filepath.Join(dst, "new"), filepath.Join(dst, "sub", "new")} {
		if err := os.WriteFile(p, nil, 0o644); !errors.Is(err, unix.EROFS) {
			t.Errorf("write %s = %v, want EROFS", p, err)
		}
	}
	// The source stays writable.
	writeFile(t, filepath.Join(src, "c"), "C")

	file, fdst := filepath.Join(dir, "file"), filepath.Join(dir, "fdst")
	writeFile(t, file, "F")
	writeFile(t, fdst, "")
	ft, err := mount.Clone(file, false)
	if err != nil {
		t.Fatal(err)
	}
	defer ft.Close()
	if ft.Dir {
		t.Errorf("Clone(%s).Dir = true, want false", file)
	}
	if err := ft.MoveTo(fdst); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, fdst); got != "F" {
		t.Errorf("bound file = %q, want F", got)
	}
}

// TestCloneClosedUnattached: a clone closed without MoveTo leaves no
// mount; a missing source is an error naming it.
func TestCloneClosedUnattached(t *testing.T) {
	dir := mountDir(t)
	tr, err := mount.Clone(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if got := mountsBelow(t, dir); len(got) != 0 {
		t.Errorf("mounts below %s after Close = %q, want none", dir, got)
	}
	if _, err := mount.Clone(filepath.Join(dir, "missing"), false); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Clone(missing) = %v, want ENOENT", err)
	}
}

// TestTreeIDMap: an idmapped clone shows the files of the host's root as
// owned by the uid the user namespace maps root to.
func TestTreeIDMap(t *testing.T) {
	dir := mountDir(t)
	testutil.RequireBinary(t, "sleep")
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	mkdirs(t, src, dst)
	// tmpfs supports idmapped mounts (Linux 6.3); the test's own
	// directory may be on a filesystem that does not.
	keep(t)(mount.Tmpfs(src, 1<<20, 0o755))
	writeFile(t, filepath.Join(src, "f"), "x")
	ns := exec.Command("sleep", "1000")
	ns.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100000, Size: 65536}},
	}
	if err := ns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Process.Kill(); ns.Wait() })
	var userns *os.File
	for range 500 {
		f, err := os.Open("/proc/" + strconv.Itoa(ns.Process.Pid) + "/ns/user")
		if err == nil {
			var a, b unix.Stat_t
			if unix.Fstat(int(f.Fd()), &a) == nil && unix.Stat("/proc/self/ns/user", &b) == nil && a.Ino != b.Ino {
				if m, _ := os.ReadFile("/proc/" + strconv.Itoa(ns.Process.Pid) + "/uid_map"); len(m) > 0 {
					userns = f
					break
				}
			}
			f.Close()
		}
		time.Sleep(10 * time.Millisecond)
	}
	if userns == nil {
		t.Fatal("unshare made no user namespace with a mapping")
	}
	defer userns.Close()
	tr, err := mount.Clone(src, false)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.IDMap(userns); err != nil {
		t.Fatal(err)
	}
	if err := tr.MoveTo(dst); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dst, "f"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 100000 || st.Gid != 100000 {
		t.Errorf("idmapped file owner = %d:%d, want 100000:100000", st.Uid, st.Gid)
	}
}
