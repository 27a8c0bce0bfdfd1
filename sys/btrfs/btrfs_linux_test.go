package btrfs_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"golang.org/x/sys/unix"
)

func newFS(t *testing.T) string {
	t.Helper()
	return testutil.NewBtrfs(t, 1<<30)
}

func exists(t *testing.T, p string) bool {
	t.Helper()
	_, err := os.Lstat(p)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

func mustSubvolume(t *testing.T, p string, want bool) {
	t.Helper()
	ok, err := btrfs.IsSubvolume(p)
	if err != nil {
		t.Fatalf("IsSubvolume(%s): %v", p, err)
	}
	if ok != want {
		t.Errorf("IsSubvolume(%s) = %v, want %v", p, ok, want)
	}
}

func TestIsBtrfs(t *testing.T) {
	fs := newFS(t)
	if ok, err := btrfs.IsBtrfs(fs); err != nil || !ok {
		t.Errorf("IsBtrfs(%s) = %v, %v, want true", fs, ok, err)
	}
	if ok, err := btrfs.IsBtrfs("/proc"); err != nil || ok {
		t.Errorf("IsBtrfs(/proc) = %v, %v, want false", ok, err)
	}
	if _, err := btrfs.IsBtrfs(filepath.Join(fs, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("IsBtrfs(missing) error = %v, want ErrNotExist", err)
	}
}

func TestIsSubvolume(t *testing.T) {
	fs := newFS(t)
	sv, dir := filepath.Join(fs, "sv"), filepath.Join(fs, "dir")
	if err := btrfs.Create(sv); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mustSubvolume(t, fs, true) // the top-level subvolume
	mustSubvolume(t, sv, true)
	mustSubvolume(t, dir, false)
	if _, err := btrfs.IsSubvolume(t.TempDir()); !errors.Is(err, btrfs.ErrNotBtrfs) {
		t.Errorf("IsSubvolume(non-btrfs) error = %v, want ErrNotBtrfs", err)
	}
}

func TestCreateRelative(t *testing.T) {
	fs := newFS(t)
	t.Chdir(fs)
	if err := btrfs.Create("rel"); err != nil {
		t.Fatalf("Create(rel) in %s: %v", fs, err)
	}
	if err := btrfs.Snapshot("rel", "rel-snap"); err != nil {
		t.Fatalf("Snapshot(rel, rel-snap): %v", err)
	}
	if err := btrfs.Delete("rel-snap"); err != nil {
		t.Fatalf("Delete(rel-snap): %v", err)
	}
}

func TestSnapshot(t *testing.T) {
	fs := newFS(t)
	src := filepath.Join(fs, "src")
	if err := btrfs.Create(src); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("original"), 0o644); err != nil {
		t.Fatal(err)
	}

	rw := filepath.Join(fs, "rw")
	if err := btrfs.Snapshot(src, rw); err != nil {
		t.Fatal(err)
	}
	mustSubvolume(t, rw, true)
	if err := os.WriteFile(filepath.Join(rw, "f"), []byte("changed"), 0o644); err != nil {
		t.Fatalf("write into a read-write snapshot: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(src, "f")); string(b) != "original" {
		t.Errorf("source changed through the snapshot: %q", b)
	}
	if ro, err := btrfs.IsReadOnly(rw); err != nil || ro {
		t.Errorf("IsReadOnly(rw snapshot) = %v, %v", ro, err)
	}

	ro := filepath.Join(fs, "ro")
	if err := btrfs.Snapshot(src, ro, btrfs.ReadOnly); err != nil {
		t.Fatal(err)
	}
	if isRO, err := btrfs.IsReadOnly(ro); err != nil || !isRO {
		t.Errorf("IsReadOnly(ro snapshot) = %v, %v", isRO, err)
	}
	if err := os.WriteFile(filepath.Join(ro, "f"), []byte("x"), 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write into a read-only snapshot: %v, want EROFS", err)
	}
	if err := btrfs.SetReadOnly(ro, false); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "f"), []byte("x"), 0o644); err != nil {
		t.Errorf("write after btrfs.SetReadOnly(false): %v", err)
	}
	if err := btrfs.SetReadOnly(ro, true); err != nil {
		t.Fatal(err)
	}
	if isRO, _ := btrfs.IsReadOnly(ro); !isRO {
		t.Errorf("SetReadOnly(true) did not stick")
	}

	dir := filepath.Join(fs, "plain")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Snapshot(dir, filepath.Join(fs, "x")); !errors.Is(err, btrfs.ErrNotSubvolume) {
		t.Errorf("Snapshot of a plain directory: %v, want ErrNotSubvolume", err)
	}
	if err := btrfs.Snapshot(src, rw); err == nil {
		t.Errorf("Snapshot onto an existing path succeeded")
	}
}

func TestDeleteNested(t *testing.T) {
	fs := newFS(t)
	top := filepath.Join(fs, "top")
	for _, p := range []string{top, top + "/a", top + "/a/b"} {
		if err := btrfs.Create(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(top, "dir", "deeper"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{top + "/dir/deeper/c", top + "/ro", top + "/ro/inner"} {
		if err := btrfs.Create(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{top + "/a/b/file", top + "/ro/inner/file"} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A read-only nested subvolume that itself holds one, and a read-only
	// snapshot whose parent is read-only too.
	if err := btrfs.SetReadOnly(top+"/ro", true); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Snapshot(top+"/a/b", top+"/a/snap", btrfs.ReadOnly); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.SetReadOnly(top+"/a", true); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.SetReadOnly(top, true); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Delete(top, btrfs.WaitCommit); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if exists(t, top) {
		t.Errorf("%s still exists", top)
	}
	out := testutil.Run(t, "btrfs", "subvolume", "list", fs)
	if out != "" {
		t.Errorf("subvolumes left after Delete:\n%s", out)
	}
}

func TestDeleteEdgeCases(t *testing.T) {
	fs := newFS(t)
	if err := btrfs.Delete(filepath.Join(fs, "missing")); err != nil {
		t.Errorf("Delete(missing) = %v, want nil", err)
	}
	dir := filepath.Join(fs, "plain")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Delete(dir); !errors.Is(err, btrfs.ErrNotSubvolume) {
		t.Errorf("Delete(plain dir) = %v, want ErrNotSubvolume", err)
	}
	if err := btrfs.Delete(t.TempDir()); !errors.Is(err, btrfs.ErrNotBtrfs) {
		t.Errorf("Delete(non-btrfs dir) = %v, want ErrNotBtrfs", err)
	}
	sv := filepath.Join(fs, "sv")
	if err := btrfs.Create(sv); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Delete(sv, btrfs.WaitCommit); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Delete(sv); err != nil {
		t.Errorf("second btrfs.Delete = %v, want nil", err)
	}
}

func TestWaitCommit(t *testing.T) {
	fs := newFS(t)
	sv := filepath.Join(fs, "sv")
	if err := btrfs.Create(sv); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sv, "f"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Delete(sv, btrfs.WaitCommit); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Sync(fs); err != nil {
		t.Errorf("Sync: %v", err)
	}
	// After the commit the deleted subvolume is gone from the tree of
	// roots, or at most waiting for the cleaner.
	out := testutil.Run(t, "btrfs", "subvolume", "list", fs)
	if out != "" {
		t.Errorf("subvolume still listed after a committed delete:\n%s", out)
	}
	if err := btrfs.Sync(filepath.Join(fs, "missing")); err == nil {
		t.Errorf("Sync(missing) succeeded")
	}
}
