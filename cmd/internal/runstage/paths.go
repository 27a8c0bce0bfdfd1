package runstage

import (
	"os"
	"path/filepath"
)

// Names of the two executables.
const (
	MainName  = "nspawn-runner"
	StageName = "nspawn-runner-stage"
)

// StageExecutable is the stage executable installed with the main
// executable mainExe (an absolute path with symlinks resolved), or ""
// when there is none. It is in the same directory (make build's bin/), or
// in PREFIX/lib/nspawn-runner for PREFIX/bin/nspawn-runner (make install,
// the Debian package: a program that other programs run, not users,
// belongs in /usr/lib/PACKAGE, off PATH).
func StageExecutable(mainExe string) string {
	for _, d := range []string{".", "../lib/nspawn-runner"} {
		if p := filepath.Join(filepath.Dir(mainExe), d, StageName); isExecutable(p) {
			return p
		}
	}
	return ""
}

// MainExecutable is the main executable installed with the stage
// executable stageExe, or "" when there is none: the layouts of
// StageExecutable, the other way.
func MainExecutable(stageExe string) string {
	for _, p := range []string{
		filepath.Join(filepath.Dir(stageExe), MainName),
		filepath.Join(filepath.Dir(stageExe), "../../bin", MainName),
	} {
		if isExecutable(p) {
			return filepath.Clean(p)
		}
	}
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
