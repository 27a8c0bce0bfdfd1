package ns

import (
	"context"
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

func TestParseStat(t *testing.T) {
	line := "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100"
	st, err := ParseStat(line)
	if err != nil || st.State != 'S' || st.StartTime != 987654 {
		t.Errorf("ParseStat = %+v, %v, want S 987654", st, err)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 x"} {
		if _, err := ParseStat(bad); err == nil {
			t.Errorf("ParseStat(%q) succeeded", bad)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add("1 (sh) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = ParseStat(s)
	})
}

func TestOpenSelfAndReuse(t *testing.T) {
	st, err := ReadStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	p, err := Open(os.Getpid(), st.StartTime)
	if err != nil {
		t.Fatalf("Open(self) = %v", err)
	}
	p.Close()
	if _, err := Open(os.Getpid(), st.StartTime+1); err == nil {
		t.Errorf("Open with a wrong start time succeeded")
	}
	if Alive(os.Getpid(), st.StartTime+1) || !Alive(os.Getpid(), st.StartTime) {
		t.Errorf("Alive does not check the start time")
	}
}

// TestStartInNamespaces enters a process that has its own mount, pid and
// uts namespaces (unshare(1)) and checks the child sees them.
func TestStartInNamespaces(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "unshare")
	leader := exec.Command("unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "sh", "-c", "hostname nrt-lc-ns; exec sleep 1000")
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leader.Process.Kill(); leader.Wait() })
	// The sleeping child of unshare is the namespaces' pid 1.
	inner := sleepingChild(t, leader.Process.Pid)
	p, err := Open(inner, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	r, w, _ := os.Pipe()
	cmd, err := Start(p, Cmd{Path: "sh", Args: []string{"sh", "-c", "hostname; echo $$"}, Env: []string{"PATH=/usr/bin:/bin"}, Dir: "/", Stdout: w, Stderr: w, CgroupFD: -1})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 256)
	n, _ := readAll(r, out)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = ctx
	if _, err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(out[:n]))
	if len(got) != 2 || got[0] != "nrt-lc-ns" || got[1] == itoa(cmd.Pid) {
		t.Errorf("inside: hostname and pid = %q, want nrt-lc-ns and a pid of the inner namespace (host pid %d)", got, cmd.Pid)
	}
}

// TestStartIntoCgroupOutsideItsNamespace enters a process whose cgroup
// namespace is rooted at its own cgroup (as systemd-nspawn's payload is on
// a unified host) and starts a command directly in a sibling cgroup (the
// stage's), which clone3(CLONE_INTO_CGROUP) refuses with ENOENT from
// inside that namespace when cgroup2 is mounted with nsdelegate (systemd
// does): every stage failed on systemd hosts (found by make vm-test; on a
// host without nsdelegate this test passes either way).
func TestStartIntoCgroupOutsideItsNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "unshare")
	var root string
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(p, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			root = p
			break
		}
	}
	if root == "" {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	parent := filepath.Join(root, "nrt-vm-ns-"+itoa(os.Getpid()))
	leaderCg, stageCg := filepath.Join(parent, "leader"), filepath.Join(parent, "stage")
	for _, d := range []string{parent, leaderCg, stageCg} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, d := range []string{leaderCg, stageCg} {
			os.WriteFile(filepath.Join(d, "cgroup.kill"), []byte("1"), 0)
		}
		for _, d := range []string{leaderCg, stageCg, parent} {
			for i := 0; i < 50 && os.Remove(d) != nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
	lf, err := os.Open(leaderCg)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	leader := exec.Command("unshare", "--cgroup", "--mount", "--pid", "--fork", "--mount-proc", "sleep", "1000")
	leader.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(lf.Fd())}
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leader.Process.Kill(); leader.Wait() })
	inner := sleepingChild(t, leader.Process.Pid)
	p, err := Open(inner, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	sf, err := os.Open(stageCg)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	cmd, err := Start(p, Cmd{Path: "/bin/sh", Args: []string{"sh", "-c", "exit 0"}, Env: []string{"PATH=/usr/bin:/bin"}, Dir: "/", CgroupFD: int(sf.Fd())})
	if err != nil {
		t.Fatalf("start in the stage's cgroup: %v", err)
	}
	if _, err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
}

// sleepingChild waits for the sleep that unshare(1) (pid) forked: the pid
// 1 of its new namespaces.
func sleepingChild(t *testing.T, pid int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile("/proc/" + itoa(pid) + "/task/" + itoa(pid) + "/children")
		if f := strings.Fields(string(b)); len(f) > 0 {
			if c, _ := os.ReadFile("/proc/" + f[0] + "/comm"); strings.TrimSpace(string(c)) == "sleep" {
				return atoi(f[0])
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no inner process")
	return 0
}
