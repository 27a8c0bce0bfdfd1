package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// doctor on this host, against a runner host of the test's own (its root
// with an image, its config and the config.toml toml printed): no FAIL,
// exit 0; the same with the image gone: the images check fails, exit 1.
func TestDoctor(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true})
	etc := t.TempDir() // no timers, no cron file: warnings, not failures
	args := append(append([]string{}, r.Global...), "doctor", "--json", "--runner-config", r.TOMLPath, "--etc-root", etc)
	out, errOut, code := r.call(context.Background(), "/", os.Environ(), args...)
	if code != 0 {
		t.Fatalf("doctor: exit %d\n%s\n%s", code, out, errOut)
	}
	var rep struct {
		Failed   bool `json:"failed"`
		Findings []struct{ Check, Level, Detail, Fix string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, out)
	}
	levels := map[string]string{}
	for _, f := range rep.Findings {
		levels[f.Check] = f.Level
		if f.Level == "fail" {
			t.Errorf("FAIL on a working host: %+v", f)
		}
	}
	for check, want := range map[string]string{
		"systemd-nspawn": "ok", "root.btrfs": "ok", "images.bookworm": "ok",
		"gitlab-runner.config": "ok", "machines": "ok", "kernel.overlayfs": "ok",
	} {
		if levels[check] != want {
			t.Errorf("doctor %s = %q, want %q (all: %v)", check, levels[check], want, levels)
		}
	}

	// Text output, and a root without images: a job would fail.
	empty := filepath.Join(r.FS, "empty-root")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	args = append([]string{"--config", r.ConfigPath, "--run-dir", r.RunDir, "--root", empty}, "doctor", "--runner-config", r.TOMLPath, "--etc-root", etc)
	out, errOut, code = r.call(context.Background(), "/", os.Environ(), args...)
	if code != 1 || !strings.Contains(out, "FAIL  images") || !strings.Contains(out, "-> nspawn-runner chroot-create") || !strings.Contains(errOut, "a job would fail") {
		t.Errorf("doctor on an empty root: exit %d\n%s\n%s", code, out, errOut)
	}
}
