package nspawn

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The notification socket is where systemd-nspawn reports the leader pid
// and readiness. Whoever can write to it can name the leader that later
// stages enter and cleanup kills, so it is guarded twice:
//
//   - it is a path socket in a directory of ours with mode 0700 (not an
//     abstract socket, which any process in the network namespace can
//     reach: jobs share the host's), so only root can connect to it;
//   - it has SO_PASSCRED set before it is bound: every datagram carries
//     the sender's pid and uid as the kernel saw them, and only datagrams
//     from our systemd-nspawn (or a process below it) running as our uid
//     are read. The leader pid one announces must be a descendant of that
//     systemd-nspawn, too.

// notifySocket is our end of NOTIFY_SOCKET.
type notifySocket struct {
	dir  string // the private directory, removed by close
	path string
	conn *net.UnixConn
}

// sunPathMax is the room for a socket path in sockaddr_un, with its NUL.
const sunPathMax = len(unix.RawSockaddrUnix{}.Path) - 1

// listenNotify makes the socket in a new 0700 directory under parent
// (os.TempDir() when empty, or when the path would not fit in
// sockaddr_un).
func listenNotify(parent string) (*notifySocket, error) {
	if parent == "" || len(parent)+len("/nspawn-runner-notify-1234567890/notify") > sunPathMax {
		parent = os.TempDir()
	}
	// MkdirTemp creates the directory with mode 0700 and fails rather
	// than reuse an existing one.
	dir, err := os.MkdirTemp(parent, "nspawn-runner-notify-")
	if err != nil {
		return nil, fmt.Errorf("notify socket directory: %w", err)
	}
	s := &notifySocket{dir: dir, path: filepath.Join(dir, "notify")}
	if len(s.path) > sunPathMax {
		os.Remove(dir)
		return nil, fmt.Errorf("notify socket %s: path longer than %d bytes (set TMPDIR to a shorter directory)", s.path, sunPathMax)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	// SO_PASSCRED before bind: no datagram can arrive without the
	// sender's credentials.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		unix.Close(fd)
		os.Remove(dir)
		return nil, fmt.Errorf("notify socket: SO_PASSCRED: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: s.path}); err != nil {
		unix.Close(fd)
		os.Remove(dir)
		return nil, fmt.Errorf("notify socket: bind %s: %w", s.path, err)
	}
	f := os.NewFile(uintptr(fd), s.path)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		s.removeDir()
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	s.conn = c.(*net.UnixConn)
	return s, nil
}

func (s *notifySocket) removeDir() {
	os.Remove(s.path)
	os.Remove(s.dir)
}

// close closes the socket and removes it and its directory.
func (s *notifySocket) close() {
	if s.conn != nil {
		s.conn.Close()
	}
	s.removeDir()
}

// datagram is one message read from the socket with its sender's
// credentials (nil when the kernel attached none).
type datagram struct {
	data []byte
	cred *unix.Ucred
}

// read reads one datagram. Truncated messages and control data are
// refused (the caller ignores the datagram); file descriptors passed
// along are closed.
func (s *notifySocket) read(buf, oob []byte) (datagram, error) {
	n, oobn, flags, _, err := s.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return datagram{}, err
	}
	d := datagram{data: buf[:n]}
	msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS:
			fds, _ := unix.ParseUnixRights(&m)
			for _, fd := range fds {
				unix.Close(fd)
			}
		case m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_CREDENTIALS:
			if c, err := unix.ParseUnixCredentials(&m); err == nil {
				d.cred = c
			}
		}
	}
	if perr != nil || flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		d.cred = nil
	}
	return d, nil
}

// parentFunc returns the parent pid of a process.
type parentFunc func(pid int) (int, error)

// maxDepth bounds a walk up the process tree (pid_max is at most 2^22,
// but real trees are a few levels deep; the bound only guards a loop).
const maxDepth = 4096

// descendant reports whether pid is root or a process below it, walking
// up the parent pids from pid. An error reading a parent (the process
// is gone) is an error: nothing is assumed.
func descendant(pid, root int, parent parentFunc) (bool, error) {
	if pid <= 0 || root <= 1 {
		return false, nil
	}
	for i := 0; i < maxDepth && pid > 1; i++ {
		if pid == root {
			return true, nil
		}
		pp, err := parent(pid)
		if err != nil {
			return false, err
		}
		pid = pp
	}
	return false, nil
}

// checkSender accepts a datagram's sender only when the kernel vouched
// for it (cred not nil), it runs as uid, and it is systemd-nspawn (pid
// nspawn) or a process below it.
func checkSender(cred *unix.Ucred, uid, nspawn int, parent parentFunc) error {
	if cred == nil {
		return errors.New("a datagram without sender credentials")
	}
	if int(cred.Uid) != uid {
		return fmt.Errorf("a datagram from pid %d running as uid %d, not %d", cred.Pid, cred.Uid, uid)
	}
	ok, err := descendant(int(cred.Pid), nspawn, parent)
	if err != nil {
		return fmt.Errorf("a datagram from pid %d: %w", cred.Pid, err)
	}
	if !ok {
		return fmt.Errorf("a datagram from pid %d, not systemd-nspawn (pid %d) nor a process below it", cred.Pid, nspawn)
	}
	return nil
}

// checkLeader accepts an announced leader pid only when it is a process
// below systemd-nspawn (pid nspawn).
func checkLeader(leader, nspawn int, parent parentFunc) error {
	ok, err := descendant(leader, nspawn, parent)
	if err != nil {
		return fmt.Errorf("announced leader pid %d: %w", leader, err)
	}
	if !ok || leader == nspawn {
		return fmt.Errorf("announced leader pid %d is not a process below systemd-nspawn (pid %d)", leader, nspawn)
	}
	return nil
}

// procParent reads the parent pid of pid from /proc/PID/stat (field 4,
// after the command name in parentheses, which may hold anything).
func procParent(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("parent of pid %d: %w", pid, err)
	}
	return parseParent(string(b))
}

// parseParent returns field 4 (ppid) of a /proc/PID/stat line.
func parseParent(stat string) (int, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("parse /proc stat: no command name")
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 2 {
		return 0, fmt.Errorf("parse /proc stat: %d fields after the command name, want at least 2", len(f))
	}
	pp, err := strconv.Atoi(f[1])
	if err != nil || pp < 0 {
		return 0, fmt.Errorf("parse /proc stat: parent pid %q", f[1])
	}
	return pp, nil
}
