// Package nspawnrunner_test enforces the dependency rules of
// ../shared/ARCHITECTURE.md: a broken rule fails the build, not a review.
package nspawnrunner_test

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/nspawn-runner/nspawn-runner"

// deps lists the packages of this module that pkg imports, directly or not.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	var ours []string
	for _, l := range strings.Fields(string(out)) {
		if strings.HasPrefix(l, module+"/") && l != pkg {
			ours = append(ours, strings.TrimPrefix(l, module+"/"))
		}
	}
	return ours
}

func packages(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("go", "list", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	return strings.Fields(string(out))
}

func TestLayering(t *testing.T) {
	for _, pkg := range packages(t) {
		rel := strings.TrimPrefix(pkg, module+"/")
		for _, d := range deps(t, pkg) {
			switch {
			case strings.HasPrefix(rel, "sys/"):
				t.Errorf("%s imports %s: sys/* must import nothing of ours", rel, d)
			case rel == "gitlab":
				t.Errorf("gitlab imports %s: the contract package is standard library only", d)
			case (rel == "machine" || rel == "bootstrap" || rel == "provision" || rel == "config") && d == "gitlab":
				t.Errorf("%s imports gitlab: domain packages never depend on the executor contract", rel)
			case !strings.HasPrefix(rel, "internal/") && !strings.HasPrefix(rel, "integration") && strings.HasPrefix(d, "internal/testutil"):
				t.Errorf("%s imports %s: test helpers are for tests only", rel, d)
			}
		}
	}
}

func TestNoKingpinOutsideCmd(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], module+"/") || strings.HasPrefix(f[0], module+"/cmd/") {
			continue
		}
		for _, imp := range f[1:] {
			if strings.HasPrefix(imp, "github.com/alecthomas/kingpin") {
				t.Errorf("%s imports kingpin: only cmd parses the command line", f[0])
			}
		}
	}
}
