package provision

import (
	"bytes"
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

// Defaults are what an image is created with when its playbook does not
// say: the configuration's bootstrap section.
type Defaults struct {
	Suite    string
	Mirror   string
	Packages []string
}

// Maintainer creates, recreates and provisions images from their
// playbooks. Every change happens on a workspace that replaces the live
// image atomically only when the playbook succeeded.
type Maintainer struct {
	Store  *bootstrap.Store
	Runner *Runner
	// Dirs are the playbook directories, in search order.
	Dirs     []string
	Defaults Defaults
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
	if m.Progress != nil {
		fmt.Fprintf(m.Progress, "chroot-maintenance %s: %s\n", name, fmt.Sprintf(format, args...))
	}
}

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
		err := m.maintain(ctx, n, pb, false)
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

// Provision runs the playbook of an existing image (just created by
// chroot-create) on a copy and swaps it in. An image without a playbook
// is left alone: ErrNoPlaybook is not returned, nil is.
func (m *Maintainer) Provision(ctx context.Context, name string) error {
	playbooks, err := m.Playbooks()
	if err != nil {
		return err
	}
	pb := playbooks[name]
	if pb == "" {
		return nil
	}
	return m.maintain(ctx, name, pb, true)
}

// lock takes the image lock, first without waiting so that waiting can be
// announced, or refused with NoWait.
func (m *Maintainer) lock(ctx context.Context, name string) (func(), error) {
	unlock, err := m.Store.TryLock(name)
	if err == nil {
		return unlock, nil
	}
	if !errors.Is(err, flock.ErrBusy) {
		return nil, fmt.Errorf("maintain image %s: %w", name, err)
	}
	if m.NoWait {
		return nil, fmt.Errorf("maintain image %s: %w; not waiting (--no-wait)", name, ErrBusy)
	}
	m.progress(name, "waiting for another create, remove or maintenance of this image to finish")
	// A copy without a logger keeps the store from saying it waits too:
	// the progress line above said so.
	quiet := *m.Store
	quiet.Log = nil
	unlock, err = quiet.Lock(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("maintain image %s: %w", name, err)
	}
	return unlock, nil
}

// maintain brings one image up to date under its lock. With update set,
// the image is never created or recreated, only provisioned.
func (m *Maintainer) maintain(ctx context.Context, name, playbook string, update bool) (err error) {
	start := time.Now()
	vars, warns, err := ReadVars(playbook)
	if err != nil {
		return fmt.Errorf("maintain image %s: %w", name, err)
	}
	for _, w := range warns {
		m.log().Warn(w)
	}
	unlock, err := m.lock(ctx, name)
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
		return fmt.Errorf("maintain image %s: %w", name, err)
	}
	if !exists && update {
		return fmt.Errorf("provision image %s: %w", name, err)
	}
	old, err := m.Store.ReadMeta(name)
	if err != nil {
		m.log().Warn("ignoring unreadable image metadata", "image", name, "err", err)
	}

	ws, err := m.Store.Workspace(name)
	if err != nil {
		return fmt.Errorf("maintain image %s: %w", name, err)
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
	fresh := !exists || (vars.Recreate && !update)
	if fresh {
		o := bootstrap.CreateOptions{
			Suite:    firstNonEmpty(vars.Suite, m.Defaults.Suite),
			Mirror:   firstNonEmpty(vars.Mirror, m.Defaults.Mirror),
			Packages: slices.Concat(m.Defaults.Packages, vars.Include),
		}
		what := "creating"
		if exists {
			what = "recreating (" + VarRecreate + ")"
		}
		m.progress(name, "%s from %s with debootstrap in %s", what, o.Suite, ws)
		if m.Progress != nil {
			o.Progress = &linePrefix{w: m.Progress, prefix: "chroot-maintenance " + name + ": debootstrap: "}
		}
		if err := m.Store.Debootstrap(ctx, ws, o); err != nil {
			return fmt.Errorf("maintain image %s: %w", name, err)
		}
		meta = bootstrap.Meta{Created: time.Now().UTC(), Suite: o.Suite, Mirror: o.Mirror, Packages: bootstrap.Packages(o.Packages)}
	} else {
		m.progress(name, "copying the image to %s", ws)
		how, err := copyImage(ctx, live, ws)
		if err != nil {
			return fmt.Errorf("maintain image %s: %w", name, err)
		}
		m.log().Info("copied the image", "image", name, "how", how, "workspace", ws)
	}

	m.progress(name, "running playbook %s", playbook)
	machine, err := MachineName(m.MachinePrefix, name)
	if err != nil {
		return fmt.Errorf("maintain image %s: %w", name, err)
	}
	if err := m.Runner.Run(ctx, Target{Name: name, Tree: ws, Playbook: playbook, Machine: machine}); err != nil {
		if exists {
			return fmt.Errorf("maintain image %s: %w; the image is unchanged", name, err)
		}
		return fmt.Errorf("maintain image %s: %w; the image was not created", name, err)
	}
	// The playbook ran with fsync suppressed: make the new tree durable
	// before it becomes the image.
	if err := syncTree(ws); err != nil {
		return fmt.Errorf("maintain image %s: %w", name, err)
	}
	retired, err := m.Store.Replace(name, ws)
	if err != nil {
		if retired != "" {
			// The new image is in place; only moving the old tree aside
			// failed, and that tree may be in use: never remove it here.
			swapped = true
			return fmt.Errorf("maintain image %s: the new image is in place, but: %w", name, err)
		}
		return fmt.Errorf("maintain image %s: %w", name, err)
	}
	swapped = true
	meta.Maintained = time.Now().UTC()
	if err := m.Store.WriteMeta(name, meta); err != nil {
		m.log().Warn("image maintained, but its metadata was not written", "image", name, "err", err)
	}
	if retired != "" {
		m.progress(name, "done in %s: new image in place; the old one is %s until gc removes it (once no machine uses it)", time.Since(start).Round(time.Second), retired)
	} else {
		m.progress(name, "done in %s: image created", time.Since(start).Round(time.Second))
	}
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// copyImage fills the empty workspace ws with a copy of the image live: a
// btrfs snapshot when both are subvolumes (ws is then replaced by the
// snapshot), else a reflink copy that falls back to a plain one per file.
func copyImage(ctx context.Context, live, ws string) (string, error) {
	liveSub, _ := btrfs.IsSubvolume(live)
	wsSub, _ := btrfs.IsSubvolume(ws)
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
