package main

import (
	"cmp"
	"context"
	"fmt"
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
		Store:  g.store(),
		Runner: &provision.Runner{Output: os.Stderr, Verbosity: verbosity, Log: g.log, CgroupParent: g.cfg.Machine.CgroupParent},
		Dirs:   g.cfg.Playbooks(),
		Defaults: provision.Defaults{
			Suite:    cmp.Or(g.cfg.Bootstrap.Suite, config.DefaultSuite),
			Mirror:   g.cfg.Bootstrap.Mirror,
			Packages: g.cfg.Bootstrap.Packages,
		},
		Progress: os.Stderr,
		Log:      g.log,
	}
}

// createDefaults is what an image's playbook says about creating it.
type createDefaults struct {
	Suite    string
	Mirror   string
	Include  []string
	Playbook string // path of the playbook, "" when the image has none
}

// playbookDefaults reads the image's playbook vars for chroot-create. An
// image without a playbook has no defaults; a playbook that is not YAML is
// an error (its warnings are logged).
func playbookDefaults(g *globals, name string) (createDefaults, error) {
	pbs, err := imagePlaybooks(g)
	if err != nil {
		return createDefaults{}, err
	}
	path := pbs[name]
	if path == "" {
		return createDefaults{}, nil
	}
	v, warns, err := provision.ReadVars(path)
	if err != nil {
		return createDefaults{}, err
	}
	for _, w := range warns {
		g.log.Warn(w)
	}
	return createDefaults{Suite: v.Suite, Mirror: v.Mirror, Include: v.Include, Playbook: path}, nil
}

// provisionImage runs the image's playbook, if any, after chroot-create:
// on a copy of the new image, swapped in when the playbook succeeds.
func provisionImage(ctx context.Context, g *globals, name string) error {
	if err := g.maintainer().Provision(ctx, name); err != nil {
		return fmt.Errorf("image %s was created but not provisioned: %w (fix the playbook, then run nspawn-runner chroot-maintenance %s)", name, err, name)
	}
	return nil
}

// imagePlaybooks maps image names to their playbook paths, for chroot-list.
// Ignored files and duplicates are logged as warnings.
func imagePlaybooks(g *globals) (map[string]string, error) {
	d, err := provision.Discover(g.cfg.Playbooks())
	if err != nil {
		return nil, err
	}
	for _, w := range d.Warnings {
		g.log.Warn(w)
	}
	return d.Playbooks, nil
}
