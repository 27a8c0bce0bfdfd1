package main

import (
	"context"

	"github.com/alecthomas/kingpin/v2"
)

// registerJobs wires the executor stages and the machine commands.
func registerJobs(app *kingpin.Application, g *globals, cmds commands) {
	for _, c := range []struct {
		name, help string
		stage      bool
	}{
		{"prepare", "Executor prepare stage: start the job's machine.", true},
		{"run", "Executor run stage: run a stage script in the job's machine.", true},
		{"cleanup", "Executor cleanup stage: destroy the job's machine.", true},
		{"gc", "Remove what machines that are gone left behind.", false},
		{"ps", "List running machines.", false},
	} {
		app.Command(c.name, c.help)
		name := c.name
		cmds[name] = &command{stage: c.stage, run: func(context.Context) error { return errNotBuilt(name) }}
	}
}
