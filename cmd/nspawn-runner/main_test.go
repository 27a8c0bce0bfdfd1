package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// host is a temporary configuration, image root and run directory, so
// that no test reads or writes the real ones.
type host struct {
	config, root, runDir string
	// global are the global flags naming them, as toml writes them.
	global []string
}

func newHost(t *testing.T, config string) host {
	t.Helper()
	dir := t.TempDir()
	h := host{config: filepath.Join(dir, "nspawn-runner.yaml"), root: filepath.Join(dir, "root"), runDir: filepath.Join(dir, "run")}
	if err := os.WriteFile(h.config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	h.global = []string{"--config", h.config, "--root", h.root, "--run-dir", h.runDir}
	return h
}

// call runs the command line in-process with env as its whole environment.
func call(env map[string]string, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, func(k string) string { return env[k] }, &out, &errb)
	return code, out.String(), errb.String()
}

// gitlabEnv is what gitlab-runner sets for every stage, with exit codes
// that tell ours (2 for a usage error) from its.
var gitlabEnv = map[string]string{"SYSTEM_FAILURE_EXIT_CODE": "7", "BUILD_FAILURE_EXIT_CODE": "6"}

// The exit codes of the command line itself, before any command runs.
func TestRunExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("machine:\n  mode: turbo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 2},
		{[]string{"bogus"}, 2},
		{[]string{"--no-such-flag"}, 2},
		{[]string{"--help"}, 0},
		{[]string{"help", "prepare"}, 0},
		{[]string{"--version"}, 0},
		{[]string{"--config", filepath.Join(dir, "missing.yaml"), "chroot-list"}, 1},
		{[]string{"--config", bad, "chroot-list"}, 1},
		// Executor stages exit with gitlab-runner's system-failure code
		// for anything that is not the job script's own failure.
		{[]string{"run", "--no-such-flag"}, 7},
		{[]string{"--config", bad, "prepare"}, 7},
		{[]string{"--config", bad, "cleanup"}, 7},
		{[]string{"--config", bad, "gitlab-config"}, 7},
	} {
		if got, _, _ := call(gitlabEnv, tc.args...); got != tc.want {
			t.Errorf("run(%q) = %d, want %d", tc.args, got, tc.want)
		}
	}
}

