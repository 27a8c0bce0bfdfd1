package ns

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

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
	var inner int
	deadline := time.Now().Add(10 * time.Second)
	for inner == 0 && time.Now().Before(deadline) {
		b, _ := os.ReadFile("/proc/" + itoa(leader.Process.Pid) + "/task/" + itoa(leader.Process.Pid) + "/children")
		if f := strings.Fields(string(b)); len(f) > 0 {
			if c, _ := os.ReadFile("/proc/" + f[0] + "/comm"); strings.TrimSpace(string(c)) == "sleep" {
				inner = atoi(f[0])
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if inner == 0 {
		t.Fatal("no inner process")
	}
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
