package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/nspawn-runner/nspawn-runner/cmd/internal/runstage"
	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/gitlab"
	"github.com/nspawn-runner/nspawn-runner/machine"
	"github.com/nspawn-runner/nspawn-runner/provision"
)

// machineFlags are the hidden flags that let tests and harnesses keep
// their machines and cgroups apart from everyone else's.
type machineFlags struct {
	namePrefix   string
	cgroupParent string
}

func (f *machineFlags) register(c *kingpin.CmdClause) {
	c.Flag("name-prefix", "Prefix of machine names (default "+machine.DefaultNamePrefix+").").Hidden().StringVar(&f.namePrefix)
	c.Flag("cgroup-parent", "Parent cgroup of machines (default: machine.cgroup_parent of the config).").Hidden().StringVar(&f.cgroupParent)
}

// manager builds the machine manager from the configuration.
func (g *globals) manager(f *machineFlags) *machine.Manager {
	return &machine.Manager{
		Root:          g.cfg.Root,
		RunDir:        g.cfg.RunDir,
		Config:        g.cfg.Machine,
		Log:           g.log,
		Images:        g.store(),
		NamePrefix:    f.namePrefix,
		CgroupParent:  cmp.Or(f.cgroupParent, g.cfg.Machine.CgroupParent),
		RefillCommand: g.refillCommand(f),
	}
}

// refillCommand is the argv of the detached pool-fill a prepare starts:
// this binary with this configuration, root, run directory and machine
// flags (nil when our own path is unknown).
func (g *globals) refillCommand(f *machineFlags) []string {
	exe, err := os.Executable()
	if err != nil {
		return nil
	}
	argv := []string{exe}
	if g.configPath != "" {
		// The refill runs in /: a relative path would name another file.
		p, err := filepath.Abs(g.configPath)
		if err != nil {
			return nil
		}
		argv = append(argv, "--config", p)
	}
	if g.verbose {
		argv = append(argv, "--verbose")
	}
	root, err1 := filepath.Abs(g.cfg.Root)
	runDir, err2 := filepath.Abs(g.cfg.RunDir)
	if err1 != nil || err2 != nil {
		return nil
	}
	argv = append(argv, "--root", root, "--run-dir", runDir, "pool-fill")
	if f.namePrefix != "" {
		argv = append(argv, "--name-prefix", f.namePrefix)
	}
	if f.cgroupParent != "" {
		argv = append(argv, "--cgroup-parent", f.cgroupParent)
	}
	return argv
}

// job is the identity of the job a stage works on (runstage.Job).
func (g *globals) job(idFlag string) (gitlab.Job, error) {
	return runstage.Job(g.getenv, idFlag, g.cfg.GitLab.JobIDFromVariables)
}

// services are the job's services: their images chosen like image: but
// by services' own rule, their aliases, and the ports their images'
// metadata declare.
func (g *globals) services() ([]machine.Service, error) {
	st := g.store()
	list, err := gitlab.SelectServices(g.getenv, gitlab.ServiceChoice{Allowed: g.cfg.AllowedImages, CheckName: config.CheckImageName, Existing: st.Names})
	if err != nil {
		return nil, err
	}
	var out []machine.Service
	for _, s := range list {
		meta, err := st.ReadMeta(s.Image)
		if err != nil {
			g.log.Warn("service image metadata unreadable: not waiting for its ports", "image", s.Image, "err", err)
		}
		out = append(out, machine.Service{Name: s.Name, Image: s.Image, Ports: meta.ServicePorts, Aliases: s.Aliases, Command: s.Command})
	}
	return out, nil
}

