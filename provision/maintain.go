package provision

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/logx"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
	"github.com/nspawn-runner/nspawn-runner/sys/flock"
	"github.com/nspawn-runner/nspawn-runner/sys/treecopy"
)

// ErrBusy is returned with NoWait when another create, remove or
// maintenance of the image holds its lock.
var ErrBusy = errors.New("another create, remove or maintenance of this image is running")

// ErrNoPlaybook is returned when an image to provision has no playbook.
var ErrNoPlaybook = errors.New("no playbook")

// Collector deletes the retired image trees that no machine uses, and
// returns their paths (machine.Manager's GCImages).
type Collector interface {
	GCImages() ([]string, error)
}

// CreateRequest is what chroot-create asks for. Its fields win over the
// playbook's nspawn_runner_* vars, which win over the configuration
// (Options).
type CreateRequest struct {
	Suite  string
	Mirror string
	// Include are extra packages; an entry may list several, separated
	// by commas.
	Include []string
	// Progress receives debootstrap's phases; nil for none.
	Progress io.Writer
	// Interactive redraws a live line on Progress (a terminal).
	Interactive bool
}

// Options is the one place that decides what an image is created with:
// the request (chroot-create's flags) over the playbook's vars over the
// configuration over config.DefaultSuite. Packages are the union of all
// three, commas split, sorted, without duplicates.
func Options(cfg config.Bootstrap, v Vars, req CreateRequest) bootstrap.CreateOptions {
	var pkgs []string
	for _, entry := range slices.Concat(cfg.Packages, v.Include, req.Include) {
		for p := range strings.SplitSeq(entry, ",") {
			if p = strings.TrimSpace(p); p != "" {
				pkgs = append(pkgs, p)
			}
		}
	}
	slices.Sort(pkgs)
	return bootstrap.CreateOptions{
		Suite:       cmp.Or(req.Suite, v.Suite, cfg.Suite, config.DefaultSuite),
		Mirror:      cmp.Or(req.Mirror, v.Mirror, cfg.Mirror),
		Packages:    slices.Compact(pkgs),
		Progress:    req.Progress,
		Interactive: req.Interactive,
	}
}

// Maintainer creates, recreates and provisions images from their
// playbooks. Every change happens on a workspace that replaces the live
// image atomically only when the playbook succeeded.
type Maintainer struct {
	Store  *bootstrap.Store
	Runner *Runner
	// Dirs are the playbook directories, in search order.
	Dirs []string
	// Defaults is the configuration's bootstrap section: what an image is
	// created with when neither chroot-create nor the playbook says.
	Defaults config.Bootstrap
	// Collector deletes a replaced or removed image's tree at once when
	// no machine uses it; nil leaves it to a later gc.
	Collector Collector
	// NoWait refuses (ErrBusy) instead of waiting when another process
	// holds the image's lock.
	NoWait bool
	// Progress receives a line per image and phase; nil discards them.
	Progress io.Writer
	// MachinePrefix starts the systemd-nspawn machine name of an image's
	// playbook run (MachineName); empty means DefaultMachinePrefix.
	MachinePrefix string
	Log           *slog.Logger
	// Done, when set, is called after each image's maintenance with its
	// outcome (metrics record it).
	Done func(image string, err error)
}

func (m *Maintainer) log() *slog.Logger {
	return logx.OrDiscard(m.Log)
}

func (m *Maintainer) progress(name, format string, args ...any) {
	m.progressOf(verbMaintain, name, format, args...)
}

func (m *Maintainer) progressOf(v verb, name, format string, args ...any) {
	if m.Progress != nil {
		fmt.Fprintf(m.Progress, "%s %s: %s\n", v.command, name, fmt.Sprintf(format, args...))
	}
}

// verb is the command a run of maintain serves, for its messages.
type verb struct{ command, op string }

var (
	verbMaintain = verb{"chroot-maintenance", "maintain"}
	verbCreate   = verb{"chroot-create", "create"}
)

