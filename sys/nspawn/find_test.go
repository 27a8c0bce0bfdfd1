package nspawn

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// fakeNspawn writes an executable systemd-nspawn into dir that reports
// version v.
func fakeNspawn(t *testing.T, dir, v string) string {
	t.Helper()
	p := filepath.Join(dir, "systemd-nspawn")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho 'systemd "+v+" (fake)'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLookPathAndFind(t *testing.T) {
	first, second, notExec := t.TempDir(), t.TempDir(), t.TempDir()
	fakeNspawn(t, second, "250")
	want := fakeNspawn(t, first, "257")
	if err := os.WriteFile(filepath.Join(notExec, "systemd-nspawn"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Relative entries are skipped; a non-executable file is no program.
	t.Setenv("PATH", "relative:"+notExec+":"+first+":"+second)
	if got, err := LookPath(""); err != nil || got != want {
		t.Errorf("LookPath() = %q, %v; want %q", got, err, want)
	}
	prog, err := Find(context.Background(), "")
	if err != nil || prog != (Program{Path: want, Version: 257}) {
		t.Errorf("Find() = %+v, %v; want the first one, version 257", prog, err)
	}
	// A path is taken as it is: that program is probed, not the PATH's.
	other := filepath.Join(second, "systemd-nspawn")
	if prog, err := Find(context.Background(), other); err != nil || prog != (Program{Path: other, Version: 250}) {
		t.Errorf("Find(%q) = %+v, %v", other, prog, err)
	}
	for _, bin := range []string{"no-such-nspawn", filepath.Join(notExec, "systemd-nspawn"), filepath.Join(first, "missing")} {
		if _, err := LookPath(bin); !errors.Is(err, ErrNotFound) {
			t.Errorf("LookPath(%q) = %v, want ErrNotFound", bin, err)
		}
		if _, err := Find(context.Background(), bin); !errors.Is(err, ErrNotFound) {
			t.Errorf("Find(%q) = %v, want ErrNotFound", bin, err)
		}
	}
}

// TestFindStandardDirs: with a PATH that lacks it, systemd-nspawn is still
// found in the standard directories (gitlab-runner may give a short PATH).
func TestFindStandardDirs(t *testing.T) {
	real, err := LookPath("")
	if err != nil {
		// internal/testutil imports this package: its gate cannot be used.
		if v := os.Getenv("CI"); v != "" && v != "0" && v != "false" {
			t.Fatalf("%v (CI=true: install systemd-container)", err)
		}
		t.Skip("no systemd-nspawn installed:", err)
	}
	t.Setenv("PATH", t.TempDir())
	if got, err := LookPath(""); err != nil || filepath.Base(got) != "systemd-nspawn" {
		t.Errorf("LookPath with a short PATH = %q, %v; want %s", got, err, real)
	}
}
