package main

import (
	"context"

	"github.com/alecthomas/kingpin/v2"
)

// registerImages wires the base-image commands.
func registerImages(app *kingpin.Application, g *globals, cmds commands) {
	for _, c := range []struct{ name, help string }{
		{"chroot-create", "Create a base image with debootstrap."},
		{"chroot-login", "Enter a base image for maintenance, or run one command in it."},
		{"chroot-list", "List base images."},
		{"chroot-remove", "Remove a base image."},
		{"setup", "Prepare the root directory (optionally on a loopback btrfs file)."},
	} {
		app.Command(c.name, c.help)
		name := c.name
		cmds[name] = &command{run: func(context.Context) error { return errNotBuilt(name) }}
	}
}
