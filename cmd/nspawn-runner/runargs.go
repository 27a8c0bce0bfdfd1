package main

import "github.com/nspawn-runner/nspawn-runner/cmd/internal/runstage"

// runFlags are the run stage's own flags and arguments.
type runFlags struct {
	machineFlags
	id   string
	args []string
}

// parseRun parses a command line of the run stage into g as kingpin
// would, without building kingpin's application (runstage.Parse, which
// cmd/nspawn-runner-stage uses too); false leaves g alone, for kingpin.
// main_test.go checks both parses agree.
func parseRun(args []string, g *globals) bool {
	c, ok := runstage.Parse(args)
	if !ok {
		return false
	}
	g.verbose, g.debug, g.root, g.runDir, g.configPath = c.Verbose, c.Debug, c.Root, c.RunDir, c.Config
	g.run = runFlags{machineFlags: machineFlags{namePrefix: c.NamePrefix, cgroupParent: c.CgroupParent}, id: c.ID, args: c.Args}
	return true
}
