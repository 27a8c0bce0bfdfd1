package stage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nspawn-runner/nspawn-runner/machine/state"
)

func TestEnv(t *testing.T) {
	env := Env([]string{"/opt/gitlab"}, []string{"FOO=1"})
	if env[0] != "PATH=/opt/gitlab:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" || env[len(env)-1] != "FOO=1" || !slices.Contains(env, "HOME=/root") {
		t.Errorf("Env = %q", env)
	}
}

// TestRunRefusesEarly: what Run cannot do with what it was given (no
// record, a record of an earlier binary without the configuration's
// shell, services' logs without ServiceLogs, a machine not running) is
// an error before anything is written or started: ErrUnsupported is the
// stage executable's cue to hand the stage to nspawn-runner run, which
// must find everything as it was.
func TestRunRefusesEarly(t *testing.T) {
	const id, key = "42", "0123456789abcdef"
	name, err := state.Name("", id, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		rec  *state.Record // nil: none
		m    Machine
		want error
	}{
		{"no record", nil, Machine{}, state.ErrNotFound},
		{"record without shell", &state.Record{State: state.Running}, Machine{}, ErrUnsupported},
		{"debug services without their logs", &state.Record{State: state.Running, Shell: "bash", DebugServices: true}, Machine{}, ErrUnsupported},
		{"not running", &state.Record{State: state.Preparing, Shell: "bash"}, Machine{}, ErrDead},
		{"old record, shell from the configuration, not running", &state.Record{State: state.Stopping}, Machine{Shell: "bash"}, ErrDead},
		// NspawnPID 0 is no process: the machine is gone.
		{"systemd-nspawn gone", &state.Record{State: state.Running, Shell: "bash"}, Machine{}, ErrDead},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l := state.LayoutOf("", dir, "", name)
			if err := os.MkdirAll(l.Scripts, 0o700); err != nil {
				t.Fatal(err)
			}
			if tc.rec != nil {
				if err := state.Write(l.Record, tc.rec); err != nil {
					t.Fatal(err)
				}
			}
			script := filepath.Join(dir, "script")
			if err := os.WriteFile(script, []byte("exit 0\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			tc.m.RunDir = dir
			err := Run(context.Background(), tc.m, Request{JobID: id, Key: key, Script: script, Stage: "build_script"})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Run = %v, want %v", err, tc.want)
			}
			if ents, _ := os.ReadDir(l.Scripts); len(ents) != 0 {
				t.Errorf("Run left %d file(s) in the scripts directory", len(ents))
			}
		})
	}
}
