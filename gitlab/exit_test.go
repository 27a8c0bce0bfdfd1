package gitlab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExitCodesFromEnv(t *testing.T) {
	env := map[string]string{"BUILD_FAILURE_EXIT_CODE": "11", "SYSTEM_FAILURE_EXIT_CODE": "12", "BUILD_EXIT_CODE_FILE": "/x"}
	got := ExitCodesFromEnv(func(k string) string { return env[k] })
	if got != (ExitCodes{BuildFailure: 11, SystemFailure: 12, CodeFile: "/x"}) {
		t.Errorf("ExitCodesFromEnv = %+v", got)
	}
	for _, bad := range []string{"", "0", "-3", "256", "x"} {
		got := ExitCodesFromEnv(func(k string) string {
			if k == "BUILD_FAILURE_EXIT_CODE" || k == "SYSTEM_FAILURE_EXIT_CODE" {
				return bad
			}
			return ""
		})
		if got.BuildFailure != DefaultBuildFailureExitCode || got.SystemFailure != DefaultSystemFailureExitCode {
			t.Errorf("ExitCodesFromEnv(%q) = %+v, want the defaults", bad, got)
		}
	}
}

func TestExit(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "code")
	x := ExitCodes{BuildFailure: 11, SystemFailure: 12, CodeFile: file}

	if code, err := x.Exit(nil); code != 0 || err != nil {
		t.Errorf("Exit(nil) = %d, %v", code, err)
	}
	if code, err := x.Exit(errors.New("mount failed")); code != 12 || err == nil {
		t.Errorf("Exit(system) = %d, %v; want 12 and the error", code, err)
	}
	if _, err := os.Stat(file); err == nil {
		t.Errorf("a system failure wrote the code file")
	}
	wrapped := fmt.Errorf("stage build_script: %w", &BuildFailure{Code: 42})
	code, err := x.Exit(wrapped)
	if code != 11 || err != nil {
		t.Errorf("Exit(build failure) = %d, %v; want 11, nil", code, err)
	}
	if b, _ := os.ReadFile(file); strings.TrimSpace(string(b)) != "42" {
		t.Errorf("code file = %q, want 42", b)
	}
	// A code file that cannot be written turns the build failure into a
	// system failure: gitlab-runner would otherwise report a wrong code.
	x.CodeFile = filepath.Join(dir, "missing", "code")
	if code, err := x.Exit(&BuildFailure{Code: 3}); code != 12 || err == nil {
		t.Errorf("Exit(unwritable code file) = %d, %v; want 12 and an error", code, err)
	}
}
