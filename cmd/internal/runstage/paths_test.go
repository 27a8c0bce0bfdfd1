package runstage

import (
	"os"
	"path/filepath"
	"testing"
)

// TestExecutables: each executable finds the other in the layouts make
// build, make install and the Debian package make, and nothing elsewhere.
func TestExecutables(t *testing.T) {
	touch := func(p string, mode os.FileMode) string {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// make build: bin/nspawn-runner and bin/nspawn-runner-stage.
	build := t.TempDir()
	mainExe, stageExe := touch(filepath.Join(build, "bin", MainName), 0o755), touch(filepath.Join(build, "bin", StageName), 0o755)
	if got := StageExecutable(mainExe); got != stageExe {
		t.Errorf("build tree: StageExecutable = %q, want %q", got, stageExe)
	}
	if got := MainExecutable(stageExe); got != mainExe {
		t.Errorf("build tree: MainExecutable = %q, want %q", got, mainExe)
	}
	// make install and the package: PREFIX/bin and PREFIX/lib/nspawn-runner.
	prefix := t.TempDir()
	mainExe, stageExe = touch(filepath.Join(prefix, "bin", MainName), 0o755), touch(filepath.Join(prefix, "lib", "nspawn-runner", StageName), 0o755)
	if got := StageExecutable(mainExe); filepath.Clean(got) != stageExe {
		t.Errorf("installed: StageExecutable = %q, want %q", got, stageExe)
	}
	if got := MainExecutable(stageExe); got != mainExe {
		t.Errorf("installed: MainExecutable = %q, want %q", got, mainExe)
	}
	// Alone, or not executable: none.
	alone := touch(filepath.Join(t.TempDir(), "bin", MainName), 0o755)
	if got := StageExecutable(alone); got != "" {
		t.Errorf("alone: StageExecutable = %q, want none", got)
	}
	other := t.TempDir()
	mainExe = touch(filepath.Join(other, MainName), 0o755)
	touch(filepath.Join(other, StageName), 0o644)
	if got := StageExecutable(mainExe); got != "" {
		t.Errorf("not executable: StageExecutable = %q, want none", got)
	}
}
