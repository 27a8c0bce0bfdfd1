package provision

import (
	"bufio"
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nspawn-runner/nspawn-runner/bootstrap"
	"github.com/nspawn-runner/nspawn-runner/internal/logx"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// Runner runs ansible-playbook against image trees.
type Runner struct {
	// AnsiblePlaybook is the ansible-playbook program; empty means the one
	// on PATH.
	AnsiblePlaybook string
	// Nspawn is the systemd-nspawn program; empty means the one on PATH.
	Nspawn string
	// Output receives ansible-playbook's output while it runs; nil
	// discards it.
	Output io.Writer
	// Verbosity adds that many -v to ansible-playbook (--debug uses 2).
	Verbosity int
	// TempDir is where the per-run directory (inventory, ansible.cfg,
	// wrapper, ansible's local temporary files) is made; empty means
	// os.TempDir().
	TempDir string
	// Log receives what the runner does; nil discards it.
	Log *slog.Logger
	// CgroupParent is where each run gets a cgroup of its own on hosts
	// without systemd; empty means config.DefaultCgroupParent.
	CgroupParent string
	// Root is the image root the targets belong to: with the image's
	// name it names that cgroup (bootstrap.CgroupName), so that runs of
	// images of the same name in two roots never share one.
	Root string
}

// Target is one playbook run.
type Target struct {
	// Name is the image name: the inventory host the playbook runs on.
	Name string
	// Tree is the image tree the playbook changes.
	Tree string
	// Playbook is the path of the playbook.
	Playbook string
	// Machine is the machine name systemd-nspawn gives each command;
	// empty means MachineName("", Name).
	Machine string
}

// PlaybookError is a failed ansible-playbook run.
type PlaybookError struct {
	Playbook string
	// Task is the task that failed, "" when none was identified (a syntax
	// error, an unreachable host before any task).
	Task string
	// Msg is ansible's message for the failure, shortened.
	Msg string
	// Err is the exit status of ansible-playbook.
	Err error
}

func (e *PlaybookError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "playbook %s", e.Playbook)
	if e.Task != "" {
		fmt.Fprintf(&b, " failed at task %q", e.Task)
	} else {
		b.WriteString(" failed")
	}
	if e.Msg != "" {
		b.WriteString(": " + e.Msg)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, " (ansible-playbook: %v)", e.Err)
	}
	return b.String()
}

func (e *PlaybookError) Unwrap() error { return e.Err }

func (r *Runner) log() *slog.Logger {
	return logx.OrDiscard(r.Log)
}

// DefaultMachinePrefix starts the machine name of a playbook run.
const DefaultMachinePrefix = "nspawn-runner-maint-"

// MachineName is the systemd-nspawn machine name used while provisioning
// image name: prefix (DefaultMachinePrefix when empty) and the image
// name made a valid machine name (nspawn.MachineName: image names may
// also hold '.', '_' and '+').
func MachineName(prefix, name string) (string, error) {
	return nspawn.MachineName(cmp.Or(prefix, DefaultMachinePrefix), name, "")
}

