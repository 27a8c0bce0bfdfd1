package netns

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

// TestNewDoRemove pins a namespace, checks that a function run inside it
// sees only its loopback and that a listener opened there is not in the
// caller's namespace, then unpins it.
func TestNewDoRemove(t *testing.T) {
	testutil.RequireRoot(t)
	path := filepath.Join(t.TempDir(), "ns")
	if err := New(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Remove(path) })
	if err := New(path); !errors.Is(err, fs.ErrExist) {
		t.Errorf("New on an existing pin = %v, want ErrExist", err)
	}
	if !Pinned(path) {
		t.Fatalf("Pinned(%s) = false after New", path)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	err = Do(f, func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		if err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 || names[0] != "lo" {
		t.Errorf("links inside the new namespace = %q, want [lo]", names)
	}
	// The pin is another namespace than ours.
	var pin, self unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &pin); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		t.Fatal(err)
	}
	if pin.Ino == self.Ino {
		t.Errorf("pinned namespace is our own (inode %d)", pin.Ino)
	}
	// The calling goroutine's thread is back in the original namespace.
	own, _ := os.Readlink("/proc/thread-self/ns/net")
	init, _ := os.Readlink("/proc/self/ns/net")
	if own != init {
		t.Errorf("thread netns after Do = %s, process = %s", own, init)
	}
	if err := Remove(path); err != nil {
		t.Fatal(err)
	}
	if Pinned(path) {
		t.Errorf("still pinned after Remove")
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pin file left after Remove: %v", err)
	}
	if err := Remove(path); err != nil {
		t.Errorf("second Remove = %v, want nil", err)
	}
	if _, err := Open(path); err == nil {
		t.Errorf("Open of a removed pin succeeded")
	}
}

// TestOpenRefusesPlainFile: an unpinned file is not taken for a namespace.
func TestOpenRefusesPlainFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p); !errors.Is(err, ErrNotNamespace) {
		t.Errorf("Open(plain file) = %v, want ErrNotNamespace", err)
	}
}
