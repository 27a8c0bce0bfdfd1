package mount

import (
	"errors"
	"fmt"
	"strings"
)

// ErrOptionsTooLong is returned when the option string of a mount does not
// fit in the one page the kernel copies from mount(2)'s data argument.
var ErrOptionsTooLong = errors.New("mount options longer than the kernel accepts (one page)")

// Error describes a failed mount-related system call with all its
// arguments, like the mountError of runc and moby.
type Error struct {
	Op     string // "mount", "remount", "unmount", "mount_setattr", "make-private", ...
	Source string
	Target string
	Fstype string
	Flags  uintptr
	Data   string
	Err    error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Source != "" {
		b.WriteString(" " + e.Source + " ->")
	}
	b.WriteString(" " + e.Target)
	var extra []string
	if e.Fstype != "" {
		extra = append(extra, "type "+e.Fstype)
	}
	if e.Flags != 0 {
		extra = append(extra, fmt.Sprintf("flags %#x", e.Flags))
	}
	if e.Data != "" {
		d := e.Data
		if len(d) > 200 {
			d = d[:200] + "..."
		}
		extra = append(extra, fmt.Sprintf("data %q", d))
	}
	if len(extra) > 0 {
		b.WriteString(" (" + strings.Join(extra, ", ") + ")")
	}
	b.WriteString(": ")
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString("unknown error")
	}
	return b.String()
}

// Unwrap returns the underlying error, usually a unix.Errno.
func (e *Error) Unwrap() error { return e.Err }
