package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/cmd/internal/runstage"
	"github.com/nspawn-runner/nspawn-runner/gitlab"
	"github.com/nspawn-runner/nspawn-runner/machine/state"
	"github.com/nspawn-runner/nspawn-runner/sys/ns"
)

// TestHandOver: what the stage executable does not do itself goes to
// nspawn-runner run with the very same arguments, and only that.
func TestHandOver(t *testing.T) {
	dir := t.TempDir()
	runDir := filepath.Join(dir, "run")
	plain := filepath.Join(dir, "plain.yaml")
	if err := os.WriteFile(plain, []byte("run_dir: "+runDir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	complexCfg := filepath.Join(dir, "complex.yaml")
	if err := os.WriteFile(complexCfg, []byte("run_dir: &r "+runDir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A machine prepared by an earlier binary: its record names no shell.
	name, err := state.Name("", "7", keyOf(t, "7"))
	if err != nil {
		t.Fatal(err)
	}
	l := state.LayoutOf("", runDir, "", name)
	if err := os.MkdirAll(l.Scripts, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := state.Write(l.Record, &state.Record{State: state.Running}); err != nil {
		t.Fatal(err)
	}
	// A machine with its own user namespace, which only a build with cgo
	// enters (make build builds this executable without).
	usersName, err := state.Name("", "9", keyOf(t, "9"))
	if err != nil {
		t.Fatal(err)
	}
	lu := state.LayoutOf("", runDir, "", usersName)
	if err := os.MkdirAll(lu.Scripts, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := state.Write(lu.Record, &state.Record{State: state.Running, Shell: "bash", PrivateUsers: true}); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		handed bool
		code   int
		stderr string
	}{
		{"help", []string{"run", "--help"}, true, 2, "exec failed"},
		{"another command", []string{"ps"}, true, 2, "exec failed"},
		{"configuration beyond the reader", []string{"--config", complexCfg, "run", "--id", "7", script, "build_script"}, true, 2, "exec failed"},
		{"record of an earlier binary", []string{"--config", plain, "run", "--id", "7", script, "build_script"}, true, 2, "exec failed"},
		{"no machine", []string{"--config", plain, "run", "--id", "8", script, "build_script"}, false, 2, "did prepare succeed?"},
		// With cgo (go test's default here) it goes on and finds the
		// machine gone (no systemd-nspawn in the record).
		{"private users", []string{"--config", plain, "run", "--id", "9", script, "build_script"}, !ns.CanEnterUserNS, 2, map[bool]string{true: "exec failed", false: "is gone"}[!ns.CanEnterUserNS]},
		{"no job", []string{"--config", plain, "run", script, "build_script"}, false, 2, "no job id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut := tempFile(t), tempFile(t)
			var handed []string
			hand := func(args []string, why error) error {
				handed = args
				return errors.New("exec failed")
			}
			env := map[string]string{"SYSTEM_FAILURE_EXIT_CODE": "2", "BUILD_FAILURE_EXIT_CODE": "1"}
			code := run(tc.args, func(k string) string { return env[k] }, out, errOut, hand)
			if tc.handed != (handed != nil) || tc.handed && !slices.Equal(handed, tc.args) {
				t.Errorf("handed over %q, want %v (%q)", handed, tc.handed, tc.args)
			}
			b, _ := os.ReadFile(errOut.Name())
			if code != tc.code || !strings.Contains(string(b), tc.stderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, b, tc.code, tc.stderr)
			}
			if ents, _ := os.ReadDir(l.Scripts); len(ents) != 0 {
				t.Errorf("%d script(s) left in the scripts directory", len(ents))
			}
		})
	}
}

// keyOf is the job key every stage of a job given by --id computes.
func keyOf(t *testing.T, id string) string {
	t.Helper()
	job, err := jobOf(id)
	if err != nil {
		t.Fatal(err)
	}
	return job.Key
}

func tempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func jobOf(id string) (gitlab.Job, error) {
	return runstage.Job(func(string) string { return "" }, id, false)
}