// A stage whose arguments do not parse is a system failure, also when
// global flags with values come first, as toml writes them: the value of
// --config is not the command.
func TestStageArgsAfterGlobalFlags(t *testing.T) {
	h := newHost(t, "")
	g := &globals{}
	app, cmds := newApp(g)
	var valued []string
	for _, f := range app.Model().Flags {
		if !f.IsBoolFlag() {
			valued = append(valued, "--"+f.Name)
		}
	}
	if len(valued) < 3 {
		t.Fatalf("global flags with a value: %q; want at least --config, --root, --run-dir", valued)
	}
	for name, c := range cmds {
		if !c.stage {
			continue
		}
		for _, flag := range valued {
			for _, global := range [][]string{{flag, h.root}, {flag + "=" + h.root}, append([]string{flag, h.root}, h.global...)} {
				args := append(append([]string{}, global...), name, "--no-such-flag")
				if code, _, errOut := call(gitlabEnv, args...); code != 7 || !strings.Contains(errOut, "no-such-flag") {
					t.Errorf("run(%q) = %d, %q; want 7 and the bad flag named", args, code, errOut)
				}
			}
		}
	}
	// Missing arguments, too.
	if code, _, _ := call(gitlabEnv, append(h.global, "run")...); code != 7 {
		t.Errorf("run without a script = %d, want 7", code)
	}
	// A flag's value that happens to be a stage's name is still a value:
	// chroot-list's bad flag is a usage error.
	for _, flag := range valued {
		args := []string{flag, "prepare", "chroot-list", "--no-such-flag"}
		if code, _, _ := call(gitlabEnv, args...); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}

// Only chroot-login NAME -- CMD passes a child's status on. A failed
// child of any other command (ansible-playbook exits 2, our usage-error
// code) is an error of ours: exit 1 and one line saying what failed.
func TestChildStatusIsNotOurs(t *testing.T) {
	child := exec.Command("sh", "-c", "exit 2").Run()
	var ee *exec.ExitError
	if !errors.As(child, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("sh -c 'exit 2' = %v", child)
	}
	h := newHost(t, "")
	for _, tc := range []struct {
		name   string
		err    error
		code   int
		stderr string
	}{
		{"chroot-maintenance", fmt.Errorf("playbook /etc/nspawn-runner/x.yaml: ansible-playbook: %w", child), 1,
			"nspawn-runner chroot-maintenance: playbook /etc/nspawn-runner/x.yaml: ansible-playbook: exit status 2\n"},
		{"chroot-create", fmt.Errorf("debootstrap bookworm: %w", child), 1, "nspawn-runner chroot-create: debootstrap bookworm: exit status 2\n"},
		{"chroot-login", &bootstrap.ExitError{Code: 42}, 42, ""},
		{"chroot-login", fmt.Errorf("login to x: %w", child), 1, "nspawn-runner chroot-login: login to x: exit status 2\n"},
	} {
		var out, errb bytes.Buffer
		g := &globals{getenv: func(string) string { return "" }, stdout: &out, stderr: &errb}
		app, cmds := newApp(g)
		// The command's own wiring is replaced by one that fails as told.
		err := tc.err
		cmds[tc.name] = &command{run: func(context.Context) error { return err }}
		args := append(append([]string{}, h.global...), tc.name, "x")
		if code := execute(app, cmds, g, args); code != tc.code || errb.String() != tc.stderr {
			t.Errorf("%s failing with %v: exit %d, stderr %q; want %d, %q", tc.name, tc.err, code, errb.String(), tc.code, tc.stderr)
		}
	}
}

// A missing systemd-nspawn is reported with the package to install, in
// image commands and stages alike.
func TestNspawnNotFoundAdvice(t *testing.T) {
	h := newHost(t, "")
	missing := fmt.Errorf("prepare x: %w", fmt.Errorf("systemd-nspawn: %w on PATH", nspawn.ErrNotFound))
	for name, code := range map[string]int{"chroot-login": 1, "prepare": 7} {
		var out, errb bytes.Buffer
		g := &globals{getenv: func(k string) string { return gitlabEnv[k] }, stdout: &out, stderr: &errb}
		app, cmds := newApp(g)
		stage := cmds[name].stage
		cmds[name] = &command{stage: stage, run: func(context.Context) error { return missing }}
		args := append(append([]string{}, h.global...), name, "x")
		if got := execute(app, cmds, g, args); got != code || !strings.HasSuffix(errb.String(), "systemd-nspawn not found on PATH (install systemd-container)\n") {
			t.Errorf("%s without systemd-nspawn: exit %d, stderr %q; want %d and the advice", name, got, errb.String(), code)
		}
	}
}

// Job variables never name the job's machine unless the configuration
// opts in: a job can set CI_JOB_ID to another job's id.
func TestJobIDFromVariables(t *testing.T) {
	vars := map[string]string{"CUSTOM_ENV_CI_JOB_ID": "4711", "CUSTOM_ENV_CI_SERVER_URL": "https://gitlab.example.com"}
	for k, v := range gitlabEnv {
		vars[k] = v
	}
	def := newHost(t, "")
	optIn := newHost(t, "gitlab:\n  job_id_from_variables: true\n")
	for _, stage := range [][]string{{"prepare", "bookworm"}, {"run", "script", "build_script"}, {"cleanup"}} {
		args := append(append([]string{}, def.global...), stage...)
		code, _, errOut := call(vars, args...)
		if code != 7 || !strings.Contains(errOut, "nspawn-runner "+stage[0]+": no job id") || !strings.Contains(errOut, "gitlab.job_id_from_variables") ||
			strings.Count(errOut, "\n") != 1 {
			t.Errorf("%s without payload or --id: exit %d, stderr %q; want 7 and one line saying why", stage[0], code, errOut)
		}
	}
	// Opted in, the id is taken: prepare goes on to the image, which this
	// empty root does not have.
	code, _, errOut := call(vars, append(optIn.global, "prepare", "bookworm")...)
	if code != 7 || !strings.Contains(errOut, `image "bookworm" does not exist`) {
		t.Errorf("prepare with job_id_from_variables: exit %d, stderr %q; want the image refused", code, errOut)
	}
	code, _, errOut = call(gitlabEnv, append(optIn.global, "prepare", "bookworm")...)
	if code != 7 || !strings.Contains(errOut, "no job id: JOB_RESPONSE_FILE, --id and CUSTOM_ENV_CI_JOB_ID are all missing") {
		t.Errorf("prepare with job_id_from_variables and no id at all: exit %d, stderr %q", code, errOut)
	}
	// A harness's --id needs no payload.
	code, _, errOut = call(gitlabEnv, append(def.global, "prepare", "bookworm", "--id", "harness-1")...)
	if code != 7 || !strings.Contains(errOut, `image "bookworm" does not exist`) {
		t.Errorf("prepare --id: exit %d, stderr %q; want the image refused", code, errOut)
	}
}

// toml NAME, as the original tool took it, is the default image and names
// the runner.
func TestTOMLImage(t *testing.T) {
	h := newHost(t, "")
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"toml", "buster"}, {"toml", "--default-image", "buster"}, {"toml", "buster", "--default-image", "buster"}} {
		code, out, errOut := call(nil, append(h.global, args...)...)
		if code != 0 {
			t.Fatalf("run(%q) = %d: %s", args, code, errOut)
		}
		for _, want := range []string{
			`name = "nspawn-runner-buster on ` + host + `"`,
			`prepare_args = ["--config", "` + h.config + `", "--root", "` + h.root + `", "--run-dir", "` + h.runDir + `", "prepare", "--default-image", "buster"]`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("run(%q) lacks %s:\n%s", args, want, out)
			}
		}
		if errOut != "" {
			t.Errorf("run(%q) warned: %s", args, errOut)
		}
	}
	code, out, errOut := call(nil, append(h.global, "toml")...)
	if code != 0 || !strings.Contains(out, `name = "nspawn-runner on `+host+`"`) || !strings.Contains(out, `"prepare"]`) || !strings.Contains(errOut, "no --default-image") {
		t.Errorf("toml without an image: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, args := range [][]string{{"toml", "buster", "--default-image", "sid"}, {"toml", "../etc"}, {"toml", "buster", "sid"}} {
		if code, out, _ := call(nil, append(h.global, args...)...); code != 2 || out != "" {
			t.Errorf("run(%q) = %d, stdout %q; want 2 and nothing printed", args, code, out)
		}
	}
}

