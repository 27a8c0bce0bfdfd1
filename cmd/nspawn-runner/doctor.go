package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/alecthomas/kingpin/v2"

	"github.com/nspawn-runner/nspawn-runner/doctor"
	"github.com/nspawn-runner/nspawn-runner/sys/sysctl"
)

// registerDoctor wires doctor.
func registerDoctor(app *kingpin.Application, g *globals, cmds commands) {
	var f struct {
		json                       bool
		runnerConfig, procSys, etc string
	}
	c := app.Command("doctor", "Check this host for running jobs: say what is wrong and what to do; exit 1 when a job would fail.")
	c.Flag("json", "Print JSON instead of text.").BoolVar(&f.json)
	c.Flag("runner-config", "gitlab-runner's configuration to check.").Default(doctor.DefaultRunnerConfig).PlaceHolder("FILE").StringVar(&f.runnerConfig)
	// Tests point these at trees of their own.
	c.Flag("proc-sys", "").Hidden().Default(sysctl.DefaultDir).StringVar(&f.procSys)
	c.Flag("etc-root", "").Hidden().Default("/").StringVar(&f.etc)
	cmds["doctor"] = &command{run: func(ctx context.Context) error {
		// As toml names them: the runner section should.
		self, stage, err := executables()
		if err != nil {
			return err
		}
		facts := doctor.Gather(ctx, doctor.Host{
			Config: g.cfg, Store: g.store(), Machines: g.manager(&machineFlags{}), Self: self, Stage: stage,
			RunnerConfig: f.runnerConfig, PathEnv: g.getenv("PATH"), Sysctl: sysctl.Dir(f.procSys), Etc: f.etc,
		})
		findings := doctor.Check(facts)
		if f.json {
			if err := writeFindingsJSON(g.stdout, findings); err != nil {
				return err
			}
		} else {
			writeFindings(g.stdout, findings)
		}
		if doctor.Failed(findings) {
			return errors.New("a job would fail on this host: fix the FAIL lines")
		}
		return nil
	}}
}

func writeFindingsJSON(w io.Writer, fs []doctor.Finding) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(map[string]any{"failed": doctor.Failed(fs), "findings": fs})
}

// writeFindings prints one line per finding, its fix indented below.
func writeFindings(w io.Writer, fs []doctor.Finding) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, f := range fs {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", strings.ToUpper(f.Level), f.Check, f.Detail)
		if f.Fix != "" {
			fmt.Fprintf(tw, "\t\t-> %s\n", f.Fix)
		}
	}
	tw.Flush()
}
