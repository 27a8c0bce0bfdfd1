// Command nspawn-runner is a GitLab Runner custom executor that runs every
// job in its own throwaway systemd-nspawn machine, and the tool that builds
// and maintains the base images those machines start from.
//
// This package only wires: flags to requests, requests to one call into the
// domain packages, errors to exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/alecthomas/kingpin/v2"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/gitlab"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// globals are the flags every command shares, and what they load.
type globals struct {
	verbose    bool
	debug      bool
	root       string
	runDir     string
	configPath string

	cfg config.Config
	log *slog.Logger
}

// load reads the configuration, applies the flags over it and sets up
// logging; main calls it before any command runs.
func (g *globals) load() error {
	level := slog.LevelWarn
	if g.verbose {
		level = slog.LevelInfo
	}
	if g.debug {
		level = slog.LevelDebug
	}
	g.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	path, must := config.DefaultPath, false
	if g.configPath != "" {
		path, must = g.configPath, true
	}
	cfg, err := config.Load(path, must)
	if err != nil {
		return err
	}
	if g.root != "" {
		cfg.Root = g.root
	}
	if g.runDir != "" {
		cfg.RunDir = g.runDir
	}
	g.cfg = cfg
	return nil
}

// command is what one kingpin command does once the flags are parsed.
type command struct {
	run func(ctx context.Context) error
	// stage marks the executor stages (prepare, run, cleanup): their
	// errors map to gitlab-runner's exit codes.
	stage bool
}

// commands maps kingpin's full command name to its action.
type commands map[string]*command

func newApp(g *globals) (*kingpin.Application, commands) {
	app := kingpin.New("nspawn-runner", "GitLab Runner custom executor running each job in a throwaway systemd-nspawn machine, and the tool that builds and maintains its base images.")
	app.Version(version)
	app.HelpFlag.Short('h')
	app.Flag("verbose", "Log what is done (info level).").Short('v').BoolVar(&g.verbose)
	app.Flag("debug", "Log everything (debug level).").BoolVar(&g.debug)
	app.Flag("root", "Directory of the base images (default "+config.DefaultRoot+", or root: in the config).").PlaceHolder("DIR").StringVar(&g.root)
	app.Flag("run-dir", "Directory of running machines' state (default "+config.DefaultRunDir+", or run_dir: in the config).").PlaceHolder("DIR").StringVar(&g.runDir)
	app.Flag("config", "Configuration file (default "+config.DefaultPath+"; when the default is missing, defaults apply).").PlaceHolder("FILE").StringVar(&g.configPath)

	cmds := commands{}
	registerImages(app, g, cmds)
	registerJobs(app, g, cmds)
	registerMaintenance(app, g, cmds)
	registerGitLab(app, g, cmds)
	return app, cmds
}

func main() {
	os.Exit(run(os.Args[1:]))
}

// stageNames are the commands whose failures use gitlab-runner's codes,
// even when their arguments do not parse.
var stageNames = map[string]bool{"prepare": true, "run": true, "cleanup": true}

func run(args []string) int {
	var g globals
	app, cmds := newApp(&g)
	exited, code := false, 0
	app.Terminate(func(c int) {
		// kingpin goes on parsing after --help or --version has printed;
		// anything it would print after that is noise.
		exited, code = true, c
		app.UsageWriter(io.Discard)
		app.ErrorWriter(io.Discard)
	})
	app.UsageWriter(os.Stderr)
	app.ErrorWriter(os.Stderr)
	exits := gitlab.ExitCodesFromEnv(os.Getenv)

	name, err := app.Parse(args)
	if exited && code == 0 && errors.Is(err, kingpin.ErrCommandNotSpecified) && !helpAsked(args) {
		// kingpin printed the usage; no command is an error, not help.
		fmt.Fprintln(os.Stderr, "nspawn-runner: no command given")
		return 2
	}
	if exited {
		// --help or --version printed; kingpin asked to exit.
		return code
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nspawn-runner: %v (see nspawn-runner --help)\n", err)
		if firstCommand(args) != "" && stageNames[firstCommand(args)] {
			return exits.SystemFailure
		}
		return 2
	}
	cmd := cmds[name]
	if cmd == nil {
		fmt.Fprintf(os.Stderr, "nspawn-runner: %s is not available in this build\n", name)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = g.load()
	if err == nil {
		err = cmd.run(ctx)
	}
	if cmd.stage {
		c, err := exits.Exit(err)
		if err != nil {
			report(name, err)
		}
		return c
	}
	var coded interface{ ExitCode() int }
	if errors.As(err, &coded) {
		// A command run on the user's behalf (chroot-login NAME -- CMD)
		// failed: its status is ours, and it said why itself.
		return coded.ExitCode()
	}
	if err != nil {
		report(name, err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// report prints a command's error as one line on stderr. Domain errors
// often start with the operation ("run: machine ..."), which is the
// command's name here: say it once.
func report(name string, err error) {
	fmt.Fprintf(os.Stderr, "nspawn-runner %s: %s\n", name, strings.TrimPrefix(err.Error(), name+": "))
}

// helpAsked reports whether the user asked for help or the version.
func helpAsked(args []string) bool {
	for _, a := range args {
		switch a {
		case "-h", "--help", "--help-long", "--help-man", "--version", "help":
			return true
		}
	}
	return false
}

// firstCommand is the first argument that is not a flag.
func firstCommand(args []string) string {
	for _, a := range args {
		if len(a) > 0 && a[0] != '-' {
			return a
		}
	}
	return ""
}

// usageError is a command line that cannot be run: exit code 2.
type usageError struct{ error }
