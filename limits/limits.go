package limits

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/nspawn-runner/nspawn-runner/sys/atomicfile"
	"github.com/nspawn-runner/nspawn-runner/sys/sysctl"
)

// DefaultDropIn is the sysctl.d(5) file setup installs. 60- sorts before
// the admin's usual 99-sysctl.conf, so a local value still wins at boot.
const DefaultDropIn = "/etc/sysctl.d/60-nspawn-runner.conf"

// Limit is one kernel limit that many machines at once exhaust.
type Limit struct {
	Name string
	// Want is the least value nspawn-runner needs for many machines.
	Want int64
	// Why says what runs out below it.
	Why string
}

// Wanted are the kernel limits setup raises. Every machine's systemd,
// journald, logind and dbus take inotify instances and watches from one
// per-user quota (all machines run as root: one quota for all); 128
// instances (the default) stall boots past about 32 machines with "Failed
// to create inotify object: Too many open files" (measured: 48 concurrent
// boot-mode jobs failed 35 prepares; at 8192, 64 succeed). Machines with
// user namespaces take kernel keyrings (a session keyring per unit) from
// the per-user kernel.keys quota, 200 keys by default.
var Wanted = []Limit{
	{Name: "fs.inotify.max_user_instances", Want: 8192, Why: "inotify instances: every booted machine's systemd, journald, logind and dbus take some"},
	{Name: "fs.inotify.max_user_watches", Want: 1048576, Why: "inotify watches of all machines together"},
	{Name: "kernel.keys.maxkeys", Want: 20000, Why: "kernel keyrings: a session keyring per unit in user-namespaced machines"},
	{Name: "kernel.keys.maxbytes", Want: 2000000, Why: "bytes of those keyrings"},
}

// DropInText is the body of the drop-in: the limits, with why.
func DropInText() []byte {
	var b bytes.Buffer
	b.WriteString("# Installed by nspawn-runner setup: kernel limits sized for many\n")
	b.WriteString("# systemd-nspawn machines at once. Values already higher are kept\n")
	b.WriteString("# when setup applies this file. Remove it with the package.\n")
	for _, l := range Wanted {
		fmt.Fprintf(&b, "\n# %s\n%s = %d\n", l.Why, l.Name, l.Want)
	}
	return b.Bytes()
}

// Applied is what Install did to one limit.
type Applied struct {
	Name          string
	Before, After int64
	// Err is why the limit could not be read or raised (a read-only
	// /proc/sys in a container, a missing parameter).
	Err error
}

// Raised reports whether the limit was raised now.
func (a Applied) Raised() bool { return a.Err == nil && a.After > a.Before }

// Install writes the drop-in to path (DefaultDropIn when empty,
// atomically: a temporary file renamed over it) and applies it through
// dir: each limit below its wanted value is raised; a limit already higher
// is left alone (never lowered). A limit that cannot be set is reported in
// its Applied, not as an error: the host may forbid it (a container) and
// still run a few machines; doctor says so.
func Install(path string, dir sysctl.Dir) ([]Applied, error) {
	if path == "" {
		path = DefaultDropIn
	}
	if err := writeDropIn(path); err != nil {
		return nil, fmt.Errorf("install %s: %w", path, err)
	}
	var out []Applied
	for _, l := range Wanted {
		a := Applied{Name: l.Name}
		a.Before, a.Err = dir.GetInt(l.Name)
		a.After = a.Before
		if a.Err == nil && a.Before < l.Want {
			if a.Err = dir.Set(l.Name, strconv.FormatInt(l.Want, 10)); a.Err == nil {
				a.After, a.Err = dir.GetInt(l.Name)
			}
		}
		out = append(out, a)
	}
	return out, nil
}

// Shortfall is a limit below what many machines need.
type Shortfall struct {
	Limit
	Have int64
	Err  error
}

// Check returns the limits of dir below their wanted values (or
// unreadable).
func Check(dir sysctl.Dir) []Shortfall {
	var out []Shortfall
	for _, l := range Wanted {
		n, err := dir.GetInt(l.Name)
		if err != nil || n < l.Want {
			out = append(out, Shortfall{Limit: l, Have: n, Err: err})
		}
	}
	return out
}

// writeDropIn writes the drop-in atomically, making its directory first.
func writeDropIn(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, DropInText(), 0o644)
}
