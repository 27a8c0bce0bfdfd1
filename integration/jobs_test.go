package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/gitlab"
)

// TestConfigStage checks config_exec's contract through the binary: stdout
// is the JSON document and nothing else, and a broken configuration is a
// system failure with nothing on stdout.
func TestConfigStage(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("gitlab:\n  cache_dir: "+dir+"/cache\n"), 0o644)
	os.WriteFile(bad, []byte("gitlab:\n  cache_dir: relative\n"), 0o644)
	env := append(os.Environ(), "SYSTEM_FAILURE_EXIT_CODE=2", "BUILD_FAILURE_EXIT_CODE=1")

	cmd := exec.Command(bin, "--config", good, "gitlab-config")
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("gitlab-config: %v", err)
	}
	var cfg map[string]any
	dec := json.NewDecoder(strings.NewReader(string(out)))
	if err := dec.Decode(&cfg); err != nil || dec.More() {
		t.Fatalf("gitlab-config stdout is not exactly one JSON document: %v\n%q", err, out)
	}
	driver, _ := cfg["driver"].(map[string]any)
	if cfg["builds_dir"] != gitlab.MachineBuildsDir || cfg["cache_dir"] != gitlab.MachineCacheDir ||
		cfg["builds_dir_is_shared"] != false || cfg["shell"] != "bash" ||
		driver["name"] != "nspawn-runner" || driver["version"] != "integration-test" {
		t.Errorf("gitlab-config = %s", out)
	}

	cmd = exec.Command(bin, "--config", bad, "gitlab-config")
	cmd.Env = env
	out, err = cmd.Output()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || len(out) != 0 {
		t.Errorf("gitlab-config with a bad config: %v, stdout %q; want exit 2 and no stdout", err, out)
	}

	cmd = exec.Command(bin, "--config", good, "toml", "--default-image", "bookworm")
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("toml: %v", err)
	}
	// The stage executable, built next to the binary, runs the stages.
	for _, want := range []string{"[[runners]]", `executor = "custom"`, `run_exec = "` + filepath.Join(filepath.Dir(bin), "nspawn-runner-stage") + `"`, `prepare_exec = "` + bin + `"`,
		`prepare_args = ["--config", "` + good + `", "prepare", "--default-image", "bookworm"]`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("toml output lacks %s:\n%s", want, out)
		}
	}
}

// A passing job, on loopback btrfs (snapshots) and on a plain directory
// (overlay), with the runner binary on PATH inside the machine.
func TestPassingJob(t *testing.T) {
	for _, tc := range []struct {
		name    string
		plain   bool
		machine string
	}{{"btrfs", false, ""}, {"plain-dir", true, ""}, {"fast-mode", false, "  mode: fast\n"}} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRunner(t, Options{StandIn: true, PlainRoot: tc.plain, Machine: tc.machine})
			res := r.RunJob(t, Job{
				// A stage name gitlab-runner may invent later is run too.
				ExtraStages: []string{"step_release"},
				Stages:      map[string][]string{"step_release": {`echo "release step in $(cat /var/tmp/stage-state)"`}},
				Script: []string{
					`echo "hello from job $CI_JOB_ID"`,
					`test "$PWD" = "$CI_PROJECT_DIR"`,
					`echo "runner at $(command -v gitlab-runner)"`,
					`grep -q bookworm /etc/os-release`,
					`echo "state of $CI_JOB_ID" > /var/tmp/stage-state`,
				},
				AfterScript: []string{`echo "after: $CI_JOB_STATUS"`},
			})
			mustPass(t, res)
			var stages time.Duration
			for _, s := range res.Stages {
				stages += s.Took
			}
			t.Logf("whole job through the binary: prepare %s, %d run stages %s (%s each on average), cleanup %s",
				res.Prepares[0].Took.Round(time.Millisecond), len(res.Stages), stages.Round(time.Millisecond),
				(stages / time.Duration(len(res.Stages))).Round(time.Millisecond), res.Cleanups[0].Took.Round(time.Millisecond))
			b := res.Stage("build_script")
			if !strings.Contains(b.Stdout, "hello from job ") {
				t.Errorf("build_script output lacks the job's echo:\n%s", res.Log)
			}
			if !strings.Contains(b.Stdout, "runner at "+gitlab.MachineRunnerBinary) {
				t.Errorf("gitlab-runner is not on PATH at %s in the machine:\n%s", gitlab.MachineRunnerBinary, b.Stdout)
			}
			if s := res.Stage("step_release"); s == nil || !strings.Contains(s.Stdout, "release step in state of ") {
				t.Errorf("step_release did not run in the same machine:\n%s", res.Log)
			}
			if a := res.Stage("after_script"); a == nil || !strings.Contains(a.Stdout, "after: success") {
				t.Errorf("after_script did not see CI_JOB_STATUS=success:\n%s", res.Log)
			}
			if len(res.Prepares) != 1 || strings.Contains(res.Prepares[0].Stderr, "disabled") {
				t.Errorf("prepare: %+v", res.Prepares)
			}
			for _, c := range res.Cleanups {
				if c.Exit != 0 {
					t.Errorf("cleanup exit %d:\n%s", c.Exit, c.Stderr)
				}
			}
			r.AssertClean(t)
		})
	}
}

