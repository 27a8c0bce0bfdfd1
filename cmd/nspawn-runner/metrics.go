package main

import (
	"context"
	"fmt"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/nspawn-runner/nspawn-runner/machine"
	"github.com/nspawn-runner/nspawn-runner/metrics"
)

// registerMetrics wires metrics.
func registerMetrics(app *kingpin.Application, g *globals, cmds commands) {
	var f struct {
		machineFlags
		textfile string
	}
	c := app.Command("metrics", "Print metrics in the Prometheus text format, or write them for node_exporter's textfile collector.")
	c.Flag("textfile", "Write DIR/"+metrics.TextfileName+" atomically instead of printing (node_exporter --collector.textfile.directory).").PlaceHolder("DIR").StringVar(&f.textfile)
	f.register(c)
	cmds["metrics"] = &command{run: func(ctx context.Context) error {
		in, err := metrics.Gather(ctx, g.manager(&f.machineFlags), g.store(), g.cfg.RunDir)
		if err != nil {
			// Partial metrics are better than none: say what is missing.
			g.log.Warn("some metrics could not be read", "err", err)
		}
		fams := metrics.Families(in)
		if f.textfile == "" {
			return metrics.Write(g.stdout, fams)
		}
		path, err := metrics.WriteTextfile(f.textfile, fams)
		if err != nil {
			return err
		}
		g.log.Info("wrote metrics", "file", path)
		return nil
	}}
}

// observeStage records the duration and outcome of prepare and cleanup for
// metrics. Metrics never fail a stage: a state that cannot be written is
// logged.
func (g *globals) observeStage(ctx context.Context, name string, start time.Time, err error) {
	if name != "prepare" && name != "cleanup" {
		return
	}
	if oerr := metrics.ObserveStage(context.WithoutCancel(ctx), g.cfg.RunDir, name, time.Since(start), err != nil); oerr != nil {
		g.log.Warn("recording metrics", "err", oerr)
	}
}

// observeGC counts what gc removed.
func (g *globals) observeGC(ctx context.Context, res machine.GCResult) {
	if err := metrics.ObserveGC(context.WithoutCancel(ctx), g.cfg.RunDir, time.Now(), len(res.Machines), len(res.Images)); err != nil {
		g.log.Warn("recording metrics", "err", err)
	}
}

// observeMaintenance records an image's maintenance outcome.
func (g *globals) observeMaintenance(ctx context.Context, image string, err error) {
	if oerr := metrics.ObserveMaintenance(context.WithoutCancel(ctx), g.cfg.RunDir, image, time.Now(), err == nil); oerr != nil {
		g.log.Warn("recording metrics", "err", fmt.Errorf("image %s: %w", image, oerr))
	}
}
