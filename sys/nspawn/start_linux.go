package nspawn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Notification is what one sd_notify(3) datagram says.
type Notification struct {
	Ready     bool
	Stopping  bool
	Status    string
	LeaderPID int
}

// ParseNotify reads one sd_notify datagram: newline-separated KEY=VALUE
// assignments. Unknown keys are ignored, as sd_notify(3) asks.
func ParseNotify(b []byte) Notification {
	var n Notification
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch k {
		case "READY":
			n.Ready = n.Ready || v == "1"
		case "STOPPING":
			n.Stopping = n.Stopping || v == "1"
		case "STATUS":
			n.Status = v
		case "X_NSPAWN_LEADER_PID":
			if p, err := strconv.Atoi(v); err == nil && p > 1 {
				n.LeaderPID = p
			}
		}
	}
	return n
}

// StartOptions are how to start systemd-nspawn.
type StartOptions struct {
	// Binary is the systemd-nspawn program: the Path Find returned (the
	// program whose version was probed); it goes through LookPath, so
	// empty means "systemd-nspawn" on PATH.
	Binary string
	// Args are its arguments (see Args).
	Args []string
	// Env is added to a minimal environment (PATH, and NOTIFY_SOCKET):
	// e.g. SYSTEMD_SECCOMP=0.
	Env []string
	// Log receives systemd-nspawn's stdout and stderr (and the console of
	// a booted machine). Stdin is /dev/null.
	Log *os.File
	// CgroupFD, when >= 0, is a cgroup v2 directory the process starts in
	// (clone3 CLONE_INTO_CGROUP), so that nothing of the machine ever runs
	// in our own cgroup.
	CgroupFD int
	// NotifyDir is where the private directory of the notification socket
	// is made (e.g. the run directory); empty, or too long for a socket
	// path, means os.TempDir().
	NotifyDir string
	// ForkIn, when set, runs the fork of systemd-nspawn (the function it
	// is given) and returns its error: e.g. on an OS thread inside
	// another network namespace, which the child inherits.
	ForkIn func(fork func() error) error
}

// Process is a started systemd-nspawn, detached into its own session: it
// outlives the process that started it.
type Process struct {
	PID    int
	cmd    *exec.Cmd
	sock   *notifySocket
	exited chan struct{}
	state  *os.ProcessState
	log    *os.File
}

// Start starts systemd-nspawn with its own notification socket
// (NOTIFY_SOCKET): a path socket in a new 0700 directory, which only
// datagrams from this systemd-nspawn are read from (see WaitReady).
// Release closes and removes it.
func Start(o StartOptions) (*Process, error) {
	path, err := LookPath(o.Binary)
	if err != nil {
		return nil, err
	}
	sock, err := listenNotify(o.NotifyDir)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, o.Args...)
	cmd.Env = append([]string{"PATH=" + standardPath, "NOTIFY_SOCKET=" + sock.path}, o.Env...)
	cmd.Stdout, cmd.Stderr = o.Log, o.Log
	cmd.Dir = "/"
	// Setsid: no controlling terminal, and not in the process group that
	// gitlab-runner signals when it cancels a stage.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if o.CgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = o.CgroupFD
	}
	fork := cmd.Start
	if o.ForkIn != nil {
		fork = func() error { return o.ForkIn(cmd.Start) }
	}
	if err := fork(); err != nil {
		sock.close()
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	p := &Process{PID: cmd.Process.Pid, cmd: cmd, sock: sock, exited: make(chan struct{}), log: o.Log}
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.exited)
	}()
	return p, nil
}

// ErrExited is returned by WaitReady when systemd-nspawn exits first.
var ErrExited = errors.New("systemd-nspawn exited")

// WaitReady waits for the leader pid and, when ready is true, for READY=1.
// It returns the leader pid. Only datagrams whose sender the kernel
// reports as this systemd-nspawn (or a process below it) running as our
// uid are read, and an announced leader pid is taken only when it is a
// process below this systemd-nspawn: anything else is ignored (and
// counted in a timeout's error). On ctx's end or an early exit the error
// says so with nspawn's last status and the tail of its log.
func (p *Process) WaitReady(ctx context.Context, ready bool) (int, error) {
	return p.waitReady(ctx, ready, os.Geteuid(), procParent)
}

func (p *Process) waitReady(ctx context.Context, ready bool, uid int, parent parentFunc) (int, error) {
	type msg struct {
		d   datagram
		err error
	}
	msgs := make(chan msg, 16)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			buf, oob := make([]byte, 4096), make([]byte, 4096)
			_ = p.sock.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			d, err := p.sock.read(buf, oob)
			select {
			case <-stop:
				return
			default:
			}
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				select {
				case msgs <- msg{err: err}:
				case <-stop:
				}
				return
			}
			select {
			case msgs <- msg{d: d}:
			case <-stop:
				return
			}
		}
	}()
	leader, status, isReady := 0, "", false
	ignored, lastIgnored := 0, ""
	for {
		select {
		case m := <-msgs:
			if m.err != nil {
				return 0, fmt.Errorf("notify socket: %w", m.err)
			}
			if err := checkSender(m.d.cred, uid, p.PID, parent); err != nil {
				ignored, lastIgnored = ignored+1, err.Error()
				continue
			}
			n := ParseNotify(m.d.data)
			if n.LeaderPID > 0 {
				if err := checkLeader(n.LeaderPID, p.PID, parent); err != nil {
					ignored, lastIgnored = ignored+1, err.Error()
					continue
				}
				leader = n.LeaderPID
			}
			if n.Status != "" {
				status = n.Status
			}
			isReady = isReady || n.Ready
			if leader > 0 && (isReady || !ready) {
				return leader, nil
			}
		case <-p.exited:
			return 0, fmt.Errorf("%w (%s) before the machine was ready%s", ErrExited, p.state, p.logTail())
		case <-ctx.Done():
			what := "READY=1"
			if leader == 0 {
				what = "the leader pid"
			}
			why := ""
			if ignored > 0 {
				why = fmt.Sprintf("; ignored %d notifications, the last: %s", ignored, lastIgnored)
			}
			return 0, fmt.Errorf("waiting for %s from systemd-nspawn (last status %q%s): %w%s", what, status, why, ctx.Err(), p.logTail())
		}
	}
}

// Exited is closed when systemd-nspawn exits (while this process lives).
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Release closes our end of the notification socket and removes it.
// systemd-nspawn keeps running; notifications it sends later (STOPPING=1
// at shutdown) are dropped.
func (p *Process) Release() {
	p.sock.close()
}

func (p *Process) logTail() string {
	if p.log == nil {
		return ""
	}
	b, err := os.ReadFile(p.log.Name())
	if err != nil || len(b) == 0 {
		return ""
	}
	return ": " + string(bytes.TrimSpace(Tail(b, 1500)))
}

// Tail returns the last n bytes of b, from a line start when it can.
func Tail(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	b = b[len(b)-n:]
	if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
		b = b[i+1:]
	}
	return b
}
