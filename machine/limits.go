package machine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// LimitError says a host limit ran out while a machine started: its
// systemd (or nspawn) logged that it could not get a kernel resource.
// Waiting out the ready timeout would not help: the boot stalls.
type LimitError struct {
	// Limit is the sysctl to raise, e.g. fs.inotify.max_user_instances.
	Limit string
	// Line is the log line that showed it.
	Line string
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("host limit %s is exhausted (the machine logged %q): raise it, e.g. with nspawn-runner setup, which installs and applies /etc/sysctl.d/60-nspawn-runner.conf (nspawn-runner doctor checks it)", e.Limit, e.Line)
}

// exhaustion maps what systemd logs when a per-user kernel quota runs out
// to the sysctl that sets it. inotify_init1(2) fails with EMFILE at
// fs.inotify.max_user_instances, inotify_add_watch(2) with ENOSPC at
// max_user_watches; keyctl(2) with EDQUOT at kernel.keys.maxkeys or
// maxbytes (systemd: "Out of kernel keyrings to allocate").
var exhaustion = []struct {
	limit string
	all   []string
}{
	{"fs.inotify.max_user_instances", []string{"Failed to create inotify object", "Too many open files"}},
	{"fs.inotify.max_user_instances", []string{"inotify_init", "Too many open files"}},
	{"fs.inotify.max_user_watches", []string{"inotify", "No space left on device"}},
	{"kernel.keys.maxkeys", []string{"Out of kernel keyrings"}},
	{"kernel.keys.maxkeys", []string{"keyring", "Disk quota exceeded"}},
}

// DetectLimit returns the first line of log that shows a host limit
// running out, or nil.
func DetectLimit(log []byte) *LimitError {
	for line := range bytes.Lines(log) {
		s := strings.TrimSpace(string(line))
		for _, e := range exhaustion {
			if containsAll(s, e.all) {
				return &LimitError{Limit: e.limit, Line: s}
			}
		}
	}
	return nil
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// limitPoll is how often readyContext reads the new part of the log.
const limitPoll = 200 * time.Millisecond

// readyContext returns a context for waiting until the machine is ready:
// ctx bounded by the ready timeout, and cancelled early (its cause a
// *LimitError) when the machine's log at path shows a host limit running
// out. Call stop when done.
func (m *Manager) readyContext(ctx context.Context, path string) (rctx context.Context, stop func()) {
	tctx, cancelTimeout := context.WithTimeout(ctx, m.Config.ReadyTimeout.D())
	cctx, cancel := context.WithCancelCause(tctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchLog(cctx, path, func(e *LimitError) { cancel(e) })
	}()
	return cctx, func() {
		cancel(nil)
		<-done
		cancelTimeout()
	}
}

// limitCause returns the *LimitError that ended rctx (see readyContext),
// else err.
func limitCause(rctx context.Context, err error) error {
	var le *LimitError
	if errors.As(context.Cause(rctx), &le) {
		return le
	}
	return err
}

// watchLog reads the file at path as it grows until ctx ends, and calls
// found once with the first limit it shows.
func watchLog(ctx context.Context, path string, found func(*LimitError)) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	var pending []byte
	t := time.NewTicker(limitPoll)
	defer t.Stop()
	buf := make([]byte, 64<<10)
	for {
		for {
			n, err := f.Read(buf)
			pending = append(pending, buf[:n]...)
			if err == io.EOF || n == 0 || err != nil {
				break
			}
		}
		// Only whole lines: a line being written is judged when complete.
		if i := bytes.LastIndexByte(pending, '\n'); i >= 0 {
			if e := DetectLimit(pending[:i+1]); e != nil {
				found(e)
				return
			}
			pending = append(pending[:0], pending[i+1:]...)
		}
		if len(pending) > len(buf) {
			// No newline in 64 KiB: not a systemd log line.
			pending = pending[:0]
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
