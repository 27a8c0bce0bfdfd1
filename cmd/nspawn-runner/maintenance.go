package main

import (
	"context"

	"github.com/alecthomas/kingpin/v2"
)

// registerMaintenance wires chroot-maintenance.
func registerMaintenance(app *kingpin.Application, g *globals, cmds commands) {
	app.Command("chroot-maintenance", "Create, recreate and provision base images from their playbooks.")
	cmds["chroot-maintenance"] = &command{run: func(context.Context) error { return errNotBuilt("chroot-maintenance") }}
}

// createDefaults is what an image's playbook says about creating it.
type createDefaults struct {
	Suite    string
	Mirror   string
	Include  []string
	Playbook string // path of the playbook, "" when the image has none
}

// playbookDefaults reads the image's playbook vars for chroot-create.
func playbookDefaults(g *globals, name string) (createDefaults, error) {
	return createDefaults{}, nil
}

// provisionImage runs the image's playbook, if any, after chroot-create.
func provisionImage(ctx context.Context, g *globals, name string) error {
	return nil
}

// imagePlaybooks maps image names to their playbook paths, for chroot-list.
func imagePlaybooks(g *globals) (map[string]string, error) {
	return nil, nil
}
