// Package nspawnrunner_test enforces the dependency rules of
// ../shared/ARCHITECTURE.md: a broken rule fails the build, not a review.
package nspawnrunner_test

import (
	"encoding/json"
	"io"
	"os"
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
//	machine/state      sys/* (a machine's name, layout and record: the run
//	                   stage reads them without machine)
//	stage              machine/state, sys/*, internal/stagetrace (the run
//	                   stage; see TestStageExecutableSmall)
//	machine            config, machine/state, network, stage, sys/*,
//	                   internal/logx, internal/stagetrace
//	provision          bootstrap, config, sys/*, internal/logx
//	limits             sys/* (the kernel limits many machines need)
//	doctor             bootstrap, config, gitlab, limits, machine, sys/*
//	metrics            bootstrap, machine, sys/*
//	cmd/internal/runstage  gitlab, stage, internal/stagetrace (the run
//	                   stage's wiring both executables share)
//	cmd/nspawn-runner  everything but test helpers
//	cmd/nspawn-runner-stage  cmd/internal/runstage, gitlab, stage,
//	                   internal/stagetrace
//	internal/testutil  bootstrap, config, sys/* (it builds the cached test
//	                   image with chroot-create's code)
//	integration        tests only: anything
var mayImport = map[string][]string{
	"sys/":                    {"sys/internal/"},
	"internal/logx":           nil,
	"internal/stagetrace":     nil,
	"config":                  {"internal/logx"},
	"gitlab":                  nil,
	"bootstrap":               {"config", "sys/", "internal/logx"},
	"network":                 {"config", "sys/", "internal/logx"},
	"machine/state":           {"sys/"},
	"stage":                   {"machine/state", "sys/", "internal/logx", "internal/stagetrace"},
	"machine":                 {"config", "machine/state", "network", "stage", "sys/", "internal/logx", "internal/stagetrace"},
	"limits":                  {"sys/"},
	"doctor":                  {"bootstrap", "config", "gitlab", "limits", "machine", "sys/"},
	"metrics":                 {"bootstrap", "machine", "sys/"},
	"provision":               {"bootstrap", "config", "sys/", "internal/logx"},
	"cmd/internal/runstage":   {"gitlab", "stage", "internal/stagetrace"},
	"cmd/nspawn-runner":       {"bootstrap", "cmd/internal/runstage", "config", "doctor", "gitlab", "limits", "machine", "metrics", "network", "provision", "sys/", "internal/logx", "internal/stagetrace"},
	"cmd/nspawn-runner-stage": {"cmd/internal/runstage", "gitlab", "stage", "internal/stagetrace"},
	"internal/testutil":       {"bootstrap", "config", "sys/"},
	"integration":             {""},
	"":                        nil, // this package: only tests
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

// TestStageExecutableSmall: the run stage's executable, which starts for
// every stage of every job, links only what a stage needs. Each package
// linked costs its init and its pages at every start (page faults are
// most of a short process's time here: see Performance in the README), so
// what the main binary links for its other commands (yaml.v3, kingpin with
// text/template and go/doc, netlink, nftables, containerd/btrfs, cgo,
// compress/*) stays out. crypto/sha256 (the job's key) is the one crypto
// package it needs; what the standard library pulls in for it is fine.
func TestStageExecutableSmall(t *testing.T) {
	small := map[string]bool{
		module + "/cmd/nspawn-runner-stage": true, module + "/cmd/internal/runstage": true,
		module + "/stage": true, module + "/machine/state": true,
	}
	ourLeaves := []string{"gitlab", "internal/stagetrace", "machine/state", "stage", "cmd/internal/runstage"}
	// As make build builds it: without cgo (package net, which sys/nspawn
	// links for its sockets, otherwise lists runtime/cgo).
	cmd := exec.Command("go", "list", "-json", "-tags", "netgo,osusergo", module+"/...")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	found := 0
	for dec := json.NewDecoder(strings.NewReader(string(out))); ; {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if !small[p.ImportPath] {
			continue
		}
		found++
		for _, d := range p.Deps {
			rel, ours := strings.CutPrefix(d, module+"/")
			switch {
			case ours:
				if !strings.HasPrefix(rel, "sys/") && !slices.Contains(ourLeaves, rel) {
					t.Errorf("%s depends on %s: the run stage links only %q and sys/* of ours", p.ImportPath, d, ourLeaves)
				}
			case strings.HasPrefix(d, "golang.org/x/sys/"):
			case !isStandard(d):
				t.Errorf("%s depends on %s: the run stage links only the standard library and golang.org/x/sys", p.ImportPath, d)
			case d == "C" || d == "runtime/cgo" || d == "text/template" || d == "html/template" || d == "reflect/internal" ||
				strings.HasPrefix(d, "go/") || strings.HasPrefix(d, "compress/") || strings.HasPrefix(d, "archive/") ||
				strings.HasPrefix(d, "crypto/") && !stdCryptoForSHA256(d) || strings.HasPrefix(d, "database/") ||
				strings.HasPrefix(d, "net/http") || strings.HasPrefix(d, "encoding/xml") || d == "encoding/gob" ||
				d == "log/slog" || d == "text/tabwriter":
				t.Errorf("%s depends on %s: more than the run stage needs (layout_test.go)", p.ImportPath, d)
			}
		}
	}
	if found != len(small) {
		t.Errorf("found %d of the run stage's %d packages", found, len(small))
	}
}

// stdCryptoForSHA256: what crypto/sha256 pulls in from the standard
// library (its FIPS module, the hash interfaces).
func stdCryptoForSHA256(d string) bool {
	return d == "crypto/sha256" || d == "crypto/subtle" || d == "crypto/cipher" || d == "crypto/fips140" ||
		strings.HasPrefix(d, "crypto/internal/")
}
