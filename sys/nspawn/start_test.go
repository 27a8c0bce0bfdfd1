package nspawn_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/cgroup"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

// TestStartExitsEarly: a systemd-nspawn that cannot start ends WaitReady
// with nspawn.ErrExited and the tail of its log, instead of waiting for the
// timeout.
func TestStartExitsEarly(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "systemd-nspawn")
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cgf := ownCgroup(t, "fail")
	p, err := nspawn.Start(nspawn.StartOptions{Args: nspawn.Args(nspawn.Spec{Directory: filepath.Join(dir, "missing"), Machine: "nrt-lc-nspawn-fail", NoRegister: true, Command: []string{"true"}}), Log: logf, CgroupFD: int(cgf.Fd())})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, err = p.WaitReady(ctx, false)
	if !errors.Is(err, nspawn.ErrExited) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("WaitReady = %v, want nspawn.ErrExited with nspawn's complaint about the directory", err)
	}
}

// TestStartNotify: a non-booted machine reports its leader.
func TestStartNotify(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "systemd-nspawn")
	image := testutil.Image(t)
	p := startSleeper(t, "notify", nspawn.StartOptions{Args: sleeperArgs(image, "nrt-lc-nspawn-notify")})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader, err := p.WaitReady(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if leader <= 1 || leader == p.PID {
		t.Errorf("leader = %d (nspawn %d)", leader, p.PID)
	}
	proc, _ := os.FindProcess(p.PID)
	proc.Signal(os.Interrupt)
	select {
	case <-p.Exited():
	case <-time.After(30 * time.Second):
		t.Error("systemd-nspawn did not stop on SIGINT")
	}
}

// forgerEnv, set in the environment of this test binary, makes it the
// forger of TestStartIgnoresForgedNotify instead of running tests: it
// sends forged notifications to the NOTIFY_SOCKET of the pid given in the
// variable, says "sent" and stays alive until its stdin closes.
const forgerEnv = "NSPAWN_RUNNER_TEST_FORGE_NOTIFY"

func TestMain(m *testing.M) {
	if v := os.Getenv(forgerEnv); v != "" {
		if err := forge(v); err != nil {
			fmt.Fprintln(os.Stderr, "forger:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// forge is a local process attacking a prepare: it finds systemd-nspawn's
// NOTIFY_SOCKET and announces another leader (the process that started
// nspawn, then itself) and readiness.
func forge(v string) error {
	env, err := os.ReadFile("/proc/" + v + "/environ")
	if err != nil {
		return err
	}
	var sock string
	for _, kv := range bytes.Split(env, []byte{0}) {
		if s, ok := strings.CutPrefix(string(kv), "NOTIFY_SOCKET="); ok {
			sock = s
		}
	}
	if sock == "" {
		return fmt.Errorf("pid %s has no NOTIFY_SOCKET", v)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	for _, pid := range []int{os.Getppid(), os.Getpid()} {
		if _, err := fmt.Fprintf(c, "STATUS=Container running.\nX_NSPAWN_LEADER_PID=%d\nREADY=1", pid); err != nil {
			return err
		}
	}
	fmt.Println("sent")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
	return nil
}

// TestStartIgnoresForgedNotify: another local process that sends READY=1
// and a leader pid of its choosing to systemd-nspawn's notification
// socket, before systemd-nspawn itself says anything, is ignored; the
// real leader (a process below systemd-nspawn) is what WaitReady returns.
func TestStartIgnoresForgedNotify(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "systemd-nspawn")
	image := testutil.Image(t)
	nspawnPath, err := nspawn.LookPath("")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	// The child waits on the fifo and then becomes systemd-nspawn (same
	// pid): the forged datagrams are queued before nspawn sends any.
	args := append([]string{"-c", `read x < "$0" && exec "$@"`, gate, nspawnPath}, sleeperArgs(image, "nrt-rsec-nspawn-forged")...)
	p := startSleeper(t, "forged", nspawn.StartOptions{Binary: "/bin/sh", Args: args, NotifyDir: dir})

	forger := exec.Command(os.Args[0])
	forger.Env = append(os.Environ(), forgerEnv+"="+strconv.Itoa(p.PID))
	forger.Stderr = os.Stderr
	stdin, err := forger.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := forger.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := forger.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		forger.Process.Kill()
		forger.Wait()
	})
	if line, err := bufio.NewReader(stdout).ReadString('\n'); line != "sent\n" {
		t.Fatalf("forger said %q, %v", line, err)
	}

	g, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	g.WriteString("go\n")
	g.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader, err := p.WaitReady(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if leader == os.Getpid() || leader == forger.Process.Pid {
		t.Fatalf("WaitReady returned the forged leader %d (we are %d, the forger %d)", leader, os.Getpid(), forger.Process.Pid)
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(leader) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if f[1] != strconv.Itoa(p.PID) {
		t.Errorf("leader %d has parent %s, want systemd-nspawn %d", leader, f[1], p.PID)
	}
}

// sleeperArgs is a machine of the shared test image with sleep as its
// payload; --volatile=overlay --read-only leave the image untouched.
func sleeperArgs(image, machine string) []string {
	return nspawn.Args(nspawn.Spec{Directory: image, Machine: machine, NoRegister: true, Volatile: "overlay", ReadOnly: true, AsPID2: true, Quiet: true, Command: []string{"sleep", "infinity"}})
}

// startSleeper starts o in a cgroup of its own (named for name) with a log
// file, and kills it at the end of the test.
func startSleeper(t *testing.T, name string, o nspawn.StartOptions) *nspawn.Process {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cgf := ownCgroup(t, name)
	o.Log, o.CgroupFD = logf, int(cgf.Fd())
	p, err := nspawn.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		proc, _ := os.FindProcess(p.PID)
		proc.Kill()
		<-p.Exited()
		p.Release()
	})
	return p
}

// ownCgroup makes a cgroup for one test's systemd-nspawn and removes it
// after: without one, systemd-nspawn --keep-unit makes payload/ and
// supervisor/ next to whatever runs the test, and leaves them.
func ownCgroup(t *testing.T, name string) *os.File {
	t.Helper()
	h, err := cgroup.Detect()
	if err != nil {
		if testutil.InCI() {
			t.Fatalf("%v (CI=true: gated tests must run in CI)", err)
		}
		t.Skip(err)
	}
	cg := fmt.Sprintf("nrt-lc-nspawn-%s-%d", name, os.Getpid())
	if _, err := h.Create(cg, nil); err != nil {
		t.Fatal(err)
	}
	cgf, err := h.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cgf.Close()
		h.Kill(context.Background(), cg)
		if err := h.Remove(cg); err != nil {
			t.Error(err)
		}
	})
	return cgf
}
