package main

import (
	"context"

	"github.com/alecthomas/kingpin/v2"
)

// registerGitLab wires the commands that configure gitlab-runner.
func registerGitLab(app *kingpin.Application, g *globals, cmds commands) {
	for _, c := range []struct{ name, help string }{
		{"gitlab-config", "Executor config stage: print the JSON gitlab-runner expects."},
		{"toml", "Print a [[runners]] section for /etc/gitlab-runner/config.toml."},
	} {
		app.Command(c.name, c.help)
		name := c.name
		cmds[name] = &command{run: func(context.Context) error { return errNotBuilt(name) }}
	}
}