// The job script's own exit code is a build failure: exit 1 to the runner,
// the real code in BUILD_EXIT_CODE_FILE; after_script and the on_failure
// stages still run.
// runExecs are the two run stage executables, for tests of the executor
// contract: nspawn-runner-stage (the run_exec toml prints) and
// nspawn-runner run.
var runExecs = []struct {
	name string
	main bool
}{{"stage", false}, {"main", true}}

func TestBuildFailure(t *testing.T) {
	for _, x := range runExecs {
		t.Run(x.name, func(t *testing.T) { scriptFailure(t, x.main) })
	}
}

func scriptFailure(t *testing.T, mainRun bool) {
	r := NewRunner(t, Options{StandIn: true, MainRun: mainRun})
	for _, script := range [][]string{
		{`echo before`, `exit 42`, `echo not reached`},
		{`echo before`, `sh -c 'exit 42'`, `echo not reached`},
	} {
		res := r.RunJob(t, Job{
			Script:      script,
			AfterScript: []string{`echo "after ran: $CI_JOB_STATUS"`},
		})
		b := res.Stage("build_script")
		if res.Status != "failed" || b == nil || b.Exit != buildFailure || b.CodeFile != "42" {
			t.Fatalf("script %q: status %s, build_script %+v; want a build failure with code 42\n%s", script, res.Status, b, res.Log)
		}
		if strings.Contains(b.Stdout, "not reached") {
			t.Errorf("the script went on after the failure:\n%s", b.Stdout)
		}
		if a := res.Stage("after_script"); a == nil || a.Exit != 0 || !strings.Contains(a.Stdout, "after ran: failed") {
			t.Errorf("after_script did not run after the failure:\n%s", res.Log)
		}
		for _, n := range []string{"archive_cache_on_failure", "upload_artifacts_on_failure", "cleanup_file_variables"} {
			if s := res.Stage(n); s == nil || s.Exit != 0 {
				t.Errorf("%s: %+v", n, s)
			}
		}
		if len(res.Cleanups) != 1 || res.Cleanups[0].Exit != 0 {
			t.Errorf("cleanup: %+v", res.Cleanups)
		}
	}
	r.AssertClean(t)
}

func cacheStages(j *Job, cacheDir, projectDir string) {
	file := cacheFile(projectDir, cacheDir, j.ProjectPath, "default-protected")
	j.Stages = map[string][]string{
		"restore_cache": runnerCall("Extracting cache", "cache-extractor", "--file", file, "--timeout", "10"),
		"archive_cache": runnerCall("Creating cache", "cache-archiver", "--file", file, "--timeout", "10", "--path", "vendor/"),
	}
}