// Run runs the playbook against the tree and returns a *PlaybookError
// naming the failed task when it fails. The tree is changed in place:
// callers run it on a workspace, never on a live image.
func (r *Runner) Run(ctx context.Context, t Target) error {
	if t.Machine == "" {
		m, err := MachineName("", t.Name)
		if err != nil {
			return fmt.Errorf("run playbook %s: %w", t.Playbook, err)
		}
		t.Machine = m
	}
	ansible := r.AnsiblePlaybook
	if ansible == "" {
		ansible = "ansible-playbook"
	}
	ansible, err := exec.LookPath(ansible)
	if err != nil {
		return fmt.Errorf("run playbook %s: %w (install the ansible package)", t.Playbook, err)
	}
	prog, err := nspawn.Find(ctx, r.Nspawn)
	if err != nil {
		return fmt.Errorf("run playbook %s: %w", t.Playbook, err)
	}
	playbook, err := filepath.Abs(t.Playbook)
	if err != nil {
		return fmt.Errorf("run playbook %s: %w", t.Playbook, err)
	}
	tree, err := filepath.Abs(t.Tree)
	if err != nil {
		return fmt.Errorf("run playbook %s: %w", t.Playbook, err)
	}
	// What killed runs left first (their lock is free).
	if _, err := CleanRunDirs(r.TempDir, r.log()); err != nil {
		r.log().Warn("cleaning up after interrupted playbook runs", "err", err)
	}
	tmp, lk, err := newRunDir(r.TempDir)
	if err != nil {
		return fmt.Errorf("run playbook %s: %w", playbook, err)
	}
	defer func() {
		os.RemoveAll(tmp)
		lk.Unlock()
	}()
	w := Wrapper{Nspawn: prog.Path, Tree: tree, Machine: t.Machine, Remote: filepath.Join(tmp, "remote"), NspawnVersion: prog.Version}
	files, err := writeRunFiles(tmp, t.Name, w)
	if err != nil {
		return fmt.Errorf("run playbook %s: %w", playbook, err)
	}

	argv := []string{"--inventory", files.inventory, "--limit", t.Name}
	if r.Verbosity > 0 {
		argv = append(argv, "-"+strings.Repeat("v", min(r.Verbosity, 4)))
	}
	argv = append(argv, playbook)
	cmd := exec.CommandContext(ctx, ansible, argv...)
	cmd.Dir = tmp
	cmd.Env = ansibleEnv(os.Environ(), tmp, files.config)
	cmd.Stdin = nil
	// Its own process group, so a cancel reaches the systemd-nspawn
	// processes ansible started too, not only ansible-playbook.
	// Pdeathsig: a SIGKILLed nspawn-runner takes ansible-playbook along,
	// which would otherwise go on starting machines in a workspace that
	// the next create, maintenance or gc removes (as for debootstrap).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("run playbook %s: %w", playbook, err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	// The wrapper's systemd-nspawn --keep-unit makes payload/ and
	// supervisor/ groups where it runs and leaves them: let that be a
	// group of this run's, removed with everything in it.
	defer bootstrap.OwnCgroup(ctx, r.Log, cmd, r.CgroupParent, r.Root, t.Name, bootstrap.CgroupPlaybook)()
	r.log().Debug("running playbook", "playbook", playbook, "tree", tree, "argv", append([]string{ansible}, argv...), "dir", tmp)
	if err := cmd.Start(); err != nil {
		pw.Close()
		pr.Close()
		return fmt.Errorf("run playbook %s: %w", playbook, err)
	}
	pw.Close()
	var tr tracker
	out := r.Output
	if out == nil {
		out = io.Discard
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
		for sc.Scan() {
			line := sc.Text()
			tr.feed(line)
			fmt.Fprintln(out, line)
		}
		// Keep reading to EOF even after an overlong line, so ansible
		// never blocks on a full pipe.
		_, _ = io.Copy(out, pr)
	}()
	werr := cmd.Wait()
	// ansible-playbook is gone; on a cancel, the systemd-nspawn processes
	// it started got the same SIGTERM and are still stopping their
	// machines: the tree is not free until they are gone too.
	waitGroup(cmd.Process.Pid, 20*time.Second)
	// A process a task left behind may still hold the pipe: do not wait
	// for it forever.
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	pr.Close()
	<-done
	if werr == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("run playbook %s: %w", playbook, context.Cause(ctx))
	}
	task, msg := tr.result()
	return &PlaybookError{Playbook: playbook, Task: task, Msg: msg, Err: werr}
}

// waitGroup waits until no process of the process group pgid is left,
// sending SIGKILL after grace (systemd-nspawn needs a moment after SIGTERM
// to kill its machine, and a SIGKILLed nspawn would leave the machine
// running), and gives up after as long again: a zombie nobody reaps still
// counts as a member.
func waitGroup(pgid int, grace time.Duration) {
	killed := false
	deadline := time.Now().Add(grace)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			if killed {
				return
			}
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			killed, deadline = true, time.Now().Add(grace)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
