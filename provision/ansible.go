package provision

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/logx"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// RemoteTemp is ansible's remote_tmp inside the image: a directory of the
// run bind-mounted on a mount point in the tmpfs systemd-nspawn puts on
// /run, so it outlives each command (the module files ansible copies in
// are used by the next command) but nothing of ansible's is ever written
// into the image (a default remote_tmp would leave /root/.ansible; /tmp
// will not do, nspawn mounts a fresh tmpfs there for every command).
const RemoteTemp = "/run/nspawn-runner-ansible"

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
	tmp, err := os.MkdirTemp(r.TempDir, "nspawn-runner-ansible-")
	if err != nil {
		return fmt.Errorf("run playbook %s: %w", playbook, err)
	}
	defer os.RemoveAll(tmp)
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
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("run playbook %s: %w", playbook, err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if !nspawn.HasSystemd() {
		// The wrapper's systemd-nspawn --keep-unit makes payload/ and
		// supervisor/ groups where it runs and leaves them: let that be
		// a group of this run's, removed with everything in it.
		grp, err := cgroup.Start(cmd, filepath.Join(cmp.Or(r.CgroupParent, config.DefaultCgroupParent), "ansible-"+t.Machine))
		if err != nil {
			r.log().Warn("no cgroup of its own for the playbook run", "err", err)
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := grp.Close(cctx); err != nil {
				r.log().Warn("removing the playbook run's cgroup", "err", err)
			}
		}()
	}
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

type runFiles struct{ inventory, config, wrapper string }

// writeRunFiles writes the inventory, ansible.cfg and the chroot wrapper
// of one run into dir.
func writeRunFiles(dir, name string, w Wrapper) (runFiles, error) {
	f := runFiles{
		inventory: filepath.Join(dir, "inventory"),
		config:    filepath.Join(dir, "ansible.cfg"),
		wrapper:   filepath.Join(dir, "nspawn-exec"),
	}
	for _, d := range []string{"home", "local", "remote"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return f, err
		}
	}
	if err := os.WriteFile(f.inventory, []byte(Inventory(name, w.Tree, f.wrapper)), 0o600); err != nil {
		return f, err
	}
	if err := os.WriteFile(f.config, []byte(AnsibleConfig(filepath.Join(dir, "local"))), 0o600); err != nil {
		return f, err
	}
	if err := os.WriteFile(f.wrapper, []byte(w.Script()), 0o700); err != nil {
		return f, err
	}
	return f, nil
}

// Inventory is the one-host inventory of a run: the chroot connection
// with the wrapper as its chroot program, and python3 of the image.
func Inventory(name, tree, wrapper string) string {
	return fmt.Sprintf("%s ansible_connection=chroot ansible_host=%s ansible_chroot_exe=%s ansible_python_interpreter=/usr/bin/python3\n",
		name, iniQuote(tree), iniQuote(wrapper))
}

// iniQuote quotes an inventory value: ansible's INI inventory parses
// values with shlex and then as Python literals.
func iniQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// AnsibleConfig is the ansible.cfg of a run: nothing read from or written
// to the admin's home, no retry files, no host keys (no ssh is involved).
func AnsibleConfig(localTemp string) string {
	return `[defaults]
retry_files_enabled = False
host_key_checking = False
stdout_callback = default
interpreter_python = /usr/bin/python3
local_tmp = ` + localTemp + `
remote_tmp = ` + RemoteTemp + `
nocows = True
deprecation_warnings = False

[connection]
pipelining = True
`
}

// Wrapper is the ansible_chroot_exe of one run: a script running each of
// ansible's commands in the tree with systemd-nspawn.
type Wrapper struct {
	// Nspawn is the systemd-nspawn binary.
	Nspawn string
	// Tree is the image tree the commands run in.
	Tree string
	// Machine is the machine name.
	Machine string
	// Remote is the host directory bound on RemoteTemp.
	Remote string
	// NspawnVersion is systemd-nspawn's major version (0: unknown).
	NspawnVersion int
}

// Args is the systemd-nspawn argv (without the command): not ephemeral
// (the changes are the point), not booted, stdio passed through as pipes.
func (w Wrapper) Args() []string {
	return nspawn.Args(nspawn.Spec{
		Directory: w.Tree,
		Machine:   w.Machine,
		// No machine registration or scope of its own: a command lives
		// a few seconds, machined (when it exists) need not know it, and
		// the commands stay in the cgroup of chroot-maintenance, so
		// stopping its service stops them.
		NoRegister: true,
		Quiet:      true,
		// A stub init as PID 1 reaps what apt's maintainer scripts leave.
		AsPID2:      true,
		Console:     "pipe",
		ResolvConf:  "copy-host",
		LinkJournal: "no",
		// fsync is suppressed while a playbook runs on a workspace; the
		// workspace is synced once (syncfs) before it is swapped in. The
		// option exists since systemd 250.
		SuppressSync: w.NspawnVersion >= 250,
		Env:          []string{"DEBIAN_FRONTEND=noninteractive"},
		Binds:        []nspawn.Bind{{Host: w.Remote, Machine: RemoteTemp}},
	})
}

