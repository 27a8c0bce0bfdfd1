package nspawn

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestReleaseUIDRange(t *testing.T) {
	dir := t.TempDir()
	if ok, err := releaseUIDRange(dir, 524288); ok || err != nil {
		t.Fatalf("missing file: %v, %v; want false, nil", ok, err)
	}
	p := filepath.Join(dir, "524288")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Held as systemd-nspawn holds it while the machine runs.
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatal(err)
	}
	if ok, err := releaseUIDRange(dir, 524288); ok || err != nil {
		t.Fatalf("held file: %v, %v; want false, nil", ok, err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("a held lock file was removed: %v", err)
	}
	f.Close()
	if ok, err := releaseUIDRange(dir, 524288); !ok || err != nil {
		t.Fatalf("stale file: %v, %v; want true, nil", ok, err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("the stale lock file is still there: %v", err)
	}
}
