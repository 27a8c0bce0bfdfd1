package provision

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestCleanRunDirs: the directories of killed playbook runs go, those of
// runs going on (lock held, or just made) and everything else stay.
func TestCleanRunDirs(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-2 * time.Hour)
	run := func(held, aged bool) string {
		t.Helper()
		p, lk, err := newRunDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if aged {
			if err := os.Chtimes(filepath.Join(p, runDirLock), old, old); err != nil {
				t.Fatal(err)
			}
		}
		if held {
			t.Cleanup(func() { lk.Unlock() })
		} else {
			lk.Unlock()
		}
		return p
	}
	legacy := func(name string, aged bool) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Join(p, "remote"), 0o700); err != nil {
			t.Fatal(err)
		}
		if aged {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	going := run(true, true)
	killed := run(false, false)
	// Killed before its lock file had its name.
	starting := run(true, false)
	if err := os.Rename(filepath.Join(starting, runDirLock), filepath.Join(starting, runDirLock+"-new")); err != nil {
		t.Fatal(err)
	}
	oldLegacy := legacy(runDirPrefix+"123", true)
	newLegacy := legacy(runDirPrefix+"456", false)
	other := legacy("other", true)

	removed, err := CleanRunDirs(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	want := []string{killed, oldLegacy}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	for _, p := range []string{going, starting, newLegacy, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
	for _, p := range want {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s is still there", p)
		}
	}
}
