package ns

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
)

// TestDo runs Go code in a process's mount and uts namespaces: it sees
// the mounts of the other namespace, changes the other host name, and
// none of it leaks into ours.
func TestDo(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "unshare")
	dir := t.TempDir()
	leader := exec.Command("unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs "+dir+" && touch "+dir+"/inside && exec sleep 1000")
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leader.Process.Kill(); leader.Wait() })
	inner := waitExec(t, leader.Process.Pid, "sleep")
	p, err := Open(inner, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ourHost, _ := os.Hostname()
	var sawInside bool
	err = Do(p, unix.CLONE_NEWNS|unix.CLONE_NEWUTS, func() error {
		_, err := os.Stat(dir + "/inside")
		sawInside = err == nil
		return unix.Sethostname([]byte("nrt-do-ns"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if !sawInside {
		t.Errorf("Do: the function did not see the other namespace's mount")
	}
	if _, err := os.Stat(dir + "/inside"); err == nil {
		t.Errorf("the other namespace's mount leaked into ours")
	}
	if h, _ := os.Hostname(); h != ourHost {
		t.Errorf("our host name = %q, want %q unchanged", h, ourHost)
	}
	var uts unix.Utsname
	if err := Do(p, unix.CLONE_NEWUTS, func() error { return unix.Uname(&uts) }); err != nil {
		t.Fatal(err)
	}
	if got := unix.ByteSliceToString(uts.Nodename[:]); got != "nrt-do-ns" {
		t.Errorf("host name inside = %q, want nrt-do-ns", got)
	}
	// Our goroutine is on an unchanged thread afterwards.
	if _, err := os.Stat(dir + "/inside"); err == nil {
		t.Errorf("the caller's thread is in the other namespace")
	}
}

// waitExec waits until pid has exec'd comm (unshare execs its command).
func waitExec(t *testing.T, pid int, comm string) int {
	t.Helper()
	for range 1000 {
		c, _ := os.ReadFile("/proc/" + itoa(pid) + "/comm")
		if strings.TrimSpace(string(c)) == comm {
			return pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d never ran %s", pid, comm)
	return 0
}
