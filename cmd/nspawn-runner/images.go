package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/limits"
	"github.com/nspawn-runner/nspawn-runner/provision"
	"github.com/nspawn-runner/nspawn-runner/sys/sysctl"
)

// store is the image store of the configured root.
func (g *globals) store() *bootstrap.Store {
	return &bootstrap.Store{Root: g.cfg.Root, Log: g.log, CgroupParent: g.cfg.Machine.CgroupParent}
}

// registerImages wires the base-image commands.
func registerImages(app *kingpin.Application, g *globals, cmds commands) {
	var create struct {
		name, suite, mirror string
		include             []string
	}
	c := app.Command("chroot-create", "Create a base image with debootstrap (then run its playbook, if any).")
	c.Arg("name", "Image name ("+config.ImageNameRule+").").Required().StringVar(&create.name)
	c.Flag("suite", "Debian suite (default: the playbook's nspawn_runner_chroot_suite, else bootstrap.suite of the config).").PlaceHolder("SUITE").StringVar(&create.suite)
	c.Flag("mirror", "Debian mirror URL (default: the playbook's, else the config's, else debootstrap's own).").PlaceHolder("URL").StringVar(&create.mirror)
	c.Flag("include", "Extra packages, comma-separated; repeatable.").PlaceHolder("PKGS").StringsVar(&create.include)
	cmds["chroot-create"] = &command{run: func(ctx context.Context) error {
		req := provision.CreateRequest{Suite: create.suite, Mirror: create.mirror, Include: create.include, Progress: os.Stderr,
			// The live line would fight with the debug log for the terminal.
			Interactive: isTerminal(os.Stderr) && !g.debug}
		err := g.maintainer().Create(ctx, create.name, req)
		if errors.Is(err, bootstrap.ErrExists) {
			return fmt.Errorf("%w (remove it first with nspawn-runner chroot-remove %s, or rebuild it with chroot-maintenance and %s)", err, create.name, provision.VarRecreate)
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "created image %s in %s\n", create.name, g.cfg.Root)
		return nil
	}}

	var login struct {
		name string
		argv []string
	}
	c = app.Command("chroot-login", "Enter a base image for maintenance (changes are kept), or run one command in it: chroot-login NAME -- CMD ARGS...")
	c.Arg("name", "Image name.").Required().StringVar(&login.name)
	c.Arg("command", "Command and arguments to run instead of a shell (after --).").StringsVar(&login.argv)
	cmds["chroot-login"] = &command{run: func(ctx context.Context) error {
		// A *bootstrap.ExitError carries the command's own status, which
		// becomes ours, as with ssh or chroot (see run in main.go).
		return g.store().Login(ctx, login.name, login.argv)
	}}

	var list struct{ json bool }
	c = app.Command("chroot-list", "List base images (and playbooks without an image).")
	c.Flag("json", "Print JSON instead of a table.").BoolVar(&list.json)
	cmds["chroot-list"] = &command{run: func(context.Context) error {
		imgs, err := g.store().List()
		if err != nil {
			return err
		}
		pbs, err := g.maintainer().Playbooks()
		if err != nil {
			return err
		}
		rows := listRows(imgs, pbs)
		if list.json {
			return writeListJSON(os.Stdout, rows)
		}
		return writeListTable(os.Stdout, rows, time.Now())
	}}

	var remove struct{ name string }
	c = app.Command("chroot-remove", "Remove a base image.")
	c.Arg("name", "Image name.").Required().StringVar(&remove.name)
	cmds["chroot-remove"] = &command{run: func(ctx context.Context) error {
		r, err := g.maintainer().Remove(ctx, remove.name)
		if err != nil {
			if r.Retired != "" {
				return fmt.Errorf("%w (nspawn-runner gc retries)", err)
			}
			return err
		}
		if !r.Deleted {
			fmt.Fprintf(os.Stderr, "removed image %s; machines still run from it, so its tree %s stays until they end (nspawn-runner gc deletes it)\n", remove.name, r.Retired)
			return nil
		}
		fmt.Fprintf(os.Stderr, "removed image %s\n", remove.name)
		return nil
	}}

	var setup struct {
		size, file  string
		sysctlFile  string
		procSys     string
		noSysctl    bool
		sysctlOnly  bool
		printSysctl bool
	}
	c = app.Command("setup", "Prepare the root directory; with --loopback, on a host whose root is not on btrfs, mount a btrfs image file on it.")
	c.Flag("loopback", "Size of a sparse btrfs file to mount on the root when it is not on btrfs (e.g. 8G).").PlaceHolder("SIZE").StringVar(&setup.size)
	c.Flag("loopback-file", "The btrfs file (default ROOT.btrfs, e.g. "+bootstrap.LoopbackFile(config.DefaultRoot)+").").PlaceHolder("PATH").StringVar(&setup.file)
	c.Flag("sysctl-file", "The sysctl.d drop-in raising kernel limits for many machines.").Default(limits.DefaultDropIn).PlaceHolder("PATH").StringVar(&setup.sysctlFile)
	c.Flag("no-sysctl", "Neither install nor apply the sysctl.d drop-in.").BoolVar(&setup.noSysctl)
	c.Flag("sysctl-only", "Only install and apply the sysctl.d drop-in (the Debian package's postinst).").BoolVar(&setup.sysctlOnly)
	// make deb writes the drop-in into the package.
	c.Flag("print-sysctl", "").Hidden().BoolVar(&setup.printSysctl)
	// Tests apply the limits to a tree laid out like /proc/sys.
	c.Flag("proc-sys", "").Hidden().Default(sysctl.DefaultDir).StringVar(&setup.procSys)
	cmds["setup"] = &command{run: func(ctx context.Context) error {
		switch {
		case setup.printSysctl:
			_, err := os.Stdout.Write(limits.DropInText())
			return err
		case setup.sysctlOnly && setup.noSysctl:
			return usageError{errors.New("--sysctl-only and --no-sysctl exclude each other")}
		case setup.sysctlOnly:
			return setupLimits(os.Stdout, g, setup.sysctlFile, sysctl.Dir(setup.procSys))
		}
		var o bootstrap.SetupOptions
		if setup.size != "" {
			sz, err := config.ParseSize(setup.size)
			if err != nil || sz.Percent > 0 || sz.Bytes == 0 {
				return usageError{fmt.Errorf("--loopback %q: want a size like 8G", setup.size)}
			}
			o.Loopback = int64(sz.Bytes)
		}
		o.LoopbackFile = setup.file
		res, err := g.store().Setup(ctx, o)
		if err != nil {
			return err
		}
		writeSetup(os.Stdout, res, o.Loopback > 0)
		if setup.noSysctl {
			return nil
		}
		return setupLimits(os.Stdout, g, setup.sysctlFile, sysctl.Dir(setup.procSys))
	}}
}

