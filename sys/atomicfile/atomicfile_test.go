package atomicfile

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWriteReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.prom")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "new\n" {
		t.Fatalf("read back %q, %v; want %q", b, err, "new\n")
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, %v; want 0644", st.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
}

func TestWriteFailureLeavesOld(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A directory in the way of the rename: the write fails, path keeps
	// its contents (a second path is the target).
	target := filepath.Join(dir, "d")
	if err := os.MkdirAll(filepath.Join(target, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Write(target, []byte("new"), 0o644); err == nil {
		t.Fatal("Write over a non-empty directory succeeded")
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("unrelated file changed: %q", b)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("temporary files left after a failure: %v", entries)
	}
	if err := Write(filepath.Join(dir, "missing", "f"), nil, 0o644); err == nil {
		t.Error("Write into a missing directory succeeded")
	}
}

// Rename's flags: RENAME_EXCHANGE swaps two trees, RENAME_NOREPLACE
// refuses to overwrite with the bare EEXIST.
func TestRename(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "who"), []byte(filepath.Base(p)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := Rename(a, b, unix.RENAME_NOREPLACE); err != unix.EEXIST {
		t.Errorf("Rename(a, b, NOREPLACE) = %v, want EEXIST", err)
	}
	if err := Rename(a, b, unix.RENAME_EXCHANGE); err != nil {
		t.Fatalf("Rename(a, b, EXCHANGE) = %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(a, "who")); string(got) != "b" {
		t.Errorf("after the exchange a holds %q, want b's tree", got)
	}
	c := filepath.Join(dir, "c")
	if err := Rename(a, c, unix.RENAME_NOREPLACE); err != nil {
		t.Fatalf("Rename(a, c, NOREPLACE) = %v", err)
	}
	if err := Rename(a, c, 0); err != unix.ENOENT {
		t.Errorf("Rename(gone, c) = %v, want ENOENT", err)
	}
}
