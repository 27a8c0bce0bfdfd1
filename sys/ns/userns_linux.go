package ns

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// nsenterEnv names the variable that makes this binary's C constructor
// (userns_linux.c) enter a machine instead of starting the Go program.
const nsenterEnv = "_NSPAWN_RUNNER_NSENTER"

// ErrNoUserNSEntry is returned for a machine with its own user namespace
// when this binary was built without cgo (CanEnterUserNS is false).
var ErrNoUserNSEntry = errors.New("this nspawn-runner was built without cgo and cannot enter machines with private users")

// OwnUserNS reports whether pid runs in a user namespace other than ours
// (a machine started with systemd-nspawn --private-users).
func OwnUserNS(pid int) (bool, error) {
	var self, other unix.Stat_t
	if err := unix.Stat("/proc/self/ns/user", &self); err != nil {
		return false, fmt.Errorf("stat our user namespace: %w", err)
	}
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/user", &other); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
			return false, fmt.Errorf("pid %d: %w", pid, ErrGone)
		}
		return false, fmt.Errorf("stat the user namespace of pid %d: %w", pid, err)
	}
	return self.Dev != other.Dev || self.Ino != other.Ino, nil
}

// startInUserNS starts c in a machine with its own user namespace, as
// that namespace's root (the first uid of the machine's range on the
// host). setns(2) refuses CLONE_NEWUSER to a multithreaded process, so
// the locked thread joins only the pid namespace (children are born in
// it) and starts this binary again (/proc/self/exe, resolved on the host:
// nothing of the machine's tree runs before we are its root, not the
// host's); its C constructor joins the user namespace and the others
// before the Go runtime starts, and execs c. A pipe reports the
// constructor's failure, or end-of-file once the exec succeeded.
func startInUserNS(leader *Proc, c Cmd) (*exec.Cmd, error) {
	if !CanEnterUserNS {
		return nil, ErrNoUserNSEntry
	}
	if err := enterLocked(leader, unix.CLONE_NEWPID); err != nil {
		return nil, err
	}
	flags := Namespaces&^unix.CLONE_NEWPID | unix.CLONE_NEWUSER
	if c.CgroupFD >= 0 {
		flags &^= unix.CLONE_NEWCGROUP
	}
	pidfd, err := unix.FcntlInt(uintptr(leader.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup pidfd: %w", err)
	}
	pf := os.NewFile(uintptr(pidfd), "pidfd")
	defer pf.Close()
	er, ew, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("status pipe: %w", err)
	}
	defer er.Close()
	extra := append(append([]*os.File{}, c.ExtraFiles...), pf, ew)
	// ExtraFiles[i] is the child's fd 3+i.
	pidNum, errNum := 3+len(extra)-2, 3+len(extra)-1
	dir := c.Dir
	if dir == "" {
		dir = "/"
	}
	env := append(append([]string{}, c.Env...), fmt.Sprintf("%s=%d,%d,%#x,%s", nsenterEnv, pidNum, errNum, flags, dir))
	cmd := &exec.Cmd{
		Path:        "/proc/self/exe",
		Args:        append([]string{"nspawn-runner-enter", c.Path}, c.Args...),
		Env:         env,
		Stdin:       c.Stdin,
		Stdout:      c.Stdout,
		Stderr:      c.Stderr,
		ExtraFiles:  extra,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: c.Setpgid},
	}
	if c.CgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = c.CgroupFD
	}
	err = cmd.Start()
	ew.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s in the machine of pid %d: %w", c.Path, leader.PID, err)
	}
	msg, rerr := io.ReadAll(er)
	if rerr == nil && len(msg) == 0 {
		return cmd, nil
	}
	_ = cmd.Wait()
	if rerr != nil {
		return nil, fmt.Errorf("start %s in the machine of pid %d: status pipe: %w", c.Path, leader.PID, rerr)
	}
	errno, text, _ := strings.Cut(string(msg), " ")
	if n, _ := strconv.Atoi(errno); syscall.Errno(n) == unix.ESRCH {
		return nil, fmt.Errorf("enter pid %d: %s: %w", leader.PID, text, ErrGone)
	} else if syscall.Errno(n) == unix.ENOENT && strings.HasPrefix(text, "exec ") {
		return nil, fmt.Errorf("%s: %w", c.Path, ErrNotFound)
	}
	return nil, fmt.Errorf("start %s in the machine of pid %d: %s", c.Path, leader.PID, text)
}

// ReadIDMap returns the host id that uid 0 of pid's user namespace maps to
// and the length of that mapping (the first line of /proc/PID/uid_map,
// user_namespaces(7)). In our own namespace it is 0 and 4294967295.
func ReadIDMap(pid int) (shift, size uint32, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/uid_map")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return 0, 0, fmt.Errorf("pid %d: %w", pid, ErrGone)
		}
		return 0, 0, fmt.Errorf("read the uid map of pid %d: %w", pid, err)
	}
	return ParseIDMap(string(b))
}

// ParseIDMap parses a uid_map or gid_map and returns the outside id and
// length of the line that maps inside id 0.
func ParseIDMap(s string) (shift, size uint32, err error) {
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		var v [3]uint64
		for i := range f {
			if v[i], err = strconv.ParseUint(f[i], 10, 32); err != nil {
				return 0, 0, fmt.Errorf("parse id map line %q: %w", line, err)
			}
		}
		if v[0] == 0 {
			return uint32(v[1]), uint32(v[2]), nil
		}
	}
	return 0, 0, fmt.Errorf("parse id map: no mapping of id 0 in %q", s)
}
