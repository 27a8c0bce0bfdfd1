package machine

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIDMapCause(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "nspawn.log")
	orig := errors.New("systemd-nspawn exited (exit status 1) before the machine was ready: ...")
	for _, tc := range []struct{ log, want string }{
		{"Failed to map ids for bind mount /r/.machines/m/root/cache: Invalid argument\nAttempted to remove disk file system\n", "cannot idmap the bind mount of /cache ("},
		{"ID mapped mounts are apparently not available, sorry.\n", "cannot idmap the machine's root ("},
		{"Failed to create /init.scope control group\n", ""},
	} {
		if err := os.WriteFile(log, []byte(tc.log), 0o600); err != nil {
			t.Fatal(err)
		}
		err := idmapCause(log, "/r/.machines/m/root", orig)
		if tc.want == "" {
			if err != orig {
				t.Errorf("idmapCause(%q) = %v, want the original error", tc.log, err)
			}
			continue
		}
		if !errors.Is(err, ErrPrivateUsers) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("idmapCause(%q) = %v, want one line with %q", tc.log, err, tc.want)
		}
	}
	if err := idmapCause(filepath.Join(dir, "missing"), "/t", orig); err != orig {
		t.Errorf("idmapCause(no log) = %v, want the original error", err)
	}
}

func TestCheckPrivateUsers(t *testing.T) {
	for _, s := range []string{StorageOverlay, StorageVolatile} {
		if err := checkPrivateUsers(s, "/img"); !errors.Is(err, ErrPrivateUsers) || !strings.Contains(err.Error(), "needs btrfs storage") {
			t.Errorf("checkPrivateUsers(%s) = %v, want a refusal naming btrfs", s, err)
		}
	}
}
