package main

import (
	"os"
	"path/filepath"
	"testing"
)

// The exit codes of the command line itself, before any command runs.
func TestRunExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("machine:\n  mode: turbo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SYSTEM_FAILURE_EXIT_CODE", "7")
	t.Setenv("BUILD_FAILURE_EXIT_CODE", "6")
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
	} {
		if got := run(tc.args); got != tc.want {
			t.Errorf("run(%q) = %d, want %d", tc.args, got, tc.want)
		}
	}
}
