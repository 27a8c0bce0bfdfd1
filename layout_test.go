// Package nspawnrunner_test enforces the dependency rules of
// ../shared/ARCHITECTURE.md: a broken rule fails the build, not a review.
package nspawnrunner_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/nspawn-runner/nspawn-runner"

// mayImport is the allowed graph: for each package of ours (a trailing
// "/" covers every package below that directory), the packages of ours
// its non-test files may import directly. A package that is not listed
// fails the test: where a new package sits is a decision to write down
// here. Only non-test files are checked: tests may import anything of
// ours, internal/testutil included, which nothing else may import.
//
//	sys/*              nothing of ours but sys/internal/* (shared leaf helpers)
//	internal/logx      nothing of ours (a leaf)
//	internal/stagetrace nothing of ours (a leaf; empty unless built with
//	                   -tags stagetrace, for the stage breakdown benchmark)
//	config             a leaf (internal/logx at most)
//	gitlab             nothing: the contract is standard library only
//	bootstrap          config, sys/*, internal/logx
//	network            config, sys/*, internal/logx
//	machine            config, network, sys/*, internal/logx, internal/stagetrace
//	provision          bootstrap, config, sys/*, internal/logx
//	limits             sys/* (the kernel limits many machines need)
//	doctor             bootstrap, config, gitlab, limits, machine, sys/*
//	metrics            bootstrap, machine, sys/*
//	cmd/nspawn-runner  everything but test helpers
//	internal/testutil  bootstrap, config, sys/* (it builds the cached test
//	                   image with chroot-create's code)
//	integration        tests only: anything
var mayImport = map[string][]string{
	"sys/":                {"sys/internal/"},
	"internal/logx":       nil,
	"internal/stagetrace": nil,
	"config":              {"internal/logx"},
	"gitlab":              nil,
	"bootstrap":           {"config", "sys/", "internal/logx"},
	"network":             {"config", "sys/", "internal/logx"},
	"machine":             {"config", "network", "sys/", "internal/logx", "internal/stagetrace"},
	"limits":              {"sys/"},
	"doctor":              {"bootstrap", "config", "gitlab", "limits", "machine", "sys/"},
	"metrics":             {"bootstrap", "machine", "sys/"},
	"provision":           {"bootstrap", "config", "sys/", "internal/logx"},
	"cmd/nspawn-runner":   {"bootstrap", "config", "doctor", "gitlab", "limits", "machine", "metrics", "network", "provision", "sys/", "internal/logx", "internal/stagetrace"},
	"internal/testutil":   {"bootstrap", "config", "sys/"},
	"integration":         {""},
	"":                    nil, // this package: only tests
}

// rule finds the entry of mayImport that covers rel: its exact name, else
// the longest directory prefix.
func rule(rel string) (allowed []string, ok bool) {
	if a, ok := mayImport[rel]; ok {
		return a, true
	}
	best := ""
	for k := range mayImport {
		if strings.HasSuffix(k, "/") && strings.HasPrefix(rel, k) && len(k) > len(best) {
			best = k
		}
	}
	if best == "" {
		return nil, false
	}
	return mayImport[best], true
}

// covered reports whether dep is one of allowed (entries ending in "/"
// cover a directory; "" covers everything).
func covered(dep string, allowed []string) bool {
	for _, a := range allowed {
		if a == dep || a == "" || strings.HasSuffix(a, "/") && strings.HasPrefix(dep, a) {
			return true
		}
	}
	return false
}

type pkg struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
	// Deps are all the packages the non-test files build on, directly
	// or not.
	Deps []string
}

// listPackages describes every package of the module (go list -json).
func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// ours returns the import paths of ours among imports, relative to the
// module ("" for the module's root package).
func ours(imports []string) []string {
	var out []string
	for _, imp := range imports {
		if imp == module {
			out = append(out, "")
		} else if strings.HasPrefix(imp, module+"/") {
			out = append(out, strings.TrimPrefix(imp, module+"/"))
		}
	}
	return out
}

func TestLayering(t *testing.T) {
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		allowed, ok := rule(rel)
		if !ok {
			t.Errorf("%s is not in layout_test.go's allowed graph: add it with the packages it may import", rel)
			continue
		}
		for _, d := range ours(p.Imports) {
			if !covered(d, allowed) {
				t.Errorf("%s imports %s: it may import only %q (layout_test.go)", rel, d, allowed)
			}
		}
	}
}

// The executor contract is standard library only, and sys/* never log
// (their callers decide what is worth saying).
func TestStandardLibraryOnly(t *testing.T) {
	for _, p := range listPackages(t) {
		rel := strings.TrimPrefix(p.ImportPath, module+"/")
		if rel == "gitlab" {
			for _, d := range p.Deps {
				if !isStandard(d) {
					t.Errorf("gitlab imports %s: the contract package is standard library only", d)
				}
			}
		}
		if strings.HasPrefix(rel, "sys/") {
			for _, d := range p.Imports {
				if d == "log" || d == "log/slog" {
					t.Errorf("%s imports %s: sys/* never log", rel, d)
				}
			}
		}
	}
}

// isStandard: standard library import paths have no dot in their first
// element (the module's own, golang.org/x/... and github.com/... do).
func isStandard(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}

func TestNoKingpinOutsideCmd(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.HasPrefix(p.ImportPath, module+"/cmd/") {
			continue
		}
		for _, imp := range slices.Concat(p.Imports, p.TestImports, p.XTestImports) {
			if strings.HasPrefix(imp, "github.com/alecthomas/kingpin") {
				t.Errorf("%s imports kingpin: only cmd parses the command line", p.ImportPath)
			}
		}
	}
}
