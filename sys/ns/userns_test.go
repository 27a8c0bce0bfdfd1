package ns

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

// userNSBase is the host uid and gid the test's user namespace maps to 0.
const userNSBase = 200000

// nsLeader starts a sleep in new mount, pid and uts namespaces and, when
// user, a new user namespace mapping 0 to userNSBase, as systemd-nspawn
// (--private-users) makes them.
func nsLeader(tb testing.TB, user bool) (*Proc, *exec.Cmd) {
	tb.Helper()
	leader := exec.Command("sleep", "1000")
	attr := &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS}
	if user {
		attr.Cloneflags |= unix.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: userNSBase, Size: 65536}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: userNSBase, Size: 65536}}
		attr.GidMappingsEnableSetgroups = true
	}
	leader.SysProcAttr = attr
	if err := leader.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { leader.Process.Kill(); leader.Wait() })
	p, err := Open(leader.Process.Pid, 0)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	return p, leader
}

// TestStartInUserNS enters a process with its own user namespace: the
// command is that namespace's root (uid 0 inside, userNSBase on the
// host), its files belong to userNSBase on the host, and nothing of ours
// (the constructor's variable, our descriptors) reaches it.
func TestStartInUserNS(t *testing.T) {
	testutil.RequireRoot(t)
	if !CanEnterUserNS {
		t.Skip("built without cgo")
	}
	p, _ := nsLeader(t, true)
	own, err := OwnUserNS(p.PID)
	if err != nil || !own {
		t.Fatalf("OwnUserNS(leader) = %v, %v, want true", own, err)
	}
	if own, err := OwnUserNS(os.Getpid()); err != nil || own {
		t.Fatalf("OwnUserNS(self) = %v, %v, want false", own, err)
	}
	dir, err := os.MkdirTemp("", "users-ns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	r, w, _ := os.Pipe()
	defer r.Close()
	script := `id -u; id -g; cat /proc/self/uid_map; env | grep -c NSENTER; ls -l /proc/self/fd/ | grep -c pidfd; touch ` + dir + `/f; pwd`
	cmd, err := Start(p, Cmd{Path: "sh", Args: []string{"sh", "-c", script}, Env: []string{"PATH=/usr/bin:/bin"}, Dir: dir, Stdout: w, Stderr: w, CgroupFD: -1})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 1024)
	n, _ := readAll(r, out)
	if _, err := cmd.Wait(); err != nil {
		t.Fatalf("wait: %v (output %q)", err, out[:n])
	}
	got := strings.Fields(string(out[:n]))
	// No pidfd of the leader is left open.
	want := []string{"0", "0", "0", itoa(userNSBase), "65536", "0", "0", dir}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("inside: %q, want %q", got, want)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, "f"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != userNSBase || st.Gid != userNSBase {
		t.Errorf("a file the command made is owned by %d:%d on the host, want %d:%d", st.Uid, st.Gid, userNSBase, userNSBase)
	}
}

// TestStartInUserNSErrors: a program missing in the machine is
// ErrNotFound, a leader that is gone is ErrGone, as without a user
// namespace.
func TestStartInUserNSErrors(t *testing.T) {
	testutil.RequireRoot(t)
	if !CanEnterUserNS {
		t.Skip("built without cgo")
	}
	p, leader := nsLeader(t, true)
	if _, err := Start(p, Cmd{Path: "no-such-program", Args: []string{"x"}, Env: []string{"PATH=/usr/bin:/bin"}, CgroupFD: -1}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Start(missing program) = %v, want ErrNotFound", err)
	}
	if _, err := Start(p, Cmd{Path: "/bin/true", Args: []string{"true"}, Dir: "/no/such/dir", CgroupFD: -1}); err == nil || !strings.Contains(err.Error(), "chdir /no/such/dir") {
		t.Errorf("Start(missing dir) = %v, want a chdir error", err)
	}
	leader.Process.Kill()
	leader.Wait()
	if _, err := Start(p, Cmd{Path: "/bin/true", Args: []string{"true"}, CgroupFD: -1}); !errors.Is(err, ErrGone) {
		t.Errorf("Start(dead leader) = %v, want ErrGone", err)
	}
}

func TestParseIDMap(t *testing.T) {
	for _, tc := range []struct {
		in          string
		shift, size uint32
		ok          bool
	}{
		{"         0  968425472      65536\n", 968425472, 65536, true},
		{"         0          0 4294967295\n", 0, 4294967295, true},
		{"1000 5000 1\n0 100000 1000\n", 100000, 1000, true},
		{"", 0, 0, false},
		{"1 2 3\n", 0, 0, false},
		{"0 x 3\n", 0, 0, false},
	} {
		shift, size, err := ParseIDMap(tc.in)
		if (err == nil) != tc.ok || shift != tc.shift || size != tc.size {
			t.Errorf("ParseIDMap(%q) = %d, %d, %v, want %d, %d (ok %v)", tc.in, shift, size, err, tc.shift, tc.size, tc.ok)
		}
	}
	if _, size, err := ReadIDMap(os.Getpid()); err != nil || size == 0 {
		t.Errorf("ReadIDMap(self) = %d, %v, want a mapping of 0", size, err)
	}
}

// BenchmarkStartUserNS: starting /bin/true in a leader with its own user
// namespace (re-executing this binary, whose constructor joins it) against
// one without (setns from the locked thread), alternating.
func BenchmarkStartUserNS(b *testing.B) {
	testutil.RequireRoot(b)
	withUser, _ := nsLeader(b, true)
	without, _ := nsLeader(b, false)
	var du, dn time.Duration
	for i := 0; i < b.N; i++ {
		for _, p := range []*Proc{withUser, without} {
			t0 := time.Now()
			c, err := Start(p, Cmd{Path: "/bin/true", Args: []string{"true"}, CgroupFD: -1})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Wait(); err != nil {
				b.Fatal(err)
			}
			if p == withUser {
				du += time.Since(t0)
			} else {
				dn += time.Since(t0)
			}
		}
	}
	b.ReportMetric(float64(du.Microseconds())/float64(b.N)/1000, "userns-ms")
	b.ReportMetric(float64(dn.Microseconds())/float64(b.N)/1000, "plain-ms")
	b.ReportMetric(float64(du)/float64(dn), "x-plain")
}
