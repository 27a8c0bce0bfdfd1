package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/alecthomas/kingpin/v2"

	"github.com/nspawn-runner/nspawn-runner/cmd/internal/runstage"
	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/gitlab"
)

// registerGitLab wires the commands that configure gitlab-runner.
func registerGitLab(app *kingpin.Application, g *globals, cmds commands) {
	app.Command("gitlab-config", "Executor config stage: print the JSON gitlab-runner expects.")
	cmds["gitlab-config"] = &command{stage: true, run: func(context.Context) error {
		return gitlabConfig(g.stdout, g)
	}}

	toml := app.Command("toml", "Print a [[runners]] section for /etc/gitlab-runner/config.toml.")
	image := toml.Arg("image", "Image for jobs that name none, as the original nspawn-runner's toml NAME; the runner is named after it (same as --default-image).").String()
	defaultImage := toml.Flag("default-image", "Image for jobs that name none (passed to prepare).").PlaceHolder("NAME").String()
	cmds["toml"] = &command{run: func(context.Context) error {
		def, err := tomlImage(*image, *defaultImage)
		if err != nil {
			return err
		}
		return printTOML(g.stdout, g, def)
	}}
}

// tomlImage is the default image given to toml, as the argument or as
// --default-image (or both, when they agree).
func tomlImage(arg, flag string) (string, error) {
	if arg != "" && flag != "" && arg != flag {
		return "", usageError{fmt.Errorf("two default images, %s and --default-image %s: give one", arg, flag)}
	}
	return cmp.Or(arg, flag), nil
}

// gitlabConfig prints the config stage's JSON, and nothing else, on w:
// gitlab-runner parses all of standard output.
func gitlabConfig(w io.Writer, g *globals) error {
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	b, err := gitlab.NewExecutorConfig(host, version, g.cfg.GitLab.BuildsDir != "").JSON()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// printTOML prints the runner section for this binary. The global flags
// given to toml (--config, --root, --run-dir) are repeated in every stage's
// arguments, so gitlab-runner's calls use the same setup.
func printTOML(w io.Writer, g *globals, defaultImage string) error {
	if defaultImage != "" {
		if err := config.CheckImageName(defaultImage); err != nil {
			return usageError{fmt.Errorf("default image: %w", err)}
		}
	}
	exe, stage, err := executables()
	if err != nil {
		return err
	}
	var global []string
	for _, f := range []struct{ flag, v string }{{"--config", g.configPath}, {"--root", g.root}, {"--run-dir", g.runDir}} {
		if f.v == "" {
			continue
		}
		abs, err := filepath.Abs(f.v)
		if err != nil {
			return fmt.Errorf("%s %s: %w", f.flag, f.v, err)
		}
		global = append(global, f.flag, abs)
	}
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("hostname: %w", err)
	}
	// A runner per image, as the original tool's `toml NAME` suggested,
	// gets a name telling them apart in GitLab's runner list.
	name := "nspawn-runner on " + host
	if defaultImage != "" {
		name = "nspawn-runner-" + defaultImage + " on " + host
	}
	s, err := gitlab.RunnerSection{
		Name:         name,
		Executable:   exe,
		GlobalArgs:   global,
		DefaultImage: defaultImage,
		// The run stage's own executable when it is installed with this
		// one (runstage.StageExecutable): it starts in about half the
		// time, and every stage of every job starts one.
		StageExecutable: stage,
	}.TOML()
	if err != nil {
		return err
	}
	if defaultImage == "" && g.cfg.DefaultImage == "" {
		// stdout is the section; the advice goes to stderr.
		fmt.Fprintln(g.stderr, "nspawn-runner toml: no --default-image and no default_image in the config: jobs without image: will fail")
	}
	_, err = io.WriteString(w, s)
	return err
}

// executables is this program's path, symlinks resolved, as toml writes it
// into the runner section and doctor looks for it there, and the stage
// executable installed with it ("" when none).
func executables() (self, stage string, err error) {
	self, err = os.Executable()
	if err == nil {
		self, err = filepath.EvalSymlinks(self)
	}
	if err != nil {
		return "", "", fmt.Errorf("path of this program: %w", err)
	}
	return self, runstage.StageExecutable(self), nil
}
