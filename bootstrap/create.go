package bootstrap

import "io"

// CreateOptions says how to build a new image.
type CreateOptions struct {
	// Suite is the Debian suite (bookworm, trixie, sid...). Required.
	Suite string
	// Mirror is debootstrap's MIRROR argument; empty means its default.
	Mirror string
	// Packages are installed in addition to config.BasePackages.
	Packages []string
	// Progress receives one line per debootstrap phase; nil for none.
	Progress io.Writer
	// Interactive redraws a live single-line display on Progress (a
	// terminal) as packages are retrieved, unpacked and configured.
	Interactive bool
}
