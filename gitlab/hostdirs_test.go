package gitlab

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestRunnerBinary(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	exe := filepath.Join(dir, "gitlab-runner")
	plain := filepath.Join(dir, "not-executable")
	link := filepath.Join(dir, "link")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(plain, []byte("x"), 0o644)
	os.Symlink(exe, link)
	// A gitlab-runner that is not executable on PATH is passed over.
	os.WriteFile(filepath.Join(other, "gitlab-runner"), []byte("x"), 0o644)
	for _, tc := range []struct {
		configured string
		path       string
		want       string
		fail       bool
	}{
		{configured: exe, want: exe},
		{configured: link, want: exe},
		{path: dir, want: exe},
		{path: other + ":" + dir, want: exe},
		{path: other},
		{path: ""},
		// A relative PATH entry would depend on the stage's cwd.
		{path: "."},
		{configured: filepath.Join(dir, "missing"), path: dir, fail: true},
		{configured: plain, fail: true},
		{configured: dir, fail: true},
	} {
		got, err := runnerBinary(tc.configured, tc.path)
		if tc.fail != (err != nil) || !tc.fail && got != tc.want {
			t.Errorf("runnerBinary(%q, PATH=%q) = %q, %v; want %q (error %v)", tc.configured, tc.path, got, err, tc.want, tc.fail)
		}
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

func TestJobMounts(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "gitlab-runner")
	os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755)
	server := writeResp(t, t.TempDir(), `{"id": 9, "job_info": {"project_id": 5}, "git_info": {"repo_url": "https://gitlab-ci-token:x@gitlab.example.com/g/p.git"}}`)
	local := writeResp(t, t.TempDir(), `{"id": 1, "job_info": {"project_id": 0}, "git_info": {"repo_url": "/home/dev/app"}}`)
	cache := filepath.Join(dir, "cache")
	serverKey := Project{Instance: "https://gitlab.example.com", ID: 5}.Key()
	localKey := Project{Local: "/home/dev/app"}.Key()
	runner := Mount{Host: exe, Machine: MachineRunnerBinary, ReadOnly: true}
	for _, tc := range []struct {
		name   string
		env    map[string]string
		cfg    MountConfig
		mounts []Mount
		fail   bool
	}{
		{
			name: "server job",
			// Job variables must not move the cache elsewhere.
			env:    map[string]string{"JOB_RESPONSE_FILE": server, "CUSTOM_ENV_CI_PROJECT_ID": "6", "CUSTOM_ENV_CI_SERVER_URL": "https://evil.example"},
			cfg:    MountConfig{CacheRoot: cache, RunnerBinary: exe},
			mounts: []Mount{{Host: filepath.Join(cache, serverKey), Machine: MachineCacheDir, Dir: true}, runner},
		},
		{
			name:   "local job",
			env:    map[string]string{"JOB_RESPONSE_FILE": local},
			cfg:    MountConfig{CacheRoot: cache, RunnerBinary: exe},
			mounts: []Mount{{Host: filepath.Join(cache, localKey), Machine: MachineCacheDir, Dir: true}, runner},
		},
		{
			name:   "runner binary from the stage's PATH",
			env:    map[string]string{"JOB_RESPONSE_FILE": server, "PATH": dir},
			mounts: []Mount{runner},
		},
		{
			name:   "no payload: no cache",
			env:    map[string]string{},
			cfg:    MountConfig{CacheRoot: cache, RunnerBinary: exe},
			mounts: []Mount{runner},
		},
		{
			// A payload that cannot be read is a failure, not a silent
			// loss of the cache.
			name: "unreadable payload",
			env:  map[string]string{"JOB_RESPONSE_FILE": filepath.Join(dir, "missing.json")},
			cfg:  MountConfig{CacheRoot: cache, RunnerBinary: exe},
			fail: true,
		},
		{
			name: "missing configured runner",
			env:  map[string]string{"JOB_RESPONSE_FILE": server},
			cfg:  MountConfig{RunnerBinary: filepath.Join(dir, "nope")},
			fail: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan, err := JobMounts(envOf(tc.env), tc.cfg)
			if tc.fail {
				if err == nil {
					t.Fatalf("JobMounts = %+v, want an error", plan)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(plan.Mounts, tc.mounts) {
				t.Errorf("JobMounts mounts = %+v, want %+v", plan.Mounts, tc.mounts)
			}
			for _, m := range plan.Mounts {
				if st, err := os.Lstat(m.Host); m.Dir && (err != nil || !st.IsDir()) {
					t.Errorf("project dir %s not created: %v", m.Host, err)
				}
			}
		})
	}
}
