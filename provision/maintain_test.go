package provision

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
)

func TestMaintainSkipsImagesWithoutPlaybook(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "nrt-pv-bare"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	m := &Maintainer{Store: &bootstrap.Store{Root: root}, Runner: &Runner{}, Dirs: []string{dir}, Progress: &out}
	if err := m.Maintain(context.Background(), ""); err != nil {
		t.Fatalf("Maintain = %v, want the image skipped", err)
	}
	if !strings.Contains(out.String(), "chroot-maintenance nrt-pv-bare: skipped: no playbook") {
		t.Errorf("progress = %q, want a skip line", out.String())
	}
	err := m.Maintain(context.Background(), "nrt-pv-ghost")
	if !errors.Is(err, ErrNoPlaybook) || !strings.Contains(err.Error(), "nrt-pv-bare") {
		t.Errorf("Maintain(unknown) = %v, want ErrNoPlaybook listing the known images", err)
	}
	if err := m.Provision(context.Background(), "nrt-pv-bare"); err != nil {
		t.Errorf("Provision without a playbook = %v, want nil", err)
	}
}

func TestMaintainMalformedPlaybook(t *testing.T) {
	root, dir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nrt-pv-bad.yaml"), []byte("- hosts: all\n  vars: {\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := &Maintainer{Store: &bootstrap.Store{Root: root}, Runner: &Runner{}, Dirs: []string{dir}}
	err := m.Maintain(context.Background(), "")
	if err == nil || !strings.Contains(err.Error(), "nrt-pv-bad.yaml") {
		t.Errorf("Maintain = %v, want an error naming the playbook", err)
	}
	if ws, _ := filepath.Glob(filepath.Join(root, ".tmp-*")); len(ws) != 0 {
		t.Errorf("workspaces left: %v", ws)
	}
}