// A cache written by one job is restored by the next job of the same
// project, and seen by no other project, on this or another instance.
func TestCachePerProject(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true})
	token := fmt.Sprintf("cache-token-%d", os.Getpid())
	var spoof []Var
	job := func(instance string, project int64, script ...string) *Result {
		j := Job{Instance: instance, ProjectID: project, ProjectPath: "group/project", Script: script, Vars: spoof}
		cacheStages(&j, gitlab.MachineCacheDir, filepath.Join(gitlab.MachineBuildsDir, j.ProjectPath))
		return r.RunJob(t, j)
	}
	a := "https://gitlab-a.example"
	res := job(a, 1, `mkdir -p vendor`, `echo `+token+` > vendor/data.txt`)
	mustPass(t, res)
	if s := res.Stage("archive_cache"); !strings.Contains(s.Stdout, "STANDIN archived") {
		t.Fatalf("archive_cache did not run the runner binary:\n%s", res.Log)
	}

	res = job(a, 1, `test "$(cat vendor/data.txt)" = `+token)
	mustPass(t, res)
	if s := res.Stage("restore_cache"); !strings.Contains(s.Stdout, "STANDIN extracted") {
		t.Errorf("restore_cache did not extract:\n%s", res.Log)
	}

	for _, other := range []struct {
		instance string
		project  int64
	}{{a, 2}, {"https://gitlab-b.example", 1}} {
		res = job(other.instance, other.project, `test ! -e vendor/data.txt`, `test -z "$(find /cache -type f)"`)
		mustPass(t, res)
		if s := res.Stage("restore_cache"); !strings.Contains(s.Stdout, "STANDIN no cache") {
			t.Errorf("project %d on %s found a cache:\n%s", other.project, other.instance, res.Log)
		}
	}

	// A job that sets CI_PROJECT_ID and CI_SERVER_URL variables (they
	// reach the executor as CUSTOM_ENV_*) still gets its own project's
	// cache: the key comes from the runner's payload.
	spoof = []Var{{"CI_PROJECT_ID", "1"}, {"CI_SERVER_URL", a}}
	res = job(a, 2, `test ! -e vendor/data.txt`, `test -z "$(find /cache -type f)"`)
	mustPass(t, res)

	// On the host: one directory per project; the first project's holds
	// the archive.
	key := gitlab.Project{Instance: a, ID: 1}.Key()
	if _, err := os.Stat(filepath.Join(r.CacheDir, key, "group/project/default-protected/cache.zip")); err != nil {
		t.Errorf("cache archive not on the host: %v", err)
	}
	ents, _ := os.ReadDir(r.CacheDir)
	if len(ents) != 3 {
		t.Errorf("cache dir has %d entries, want 3 (one per project and instance)", len(ents))
	}
	r.AssertClean(t)
}

// Jobs run with gitlab-runner exec (a local path as repo_url, a made-up
// project id) keep a cache per local repository, which neither another
// repository nor a server project sees.
func TestCacheForLocalJobs(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true})
	token := fmt.Sprintf("local-cache-token-%d", os.Getpid())
	repo := "/home/dev/app"
	job := func(response func(id int64) string, script ...string) *Result {
		j := Job{ID: uniqueJobID(), Script: script}
		if response != nil {
			j.Response = response(j.ID)
		}
		j.ProjectPath = "group/project"
		cacheStages(&j, gitlab.MachineCacheDir, filepath.Join(gitlab.MachineBuildsDir, j.ProjectPath))
		return r.RunJob(t, j)
	}
	local := func(repo string) func(int64) string {
		return func(id int64) string {
			return fmt.Sprintf(`{"id": %d, "job_info": {"project_id": 0}, "git_info": {"repo_url": %q}}`, id, repo)
		}
	}
	mustPass(t, job(local(repo), `mkdir -p vendor`, `echo `+token+` > vendor/data.txt`))
	res := job(local(repo), `test "$(cat vendor/data.txt)" = `+token)
	mustPass(t, res)
	if s := res.Stage("restore_cache"); !strings.Contains(s.Stdout, "STANDIN extracted") {
		t.Errorf("restore_cache did not extract:\n%s", res.Log)
	}
	for name, resp := range map[string]func(int64) string{"other repository": local("/home/dev/other"), "server project": nil} {
		res := job(resp, `test ! -e vendor/data.txt`, `test -z "$(find /cache -type f)"`)
		mustPass(t, res)
		if s := res.Stage("restore_cache"); !strings.Contains(s.Stdout, "STANDIN no cache") {
			t.Errorf("%s found the local job's cache:\n%s", name, res.Log)
		}
	}
	key := gitlab.Project{Local: repo}.Key()
	if _, err := os.Stat(filepath.Join(r.CacheDir, key, "group/project/default-protected/cache.zip")); err != nil {
		t.Errorf("local job's cache archive not on the host: %v", err)
	}
	r.AssertClean(t)
}

