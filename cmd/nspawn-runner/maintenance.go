package main

import (
	"context"
	"os"

	"github.com/alecthomas/kingpin/v2"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/provision"
)

// registerMaintenance wires chroot-maintenance.
func registerMaintenance(app *kingpin.Application, g *globals, cmds commands) {
	var maint struct {
		name   string
		noWait bool
	}
	c := app.Command("chroot-maintenance", "Create, recreate and provision base images from their playbooks, each on a copy swapped in only when its playbook succeeds.")
	c.Arg("name", "Only this image (default: every image that has a playbook or exists on disk).").StringVar(&maint.name)
	c.Flag("no-wait", "Fail at once instead of waiting when another create, remove or maintenance of an image is running.").BoolVar(&maint.noWait)
	cmds["chroot-maintenance"] = &command{run: func(ctx context.Context) error {
		if maint.name != "" {
			if err := config.CheckImageName(maint.name); err != nil {
				return usageError{err}
			}
		}
		m := g.maintainer()
		m.NoWait = maint.noWait
		m.Done = func(image string, err error) { g.observeMaintenance(ctx, image, err) }
		return m.Maintain(ctx, maint.name)
	}}
}

// maintainer is the provisioning of the configured root and playbook
// directories; progress and ansible's output go to stderr.
func (g *globals) maintainer() *provision.Maintainer {
	verbosity := 0
	if g.debug {
		verbosity = 2
	}
	return &provision.Maintainer{
		Store:     g.store(),
		Runner:    &provision.Runner{Output: os.Stderr, Verbosity: verbosity, Log: g.log, CgroupParent: g.cfg.Machine.CgroupParent, Root: g.cfg.Root},
		Dirs:      g.cfg.Playbooks(),
		Defaults:  g.cfg.Bootstrap,
		Collector: g.manager(&machineFlags{}),
		Progress:  os.Stderr,
		Log:       g.log,
	}
}