// gitlab-config writes its JSON, and nothing else, to the stdout run is
// given.
func TestGitLabConfigStdout(t *testing.T) {
	h := newHost(t, "")
	code, out, errOut := call(gitlabEnv, append(h.global, "gitlab-config")...)
	if code != 0 || !strings.HasPrefix(out, "{") || !strings.Contains(out, `"builds_dir":"/builds"`) || errOut != "" {
		t.Errorf("gitlab-config: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// parseRun takes the run stage's command lines without kingpin: wherever it
// says yes, kingpin must select run with the same flags and arguments.
func TestParseRunAgreesWithKingpin(t *testing.T) {
	kingpinParse := func(args []string) (*globals, string, error) {
		g := &globals{}
		app, _ := newApp(g)
		app.Terminate(func(int) {})
		app.UsageWriter(io.Discard)
		app.ErrorWriter(io.Discard)
		name, err := app.Parse(args)
		return g, name, err
	}
	check := func(args []string) bool {
		t.Helper()
		fast := &globals{}
		ok := parseRun(args, fast)
		if !ok {
			if !reflect.DeepEqual(fast, &globals{}) {
				t.Errorf("parseRun(%q) = false but changed the globals: %+v", args, fast)
			}
			return false
		}
		kg, name, err := kingpinParse(args)
		if err != nil || name != "run" {
			t.Errorf("parseRun(%q) = true, kingpin: %q, %v", args, name, err)
			return true
		}
		// The whole of both: a flag added later with a default, or bound
		// anywhere in the globals, shows here.
		if !reflect.DeepEqual(fast, kg) {
			t.Errorf("parseRun(%q) = %+v, kingpin %+v", args, *fast, *kg)
		}
		return true
	}
	for _, tc := range []struct {
		args []string
		fast bool
	}{
		// gitlab-runner: run_args, then the script and the stage.
		{[]string{"run", "/tmp/x/script.", "build_script"}, true},
		{[]string{"--config", "/c.yaml", "--root", "/r", "--run-dir", "/d", "run", "/s", "step_script"}, true},
		// the harnesses: flags after the arguments.
		{[]string{"--config", "/c", "run", "/s", "x", "--id", "7", "--name-prefix", "p-", "--cgroup-parent", "cg"}, true},
		{[]string{"-v", "--debug", "--config=/c", "run", "--id=", "a", "b", "c"}, true},
		{[]string{"run", "", "x", "--verbose"}, true},
		{[]string{"--config", "run", "run", "run"}, true},
		{[]string{"run", "s", "--root=/a=b"}, true},
		// kingpin's: help, errors, what it reads specially.
		{nil, false},
		{[]string{"run"}, false},
		{[]string{"--id", "1", "run", "s"}, false},
		{[]string{"run", "s", "--id", "1", "--id", "2"}, false},
		{[]string{"-v", "--verbose", "run", "s"}, false},
		{[]string{"run", "--", "-s"}, false},
		{[]string{"run", "-", "s"}, false},
		{[]string{"run", "@args", "s"}, false},
		{[]string{"run", "s", "--id", "@f"}, false},
		{[]string{"run", "s", "--id", "-1"}, false},
		{[]string{"run", "s", "--id"}, false},
		{[]string{"run", "s", "--help"}, false},
		{[]string{"--version"}, false},
		{[]string{"-vh", "run", "s"}, false},
		{[]string{"--verbose=true", "run", "s"}, false},
		{[]string{"--no-verbose", "run", "s"}, false},
		{[]string{"prepare", "bookworm"}, false},
		{[]string{"help", "run"}, false},
		{[]string{"run", "s", "--bogus"}, false},
	} {
		if got := check(tc.args); got != tc.fast {
			t.Errorf("parseRun(%q) = %v, want %v", tc.args, got, tc.fast)
		}
	}
	// Random command lines from pieces that matter to either parser, most
	// of them with a "run" somewhere.
	pieces := [][]string{{"run"}, {"s"}, {""}, {"-v"}, {"--verbose"}, {"--debug"}, {"--root", "/r"}, {"--root=/x"}, {"--root"},
		{"--run-dir", "d"}, {"--config", "run"}, {"--config="}, {"--id", "1"}, {"--id=1"}, {"--id", ""}, {"--name-prefix", "p"},
		{"--cgroup-parent", "g"}, {"--"}, {"-"}, {"@f"}, {"-1"}, {"--bogus"}, {"help"}, {"prepare"}, {"="}, {"--id"}}
	rng := rand.New(rand.NewPCG(11, 13))
	fast := 0
	for range 5000 {
		var args []string
		for range rng.IntN(6) {
			args = append(args, pieces[rng.IntN(len(pieces))]...)
		}
		if rng.IntN(10) < 8 {
			at := rng.IntN(len(args) + 1)
			args = append(args[:at], append([]string{"run"}, args[at:]...)...)
		}
		if check(args) {
			fast++
		}
	}
	if fast == 0 {
		t.Errorf("no random command line took the fast parse")
	}
}

// The detached refill runs in /: every path it gets is absolute, and it
// gets this call's machine flags.
func TestRefillCommand(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	g := &globals{configPath: "rel.yaml", verbose: true}
	g.cfg.Root, g.cfg.RunDir = "images", "/run/x"
	argv := g.refillCommand(&machineFlags{namePrefix: "p-", cgroupParent: "cg"})
	want := []string{"--config", filepath.Join(wd, "rel.yaml"), "--verbose", "--root", filepath.Join(wd, "images"), "--run-dir", "/run/x", "pool-fill", "--name-prefix", "p-", "--cgroup-parent", "cg"}
	if len(argv) != len(want)+1 || !slices.Equal(argv[1:], want) {
		t.Errorf("refillCommand = %q, want [EXE %q]", argv, want)
	}
}
