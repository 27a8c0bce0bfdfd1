//go:build cgo

package ns

// The import links userns_linux.c, whose constructor enters a machine's
// user namespace before the Go runtime starts (no preamble needed).

import "C"

// CanEnterUserNS reports whether this binary can start commands inside a
// machine that has its own user namespace (it needs the C constructor of
// userns_linux.c, hence cgo).
const CanEnterUserNS = true
