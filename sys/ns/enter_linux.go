package ns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Namespaces are the namespaces of a machine that a command joins. The
// user namespace is joined as well when the machine has its own
// (systemd-nspawn --private-users): see startInUserNS.
const Namespaces = unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWCGROUP

// Cmd is a command to start inside a machine.
type Cmd struct {
	// Path is the program; without a '/', it is looked up in the
	// machine's tree along PATH from Env.
	Path string
	// Args are the arguments including argv[0].
	Args []string
	// Env is the whole environment: nothing of ours is inherited.
	Env []string
	// Dir is the working directory inside the machine.
	Dir                   string
	Stdin, Stdout, Stderr *os.File
	ExtraFiles            []*os.File
	// CgroupFD, when >= 0, is the cgroup v2 directory the command starts
	// in (clone3 CLONE_INTO_CGROUP).
	CgroupFD int
	// Setpgid puts the command in a new process group, so it and what it
	// starts can be signalled together.
	Setpgid bool
}

// Process is a command started inside a machine.
type Process struct {
	// Pid is the host's pid of the command.
	Pid  int
	done chan struct{}
	err  error
	ps   *os.ProcessState
}

// Wait waits for the command to exit. It returns an *exec.ExitError for a
// non-zero exit, as exec.Cmd.Wait does.
func (p *Process) Wait() (*os.ProcessState, error) {
	<-p.done
	return p.ps, p.err
}

// Done is closed when the command has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Start starts c in the namespaces of the pinned leader. The setns happens
// on a fresh locked OS thread that is never unlocked, so the Go runtime
// discards it afterwards and no other goroutine ever runs inside the
// machine. That thread also waits for the command.
func Start(leader *Proc, c Cmd) (*Process, error) {
	started := make(chan error, 1)
	p := &Process{done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread: the thread's namespaces are the
		// machine's now.
		cmd, err := startLocked(leader, c)
		if err != nil {
			started <- err
			return
		}
		p.Pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
		p.ps = cmd.ProcessState
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// Do runs fn on a fresh OS thread that has joined the namespaces flags
// (a subset of Namespaces) of the pinned leader, and waits for it. The
// thread is never unlocked, so the Go runtime discards it when fn returns
// and no other goroutine ever runs in those namespaces. fn must not start
// goroutines that expect to run there.
func Do(leader *Proc, flags int, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread, as in Start.
		if err := enterLocked(leader, flags); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

// enterLocked joins the leader's namespaces flags from the calling, locked
// thread.
func enterLocked(leader *Proc, flags int) error {
	// setns(2): "CLONE_NEWNS ... the caller must not share its filesystem
	// attributes (CLONE_FS) with another process": Go threads do.
	if flags&unix.CLONE_NEWNS != 0 {
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			return fmt.Errorf("unshare CLONE_FS: %w", err)
		}
	}
	// One setns with a pidfd joins all of them atomically (Linux 5.8).
	if err := unix.Setns(leader.FD(), flags); err != nil {
		if err == unix.ESRCH {
			return fmt.Errorf("enter pid %d: %w", leader.PID, ErrGone)
		}
		return fmt.Errorf("setns into pid %d: %w", leader.PID, err)
	}
	return nil
}

func startLocked(leader *Proc, c Cmd) (*exec.Cmd, error) {
	own, err := OwnUserNS(leader.PID)
	if err != nil {
		return nil, err
	}
	if own {
		return startInUserNS(leader, c)
	}
	// A command started in a given cgroup keeps our cgroup namespace: on
	// a cgroup2 mounted with nsdelegate (systemd's default), clone3 with
	// CLONE_INTO_CGROUP from inside the machine's namespace, which is
	// rooted at its payload cgroup, fails with ENOENT for any cgroup
	// outside it, and for our own.
	flags := Namespaces
	if c.CgroupFD >= 0 {
		flags &^= unix.CLONE_NEWCGROUP
	}
	if err := enterLocked(leader, flags); err != nil {
		return nil, err
	}
	path := c.Path
	if !strings.Contains(path, "/") {
		// This thread sees the machine's filesystem: look the program up
		// there, along the machine's PATH.
		p, err := lookPath(path, envPath(c.Env))
		if err != nil {
			return nil, err
		}
		path = p
	}
	cmd := &exec.Cmd{
		Path:       path,
		Args:       c.Args,
		Env:        c.Env,
		Dir:        c.Dir,
		Stdin:      c.Stdin,
		Stdout:     c.Stdout,
		Stderr:     c.Stderr,
		ExtraFiles: c.ExtraFiles,
		SysProcAttr: &syscall.SysProcAttr{
			// No Pdeathsig: Go's child checks getppid() against the
			// forking parent after setting it, and in the machine's pid
			// namespace getppid() is 0, so the child would kill itself.
			Setpgid: c.Setpgid,
		},
	}
	if c.CgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = c.CgroupFD
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in the machine of pid %d: %w", path, leader.PID, err)
	}
	return cmd, nil
}

func envPath(env []string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], "PATH="); ok {
			return v
		}
	}
	return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

// ErrNotFound is returned when a program is not on the machine's PATH.
var ErrNotFound = errors.New("executable not found in the machine")

func lookPath(name, path string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
				continue
			}
			continue
		}
		if fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w (PATH=%s)", name, ErrNotFound, path)
}
