package bootstrap

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
)

// Command is a program and its arguments.
type Command struct {
	Path string
	Args []string
	Env  []string
}

// String is the command line, for errors and logs.
func (c Command) String() string { return strings.Join(append([]string{c.Path}, c.Args...), " ") }

// Packages returns config.BasePackages plus extra, sorted, without
// duplicates or empty names: what debootstrap --include gets.
func Packages(extra []string) []string {
	var out []string
	for _, p := range slices.Concat(config.BasePackages, extra) {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// DebootstrapCommand returns the debootstrap invocation building o into
// target, under eatmydata when eatmydata is not "" (its path): the tool
// then skips every fsync, which is most of debootstrap's time on a host
// where the image is rebuilt rather than recovered after a crash.
func DebootstrapCommand(o CreateOptions, target, eatmydata string) Command {
	args := []string{"--variant=minbase", "--include=" + strings.Join(Packages(o.Packages), ","), o.Suite, target}
	if o.Mirror != "" {
		args = append(args, o.Mirror)
	}
	c := Command{Path: "debootstrap", Args: args}
	if eatmydata != "" {
		c = Command{Path: eatmydata, Args: append([]string{"debootstrap"}, args...)}
	}
	// LC_ALL=C keeps the "I:" lines in English for the progress parser;
	// DEBIAN_FRONTEND=noninteractive keeps maintainer scripts from asking.
	c.Env = []string{"LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "DEBCONF_NONINTERACTIVE_SEEN=true"}
	return c
}

// checkOptions refuses a suite, mirror or package that debootstrap would
// read as a path or an option, before anything is created.
func checkOptions(o CreateOptions) error {
	if o.Suite == "" {
		return errors.New("no suite given")
	}
	if err := config.CheckSuite(o.Suite); err != nil {
		return err
	}
	if err := config.CheckMirror(o.Mirror); err != nil {
		return err
	}
	for _, p := range o.Packages {
		// Packages() drops blanks left by "a,,b" or a trailing comma.
		if p = strings.TrimSpace(p); p != "" {
			if err := config.CheckPackage(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// Create builds image name with debootstrap in a workspace and installs it
// only when debootstrap succeeded: a failed, cancelled or killed create
// leaves no image. Creating an image that exists fails with ErrExists.
func (s *Store) Create(ctx context.Context, name string, o CreateOptions) error {
	if err := config.CheckImageName(name); err != nil {
		return err
	}
	if err := checkOptions(o); err != nil {
		return fmt.Errorf("create image %s: %w", name, err)
	}
	if err := os.MkdirAll(s.Root, 0o755); err != nil {
		return fmt.Errorf("create image %s: %w", name, err)
	}
	if err := s.exists(name); err != nil {
		return err
	}
	unlock, err := s.Lock(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.CleanWorkspaces(ctx, name); err != nil {
		s.log().Warn("cleaning stale workspaces", "err", err)
	}
	if err := s.exists(name); err != nil {
		return err
	}
	ws, err := s.Workspace(name)
	if err != nil {
		return err
	}
	installed := false
	defer func() {
		if !installed {
			killInside(ws)
			if err := s.RemoveTree(ws); err != nil {
				s.log().Error("removing the workspace of a failed create", "path", ws, "err", err)
			}
		}
	}()
	s.log().Info("creating image", "image", name, "suite", o.Suite, "workspace", ws)
	start := time.Now()
	if err := s.Debootstrap(ctx, ws, o); err != nil {
		return fmt.Errorf("create image %s: %w", name, err)
	}
	if err := s.Install(name, ws); err != nil {
		return err
	}
	installed = true
	m := Meta{Created: time.Now().UTC(), Suite: o.Suite, Mirror: o.Mirror, Packages: Packages(o.Packages)}
	if err := s.WriteMeta(name, m); err != nil {
		s.log().Warn("image created, but its metadata was not written", "image", name, "err", err)
	}
	s.log().Info("created image", "image", name, "path", s.path(name), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Debootstrap runs debootstrap for o into ws, an empty workspace made with
// Workspace whose image lock the caller holds: what Create does between
// making the workspace and installing it, for callers (maintenance) that
// do more to the tree before it becomes the image. Progress goes to
// o.Progress as in Create. When it fails or ctx ends, debootstrap and all
// it started are dead and nothing is mounted below ws when it returns; the
// caller removes ws (RemoveTree).
func (s *Store) Debootstrap(ctx context.Context, ws string, o CreateOptions) error {
	if err := s.checkWorkspace(ws); err != nil {
		return fmt.Errorf("debootstrap: %w", err)
	}
	if err := checkOptions(o); err != nil {
		return fmt.Errorf("debootstrap: %w", err)
	}
	eatmydata, _ := exec.LookPath("eatmydata")
	c := DebootstrapCommand(o, ws, eatmydata)
	s.log().Info("running debootstrap", "workspace", ws, "cmd", c.String())
	err := s.run(ctx, c, ws, o)
	// debootstrap unmounts what it mounted when it succeeds, not when it
	// is killed; and a mount left below would be renamed with the tree.
	if uerr := unmountBelow(ws); uerr != nil && err == nil {
		err = fmt.Errorf("%s: %w", c, uerr)
	}
	return err
}

// exists fails with ErrExists when image name exists.
func (s *Store) exists(name string) error {
	if _, err := os.Lstat(s.path(name)); err == nil {
		return fmt.Errorf("image %q already exists in %s: %w", name, s.Root, ErrExists)
	}
	return nil
}

// run runs debootstrap in its own process group, feeding its output to the
// progress display, the debug log and a tail kept for errors. On ctx's end
// the whole group is killed: debootstrap runs dpkg and maintainer scripts
// in the target, and those must stop before the workspace is removed.
func (s *Store) run(ctx context.Context, c Command, ws string, o CreateOptions) error {
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Dir = "/"
	// Setpgid: one kill(-pgid) reaches debootstrap's children too.
	// CLONE_NEWPID + Pdeathsig: when nspawn-runner itself is SIGKILLed,
	// debootstrap (the init of its own PID namespace) gets SIGKILL, and the
	// kernel then kills every process in that namespace (pid_namespaces(7)):
	// the subshells and dpkg runs that debootstrap forked, which would
	// otherwise go on writing into a workspace being removed. It also ends
	// daemons a maintainer script started, when debootstrap finishes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Cloneflags: syscall.CLONE_NEWPID}
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("%s: %w", c, err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fmt.Errorf("%s: %w", c, err)
	}
	pw.Close()
	tail := &tailBuffer{max: 40}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p := &progress{w: o.Progress, interactive: o.Interactive}
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			tail.add(line)
			s.log().Debug("debootstrap", "line", line)
			if ev, ok := ParseLine(line); ok {
				p.event(ev)
			}
		}
		p.clear()
		// Drain whatever is left so debootstrap never blocks on a full pipe.
		_, _ = io.Copy(io.Discard, pr)
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waited:
	case <-ctx.Done():
		s.log().Info("stopping debootstrap", "pid", cmd.Process.Pid, "cause", context.Cause(ctx))
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		<-waited
		killInside(ws)
		pr.Close()
		<-done
		return fmt.Errorf("%s: interrupted: %w", c, context.Cause(ctx))
	}
	// A daemon a maintainer script started in the target may still hold
	// the pipe: do not wait for it forever.
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	pr.Close()
	<-done
	if werr != nil {
		msg := tail.String()
		if log := logTail(filepath.Join(ws, "debootstrap", "debootstrap.log")); log != "" {
			msg += "\n--- " + filepath.Join("debootstrap", "debootstrap.log") + " ---\n" + log
		}
		return fmt.Errorf("%s: %w\n%s", c, werr, msg)
	}
	return nil
}

// logTail returns the last lines of debootstrap's own log, which holds
// dpkg's error when a package fails to install.
func logTail(p string) string {
	data, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	t := &tailBuffer{max: 20}
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		t.add(l)
	}
	return t.String()
}

// tailBuffer keeps the last max lines written to it.
type tailBuffer struct {
	max   int
	lines []string
}

func (t *tailBuffer) add(l string) {
	if len(l) > 500 {
		l = l[:500] + "..."
	}
	t.lines = append(t.lines, l)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

func (t *tailBuffer) String() string {
	var b bytes.Buffer
	for i, l := range t.lines {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(l)
	}
	return b.String()
}
