package provision

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/config"
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
}

// Options is the one place deciding what an image is created with.
func TestOptions(t *testing.T) {
	cfg := config.Bootstrap{Suite: "trixie", Mirror: "http://cfg.example/debian", Packages: []string{"vim"}}
	pb := Vars{Suite: "sid", Mirror: "http://pb.example/debian", Include: []string{"make"}}
	for _, tc := range []struct {
		name string
		cfg  config.Bootstrap
		v    Vars
		req  CreateRequest
		want bootstrap.CreateOptions
	}{
		{"config", cfg, Vars{}, CreateRequest{},
			bootstrap.CreateOptions{Suite: "trixie", Mirror: "http://cfg.example/debian", Packages: []string{"vim"}}},
		{"playbook over config", cfg, pb, CreateRequest{},
			bootstrap.CreateOptions{Suite: "sid", Mirror: "http://pb.example/debian", Packages: []string{"make", "vim"}}},
		{"flags over playbook", cfg, pb, CreateRequest{Suite: "bookworm", Mirror: "http://flag.example/debian", Include: []string{"gcc,make", " curl ,", "vim"}},
			bootstrap.CreateOptions{Suite: "bookworm", Mirror: "http://flag.example/debian", Packages: []string{"curl", "gcc", "make", "vim"}}},
		// Commas split wherever the list comes from.
		{"commas in config", config.Bootstrap{Packages: []string{"a,b"}}, Vars{}, CreateRequest{},
			bootstrap.CreateOptions{Suite: config.DefaultSuite, Packages: []string{"a", "b"}}},
		{"nothing set", config.Bootstrap{}, Vars{}, CreateRequest{},
			bootstrap.CreateOptions{Suite: config.DefaultSuite}},
	} {
		got := Options(tc.cfg, tc.v, tc.req)
		if got.Suite != tc.want.Suite || got.Mirror != tc.want.Mirror || !slices.Equal(got.Packages, tc.want.Packages) {
			t.Errorf("%s: Options = %+v, want %+v", tc.name, got, tc.want)
		}
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
