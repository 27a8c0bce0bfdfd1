package nspawn

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// tree is a fake process tree: pid -> parent pid. A pid not in it is gone.
type tree map[int]int

func (t tree) parent(pid int) (int, error) {
	if pp, ok := t[pid]; ok {
		return pp, nil
	}
	return 0, errors.New("no such process")
}

// A host: init (1) runs the runner (100), which started systemd-nspawn
// (200); nspawn's leader is 300, with a job process 400 below it. 500 is
// another process of the runner, 600 an unrelated daemon.
var host = tree{1: 0, 100: 1, 200: 100, 300: 200, 400: 300, 500: 100, 600: 1}

func TestDescendant(t *testing.T) {
	for _, tc := range []struct {
		pid, root int
		want      bool
	}{
		{200, 200, true},
		{300, 200, true},
		{400, 200, true},
		{100, 200, false}, // the parent is not below
		{500, 200, false}, // a sibling
		{600, 200, false},
		{1, 200, false},
		{0, 200, false},
		{-5, 200, false},
		{300, 1, false}, // init is nobody's root here
	} {
		if got, err := descendant(tc.pid, tc.root, host.parent); got != tc.want || err != nil {
			t.Errorf("descendant(%d, %d) = %v, %v, want %v", tc.pid, tc.root, got, err, tc.want)
		}
	}
	if got, err := descendant(700, 200, host.parent); got || err == nil {
		t.Errorf("descendant of a gone process = %v, %v, want false and an error", got, err)
	}
	loop := tree{10: 11, 11: 10}
	if got, _ := descendant(10, 200, loop.parent); got {
		t.Error("a parent loop counts as a descendant")
	}
}

func TestCheckSender(t *testing.T) {
	for _, tc := range []struct {
		name string
		cred *unix.Ucred
		ok   bool
	}{
		{"nspawn itself", &unix.Ucred{Pid: 200, Uid: 0}, true},
		{"below nspawn", &unix.Ucred{Pid: 300, Uid: 0}, true},
		{"no credentials", nil, false},
		{"another uid", &unix.Ucred{Pid: 200, Uid: 1000}, false},
		{"a mapped uid below nspawn", &unix.Ucred{Pid: 400, Uid: 65536}, false},
		{"a sibling", &unix.Ucred{Pid: 500, Uid: 0}, false},
		{"the runner", &unix.Ucred{Pid: 100, Uid: 0}, false},
		{"init", &unix.Ucred{Pid: 1, Uid: 0}, false},
		{"gone", &unix.Ucred{Pid: 700, Uid: 0}, false},
	} {
		if err := checkSender(tc.cred, 0, 200, host.parent); (err == nil) != tc.ok {
			t.Errorf("%s: checkSender = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

func TestCheckLeader(t *testing.T) {
	for pid, ok := range map[int]bool{300: true, 400: true, 200: false, 100: false, 500: false, 600: false, 1: false, 700: false} {
		if err := checkLeader(pid, 200, host.parent); (err == nil) != ok {
			t.Errorf("checkLeader(%d) = %v, want ok %v", pid, err, ok)
		}
	}
}

func TestParseParent(t *testing.T) {
	for in, want := range map[string]int{
		"42 (sleep) S 7 42 42 0 -1":                7,
		"42 (a) b) c) R 1234 1 1":                  1234,
		"42 (systemd-nspawn) S 0 0 0 0":            0,
		"99 (with space (and) parens) Z 3 0 0 0 0": 3,
	} {
		if got, err := parseParent(in); err != nil || got != want {
			t.Errorf("parseParent(%q) = %d, %v, want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "42 (x", "42 (x) S", "42 (x) S -3", "42 (x) S y"} {
		if got, err := parseParent(in); err == nil {
			t.Errorf("parseParent(%q) = %d, want an error", in, got)
		}
	}
}

// TestProcParent: the real process tree, read from /proc.
func TestProcParent(t *testing.T) {
	if pp, err := procParent(os.Getpid()); err != nil || pp != os.Getppid() {
		t.Errorf("procParent(self) = %d, %v, want %d", pp, err, os.Getppid())
	}
	if ok, err := descendant(os.Getpid(), os.Getppid(), procParent); !ok || err != nil {
		t.Errorf("descendant(self, parent) = %v, %v", ok, err)
	}
	if ok, _ := descendant(os.Getppid(), os.Getpid(), procParent); ok {
		t.Error("our parent counts as below us")
	}
}

// TestNotifySocket: the socket lives in a private 0700 directory, every
// datagram carries its sender's credentials as the kernel saw them, and
// close removes the directory.
func TestNotifySocket(t *testing.T) {
	s, err := listenNotify(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	fi, err := os.Stat(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 || !fi.IsDir() {
		t.Errorf("socket directory %s has mode %v, want drwx------", s.dir, fi.Mode())
	}
	if filepath.Dir(s.path) != s.dir || strings.HasPrefix(s.path, "@") {
		t.Errorf("socket %s is not a path socket in %s", s.path, s.dir)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("READY=1\nX_NSPAWN_LEADER_PID=4242")); err != nil {
		t.Fatal(err)
	}
	d, err := s.read(make([]byte, 4096), make([]byte, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if d.cred == nil || int(d.cred.Pid) != os.Getpid() || int(d.cred.Uid) != os.Geteuid() {
		t.Fatalf("credentials %+v, want pid %d uid %d", d.cred, os.Getpid(), os.Geteuid())
	}
	if n := ParseNotify(d.data); !n.Ready || n.LeaderPID != 4242 {
		t.Errorf("datagram %q parsed as %+v", d.data, n)
	}
	// We are not below the "systemd-nspawn" our parent stands for.
	if err := checkSender(d.cred, os.Geteuid(), os.Getppid(), procParent); err != nil {
		t.Errorf("checkSender(ourselves, below our parent) = %v", err)
	}
	if err := checkSender(d.cred, os.Geteuid(), os.Getpid()+1<<21, procParent); err == nil {
		t.Error("checkSender accepts a sender that is not below the given systemd-nspawn")
	}
	s.close()
	if _, err := os.Lstat(s.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after close, %s: %v, want it removed", s.dir, err)
	}
}

// TestNotifySocketLongParent: a parent directory too long for a socket
// path falls back to the temporary directory.
func TestNotifySocketLongParent(t *testing.T) {
	long := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	s, err := listenNotify(long)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if len(s.path) > sunPathMax || strings.HasPrefix(s.path, long) {
		t.Errorf("socket %s: want it under %s", s.path, os.TempDir())
	}
}
