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
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/gitlab"
	"github.com/nspawn-runner/nspawn-runner/internal/stagetrace"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// globals are the flags every command shares, what they load, and the
// process's environment and standard streams as run was given them:
// commands use these, never os.Getenv, os.Stdout or os.Stderr, so that
// tests can drive them in-process.
type globals struct {
	verbose    bool
	debug      bool
	root       string
	runDir     string
	configPath string

	getenv func(string) string
	// environ is the whole environment (nil in tests that give only
	// getenv): job variables for services' commands.
	environ        func() []string
	stdout, stderr io.Writer

	// run are the run stage's flags and arguments: kingpin binds them,
	// parseRun fills them without kingpin.
	run runFlags

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
	g.log = slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level}))
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
	// stage marks the executor stages (gitlab-config, prepare, run,
	// cleanup): all their failures, bad arguments included, map to
	// gitlab-runner's exit codes. This is the one place that says which
	// commands are stages.
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
	registerDoctor(app, g, cmds)
	registerMetrics(app, g, cmds)
	registerGitLab(app, g, cmds)
	return app, cmds
}

func main() {
	stagetrace.Mark("start")
	g := &globals{getenv: os.Getenv, environ: os.Environ, stdout: os.Stdout, stderr: os.Stderr}
	code := dispatch(g, os.Args[1:])
	stagetrace.Mark("exit")
	stagetrace.Flush()
	os.Exit(code)
}

// run runs the command line args with the given environment and standard
// streams and returns the process's exit status.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return dispatch(&globals{getenv: getenv, stdout: stdout, stderr: stderr}, args)
}

// dispatch runs the command line args with g: the run stage's usual
// command lines straight (parseRun), everything else through kingpin.
func dispatch(g *globals, args []string) int {
	if parseRun(args, g) {
		stagetrace.Mark("parse")
		return finish(g, "run", g.runCommand(), gitlab.ExitCodesFromEnv(g.getenv))
	}
	app, cmds := newApp(g)
	return execute(app, cmds, g, args)
}

// execute parses args with app, runs the command they select and maps the
// outcome to an exit status.
func execute(app *kingpin.Application, cmds commands, g *globals, args []string) int {
	exited, code := false, 0
	app.Terminate(func(c int) {
		// kingpin goes on parsing after --help or --version has printed;
		// anything it would print after that is noise.
		exited, code = true, c
		app.UsageWriter(io.Discard)
		app.ErrorWriter(io.Discard)
	})
	app.UsageWriter(g.stderr)
	app.ErrorWriter(g.stderr)
	exits := gitlab.ExitCodesFromEnv(g.getenv)

	name, err := app.Parse(args)
	stagetrace.Mark("parse")
	if exited && code == 0 && errors.Is(err, kingpin.ErrCommandNotSpecified) && !helpAsked(args) {
		// kingpin printed the usage; no command is an error, not help.
		fmt.Fprintln(g.stderr, "nspawn-runner: no command given")
		return 2
	}
	if exited {
		// --help or --version printed; kingpin asked to exit.
		return code
	}
	if err != nil {
		fmt.Fprintf(g.stderr, "nspawn-runner: %v (see nspawn-runner --help)\n", err)
		if cmd := cmds[selected(app, args)]; cmd != nil && cmd.stage {
			return exits.SystemFailure
		}
		return 2
	}
	cmd := cmds[name]
	if cmd == nil {
		fmt.Fprintf(g.stderr, "nspawn-runner: %s is not available in this build\n", name)
		return 2
	}
	return finish(g, name, cmd, exits)
}

// finish runs the parsed command name: loads the configuration, runs it
// with a context that SIGTERM and SIGINT cancel, and maps the outcome to
// an exit status.
func finish(g *globals, name string, cmd *command, exits gitlab.ExitCodes) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	stagetrace.Mark("signals")
	err := g.load()
	stagetrace.Mark("config")
	if err == nil {
		start := time.Now()
		err = cmd.run(ctx)
		g.observeStage(ctx, name, start, err)
	}
	return exitStatus(g.stderr, name, cmd.stage, exits, err)
}

// selected is the command args name even when they do not parse (a bad
// flag, a missing argument): kingpin's own parse, which knows which global
// flags take a value, so "--config FILE prepare --bogus" selects prepare.
func selected(app *kingpin.Application, args []string) string {
	pc, _ := app.ParseContext(args)
	if pc == nil || pc.SelectedCommand == nil {
		return ""
	}
	return pc.SelectedCommand.FullCommand()
}

// exitStatus maps a command's outcome to the exit status and prints its
// error, if any, as one line on stderr. Stages exit as gitlab-runner
// expects. Other commands exit 1, or 2 for a command line that cannot be
// run, except chroot-login NAME -- CMD, whose CMD's own status becomes
// ours (*bootstrap.ExitError, made only by the login): CMD said why itself.
// Any other child's status is a detail of the error, never our exit
// status: a failed ansible-playbook exits 2, which is our usage error.
func exitStatus(stderr io.Writer, name string, stage bool, exits gitlab.ExitCodes, err error) int {
	if stage {
		c, err := exits.Exit(err)
		if err != nil {
			report(stderr, name, err)
		}
		return c
	}
	if err == nil {
		return 0
	}
	var login *bootstrap.ExitError
	if errors.As(err, &login) {
		return login.Code
	}
	report(stderr, name, advise(err))
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// report prints a command's error as one line on stderr. Domain errors
// often start with the operation ("run: machine ..."), which is the
// command's name here: say it once. Errors the admin fixes by installing
// something get that advice here, not in the domain packages.
func report(stderr io.Writer, name string, err error) {
	advice := ""
	if errors.Is(err, nspawn.ErrNotFound) {
		advice = " (install systemd-container)"
	}
	fmt.Fprintf(stderr, "nspawn-runner %s: %s%s\n", name, strings.TrimPrefix(err.Error(), name+": "), advice)
}

// advise adds to a domain error what to do about it on this command line.
func advise(err error) error {
	var nf *bootstrap.NotFoundError
	if errors.As(err, &nf) && len(nf.Available) == 0 {
		return fmt.Errorf("%w: create one with nspawn-runner chroot-create %s", err, nf.Name)
	}
	return err
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

// usageError is a command line that cannot be run: exit code 2.
type usageError struct{ error }