// A file from build_script is collected by upload_artifacts_on_success,
// which calls gitlab-runner inside the machine: the stand-in prints its
// argv and the file's contents.
func TestArtifactsThroughRunnerBinary(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true})
	content := "artifact ✓ " + strconv.Itoa(os.Getpid())
	j := Job{
		Script: []string{`echo "` + content + `" > out.txt`},
		Stages: map[string][]string{
			"upload_artifacts_on_success": runnerCall("Uploading artifacts", "artifacts-uploader",
				"--url", "https://gitlab-a.example", "--token", "job-token", "--id", "1",
				"--path", "out.txt", "--artifact-format", "zip", "--artifact-type", "archive"),
		},
	}
	res := r.RunJob(t, j)
	mustPass(t, res)
	up := res.Stage("upload_artifacts_on_success").Stdout
	if !strings.Contains(up, "STANDIN argv: [artifacts-uploader] [--url] [https://gitlab-a.example]") {
		t.Errorf("the uploader's argv is not as passed:\n%s", up)
	}
	want := "STANDIN saw out.txt " + base64.StdEncoding.EncodeToString([]byte(content+"\n"))
	if !strings.Contains(up, want) {
		t.Errorf("the uploader did not see the build's file; want %q in\n%s", want, up)
	}
	r.AssertClean(t)
}

// Without a gitlab-runner on the host, the job log says once that caches
// and artifacts are disabled, and the job still runs.
func TestNoRunnerBinary(t *testing.T) {
	r := NewRunner(t, Options{})
	if p, err := exec.LookPath("gitlab-runner"); err == nil {
		t.Skipf("this host has %s; the test needs a host without one", p)
	}
	j := Job{
		Script: []string{`echo built > out.txt`},
		Stages: map[string][]string{
			"upload_artifacts_on_success": runnerCall("Uploading artifacts", "artifacts-uploader", "--path", "out.txt"),
		},
	}
	res := r.RunJob(t, j)
	mustPass(t, res)
	if n := strings.Count(res.Prepares[0].Stderr, "caches and artifacts are disabled"); n != 1 {
		t.Errorf("prepare said %d times that caches and artifacts are disabled, want once:\n%s", n, res.Prepares[0].Stderr)
	}
	if s := res.Stage("upload_artifacts_on_success"); !strings.Contains(s.Stdout, "Missing gitlab-runner") {
		t.Errorf("upload stage: %+v", s)
	}
	r.AssertClean(t)
}

// SIGTERM during a script (the runner's cancel) ends run promptly with
// nothing of the stage left running; cleanup then removes the machine.
func TestCancel(t *testing.T) {
	for _, x := range runExecs {
		t.Run(x.name, func(t *testing.T) { cancelJob(t, x.main) })
	}
}

func cancelJob(t *testing.T, mainRun bool) {
	r := NewRunner(t, Options{StandIn: true, MainRun: mainRun})
	res := r.RunJob(t, Job{
		Script:      []string{`sleep 1000 & echo "sleeping as $!"`, `echo CANCEL-READY`, `wait`},
		AfterScript: []string{`echo after-script-ran`},
		CancelOn:    "CANCEL-READY",
		AfterStage: func(s StageResult) {
			if s.Name != "build_script" {
				return
			}
			// run has exited: the stage's processes must be gone while
			// the machine itself still runs until cleanup.
			for _, p := range r.processes() {
				if p.comm == "sleep" || p.comm == "bash" {
					t.Errorf("after run exited on SIGTERM, the stage's process %d (%s, state %c) still runs", p.pid, p.comm, processState(p.pid))
				}
			}
		},
	})
	b := res.Stage("build_script")
	if res.Status != "canceled" || b == nil {
		t.Fatalf("status %s:\n%s", res.Status, res.Log)
	}
	t.Logf("run exited %d after %s (SIGTERM sent when the script was running)", b.Exit, b.Took)
	if b.Exit == 0 || strings.Contains(b.Stderr, "[harness]") {
		t.Errorf("run after SIGTERM: exit %d, stderr %s", b.Exit, b.Stderr)
	}
	if res.Stage("after_script") != nil {
		t.Errorf("after_script ran after a cancel")
	}
	if len(res.Cleanups) != 1 || res.Cleanups[0].Exit != 0 {
		t.Errorf("cleanup after cancel: %+v", res.Cleanups)
	}
	r.AssertClean(t)
}

