package integration

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// hostileValues are job variable values that must reach the job intact.
var hostileValues = []string{
	`plain`,
	`it's "quoted" and 'single'`,
	`$HOME ${PATH} $(echo no) ` + "`echo no`" + ` \$ \\ \n`,
	"line one\nline two\n\ttabbed\r\n",
	"unicode: été ✓ 日本語 🚀",
	"control: \x01\x1b[31mred\x7f",
	"",
	`'`, `\`, `$'x'`, `"`,
}

// TestStageScriptQuoting runs the harness's stage scripts with the host's
// bash, without a machine: the scripts a runner writes must carry every
// value intact, or the job tests would test the harness, not the runner.
func TestStageScriptQuoting(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("needs bash")
	}
	var vars []Var
	var cmds []string
	for i, v := range hostileValues {
		k := "WEIRD_" + string(rune('A'+i))
		vars = append(vars, Var{k, v})
		cmds = append(cmds, `printf '%s=%s\n' `+k+` "$(printf '%s' "$`+k+`" | base64 -w0)"`)
	}
	p := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(p, []byte(stageScript(vars, cmds)), 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bash, p).CombinedOutput()
	if err != nil {
		t.Fatalf("script failed: %v\n%s", err, out)
	}
	got := decodeVars(string(out))
	for i, v := range hostileValues {
		k := "WEIRD_" + string(rune('A'+i))
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// decodeVars reads KEY=base64 lines.
func decodeVars(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), "=")
		if !ok {
			continue
		}
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			continue
		}
		m[k] = string(b)
	}
	return m
}

// TestStageScriptExitCode checks the script's exit code is the failing
// command's, as the runner's set -eo pipefail script gives it.
func TestStageScriptExitCode(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("needs bash")
	}
	p := filepath.Join(t.TempDir(), "script")
	os.WriteFile(p, []byte(stageScript(nil, []string{"true", "(exit 42)", "echo not reached"})), 0o700)
	out, err := exec.Command(bash, p).CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 42 || strings.Contains(string(out), "not reached") {
		t.Errorf("script exit = %v, output %q; want exit 42 and nothing after the failure", err, out)
	}
}
