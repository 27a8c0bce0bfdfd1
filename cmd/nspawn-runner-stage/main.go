// Command nspawn-runner-stage is the run stage of nspawn-runner's custom
// executor in an executable of its own: `nspawn-runner toml` names it as
// run_exec when it is installed with nspawn-runner. It takes the same
// command line as `nspawn-runner run` and runs the same code (package
// stage), but links only what a stage needs, so that the process that
// starts for every stage of every job starts fast (see Performance in the
// README). What it does not handle itself it hands to nspawn-runner run,
// by exec, with the same arguments: a command line other than the plain
// shapes gitlab-runner and the harnesses use (help, errors), a
// configuration file beyond runstage.ReadConfig, and a stage that needs the
// configuration or the services' logs (stage.ErrUnsupported).
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/nspawn-runner/nspawn-runner/cmd/internal/runstage"
	"github.com/nspawn-runner/nspawn-runner/gitlab"
	"github.com/nspawn-runner/nspawn-runner/internal/stagetrace"
	"github.com/nspawn-runner/nspawn-runner/stage"
)

func main() {
	stagetrace.Mark("start")
	code := run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr, handOver)
	stagetrace.Mark("exit")
	stagetrace.Flush()
	os.Exit(code)
}

// run runs the stage of command line args and returns the exit status;
// hand is called, with the reason, when nspawn-runner run must do it
// instead (it returns only when that fails).
func run(args []string, getenv func(string) string, stdout, stderr io.Writer, hand func(args []string, why error) error) int {
	exits := gitlab.ExitCodesFromEnv(getenv)
	fail := func(err error) int {
		code, err := exits.Exit(err)
		if err != nil {
			fmt.Fprintf(stderr, "nspawn-runner run: %s\n", strings.TrimPrefix(err.Error(), "run: "))
		}
		return code
	}
	c, ok := runstage.Parse(args)
	if !ok {
		return fail(hand(args, errors.New("not a plain run command line")))
	}
	stagetrace.Mark("parse")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	stagetrace.Mark("signals")
	path := cmp.Or(c.Config, runstage.DefaultConfig)
	set, err := runstage.ReadConfig(path, c.Config != "")
	if errors.Is(err, runstage.ErrComplex) {
		stop()
		return fail(hand(args, err))
	}
	if err != nil {
		return fail(err)
	}
	m := stage.Machine{
		RunDir:     cmp.Or(c.RunDir, set.RunDir),
		NamePrefix: c.NamePrefix,
		// The stage's only log lines are warnings, printed at every
		// level (log/slog is more than this process should start).
		Warn: func(msg string, args ...any) {
			fmt.Fprintln(stderr, append([]any{"nspawn-runner run: warning:", msg}, args...)...)
		},
	}
	stagetrace.Mark("config")
	err = runstage.Stage(ctx, getenv, c, set.JobIDFromVariables, stdout, stderr, func(ctx context.Context, req stage.Request) error {
		return stage.Run(ctx, m, req)
	})
	if errors.Is(err, stage.ErrUnsupported) {
		stop()
		return fail(hand(args, err))
	}
	return fail(err)
}

// handOver replaces this process with nspawn-runner run and the same
// arguments, environment and standard streams: same pid, so gitlab-runner's
// signals reach it as they would have reached us.
func handOver(args []string, why error) error {
	self, err := os.Executable()
	if err == nil {
		self, err = filepath.EvalSymlinks(self)
	}
	if err != nil {
		return fmt.Errorf("%v, and the path of this program is unknown: %w", why, err)
	}
	mainExe := runstage.MainExecutable(self)
	if mainExe == "" {
		return fmt.Errorf("%v, and no %s is installed with %s: install both, or use run_exec = nspawn-runner", why, runstage.MainName, self)
	}
	err = syscall.Exec(mainExe, append([]string{mainExe}, args...), os.Environ())
	return fmt.Errorf("%v: exec %s: %w", why, mainExe, err)
}
