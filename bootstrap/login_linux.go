package bootstrap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// DefaultLoginPrefix starts the machine name of chroot-login.
const DefaultLoginPrefix = "nrlogin-"

// LoginSpec returns the systemd-nspawn invocation entering the image at
// dir as machine; argv empty means a shell.
func LoginSpec(dir, machine string, argv []string, tty bool) nspawn.Spec {
	console := "pipe"
	if tty {
		console = "interactive"
	}
	return nspawn.Spec{
		Directory: dir,
		Machine:   machine,
		// Without a system bus nspawn cannot register with machined.
		NoRegister: !nspawn.HasSystemBus(),
		Quiet:      true,
		Console:    console,
		// copy-host: apt in the image resolves names like the host does.
		ResolvConf: "copy-host",
		// Keep the host's journal out of it: the image is not booted.
		LinkJournal: "no",
		Command:     argv,
	}
}

// MachineName returns a unique, valid machine name for entering image
// name: prefix, the image name (nspawn.MachineName) and a random suffix.
func MachineName(prefix, name string) (string, error) {
	return nspawn.MachineName(prefix, name, "-"+randomSuffix()[:8])
}

// Login runs systemd-nspawn on the image itself (not a snapshot: changes
// stay), with stdio passed through: argv when given, and its non-zero exit
// status as *ExitError, else an interactive shell.
func (s *Store) Login(ctx context.Context, name string, argv []string) error {
	dir, err := s.Path(name)
	if err != nil {
		return err
	}
	// A maintenance swapping the image while someone works in it would
	// throw their changes away: enter it under its lock.
	unlock, err := s.Lock(ctx, name)
	if err != nil {
		return err
	}
	defer unlock()
	if dir, err = s.Path(name); err != nil {
		return err
	}
	prefix := s.LoginPrefix
	if prefix == "" {
		prefix = DefaultLoginPrefix
	}
	tty := isTerminal(os.Stdin)
	machine, err := MachineName(prefix, name)
	if err != nil {
		return fmt.Errorf("login to %s: %w", name, err)
	}
	spec := LoginSpec(dir, machine, argv, tty)
	nspawnPath, err := nspawn.LookPath("")
	if err != nil {
		return fmt.Errorf("login to %s: %w", name, err)
	}
	cmd := exec.CommandContext(ctx, nspawnPath, nspawn.Args(spec)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// On cancel nspawn gets SIGTERM, which it forwards to the command and
	// then tears the machine down; SIGKILL only if that hangs.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	// Without systemd, nspawn --keep-unit makes its payload/ and
	// supervisor/ groups in the cgroup it runs in and leaves them.
	defer OwnCgroup(ctx, s.Log, cmd, s.CgroupParent, s.Root, name, CgroupLogin)()
	s.log().Info("entering image", "image", name, "machine", spec.Machine, "cmd", cmd.String())
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		if ctx.Err() != nil {
			return fmt.Errorf("login to %s: interrupted: %w", name, context.Cause(ctx))
		}
		return &ExitError{Code: code}
	}
	if err != nil {
		return fmt.Errorf("login to %s: %s: %w", name, cmd, err)
	}
	return nil
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
