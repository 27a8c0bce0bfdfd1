package main

import (
	"fmt"
	"io"

	"github.com/nspawn-runner/nspawn-runner/limits"
	"github.com/nspawn-runner/nspawn-runner/sys/sysctl"
)

// setupLimits installs the sysctl.d drop-in at path, applies it through
// dir and says what changed. A limit the host will not let us raise is a
// warning: a few machines still run.
func setupLimits(w io.Writer, g *globals, path string, dir sysctl.Dir) error {
	applied, err := limits.Install(path, dir)
	if err != nil {
		return err
	}
	raised := 0
	for _, a := range applied {
		switch {
		case a.Err != nil:
			g.log.Warn("cannot raise a kernel limit: many machines at once may fail to start", "limit", a.Name, "err", a.Err)
		case a.Raised():
			fmt.Fprintf(w, "raised %s from %d to %d\n", a.Name, a.Before, a.After)
			raised++
		}
	}
	if raised == 0 {
		fmt.Fprintf(w, "kernel limits for many machines are in place (%s)\n", path)
	} else {
		fmt.Fprintf(w, "installed %s: the limits hold after a reboot\n", path)
	}
	return nil
}
