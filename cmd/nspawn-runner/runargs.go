package main

import "strings"

// runFlags are the run stage's own flags and arguments.
type runFlags struct {
	machineFlags
	id   string
	args []string
}

// parseRun parses a command line of the run stage into g as kingpin would,
// without building kingpin's application: run starts once per stage of
// every job, and constructing every command's flags, help and parser
// costs that short process more than the parse itself (see Performance in
// the README). It takes only the plain shapes that gitlab-runner and the
// harnesses use: the global flags, "run", its flags and arguments, each
// flag at most once, as --flag VALUE or --flag=VALUE. Anything else (help,
// --version, a repeated or unknown flag, "--", a token that starts with
// "-" or "@", which kingpin reads as a file of arguments, no argument)
// returns false and leaves g alone, and kingpin parses it, its errors
// included. main_test.go checks both parses agree.
func parseRun(args []string, g *globals) bool {
	var (
		verbose, debug           bool
		root, runDir, configPath string
		f                        runFlags
		inRun                    bool
		seen                     = map[string]bool{}
	)
	values := map[string]*string{"root": &root, "run-dir": &runDir, "config": &configPath}
	runValues := map[string]*string{"id": &f.id, "name-prefix": &f.namePrefix, "cgroup-parent": &f.cgroupParent}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "" || !strings.HasPrefix(a, "-") {
			if strings.HasPrefix(a, "@") {
				return false
			}
			if !inRun {
				if a != "run" {
					return false
				}
				inRun = true
				continue
			}
			f.args = append(f.args, a)
			continue
		}
		if a == "-v" {
			a = "--verbose"
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || name == "" || seen[name] {
			return false
		}
		seen[name] = true
		switch name {
		case "verbose", "debug":
			if hasValue {
				return false
			}
			if name == "verbose" {
				verbose = true
			} else {
				debug = true
			}
			continue
		}
		dst := values[name]
		if dst == nil && inRun {
			dst = runValues[name]
		}
		if dst == nil {
			return false
		}
		if !hasValue {
			if i+1 == len(args) {
				return false
			}
			i++
			value = args[i]
			if strings.HasPrefix(value, "-") || strings.HasPrefix(value, "@") {
				return false
			}
		} else if strings.HasPrefix(value, "@") {
			return false
		}
		*dst = value
	}
	if !inRun || len(f.args) == 0 {
		return false
	}
	g.verbose, g.debug, g.root, g.runDir, g.configPath, g.run = verbose, debug, root, runDir, configPath, f
	return true
}
