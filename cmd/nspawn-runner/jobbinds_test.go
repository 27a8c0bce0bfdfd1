package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/gitlab"
)

func TestRunnerBinary(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "gitlab-runner")
	plain := filepath.Join(dir, "not-executable")
	link := filepath.Join(dir, "link")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(plain, []byte("x"), 0o644)
	os.Symlink(exe, link)
	t.Setenv("PATH", dir)
	for _, tc := range []struct {
		configured string
		want       string
		fail       bool
	}{
		{configured: exe, want: exe},
		{configured: link, want: exe},
		{configured: "", want: exe}, // found on PATH
		{configured: filepath.Join(dir, "missing"), fail: true},
		{configured: plain, fail: true},
		{configured: dir, fail: true},
	} {
		g := &globals{cfg: config.Default()}
		g.cfg.GitLab.RunnerBinary = tc.configured
		got, err := runnerBinary(g)
		if tc.fail != (err != nil) || !tc.fail && got != tc.want {
			t.Errorf("runnerBinary(%q) = %q, %v; want %q (error %v)", tc.configured, got, err, tc.want, tc.fail)
		}
	}
	t.Setenv("PATH", t.TempDir())
	if got, err := runnerBinary(&globals{cfg: config.Default()}); got != "" || err != nil {
		t.Errorf("runnerBinary without one on PATH = %q, %v; want none, no error", got, err)
	}
}

func TestProjectDir(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache")
	d := filepath.Join(root, "gitlab.example.com-1a2b3c4d-5")
	for i := 0; i < 2; i++ { // idempotent
		if err := projectDir(d); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := os.Stat(root); st.Mode().Perm() != 0o700 {
		t.Errorf("cache root mode %v, want 0700", st.Mode().Perm())
	}
	// A symlink planted in place of a project dir is refused, not followed.
	evil := filepath.Join(root, "evil")
	os.Symlink("/etc", evil)
	if err := projectDir(evil); err == nil {
		t.Errorf("projectDir followed a symlink to /etc")
	}
}

func TestJobBindsFromPayload(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "gitlab-runner")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	resp := filepath.Join(dir, "response.json")
	os.WriteFile(resp, []byte(`{"id": 9, "job_info": {"project_id": 5}, "git_info": {"repo_url": "https://gitlab-ci-token:x@gitlab.example.com/g/p.git"}}`), 0o600)
	t.Setenv("JOB_RESPONSE_FILE", resp)
	// Job variables must not move the cache elsewhere.
	t.Setenv("CUSTOM_ENV_CI_PROJECT_ID", "6")
	t.Setenv("CUSTOM_ENV_CI_SERVER_URL", "https://evil.example")
	g := &globals{cfg: config.Default()}
	g.cfg.GitLab.CacheDir = filepath.Join(dir, "cache")
	g.cfg.GitLab.RunnerBinary = exe
	binds, path, err := jobMachine(g)
	if err != nil {
		t.Fatal(err)
	}
	key := gitlab.Project{Instance: "https://gitlab.example.com", ID: 5}.Key()
	if len(binds) != 2 || binds[0].Host != filepath.Join(g.cfg.GitLab.CacheDir, key) || binds[0].Machine != gitlab.MachineCacheDir ||
		binds[1].Host != exe || !binds[1].ReadOnly || binds[1].Machine != gitlab.MachineRunnerBinary {
		t.Errorf("jobMachine binds = %+v", binds)
	}
	if _, err := os.Stat(binds[0].Host); err != nil {
		t.Errorf("project cache dir not created: %v", err)
	}
	if strings.Join(path, ":") != gitlab.MachineRunnerDir {
		t.Errorf("jobMachine path = %q; want %s", path, gitlab.MachineRunnerDir)
	}
	// A payload that cannot be read is a failure, not a silent loss of
	// the cache.
	t.Setenv("JOB_RESPONSE_FILE", filepath.Join(dir, "missing.json"))
	if _, _, err := jobMachine(g); err == nil {
		t.Errorf("jobMachine with an unreadable JOB_RESPONSE_FILE succeeded")
	}
}
