package runstage

import "strings"

// Command is a run stage's command line: the global flags, then "run",
// its flags and its arguments.
type Command struct {
	Verbose, Debug       bool
	Root, RunDir, Config string
	// ID, NamePrefix and CgroupParent are run's flags (--id,
	// --name-prefix, --cgroup-parent).
	ID, NamePrefix, CgroupParent string
	// Args are run's arguments: [RUN_ARGS...] SCRIPT [STAGE].
	Args []string
}

// Parse parses a command line of the run stage as nspawn-runner's kingpin
// application would, without building it: run starts once per stage of
// every job, and constructing every command's flags, help and parser costs
// that short process more than the parse itself (see Performance in the
// README). It takes only the plain shapes that gitlab-runner and the
// harnesses use: the global flags, "run", its flags and arguments, each
// flag at most once, as --flag VALUE or --flag=VALUE. Anything else (help,
// --version, a repeated or unknown flag, "--", a token that starts with
// "-" or "@", which kingpin reads as a file of arguments, no argument)
// returns false, and kingpin parses it, its errors included.
// cmd/nspawn-runner's tests check both parses agree.
func Parse(args []string) (Command, bool) {
	var (
		c     Command
		inRun bool
		seen  = map[string]bool{}
	)
	values := map[string]*string{"root": &c.Root, "run-dir": &c.RunDir, "config": &c.Config}
	runValues := map[string]*string{"id": &c.ID, "name-prefix": &c.NamePrefix, "cgroup-parent": &c.CgroupParent}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "" || !strings.HasPrefix(a, "-") {
			if strings.HasPrefix(a, "@") {
				return Command{}, false
			}
			if !inRun {
				if a != "run" {
					return Command{}, false
				}
				inRun = true
				continue
			}
			c.Args = append(c.Args, a)
			continue
		}
		if a == "-v" {
			a = "--verbose"
		}
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || name == "" || seen[name] {
			return Command{}, false
		}
		seen[name] = true
		switch name {
		case "verbose", "debug":
			if hasValue {
				return Command{}, false
			}
			if name == "verbose" {
				c.Verbose = true
			} else {
				c.Debug = true
			}
			continue
		}
		dst := values[name]
		if dst == nil && inRun {
			dst = runValues[name]
		}
		if dst == nil {
			return Command{}, false
		}
		if !hasValue {
			if i+1 == len(args) {
				return Command{}, false
			}
			i++
			value = args[i]
			if strings.HasPrefix(value, "-") || strings.HasPrefix(value, "@") {
				return Command{}, false
			}
		} else if strings.HasPrefix(value, "@") {
			return Command{}, false
		}
		*dst = value
	}
	if !inRun || len(c.Args) == 0 {
		return Command{}, false
	}
	return c, true
}