// Playbooks discovers the playbooks of m.Dirs and logs the warnings.
func (m *Maintainer) Playbooks() (map[string]string, error) {
	d, err := Discover(m.Dirs)
	if err != nil {
		return nil, err
	}
	for _, w := range d.Warnings {
		m.log().Warn(w)
	}
	return d.Playbooks, nil
}

// Maintain maintains every image (the union of the playbooks and the
// images on disk), or only the one named. An image without a playbook is
// skipped with a warning. A failure of one image does not stop the
// others; the errors of all are returned together.
func (m *Maintainer) Maintain(ctx context.Context, only string) error {
	playbooks, err := m.Playbooks()
	if err != nil {
		return err
	}
	// The debris of killed creates and maintenances of any image, also of
	// those this run does not touch (each image's own is cleaned again
	// under its lock below).
	if err := m.Store.CleanWorkspaces(ctx, ""); err != nil {
		m.log().Warn("cleaning stale workspaces", "err", err)
	}
	imgs, err := m.Store.List()
	if err != nil {
		return err
	}
	onDisk := map[string]bool{}
	for _, img := range imgs {
		onDisk[img.Name] = true
	}
	var names []string
	for n := range playbooks {
		names = append(names, n)
	}
	for n := range onDisk {
		if playbooks[n] == "" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	if only != "" {
		if !slices.Contains(names, only) {
			known := "none"
			if len(names) > 0 {
				known = strings.Join(names, ", ")
			}
			return fmt.Errorf("maintain image %s: no playbook %s.yaml in %s and no such image in %s (known images: %s): %w",
				only, only, strings.Join(m.Dirs, " or "), m.Store.Root, known, ErrNoPlaybook)
		}
		names = []string{only}
	}
	if len(names) == 0 {
		m.log().Warn("no playbooks and no images: nothing to maintain", "playbook_dirs", m.Dirs, "root", m.Store.Root)
		return nil
	}
	var errs []error
	for _, n := range names {
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("maintain image %s: %w", n, context.Cause(ctx)))
			break
		}
		pb := playbooks[n]
		if pb == "" {
			m.log().Warn("skipping image without a playbook", "image", n, "playbook_dirs", m.Dirs)
			m.progress(n, "skipped: no playbook %s.yaml or %s.yml in %s", n, n, strings.Join(m.Dirs, " or "))
			continue
		}
		err := m.maintain(ctx, n, pb, nil)
		if m.Done != nil {
			m.Done(n, err)
		}
		if err != nil {
			if len(names) > 1 {
				// The errors are repeated together at the end; say it
				// here too, where the image's output is.
				m.progress(n, "FAILED: %v", err)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Create creates image name for chroot-create. Without a playbook it is
// debootstrap alone (bootstrap.Store.Create). With one, the playbook runs
// on the new tree before it is put in place: the image appears complete
// and provisioned, or not at all. An image that exists is an error
// wrapping bootstrap.ErrExists.
func (m *Maintainer) Create(ctx context.Context, name string, req CreateRequest) error {
	if err := config.CheckImageName(name); err != nil {
		return err
	}
	playbooks, err := m.Playbooks()
	if err != nil {
		return err
	}
	pb := playbooks[name]
	if pb == "" {
		return m.Store.Create(ctx, name, Options(m.Defaults, Vars{}, req))
	}
	return m.maintain(ctx, name, pb, &req)
}

// Removal is what Remove did.
type Removal struct {
	// Retired is where the image's tree went when its name was taken.
	Retired string
	// Deleted is true when the tree is gone too; false when machines
	// still run from it (gc deletes it after them).
	Deleted bool
}

// Remove takes the image's name away at once (bootstrap.Store.Retire: no
// new job can pick it) and deletes its tree when no machine runs from it.
func (m *Maintainer) Remove(ctx context.Context, name string) (Removal, error) {
	retired, err := m.Store.Retire(ctx, name)
	if err != nil {
		return Removal{}, err
	}
	r := Removal{Retired: retired}
	deleted, err := m.collect()
	r.Deleted = slices.Contains(deleted, retired)
	if err != nil && !r.Deleted {
		return r, fmt.Errorf("image %s removed, but deleting its tree %s failed: %w", name, retired, err)
	}
	return r, nil
}

// collect deletes the retired trees no machine uses, when m can tell.
func (m *Maintainer) collect() ([]string, error) {
	if m.Collector == nil {
		return nil, nil
	}
	return m.Collector.GCImages()
}

// lock takes the image lock, first without waiting so that waiting can be
// announced, or refused with NoWait.
func (m *Maintainer) lock(ctx context.Context, v verb, name string) (func(), error) {
	unlock, err := m.Store.TryLock(name)
	if err == nil {
		return unlock, nil
	}
	if !errors.Is(err, flock.ErrBusy) {
		return nil, fmt.Errorf("%s image %s: %w", v.op, name, err)
	}
	if m.NoWait {
		return nil, fmt.Errorf("%s image %s: %w; not waiting (--no-wait)", v.op, name, ErrBusy)
	}
	m.progressOf(v, name, "waiting for another create, remove or maintenance of this image to finish")
	// A copy without a logger keeps the store from saying it waits too:
	// the progress line above said so.
	quiet := *m.Store
	quiet.Log = nil
	unlock, err = quiet.Lock(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("%s image %s: %w", v.op, name, err)
	}
	return unlock, nil
}

// maintain brings one image up to date under its lock: it creates it
// when missing, recreates it (nspawn_runner_maint_recreate) or updates a
// copy, runs the playbook on that tree and only then puts it in place.
// With create set (chroot-create), the image must not exist and is
// created with create's options.
func (m *Maintainer) maintain(ctx context.Context, name, playbook string, create *CreateRequest) (err error) {
	start := time.Now()
	v := verbMaintain
	if create != nil {
		v = verbCreate
	}
	progress := func(format string, args ...any) { m.progressOf(v, name, format, args...) }
	vars, warns, err := ReadVars(playbook)
	if err != nil {
		return fmt.Errorf("%s image %s: %w", v.op, name, err)
	}
	for _, w := range warns {
		m.log().Warn(w)
	}
	unlock, err := m.lock(ctx, v, name)
	if err != nil {
		return err
	}
	defer unlock()
	// We hold the lock: workspaces of this image are debris of a killed
	// maintenance or create.
	if err := m.Store.CleanWorkspaces(ctx, name); err != nil {
		m.log().Warn("cleaning stale workspaces", "image", name, "err", err)
	}
	live, err := m.Store.Path(name)
	exists := err == nil
	if err != nil && !errors.Is(err, bootstrap.ErrNotFound) {
		return fmt.Errorf("%s image %s: %w", v.op, name, err)
	}
	if exists && create != nil {
		return fmt.Errorf("create image %s: %s exists: %w", name, live, bootstrap.ErrExists)
	}
	old, err := m.Store.ReadMeta(name)
	if err != nil {
		m.log().Warn("ignoring unreadable image metadata", "image", name, "err", err)
	}

	ws, err := m.Store.Workspace(name)
	if err != nil {
		return fmt.Errorf("%s image %s: %w", v.op, name, err)
	}
	swapped := false
	defer func() {
		if swapped {
			return
		}
		if rerr := m.Store.RemoveTree(ws); rerr != nil {
			m.log().Error("removing the workspace", "image", name, "path", ws, "err", rerr)
		}
	}()

	meta := old
	if !exists || vars.Recreate {
		var o bootstrap.CreateOptions
		if create != nil {
			o = Options(m.Defaults, vars, *create)
		} else {
			o = Options(m.Defaults, vars, CreateRequest{})
			if m.Progress != nil {
				o.Progress = &linePrefix{w: m.Progress, prefix: v.command + " " + name + ": debootstrap: "}
			}
		}
		what := "creating"
		if exists {
			what = "recreating (" + VarRecreate + ")"
		}
		progress("%s from %s with debootstrap in %s", what, o.Suite, ws)
		if err := m.Store.Debootstrap(ctx, ws, o); err != nil {
			return fmt.Errorf("%s image %s: %w", v.op, name, err)
		}
		meta = bootstrap.Meta{Created: time.Now().UTC(), Suite: o.Suite, Mirror: o.Mirror, Packages: bootstrap.Packages(o.Packages)}
	} else {
		progress("copying the image to %s", ws)
		how, err := copyImage(ctx, live, ws)
		if err != nil {
			return fmt.Errorf("%s image %s: %w", v.op, name, err)
		}
		m.log().Info("copied the image", "image", name, "how", how, "workspace", ws)
	}

	progress("running playbook %s", playbook)
	machine, err := MachineName(m.MachinePrefix, name)
	if err != nil {
		return fmt.Errorf("%s image %s: %w", v.op, name, err)
	}
	if err := m.Runner.Run(ctx, Target{Name: name, Tree: ws, Playbook: playbook, Machine: machine}); err != nil {
		if exists {
			return fmt.Errorf("%s image %s: %w; the image is unchanged", v.op, name, err)
		}
		return fmt.Errorf("%s image %s: %w; the image was not created", v.op, name, err)
	}
	// The playbook ran with fsync suppressed: make the new tree durable
	// before it becomes the image.
	if err := syncTree(ws); err != nil {
		return fmt.Errorf("%s image %s: %w", v.op, name, err)
	}
	var retired string
	if exists {
		retired, err = m.Store.Replace(name, ws)
	} else {
		err = m.Store.Install(name, ws)
	}
	if err != nil {
		if retired != "" {
			// The new image is in place; only moving the old tree aside
			// failed, and that tree may be in use: never remove it here.
			swapped = true
			return fmt.Errorf("%s image %s: the new image is in place, but: %w", v.op, name, err)
		}
		return fmt.Errorf("%s image %s: %w", v.op, name, err)
	}
	swapped = true
	meta.Maintained = time.Now().UTC()
	meta.ServicePorts = vars.ServicePorts
	if err := m.Store.WriteMeta(name, meta); err != nil {
		m.log().Warn("image written, but its metadata was not", "image", name, "err", err)
	}
	took := time.Since(start).Round(time.Second)
	if retired == "" {
		progress("done in %s: image created", took)
		return nil
	}
	deleted, err := m.collect()
	switch {
	case slices.Contains(deleted, retired):
		progress("done in %s: new image in place; the old one, unused, is deleted", took)
	case err != nil:
		m.log().Warn("deleting the unused retired image trees", "err", err)
		fallthrough
	default:
		progress("done in %s: new image in place; the old one is %s until gc deletes it (once no machine uses it)", took, retired)
	}
	return nil
}

// copyImage fills the empty workspace ws with a copy of the image live: a
// btrfs snapshot when both are subvolumes (ws is then replaced by the
// snapshot), else a reflink copy that falls back to a plain one per file.
func copyImage(ctx context.Context, live, ws string) (string, error) {
	liveSub, err := btrfs.IsSubvolume(live)
	if err != nil && !errors.Is(err, btrfs.ErrNotBtrfs) {
		return "", fmt.Errorf("copy image: %w", err)
	}
	wsSub, err := btrfs.IsSubvolume(ws)
	if err != nil && !errors.Is(err, btrfs.ErrNotBtrfs) {
		return "", fmt.Errorf("copy image: %w", err)
	}
	if liveSub && wsSub {
		if err := btrfs.Delete(ws); err != nil {
			return "", fmt.Errorf("copy image: %w", err)
		}
		if err := btrfs.Snapshot(live, ws); err != nil {
			return "", fmt.Errorf("copy image: %w", err)
		}
		return "btrfs snapshot", nil
	}
	st, err := treecopy.Copy(ctx, live, ws, treecopy.Options{})
	if err != nil {
		return "", fmt.Errorf("copy image: %w", err)
	}
	return fmt.Sprintf("copy: %d files, %d reflinked, %d bytes copied", st.Files, st.Cloned, st.CopiedBytes), nil
}

// syncTree flushes the filesystem holding dir (syncfs(2)).
func syncTree(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// linePrefix writes each line to w with a prefix, so that debootstrap's
// progress lines say which image they are about.
type linePrefix struct {
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *linePrefix) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		if _, err := fmt.Fprintf(p.w, "%s%s\n", p.prefix, p.buf[:i]); err != nil {
			return len(b), err
		}
		p.buf = p.buf[i+1:]
	}
}