// registerJobs wires the executor stages and the machine commands.
func registerJobs(app *kingpin.Application, g *globals, cmds commands) {
	var prep struct {
		machineFlags
		image, id, defaultImage, mode string
	}
	c := app.Command("prepare", "Executor prepare stage: start the job's machine.")
	c.Arg("image", "Image name (default: the job's image:, else --default-image, else default_image).").StringVar(&prep.image)
	c.Flag("id", "Job id (harnesses; default: from JOB_RESPONSE_FILE).").PlaceHolder("ID").StringVar(&prep.id)
	c.Flag("default-image", "Image when the job names none.").PlaceHolder("NAME").StringVar(&prep.defaultImage)
	c.Flag("mode", "boot or fast (default: machine.mode of the config).").PlaceHolder("MODE").EnumVar(&prep.mode, config.ModeBoot, config.ModeFast)
	prep.register(c)
	cmds["prepare"] = &command{stage: true, run: func(ctx context.Context) error {
		job, err := g.job(prep.id)
		if err != nil {
			return err
		}
		image, err := gitlab.SelectImage(g.getenv, gitlab.ImageChoice{
			Arg: prep.image, DefaultFlag: prep.defaultImage, Default: g.cfg.DefaultImage, Allowed: g.cfg.AllowedImages,
			CheckName: config.CheckImageName, Existing: g.store().Names,
		})
		if err != nil {
			return err
		}
		plan, err := gitlab.JobMounts(g.getenv, gitlab.MountConfig{
			CacheRoot: g.cfg.GitLab.CacheDir, BuildsRoot: g.cfg.GitLab.BuildsDir, RunnerBinary: g.cfg.GitLab.RunnerBinary,
		})
		if err != nil {
			return err
		}
		for _, n := range plan.Notices {
			fmt.Fprintln(g.stderr, n)
		}
		services, err := g.services()
		if err != nil {
			return err
		}
		req := machine.PrepareRequest{JobID: job.ID, Key: job.Key, Image: image, Mode: prep.mode, Path: plan.Path,
			Services: services, JobLog: g.stderr, DebugServices: g.getenv("CUSTOM_ENV_CI_DEBUG_SERVICES") == "true"}
		if len(services) > 0 && g.environ != nil {
			req.ServiceEnv = gitlab.JobVariables(g.environ())
		}
		for _, m := range plan.Mounts {
			req.Binds = append(req.Binds, machine.Bind{Host: m.Host, Machine: m.Machine, ReadOnly: m.ReadOnly})
		}
		p, err := g.manager(&prep.machineFlags).PrepareJob(ctx, req)
		if err != nil {
			return err
		}
		if p.Pooled != "" {
			fmt.Fprintf(g.stdout, "Machine %s is running image %s (pooled machine %s)\n", p.Name, image, p.Pooled)
		} else {
			fmt.Fprintf(g.stdout, "Machine %s is running image %s\n", p.Name, image)
		}
		for _, s := range services {
			fmt.Fprintf(g.stdout, "Service %s runs image %s, reachable as %s\n", s.Name, s.Image, strings.Join(s.Aliases, ", "))
		}
		return nil
	}}

	var fill struct {
		machineFlags
		image string
	}
	c = app.Command("pool-fill", "Top the warm pool of an image up to machine.pool (prepare starts it detached; gc does the same for every pool).").Hidden()
	c.Arg("image", "Image name.").Required().StringVar(&fill.image)
	fill.register(c)
	cmds["pool-fill"] = &command{run: func(ctx context.Context) error {
		// Another fill of this image running: it does the work.
		_, err := g.manager(&fill.machineFlags).FillPool(ctx, fill.image, false)
		return err
	}}

	run := &g.run
	c = app.Command("run", "Executor run stage: run a stage script in the job's machine.")
	c.Flag("id", "Job id (harnesses; default: from JOB_RESPONSE_FILE).").PlaceHolder("ID").StringVar(&run.id)
	c.Arg("args", "[RUN_ARGS...] SCRIPT [STAGE]: gitlab-runner passes the script and the stage last.").Required().StringsVar(&run.args)
	run.register(c)
	cmds["run"] = g.runCommand()

	var clean struct {
		machineFlags
		id string
	}
	c = app.Command("cleanup", "Executor cleanup stage: destroy the job's machine.")
	c.Flag("id", "Job id (harnesses; default: from JOB_RESPONSE_FILE).").PlaceHolder("ID").StringVar(&clean.id)
	clean.register(c)
	cmds["cleanup"] = &command{stage: true, run: func(ctx context.Context) error {
		job, err := g.job(clean.id)
		if err != nil {
			return err
		}
		return g.manager(&clean.machineFlags).Cleanup(ctx, job.ID, job.Key)
	}}

	var gc struct {
		machineFlags
		maxAge time.Duration
	}
	c = app.Command("gc", "Remove what machines that are gone left behind (and, with --max-age, machines older than that) and unused retired images.")
	c.Flag("max-age", "Also stop machines older than this (e.g. 3h).").PlaceHolder("DURATION").DurationVar(&gc.maxAge)
	gc.register(c)
	cmds["gc"] = &command{run: func(ctx context.Context) error {
		res, err := g.manager(&gc.machineFlags).GC(ctx, gc.maxAge)
		g.observeGC(ctx, res)
		for _, n := range res.Machines {
			fmt.Fprintf(g.stdout, "removed machine %s\n", n)
		}
		for _, t := range res.Images {
			fmt.Fprintf(g.stdout, "removed retired image tree %s\n", t)
		}
		for _, n := range res.Pooled {
			fmt.Fprintf(g.stdout, "started pooled machine %s\n", n)
		}
		// Directories of killed playbook runs (chroot-create or
		// chroot-maintenance with a playbook).
		dirs, derr := provision.CleanRunDirs("", g.log)
		for _, d := range dirs {
			fmt.Fprintf(g.stdout, "removed playbook run directory %s\n", d)
		}
		return errors.Join(err, derr)
	}}

	var ps struct {
		machineFlags
		json bool
	}
	c = app.Command("ps", "List machines: id, image, mode, storage, age, memory, state.")
	c.Flag("json", "Print JSON.").BoolVar(&ps.json)
	ps.register(c)
	cmds["ps"] = &command{run: func(ctx context.Context) error {
		list, err := g.manager(&ps.machineFlags).List(ctx)
		if err != nil {
			return err
		}
		if ps.json {
			if list == nil {
				list = []machine.Status{}
			}
			enc := json.NewEncoder(g.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(list)
		}
		w := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "MACHINE\tJOB\tIMAGE\tMODE\tSTORAGE\tAGE\tMEMORY\tSTATE")
		for _, s := range list {
			name, image := s.Name, s.Image
			if s.Job != "" {
				// Services follow their job (names sort so), indented.
				name, image = "  "+name, image+" (service "+s.Service+")"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%.1fM\t%s\n", name, s.JobID, image, s.Mode, s.Storage, s.Age, float64(s.Memory)/(1<<20), s.State)
		}
		return w.Flush()
	}}
}

// runCommand is the run stage, with the flags and arguments in g.run
// (bound by kingpin, or filled by parseRun): runstage.Stage with the
// machine manager's Run, which nspawn-runner-stage runs as well.
func (g *globals) runCommand() *command {
	run := &g.run
	return &command{stage: true, run: func(ctx context.Context) error {
		c := runstage.Command{ID: run.id, Args: run.args}
		return runstage.Stage(ctx, g.getenv, c, g.cfg.GitLab.JobIDFromVariables, g.stdout, g.stderr, g.manager(&run.machineFlags).Run)
	}}
}
