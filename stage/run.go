package stage

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/internal/stagetrace"
	"github.com/nspawn-runner/nspawn-runner/machine/state"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/ns"
)

// ErrDead is returned when a job's machine is no longer running.
var ErrDead = errors.New("the job's machine is not running")

// ErrUnsupported is returned, before anything is done, for a stage that
// needs what Machine or this build leaves out: a record of an earlier
// binary, which does not name its shell, without Machine.Shell; services'
// output to stream (CI_DEBUG_SERVICES) without Machine.ServiceLogs; a
// machine with its own user namespace in a build without cgo, which lacks
// sys/ns's constructor that enters one. cmd/nspawn-runner-stage (no cgo)
// then hands the stage to nspawn-runner run.
var ErrUnsupported = errors.New("this stage needs nspawn-runner run")

// ExitError is the job script's own non-zero exit status.
type ExitError struct {
	Code int
}

func (e *ExitError) Error() string { return fmt.Sprintf("script exited with code %d", e.Code) }

// ScriptDir is where a machine sees the stage scripts (a read-only bind of
// RUN_DIR/machines/NAME/scripts).
const ScriptDir = "/run/nspawn-runner"

// TermGrace is how long a cancelled stage's processes get between SIGTERM
// and SIGKILL.
const TermGrace = 3 * time.Second

// Machine says where stages find their jobs' machines.
type Machine struct {
	// RunDir holds the machines' records.
	RunDir string
	// NamePrefix starts machine names (state.DefaultNamePrefix when
	// empty).
	NamePrefix string
	// Shell and MemoryMax stand in for what a record of an earlier
	// binary does not say (its record has no shell): the configuration's
	// machine.shell and memory.max. Shell empty: such a record is
	// ErrUnsupported.
	Shell     string
	MemoryMax uint64
	// ServiceLogs, when set, streams the output of the services of job
	// (a machine name) to out until stop is called: CI_DEBUG_SERVICES.
	ServiceLogs func(job string, out io.Writer) (stop func())
	// Warn logs a warning with slog's arguments (slog.Logger.Warn; nil
	// drops it). A func, not a logger: the stage executable writes its
	// few warnings without linking log/slog.
	Warn func(msg string, args ...any)
}

// Request is one stage to run in a job's machine.
type Request struct {
	JobID, Key string
	// Script is the host path of the stage script.
	Script string
	// Stage is gitlab-runner's stage name (any string; for logs and the
	// script's name inside the machine).
	Stage string
	// Path and Env extend the environment for this stage.
	Path []string
	Env  []string
	// Stdout and Stderr receive the script's output unbuffered (the file
	// descriptors are passed straight through); nil means ours.
	Stdout, Stderr *os.File
}

