package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestTOMLRunExec: toml names nspawn-runner-stage as run_exec where it is
// installed with nspawn-runner (the same directory, or
// PREFIX/lib/nspawn-runner for PREFIX/bin), else nspawn-runner itself;
// every other stage runs nspawn-runner.
func TestTOMLRunExec(t *testing.T) {
	bin := binary(t)
	install := func(t *testing.T, mainPath, stagePath string) {
		t.Helper()
		for _, c := range [][2]string{{bin, mainPath}, {stageBinary(bin), stagePath}} {
			if c[1] == "" {
				continue
			}
			if err := os.MkdirAll(filepath.Dir(c[1]), 0o755); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(c[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(c[1], b, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	runExec := func(t *testing.T, mainPath string) string {
		t.Helper()
		out, err := exec.Command(mainPath, "--config", "/dev/null", "toml", "--default-image", "bookworm").Output()
		if err != nil {
			t.Fatalf("toml: %v", err)
		}
		exes := map[string]string{}
		for _, l := range strings.Split(string(out), "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(l), " = ")
			if ok && strings.HasSuffix(k, "_exec") {
				var s string
				if err := json.Unmarshal([]byte(v), &s); err != nil {
					t.Fatalf("%s: %v", k, err)
				}
				exes[k] = s
			}
		}
		for _, k := range []string{"config_exec", "prepare_exec", "cleanup_exec"} {
			if exes[k] != mainPath {
				t.Errorf("%s = %q, want %s", k, exes[k], mainPath)
			}
		}
		return exes["run_exec"]
	}
	t.Run("alone", func(t *testing.T) {
		m := filepath.Join(t.TempDir(), "bin", "nspawn-runner")
		install(t, m, "")
		if got := runExec(t, m); got != m {
			t.Errorf("run_exec = %q, want %s", got, m)
		}
	})
	t.Run("same directory", func(t *testing.T) {
		d := t.TempDir()
		m, s := filepath.Join(d, "nspawn-runner"), filepath.Join(d, "nspawn-runner-stage")
		install(t, m, s)
		if got := runExec(t, m); got != s {
			t.Errorf("run_exec = %q, want %s", got, s)
		}
	})
	t.Run("installed", func(t *testing.T) {
		prefix := t.TempDir()
		m, s := filepath.Join(prefix, "bin", "nspawn-runner"), filepath.Join(prefix, "lib", "nspawn-runner", "nspawn-runner-stage")
		install(t, m, s)
		if got := runExec(t, m); got != s {
			t.Errorf("run_exec = %q, want %s", got, s)
		}
	})
}
