package ns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/sys/internal/eintr"
)

// ErrGone is returned when a process no longer exists, or its pid now
// belongs to another process.
var ErrGone = errors.New("process is gone")

// Stat is what nspawn-runner reads of /proc/PID/stat (proc(5)).
type Stat struct {
	// State is field 3: R, S, D, Z (zombie), X (dead), ...
	State byte
	// StartTime is field 22: the start time after boot, in clock ticks.
	// With the pid it identifies a process across pid reuse.
	StartTime uint64
}

// ReadStat reads /proc/PID/stat.
func ReadStat(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return Stat{}, fmt.Errorf("pid %d: %w", pid, ErrGone)
		}
		return Stat{}, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
	}
	return ParseStat(string(b))
}

// ParseStat parses the contents of /proc/PID/stat. The command name (field
// 2) is in parentheses and may itself contain spaces and parentheses, so
// the fields after it are found from the last ')'.
func ParseStat(s string) (Stat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("parse stat: no command name")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("parse stat: %d fields after the command name, want at least 20", len(f))
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("parse stat: starttime %q: %w", f[19], err)
	}
	return Stat{State: f[0][0], StartTime: st}, nil
}

// Alive reports whether pid is running (not a zombie) and started at
// start (when start is not 0).
func Alive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	st, err := ReadStat(pid)
	if err != nil {
		return false
	}
	if st.State == 'Z' || st.State == 'X' {
		return false
	}
	return start == 0 || st.StartTime == start
}

// Proc is a process pinned by a pidfd.
type Proc struct {
	PID int
	fd  int
}

// Open pins pid with pidfd_open(2) (Linux 5.3) and checks that it is the
// process that started at start (0: any). The check is race-free: /proc is
// read after the pidfd is open, and the pidfd is then asked whether the
// process still lives, so the pid could not have been reused in between.
func Open(pid int, start uint64) (*Proc, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pid %d: %w", pid, ErrGone)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if err == unix.ESRCH {
			return nil, fmt.Errorf("pid %d: %w", pid, ErrGone)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	p := &Proc{PID: pid, fd: fd}
	st, err := ReadStat(pid)
	if err != nil {
		p.Close()
		return nil, err
	}
	if (start != 0 && st.StartTime != start) || st.State == 'Z' || st.State == 'X' || !p.Alive() {
		p.Close()
		return nil, fmt.Errorf("pid %d: %w", pid, ErrGone)
	}
	return p, nil
}

// FD is the pidfd.
func (p *Proc) FD() int { return p.fd }

// Alive reports whether the process has not exited.
func (p *Proc) Alive() bool {
	return unix.PidfdSendSignal(p.fd, 0, nil, 0) == nil
}

// Signal sends sig through the pidfd: it cannot hit a process that reused
// the pid.
func (p *Proc) Signal(sig unix.Signal) error {
	if err := unix.PidfdSendSignal(p.fd, sig, nil, 0); err != nil {
		if err == unix.ESRCH {
			return fmt.Errorf("signal pid %d: %w", p.PID, ErrGone)
		}
		return fmt.Errorf("signal pid %d: %w", p.PID, err)
	}
	return nil
}

// Wait waits until the process exits (the pidfd turns readable; this
// works for processes that are not our children) or ctx ends.
func (p *Proc) Wait(ctx context.Context) error {
	for {
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
		n, err := eintr.Retry1(func() (int, error) { return unix.Poll(fds, 50) })
		if err != nil {
			return fmt.Errorf("wait for pid %d: %w", p.PID, err)
		}
		if n > 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("wait for pid %d: %w", p.PID, err)
		}
	}
}

// Close releases the pidfd.
func (p *Proc) Close() error {
	if p.fd < 0 {
		return nil
	}
	err := unix.Close(p.fd)
	p.fd = -1
	return err
}

// WaitGone polls until pid is gone or a zombie, for processes without a
// pidfd; it returns false when ctx ends first.
func WaitGone(ctx context.Context, pid int, start uint64) bool {
	for Alive(pid, start) {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}