// Run runs a stage script with the machine's shell as root in the job's
// machine, in its namespaces and cgroup, with a clean environment and "/"
// as working directory. A non-zero exit of the script is an *ExitError.
// When ctx ends (SIGTERM to us), the stage's processes get SIGTERM, then
// SIGKILL after TermGrace, and Run returns ctx's error.
func Run(ctx context.Context, m Machine, req Request) error {
	name, err := state.Name(m.NamePrefix, req.JobID, req.Key)
	if err != nil {
		return err
	}
	l := state.LayoutOf("", m.RunDir, "", name)
	rec, err := state.ReadStage(l.Record)
	if err != nil {
		if errors.Is(err, state.ErrNotFound) {
			return fmt.Errorf("run: machine %s: %w (did prepare succeed?)", name, state.ErrNotFound)
		}
		return err
	}
	shell, memoryMax := rec.Shell, rec.MemoryMax
	if shell == "" {
		shell, memoryMax = m.Shell, m.MemoryMax
	}
	if shell == "" || rec.DebugServices && m.ServiceLogs == nil || rec.PrivateUsers && !ns.CanEnterUserNS {
		return ErrUnsupported
	}
	if rec.State != state.Running {
		return fmt.Errorf("run: machine %s is %s: %w", name, rec.State, ErrDead)
	}
	if !rec.IsRunning() {
		return fmt.Errorf("run: machine %s is gone (its systemd-nspawn exited: %w); retry the job, cleanup stops what is left", name, ErrDead)
	}
	leader, err := ns.Open(rec.LeaderPID, rec.LeaderStart)
	if err != nil {
		return fmt.Errorf("run: machine %s (leader pid %d): %w: %v", name, rec.LeaderPID, ErrDead, err)
	}
	defer leader.Close()
	stdout, stderr := req.Stdout, req.Stderr
	if stdout == nil {
		stdout = os.Stdout
	}
	if stderr == nil {
		stderr = os.Stderr
	}
	if rec.DebugServices {
		// CI_DEBUG_SERVICES: the services' output goes on during every
		// stage, as the docker executor streams it.
		defer m.ServiceLogs(name, stderr)()
	}
	stagetrace.Mark("record")

	// The script: a copy in the machine's scripts directory on the host,
	// which the machine sees read-only at ScriptDir. Nothing is written
	// into the machine's own tree, so no path in it is ever followed.
	// getrandom(2) itself: crypto/rand's vDSO path first maps its state,
	// page faults a one-shot process pays for nothing (O_EXCL below is
	// what guarantees the name is unused).
	var rnd [6]byte
	_, _ = unix.Getrandom(rnd[:], 0)
	file := "stage-" + hex.EncodeToString(rnd[:])
	hostScript := filepath.Join(l.Scripts, file)
	if err := copyFile(req.Script, hostScript); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	defer os.Remove(hostScript)
	if rec.PrivateUsers {
		// The machine's root is not the host's: the copy (0600) must be
		// its own to be readable (machine's adoptRunFiles).
		if err := os.Chown(hostScript, int(rec.UIDShift), int(rec.UIDShift)); err != nil {
			return fmt.Errorf("run: give the script to the machine's root: %w", err)
		}
	}
	stagetrace.Mark("script")

	// A cgroup of its own under the machine's: limits apply, and a
	// cancelled stage can be killed whole, daemons included.
	cgFD, stageCg := -1, ""
	h, cgErr := cgroup.Detect()
	if cgErr == nil && rec.Cgroup != "" && h.Exists(rec.Cgroup) {
		stageCg = filepath.Join(rec.Cgroup, file)
		if _, err := h.Create(stageCg, nil); err != nil {
			return fmt.Errorf("run: %w", err)
		}
		defer h.RemoveIfEmpty(stageCg)
		f, err := h.Open(stageCg)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		defer f.Close()
		cgFD = int(f.Fd())
	}
	// The kernel's OOM kills in the machine so far: a stage that ends with
	// more was killed for the machine's memory limit, and the job log
	// says so.
	oomBefore, oomKnown := uint64(0), false
	if stageCg != "" {
		oomBefore, oomKnown = h.OOMKills(rec.Cgroup)
	}
	stagetrace.Mark("cgroup")
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	defer devnull.Close()
	env := Env(append(append([]string{}, req.Path...), rec.Path...), append(append([]string{}, rec.Env...), req.Env...))
	p, err := ns.Start(leader, ns.Cmd{
		Path:     shell,
		Args:     []string{shell, ScriptDir + "/" + file},
		Env:      env,
		Dir:      "/",
		Stdin:    devnull,
		Stdout:   stdout,
		Stderr:   stderr,
		CgroupFD: cgFD,
		Setpgid:  true,
	})
	if err != nil {
		if errors.Is(err, ns.ErrGone) {
			return fmt.Errorf("run: machine %s: %w", name, ErrDead)
		}
		return fmt.Errorf("run: %w", err)
	}
	stagetrace.Mark("started")
	select {
	case <-p.Done():
	case <-ctx.Done():
		terminate(m.Warn, p, h, stageCg)
		return fmt.Errorf("run: stage %s cancelled: %w", req.Stage, ctx.Err())
	}
	stagetrace.Mark("exited")
	_, werr := p.Wait()
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			// As a shell reports it: 128 + signal number.
			code = 128 + int(ws.Signal())
		}
		if n, ok := oomKills(h, rec.Cgroup, oomKnown); ok && n > oomBefore {
			fmt.Fprintf(stderr, "nspawn-runner: the job ran out of memory: the kernel killed %d process(es) of the machine at its limit (machine.memory_max %s)\n", n-oomBefore, mib(memoryMax))
		}
		if !leader.Alive() {
			return fmt.Errorf("run: machine %s died during stage %s: %w", name, req.Stage, ErrDead)
		}
		return &ExitError{Code: code}
	}
	if werr != nil {
		return fmt.Errorf("run: %w", werr)
	}
	return nil
}

// Env is the clean environment of a stage inside the machine: nothing
// of the host's or the runner's, plus extra variables and PATH entries.
func Env(extraPath, extraEnv []string) []string {
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	if len(extraPath) > 0 {
		path = strings.Join(extraPath, ":") + ":" + path
	}
	env := []string{
		"PATH=" + path,
		"HOME=/root",
		"USER=root",
		"LOGNAME=root",
		"LANG=C.UTF-8",
		"container=systemd-nspawn",
	}
	return append(env, extraEnv...)
}

// terminate ends a cancelled stage: SIGTERM to its process group, SIGKILL
// to its whole cgroup after TermGrace or as soon as the script is gone.
func terminate(warn func(string, ...any), p *ns.Process, h cgroup.Hierarchy, stageCg string) {
	_ = unix.Kill(-p.Pid, unix.SIGTERM)
	select {
	case <-p.Done():
	case <-time.After(TermGrace):
		_ = unix.Kill(-p.Pid, unix.SIGKILL)
	}
	if stageCg != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.Kill(ctx, stageCg); err != nil && warn != nil {
			warn("killing the cancelled stage", "err", err)
		}
	}
	select {
	case <-p.Done():
	case <-time.After(time.Second):
	}
}

// oomKills is h.OOMKills when known is true (the hierarchy was found).
func oomKills(h cgroup.Hierarchy, rel string, known bool) (uint64, bool) {
	if !known {
		return 0, false
	}
	return h.OOMKills(rel)
}

// mib formats a byte count for a log line; 0 is no limit.
func mib(b uint64) string {
	if b == 0 {
		return "none"
	}
	return strconv.FormatUint(b>>20, 10) + " MiB"
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open script: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("copy script: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy script to %s: %w", dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy script to %s: %w", dst, err)
	}
	return nil
}