// Script is the wrapper script. ansible's chroot connection runs
// "WRAPPER TREE /bin/sh -c CMD"; the script checks TREE and runs the rest
// in the tree with systemd-nspawn.
func (w Wrapper) Script() string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# Written by nspawn-runner for one ansible-playbook run.\n")
	fmt.Fprintf(&b, "if [ \"$1\" != %s ]; then echo \"nspawn-exec: unexpected tree $1\" >&2; exit 125; fi\nshift\n", shQuote(w.Tree))
	b.WriteString("exec " + shQuote(w.Nspawn))
	for _, a := range w.Args() {
		b.WriteString(" " + shQuote(a))
	}
	b.WriteString(" -- \"$@\"\n")
	return b.String()
}

func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// ansibleEnv is the environment of ansible-playbook: the caller's without
// any ANSIBLE_* (an admin's shell settings must not change how images are
// built), plus settings that keep every file ansible reads or writes
// inside the run's directory.
func ansibleEnv(environ []string, dir, cfg string) []string {
	var env []string
	for _, e := range environ {
		if strings.HasPrefix(e, "ANSIBLE_") || strings.HasPrefix(e, "PYTHONUNBUFFERED=") {
			continue
		}
		env = append(env, e)
	}
	return append(env,
		"ANSIBLE_CONFIG="+cfg,
		"ANSIBLE_HOME="+filepath.Join(dir, "home"),
		"ANSIBLE_LOCAL_TEMP="+filepath.Join(dir, "local"),
		"ANSIBLE_REMOTE_TEMP="+RemoteTemp,
		"ANSIBLE_PERSISTENT_CONTROL_PATH_DIR="+filepath.Join(dir, "home", "pc"),
		"ANSIBLE_SSH_CONTROL_PATH_DIR="+filepath.Join(dir, "home", "cp"),
		"ANSIBLE_GALAXY_CACHE_DIR="+filepath.Join(dir, "home", "galaxy_cache"),
		"ANSIBLE_RETRY_FILES_ENABLED=False",
		"ANSIBLE_HOST_KEY_CHECKING=False",
		"ANSIBLE_NOCOLOR=1",
		// Lines as they happen, not when python's buffer fills.
		"PYTHONUNBUFFERED=1",
	)
}

// tracker follows ansible-playbook's default output to name the task that
// failed.
type tracker struct {
	task string
	// failedTask and failedMsg are the last failure not ignored.
	failedTask, failedMsg string
	// pending is a failure that "...ignoring" may still cancel.
	pendingTask, pendingMsg string
	pending                 bool
	errLines                []string
}

const maxMsg = 400

func (t *tracker) feed(line string) {
	s := strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(s, "TASK [") || strings.HasPrefix(s, "RUNNING HANDLER ["):
		t.commit()
		if i, j := strings.IndexByte(s, '['), strings.LastIndexByte(s, ']'); i >= 0 && j > i {
			t.task = s[i+1 : j]
		}
	case strings.HasPrefix(s, "PLAY [") || strings.HasPrefix(s, "PLAY RECAP"):
		t.commit()
	case strings.HasPrefix(s, "...ignoring"):
		t.pending = false
	case strings.HasPrefix(s, "fatal: [") || strings.HasPrefix(s, "failed: ["):
		if t.pending && strings.HasPrefix(s, "fatal: [") && t.pendingMsg != "" && t.pendingTask == t.task {
			// A loop prints "failed: (item=...)" per item and then one
			// "fatal:" summary: keep the item's message, it says more.
			if m := resultMsg(s); m != "" && !strings.Contains(m, "items failed") && !strings.Contains(m, "All items completed") {
				t.pendingMsg = m
			}
			return
		}
		t.pending, t.pendingTask, t.pendingMsg = true, t.task, resultMsg(s)
	case strings.HasPrefix(s, "ERROR!") || strings.HasPrefix(s, "ERROR:"):
		t.errLines = append(t.errLines, s)
	default:
		if len(t.errLines) > 0 && len(t.errLines) < 4 && s != "" {
			t.errLines = append(t.errLines, s)
		}
	}
}

func (t *tracker) commit() {
	if t.pending {
		t.failedTask, t.failedMsg = t.pendingTask, t.pendingMsg
		t.pending = false
	}
}

// result is the failed task and its message, or ansible's ERROR! lines.
func (t *tracker) result() (task, msg string) {
	t.commit()
	if t.failedTask != "" || t.failedMsg != "" {
		return t.failedTask, t.failedMsg
	}
	return "", shorten(strings.Join(t.errLines, " "))
}

// resultMsg extracts the message of a "fatal: [host]: FAILED! => {json}"
// line: msg, plus the last line of stderr for a failed command.
func resultMsg(line string) string {
	i := strings.Index(line, "=> ")
	if i < 0 {
		return ""
	}
	raw := strings.TrimSpace(line[i+3:])
	var res map[string]any
	if err := json.Unmarshal([]byte(raw), &res); err != nil {
		return shorten(raw)
	}
	var parts []string
	if m, ok := res["msg"].(string); ok && m != "" {
		parts = append(parts, m)
	}
	if rc, ok := res["rc"].(float64); ok && rc != 0 {
		parts = append(parts, "rc="+strconv.Itoa(int(rc)))
	}
	if se, ok := res["stderr"].(string); ok {
		if l := lastLine(se); l != "" {
			parts = append(parts, l)
		}
	}
	return shorten(strings.Join(parts, ": "))
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n ")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return strings.TrimSpace(s)
}

func shorten(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxMsg {
		return s[:maxMsg] + "..."
	}
	return s
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