// listRow is one line of chroot-list: an image, a playbook, or both.
type listRow struct {
	Name       string    `json:"name"`
	Exists     bool      `json:"exists"`
	Kind       string    `json:"kind"`
	Path       string    `json:"path,omitempty"`
	Size       int64     `json:"size"`
	Created    time.Time `json:"created,omitzero"`
	Maintained time.Time `json:"maintained,omitzero"`
	Suite      string    `json:"suite,omitempty"`
	Playbook   string    `json:"playbook,omitempty"`
}

// listRows is the union of the images on disk and the playbooks, by name.
func listRows(imgs []bootstrap.Image, playbooks map[string]string) []listRow {
	byName := map[string]*listRow{}
	var rows []*listRow
	for _, im := range imgs {
		r := &listRow{Name: im.Name, Exists: true, Kind: im.Kind, Path: im.Path, Size: im.Size, Created: im.Created, Maintained: im.Maintained, Suite: im.Suite}
		byName[im.Name] = r
		rows = append(rows, r)
	}
	for name, pb := range playbooks {
		r := byName[name]
		if r == nil {
			r = &listRow{Name: name, Kind: "missing"}
			byName[name] = r
			rows = append(rows, r)
		}
		r.Playbook = pb
	}
	out := make([]listRow, len(rows))
	for i, r := range rows {
		out[i] = *r
	}
	slices.SortFunc(out, func(a, b listRow) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func writeListJSON(w io.Writer, rows []listRow) error {
	if rows == nil {
		rows = []listRow{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rows)
}

func writeListTable(w io.Writer, rows []listRow, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tSIZE\tCREATED\tMAINTAINED\tPLAYBOOK\tPATH")
	for _, r := range rows {
		size, path := "-", "-"
		if r.Exists {
			size, path = humanSize(r.Size), r.Path
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Kind, size, humanTime(r.Created, now), humanTime(r.Maintained, now), orDash(r.Playbook), path)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// humanSize writes bytes in binary units, as du -h does.
func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	v, u := float64(n), 0
	for v >= unit && u < 5 {
		v /= unit
		u++
	}
	return fmt.Sprintf("%.1f%ci", v, "BKMGTP"[u])
}

// humanTime is a date within the last year as "Jan _2 15:04", older ones
// with the year, as ls -l does; "-" for never.
func humanTime(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	t = t.Local()
	if now.Sub(t) < 180*24*time.Hour && t.Before(now.Add(time.Hour)) {
		return t.Format("2006-01-02 15:04")
	}
	return t.Format("2006-01-02")
}

func writeSetup(w io.Writer, r bootstrap.SetupResult, loopback bool) {
	switch {
	case r.Mounted:
		fmt.Fprintf(w, "mounted %s (%s, btrfs) on %s\n", r.File, r.Device, r.Root)
		fmt.Fprintf(w, "to mount it at boot, add this line to /etc/fstab:\n%s\n", r.Fstab)
	case r.AlreadyMounted:
		fmt.Fprintf(w, "%s is already mounted from %s (%s)\n", r.Root, r.File, r.Device)
		fmt.Fprintf(w, "/etc/fstab line: %s\n", r.Fstab)
	case r.Btrfs:
		fmt.Fprintf(w, "%s is ready, on btrfs: images are subvolumes\n", r.Root)
	case !loopback:
		fmt.Fprintf(w, "%s is ready; it is not on btrfs, so images are plain directories and jobs use overlayfs (setup --loopback 8G mounts a btrfs file there instead)\n", r.Root)
	}
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