// A prepare that fails (the image does not exist yet) is a system failure
// naming the images there are; the runner's retry succeeds once it exists.
func TestPrepareRetry(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true})
	res := r.RunJob(t, Job{
		Image: "registry.example/group/later", HasImage: true,
		Script: []string{`echo ran`},
	})
	if res.Status != "system" {
		t.Fatalf("a job with a missing image: status %s, want a system failure:\n%s", res.Status, res.Log)
	}

	res = r.RunJob(t, Job{
		Image: "later", HasImage: true,
		Script: []string{`echo ran`},
		BeforePrepare: func(attempt int) {
			if attempt == 2 {
				r.AddImage(t, "later")
			}
		},
	})
	mustPass(t, res)
	if len(res.Prepares) != 2 || res.Prepares[0].Exit != systemFailure || res.Prepares[1].Exit != 0 {
		t.Fatalf("prepares: %+v", res.Prepares)
	}
	if !strings.Contains(res.Prepares[0].Stderr, BaseImage) {
		t.Errorf("the failed prepare does not name the available images:\n%s", res.Prepares[0].Stderr)
	}
	t.Logf("failed prepare said: %s", res.Prepares[0].Stderr)
	if len(res.Cleanups) != 2 || res.Cleanups[0].Exit != 0 {
		t.Errorf("cleanup after the failed prepare: %+v", res.Cleanups)
	}
	r.AssertClean(t)
}

// Eight jobs at once from one image, each in its own machine.
func TestConcurrentJobs(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true})
	eightJobs(t, r)
	r.AssertClean(t)
}

// eightJobs runs eight jobs of r at once and checks each stayed in its own
// machine from build_script to after_script.
func eightJobs(t *testing.T, r *Runner) {
	t.Run("group", func(t *testing.T) {
		for i := 0; i < 8; i++ {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				res := r.RunJob(t, Job{
					ProjectID: int64(100 + i),
					Script: []string{
						`echo "$CI_JOB_ID" > /var/tmp/who`,
						`sleep 2`,
						`test "$(cat /var/tmp/who)" = "$CI_JOB_ID"`,
					},
					AfterScript: []string{`test "$(cat /var/tmp/who)" = "$CI_JOB_ID" && echo same-machine`},
				})
				mustPass(t, res)
				if !strings.Contains(res.Stage("after_script").Stdout, "same-machine") {
					t.Errorf("after_script did not find build_script's file:\n%s", res.Log)
				}
			})
		}
	})
}

// Variables with quotes, $, newlines, control characters and unicode
// arrive intact inside the job; the runner's own environment does not.
func TestVariablesIntact(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true})
	var vars []Var
	var script []string
	for i, v := range hostileValues {
		k := "WEIRD_" + string(rune('A'+i))
		vars = append(vars, Var{k, v})
		script = append(script, `printf '%s=%s\n' `+k+` "$(printf '%s' "$`+k+`" | base64 -w0)"`)
	}
	script = append(script, `if env | grep -q '^CUSTOM_ENV_'; then echo "runner env leaked"; exit 3; fi`)
	res := r.RunJob(t, Job{Vars: vars, Script: script})
	mustPass(t, res)
	got := decodeVars(res.Stage("build_script").Stdout)
	for i, v := range hostileValues {
		k := "WEIRD_" + string(rune('A'+i))
		if got[k] != v {
			t.Errorf("%s = %q in the job, want %q", k, got[k], v)
		}
	}
	r.AssertClean(t)
}

// Hostile image names and job ids are refused as system failures, and
// touch nothing: no machine, no other job's machine, no image.
func TestHostileInput(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true})
	for _, img := range []string{
		"../../../etc", "bookworm/../..", "..", ".", ".machines", ".meta", "bookworm/..",
		"$(touch /tmp/nrt-gl-pwned)", "bookworm;reboot", "-rf", "a b", "foo\nbar",
		strings.Repeat("a", 300), "nonexistent",
	} {
		res := r.RunJob(t, Job{Image: img, HasImage: true, Script: []string{`echo SHOULD-NOT-RUN`}})
		if res.Status != "system" || len(res.Stages) != 0 {
			t.Errorf("image %q: status %s, want a system failure before any stage:\n%s", img, res.Status, res.Log)
		}
		for _, p := range res.Prepares {
			if p.Exit != systemFailure {
				t.Errorf("image %q: prepare exit %d, want %d", img, p.Exit, systemFailure)
			}
		}
	}
	for _, resp := range []string{
		`{"id": "1/../2", "job_info": {"project_id": 1}}`,
		`{"id": -1}`,
		`{"id": "abc"}`,
		`{"id": "../../x"}`,
		`{"job_info": {"project_id": 1}}`,
		`{"id": 1e400}`,
		`not json`,
	} {
		res := r.RunJob(t, Job{Response: resp, Script: []string{`echo SHOULD-NOT-RUN`}})
		if res.Status != "system" || len(res.Stages) != 0 {
			t.Errorf("payload %s: status %s, want a system failure:\n%s", resp, res.Status, res.Log)
		}
	}
	for _, id := range []string{"../x", "a b", "x/y", strings.Repeat("i", 65), "$(id)"} {
		res := r.RunJob(t, Job{FlagID: id, Script: []string{`echo SHOULD-NOT-RUN`}})
		if res.Status != "system" {
			t.Errorf("--id %q: status %s, want a system failure:\n%s", id, res.Status, res.Log)
		}
	}
	if _, err := os.Stat("/tmp/nrt-gl-pwned"); err == nil {
		os.Remove("/tmp/nrt-gl-pwned")
		t.Errorf("an image name ran a command on the host")
	}
	if _, err := os.Stat(filepath.Join(r.Root, BaseImage, "usr/bin/bash")); err != nil {
		t.Errorf("the base image was damaged: %v", err)
	}
	// The runner still works.
	mustPass(t, r.RunJob(t, Job{Script: []string{`true`}}))
	r.AssertClean(t)
}

