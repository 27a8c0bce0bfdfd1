package loop_test

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/loop"
)

// sparse makes a sparse file of size bytes.
func sparse(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "backing.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

// attach attaches file and registers its detach.
func attach(t *testing.T, file string, o loop.Options) *loop.Device {
	t.Helper()
	d, err := loop.Attach(file, o)
	if err != nil {
		t.Fatalf("Attach(%s) = %v", file, err)
	}
	t.Cleanup(func() {
		d.Close()
		if err := loop.Detach(d.Path); err != nil {
			t.Errorf("Detach(%s) = %v", d.Path, err)
		}
	})
	return d
}

func TestAttachDetach(t *testing.T) {
	testutil.RequireRoot(t)
	file := sparse(t, 16<<20)
	d := attach(t, file, loop.Options{})
	got, err := loop.BackingFile(d.Path)
	if err != nil || got != file {
		t.Fatalf("BackingFile(%s) = %q, %v, want %q", d.Path, got, err, file)
	}
	found, err := loop.Find(file)
	if err != nil || len(found) != 1 || found[0] != d.Path {
		t.Fatalf("Find(%s) = %q, %v, want [%s]", file, found, err, d.Path)
	}
	// The device is usable: it has the size of the file.
	f, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	n, err := f.Seek(0, 2)
	f.Close()
	if err != nil || n != 16<<20 {
		t.Errorf("size of %s = %d, %v, want %d", d.Path, n, err, 16<<20)
	}
	d.Close()
	if err := loop.Detach(d.Path); err != nil {
		t.Fatalf("Detach(%s) = %v", d.Path, err)
	}
	if _, err := loop.BackingFile(d.Path); !errors.Is(err, loop.ErrNotAttached) {
		t.Errorf("BackingFile(%s) after Detach = %v, want ErrNotAttached", d.Path, err)
	}
	// Detaching twice is fine.
	if err := loop.Detach(d.Path); err != nil {
		t.Errorf("second Detach(%s) = %v", d.Path, err)
	}
}

func TestAttachAutoClear(t *testing.T) {
	testutil.RequireRoot(t)
	file := sparse(t, 8<<20)
	d, err := loop.Attach(file, loop.Options{AutoClear: true, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loop.Detach(d.Path) })
	if got, err := loop.BackingFile(d.Path); err != nil || got != file {
		t.Fatalf("BackingFile(%s) = %q, %v, want %q", d.Path, got, err, file)
	}
	if ro, err := os.ReadFile("/sys/block/" + filepath.Base(d.Path) + "/ro"); err != nil || string(ro) != "1\n" {
		t.Errorf("%s read-only = %q, %v, want 1", d.Path, ro, err)
	}
	// The last close of an autoclear device detaches it.
	// Some kernels clear it from a work queue: give it a moment.
	d.Close()
	var found []string
	for range 100 {
		if found, _ = loop.Find(file); len(found) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(found) != 0 {
		t.Errorf("Find(%s) after closing an autoclear device = %q, want none", file, found)
	}
}

// Parallel attaches race for the same free device; each must get its own.
func TestAttachConcurrent(t *testing.T) {
	testutil.RequireRoot(t)
	const n = 8
	files := make([]string, n)
	for i := range files {
		files[i] = sparse(t, 4<<20)
	}
	devs := make([]*loop.Device, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { devs[i], errs[i] = loop.Attach(files[i], loop.Options{}) })
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, d := range devs {
		if errs[i] != nil {
			t.Errorf("Attach(%s) = %v", files[i], errs[i])
			continue
		}
		t.Cleanup(func() {
			d.Close()
			loop.Detach(d.Path)
		})
		if seen[d.Path] {
			t.Errorf("%s given twice", d.Path)
		}
		seen[d.Path] = true
		if got, err := loop.BackingFile(d.Path); err != nil || got != files[i] {
			t.Errorf("BackingFile(%s) = %q, %v, want %q", d.Path, got, err, files[i])
		}
	}
}

func TestAttachMissingFile(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := loop.Attach(filepath.Join(t.TempDir(), "nope"), loop.Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Attach(missing) = %v, want ErrNotExist", err)
	}
}
