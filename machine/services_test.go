package machine

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/sys/nspawn"
)

func TestServiceNames(t *testing.T) {
	job := "nr-42-0123456789ab"
	for i := 1; i <= MaxServices; i++ {
		n, err := ServiceName(job, i)
		if err != nil || !isServiceOf(job, n) {
			t.Errorf("ServiceName(%q, %d) = %q, %v; isServiceOf false", job, i, n, err)
		}
	}
	for _, n := range []string{job, job + "-s", job + "-s0", job + "-s01", job + "-s100", job + "-sx", job + "-s1-0123456789ab", "nr-42-0123456789ab0-s1", "nr-4-s1"} {
		if isServiceOf(job, n) {
			t.Errorf("isServiceOf(%q, %q) = true", job, n)
		}
	}
	// Another job whose --id makes its name start like a service's.
	other, err := Name("", job[3:]+"-s1", "fedcba9876543210")
	if err != nil {
		t.Fatal(err)
	}
	if isServiceOf(job, other) {
		t.Errorf("job machine %q taken for a service of %q", other, job)
	}
	if _, err := ServiceName(strings.Repeat("a", 62), 1); err == nil {
		t.Errorf("ServiceName accepted a name longer than 63 characters")
	}
}

func TestHostsFile(t *testing.T) {
	got := hostsFile([]Service{
		{Name: "postgres:16", Aliases: []string{"db", "postgres"}},
		{Name: "x", Aliases: []string{"bad alias", "x#y", "x"}},
		{Name: "none"},
	})
	want := "# written by nspawn-runner: the job's services are on this machine's loopback\n" +
		"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"127.0.0.1\tdb postgres\n127.0.0.1\tx\n"
	if got != want {
		t.Errorf("hostsFile = %q, want %q", got, want)
	}
}

func TestPlanService(t *testing.T) {
	l := LayoutOf("/r", "/run/x", "nspawn-runner", "nr-1-0123456789ab-s1")
	s, _ := Plan(PlanInput{Layout: l, Storage: StorageBtrfs, Mode: config.ModeFast, Network: config.NetworkPrivate, NetNS: "/run/x/machines/job/netns", ResolvConf: "/run/x/machines/job/resolv.conf", Hosts: l.Hosts, Command: serviceCommand([]string{"redis-server", "--port", "1"})})
	if s.NetworkNamespacePath != "/run/x/machines/job/netns" {
		t.Errorf("service netns = %q", s.NetworkNamespacePath)
	}
	if !slices.ContainsFunc(s.Binds, func(b nspawn.Bind) bool { return b.Host == l.Hosts && b.Machine == "/etc/hosts" && !b.ReadOnly }) {
		t.Errorf("no writable /etc/hosts bind in %+v", s.Binds)
	}
	if n := len(s.Command); n < 3 || s.Command[0] != "/bin/sh" || !slices.Equal(s.Command[n-3:], []string{"redis-server", "--port", "1"}) {
		t.Errorf("service command = %q", s.Command)
	}
	// Boot mode ignores a command (services without one boot).
	s, _ = Plan(PlanInput{Layout: l, Storage: StorageBtrfs, Mode: config.ModeBoot})
	if !s.Boot || slices.Contains(s.Command, "sleep") {
		t.Errorf("boot plan = %+v", s)
	}
}

// The service command sees exactly the job's variables, whatever their
// values hold.
func TestServiceEnv(t *testing.T) {
	dir := t.TempDir()
	l := Layout{ServiceEnv: filepath.Join(dir, "service.env")}
	vals := []string{"A=plain", "B=it's $HOME `id` \"q\"\nline2", "C=", "1BAD=x", "D=a=b"}
	if err := writeServiceEnv(l, vals, false); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(l.ServiceEnv); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("service env file: %v, %v; want mode 0600", st.Mode(), err)
	}
	cmd := serviceCommand([]string{"sh", "-c", `printf '%s|%s|%s|%s' "$A" "$B" "$C" "$D"`})
	script := strings.ReplaceAll(cmd[2], ServiceEnvPath, l.ServiceEnv)
	out, err := exec.Command(cmd[0], append([]string{"-c", script}, cmd[3:]...)...).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "plain|it's $HOME `id` \"q\"\nline2||a=b"; string(out) != want {
		t.Errorf("service env = %q, want %q", out, want)
	}
}

func TestFollowLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var lines []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		end := followLog(ctx, p, 4, func(b []byte) { mu.Lock(); lines = append(lines, string(b)); mu.Unlock() })
		if end != int64(len("one\ntwo\r\nthree")) {
			t.Errorf("followLog read to %d", end)
		}
	}()
	// The file appears later and grows in pieces.
	time.Sleep(2 * limitPoll)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("one\ntw")
	time.Sleep(2 * limitPoll)
	f.WriteString("o\r\nthree")
	f.Close()
	time.Sleep(2 * limitPoll)
	cancel()
	<-done
	// From offset 4: the first line was streamed before.
	if want := []string{"two", "three"}; !slices.Equal(lines, want) {
		t.Errorf("followLog lines = %q, want %q", lines, want)
	}
}