// The allowlist refuses an existing image that is not on it, naming the
// allowed ones.
func TestAllowedImages(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true, AllowedImages: []string{BaseImage}})
	r.AddImage(t, "other")
	res := r.RunJob(t, Job{Image: "other", HasImage: true, Script: []string{`true`}})
	if res.Status != "system" || !strings.Contains(res.Prepares[0].Stderr, BaseImage) {
		t.Errorf("image not allowed: status %s:\n%s", res.Status, res.Log)
	}
	t.Logf("refused prepare said: %s", res.Prepares[0].Stderr)
	mustPass(t, r.RunJob(t, Job{Image: BaseImage, HasImage: true, Script: []string{`true`}}))
	r.AssertClean(t)
}

// With gitlab.builds_dir, a project's checkout persists between its jobs
// (GIT_STRATEGY fetch) and is not visible to other projects.
func TestPersistentBuildsDir(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true, BuildsDir: true})
	run := func(project int64) *Result {
		res := r.RunJob(t, Job{ProjectID: project, Script: []string{`ls -la`}})
		mustPass(t, res)
		if res.Config["builds_dir_is_shared"] != true {
			t.Errorf("config: builds_dir_is_shared = %v with a persistent builds dir, want true", res.Config["builds_dir_is_shared"])
		}
		return res
	}
	for i, want := range []struct {
		project int64
		log     string
	}{{1, "Cloning"}, {1, "Fetching"}, {2, "Cloning"}} {
		res := run(want.project)
		if s := res.Stage("get_sources"); !strings.Contains(s.Stdout, want.log) {
			t.Errorf("job %d (project %d): get_sources said %q, want %q", i, want.project, s.Stdout, want.log)
		}
	}
	r.AssertClean(t)
}

// The leftover check the other tests rely on does see a live machine: a
// prepared job without cleanup shows up as processes, a subvolume and a
// ps entry; cleanup then removes all of it, and a second cleanup is fine.
func TestLeftoverCheckSeesMachines(t *testing.T) {
	r := NewRunner(t, Options{StandIn: true})
	tmp := t.TempDir()
	resp := filepath.Join(tmp, "response.json")
	os.WriteFile(resp, []byte(`{"id": 4242, "job_info": {"project_id": 1}, "git_info": {"repo_url": "https://gitlab-a.example/g/p.git"}}`), 0o600)
	env := append(os.Environ(), "JOB_RESPONSE_FILE="+resp, "SYSTEM_FAILURE_EXIT_CODE=2", "BUILD_FAILURE_EXIT_CODE=1", "TMPDIR="+tmp)
	if _, errOut, code := r.call(context.Background(), tmp, env, r.machineCmd("prepare", "--default-image", BaseImage)...); code != 0 {
		t.Fatalf("prepare: exit %d: %s", code, errOut)
	}
	left := strings.Join(r.leftovers(), "\n")
	for _, want := range []string{"process ", "subvolume ", "ps --json", "cgroup "} {
		if !strings.Contains(left, want) {
			t.Errorf("leftovers() with a live machine lacks %q:\n%s", want, left)
		}
	}
	for i := 0; i < 2; i++ {
		if _, errOut, code := r.call(context.Background(), tmp, env, r.machineCmd("cleanup")...); code != 0 {
			t.Errorf("cleanup %d: exit %d: %s", i+1, code, errOut)
		}
	}
	r.AssertClean(t)
}
