package integration

// End-to-end tests of services: (issue 10) through the real binary, on a
// private network inside the network tests' own namespaces.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/btrfs"
)

// tcpsvcPlaybook makes a service image: a tiny TCP server (python3, in
// every image) enabled as a systemd unit on port 7000; run with a port as
// argument, it serves there. It greets with $GREETING, else "tcpsvc".
const tcpsvcPlaybook = `- hosts: all
  gather_facts: false
  vars:
    nspawn_runner_service_ports: [7000]
  tasks:
    - name: the server
      copy:
        dest: /usr/local/bin/tcpsvc
        mode: "0755"
        content: |
          #!/usr/bin/python3
          import os, socket, sys
          port = int(sys.argv[1]) if len(sys.argv) > 1 else 7000
          s = socket.socket()
          s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
          s.bind(("0.0.0.0", port))
          s.listen(16)
          print("tcpsvc listening on", port, flush=True)
          while True:
              c, _ = s.accept()
              print("tcpsvc served a connection", flush=True)
              c.sendall((os.environ.get("GREETING", "tcpsvc") + "\n").encode())
              c.close()
    - name: the unit
      copy:
        dest: /etc/systemd/system/tcpsvc.service
        content: |
          [Unit]
          Description=test TCP service
          [Service]
          ExecStart=/usr/local/bin/tcpsvc
          [Install]
          WantedBy=multi-user.target
    - name: enabled
      file:
        src: /etc/systemd/system/tcpsvc.service
        dest: /etc/systemd/system/multi-user.target.wants/tcpsvc.service
        state: link
`

// relay serves on 7002 what db:7000 answers, per connection.
const relay = `import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7002))
s.listen(4)
while True:
    c, _ = s.accept()
    try:
        d = socket.create_connection(("db", 7000), timeout=5)
        c.sendall(d.recv(100))
        d.close()
    except OSError as e:
        c.sendall(("relay-failed-" + type(e).__name__ + "\\n").encode())
    c.close()
`

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// newServiceHost is a private-network host with the images bookworm,
// tcpsvc (built from tcpsvcPlaybook by chroot-maintenance) and hidden
// (outside allowed_images).
func newServiceHost(t testing.TB, machineYAML string) (*lcHost, *netWorld) {
	t.Helper()
	testutil.RequireBinary(t, "ansible-playbook")
	if !strings.Contains(machineYAML, "network:") {
		machineYAML = netYAML + machineYAML
	}
	h, w := newNetHost(t, "  services_timeout: 40s\n"+machineYAML)
	h.prefix = "nrt-svc-"
	pbDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(pbDir, "tcpsvc.yaml"), []byte(tcpsvcPlaybook), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(h.config)
	if err != nil {
		t.Fatal(err)
	}
	cfg = append(cfg, []byte("playbook_dirs: ["+pbDir+"]\nallowed_images: [bookworm, tcpsvc]\n")...)
	if err := os.WriteFile(h.config, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"tcpsvc", "hidden"} {
		if err := btrfs.Snapshot(filepath.Join(h.root, "bookworm"), filepath.Join(h.root, n)); err != nil {
			t.Fatal(err)
		}
	}
	if r := h.exec(context.Background(), nil, "", "chroot-maintenance", "tcpsvc"); r.code != 0 {
		t.Fatalf("chroot-maintenance tcpsvc: exit %d\n%s", r.code, r.stderr)
	}
	return h, w
}

// prepareWith runs prepare for j with the job's services and variables.
func (j *job) prepareWith(services string, env ...string) result {
	j.h.t.Helper()
	env = append([]string{"CUSTOM_ENV_CI_JOB_SERVICES=" + services, "BUILD_EXIT_CODE_FILE=" + filepath.Join(j.dir, "code")}, env...)
	return j.h.exec(context.Background(), env, j.dir, "prepare", "bookworm", "--mode", "fast", "--id", j.id)
}

func TestServices(t *testing.T) {
	h, w := newServiceHost(t, "")

	// A booted service found by alias and derived names, and a command
	// service with the job's variables, on another port.
	j1 := h.newJob()
	t.Cleanup(func() { j1.call("cleanup") })
	services := `[{"name":"registry.example.com/group/tcpsvc:1","alias":"db,cache","entrypoint":null,"command":null},` +
		`{"name":"tcpsvc:cmd","alias":"cmd","entrypoint":["/usr/local/bin/tcpsvc"],"command":["7001"]},` +
		// Services reach each other by alias: this one answers with what
		// db:7000 says.
		`{"name":"tcpsvc:relay","alias":"relay","command":["python3","-c",` + strconvQuote(relay) + `]}]`
	r := j1.prepareWith(services, "CUSTOM_ENV_GREETING=from-the-job", "CUSTOM_ENV_CI_DEBUG_SERVICES=true")
	if r.code != 0 {
		t.Fatalf("prepare: exit %d\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "WARNING") {
		t.Errorf("prepare warned about a service that works:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "[service tcpsvc:cmd] tcpsvc listening on 7001") {
		t.Errorf("CI_DEBUG_SERVICES: the command service's output is not in the job log:\n%s", r.stderr)
	}
	script := strings.Join([]string{
		probe("alias", "db:7000"),
		probe("alias2", "cache:7000"),
		probe("derived", "registry.example.com__group__tcpsvc:7000"),
		probe("derived2", "registry.example.com-group-tcpsvc:7000"),
		probe("command", "cmd:7001"),
		probe("relay", "relay:7002"),
	}, "\n")
	r = j1.must("run", j1.script("probe", script), "build_script")
	// CI_DEBUG_SERVICES goes on in every stage, from where the last one
	// stopped.
	if !strings.Contains(r.stderr, "[service tcpsvc:cmd] tcpsvc served a connection") || strings.Contains(r.stderr, "listening on 7001") {
		t.Errorf("CI_DEBUG_SERVICES: the run stage's log does not have exactly the services' new output:\n%s", r.stderr)
	}
	out := results(r.stdout)
	for k, v := range map[string]string{"alias": "ok:tcpsvc", "alias2": "ok:tcpsvc", "derived": "ok:tcpsvc", "derived2": "ok:tcpsvc", "command": "ok:from-the-job", "relay": "ok:tcpsvc"} {
		if out[k] != v {
			t.Errorf("job 1: %s = %q, want %q", k, out[k], v)
		}
	}

	// ps shows the services under their job.
	ps := h.exec(context.Background(), nil, "", "ps", "--json")
	var list []map[string]any
	if err := json.Unmarshal([]byte(ps.stdout), &list); err != nil {
		t.Fatalf("ps --json: %v\n%s", err, ps.stdout)
	}
	jobName := h.recordName(j1)
	services1 := 0
	for _, m := range list {
		if m["job"] == jobName && m["state"] == "running" {
			services1++
		}
	}
	if services1 != 3 {
		t.Errorf("ps lists %d running services of %s, want 3:\n%s", services1, jobName, ps.stdout)
	}

	// Another job reaches none of them: not on its loopback, not at the
	// first job's address.
	j2 := h.newJob()
	t.Cleanup(func() { j2.call("cleanup") })
	// A service that never accepts connections: a warning with its log,
	// and the job runs.
	r = j2.prepareWith(`[{"name":"tcpsvc","alias":"never","command":["sleep","1000"]}]`)
	if r.code != 0 {
		t.Fatalf("prepare with a service that never gets ready: exit %d\n%s", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, "*** WARNING: Service tcpsvc") || !strings.Contains(r.stderr, "port 7000 did not accept a connection") {
		t.Errorf("no warning about the service that never got ready:\n%s", r.stderr)
	}
	a1, _ := h.recordOf(j1)["address"].(string)
	script = strings.Join([]string{probe("loopback", "127.0.0.1:7000"), probe("other", a1+":7000"), probe("never", "never:7000")}, "\n")
	out = results(j2.must("run", j2.script("probe", script), "build_script").stdout)
	for k, v := range map[string]string{"loopback": "no", "other": "no", "never": "no"} {
		if out[k] != v {
			t.Errorf("job 2: %s = %q, want %q", k, out[k], v)
		}
	}

	// Hostile or unknown names: system failures, nothing started.
	for _, s := range []string{`[{"name":"../x"}]`, `[{"name":"hidden"}]`, `[{"name":"mysql:8"}]`, `[{"name":"tcpsvc","alias":"a b\nc"}]`, `[{"name":"tcpsvc","alias":"x#y"}]`} {
		j := h.newJob()
		r := j.prepareWith(s)
		if r.code != systemFailure {
			t.Errorf("prepare with services %s: exit %d, want %d\n%s", s, r.code, systemFailure, r.stderr)
		}
		if strings.Contains(s, "mysql") && !strings.Contains(r.stderr, "images available to jobs: bookworm, tcpsvc") {
			t.Errorf("refusal of mysql:8 does not list the images:\n%s", r.stderr)
		}
		if rec := h.recordOf(j); rec != nil {
			t.Errorf("a refused prepare left machine %v", rec["name"])
		}
	}

	j1.must("cleanup")
	j2.must("cleanup")
	h.assertClean(t)
	if left := netLeftovers(t, h, w); len(left) > 0 {
		t.Errorf("left after cleanup: %s", strings.Join(left, "; "))
	}
}

// SIGKILL during prepare with services, at several points, then cleanup
// or gc: nothing is left.
func TestServicesKilled(t *testing.T) {
	h, w := newServiceHost(t, "")
	services := `[{"name":"tcpsvc","alias":"a"},{"name":"tcpsvc:x","alias":"b","command":["/usr/local/bin/tcpsvc","7001"]}]`
	for i, delay := range []time.Duration{150 * time.Millisecond, 500 * time.Millisecond, 1500 * time.Millisecond} {
		j := h.newJob()
		env := []string{"CUSTOM_ENV_CI_JOB_SERVICES=" + services}
		cmd := h.command(context.Background(), env, j.dir, "prepare", "bookworm", "--mode", "fast", "--id", j.id)
		if err := h.start(cmd); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		if i%2 == 0 {
			if r := j.call("cleanup"); r.code != 0 {
				t.Errorf("cleanup after a killed prepare: exit %d\n%s", r.code, r.stderr)
			}
		}
	}
	// A job whose prepare finished, its machine then killed: gc takes
	// the job and its services.
	j := h.newJob()
	if r := j.prepareWith(services); r.code != 0 {
		t.Fatalf("prepare: exit %d\n%s", r.code, r.stderr)
	}
	if pid, ok := h.recordOf(j)["nspawn_pid"].(float64); ok {
		_ = syscall.Kill(int(pid), syscall.SIGKILL)
	}
	if r := h.exec(context.Background(), nil, "", "gc"); r.code != 0 {
		t.Errorf("gc: exit %d\n%s", r.code, r.stderr)
	}
	h.assertClean(t)
	if left := netLeftovers(t, h, w); len(left) > 0 {
		t.Errorf("left after cleanup and gc: %s", strings.Join(left, "; "))
	}
}

// The README's example service images, built from examples/ by
// chroot-maintenance with Debian's packages (from the mirror, as a
// chroot-create needs), serve one job together:
// Redis answers PING, PostgreSQL answers a protocol request, each by its
// alias and by its derived name.
func TestServicesExamples(t *testing.T) {
	h, _ := newServiceHost(t, "")
	cfg, err := os.ReadFile(h.config)
	if err != nil {
		t.Fatal(err)
	}
	pbDir := t.TempDir()
	for _, name := range []string{"redis", "postgres"} {
		pb, err := os.ReadFile("../examples/" + name + ".yaml")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pbDir, name+".yaml"), pb, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := btrfs.Snapshot(filepath.Join(h.root, "bookworm"), filepath.Join(h.root, name)); err != nil {
			t.Fatal(err)
		}
	}
	cfg = []byte(strings.Replace(string(cfg), "allowed_images: [bookworm, tcpsvc]", "allowed_images: [bookworm, tcpsvc, redis, postgres]", 1))
	cfg = []byte(strings.Replace(string(cfg), "playbook_dirs: [", "playbook_dirs: ["+pbDir+", ", 1))
	if err := os.WriteFile(h.config, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	// The playbooks fetch packages: run them in the real host's network.
	ns := h.netNS
	h.netNS = ""
	for _, name := range []string{"redis", "postgres"} {
		if r := h.exec(context.Background(), nil, "", "chroot-maintenance", name); r.code != 0 {
			h.netNS = ns
			t.Fatalf("chroot-maintenance %s: exit %d\n%s", name, r.code, r.stderr)
		}
	}
	h.netNS = ns
	j := h.newJob()
	t.Cleanup(func() { j.call("cleanup") })
	r := j.prepareWith(`[{"name":"docker.io/library/redis:7","alias":"cache"},{"name":"postgres:15","alias":"db"}]`)
	if r.code != 0 || strings.Contains(r.stderr, "WARNING") {
		t.Fatalf("prepare: exit %d\n%s", r.code, r.stderr)
	}
	ping := func(name, host string) string {
		return fmt.Sprintf(`exec 3<>/dev/tcp/%s/6379; printf 'PING\r\n' >&3; read -t 5 l <&3; echo %s=${l%%$'\r'}; exec 3>&-`, host, name)
	}
	// An SSLRequest (length 8, code 80877103): PostgreSQL answers one
	// byte, S when it offers TLS (Debian's default), N when not.
	pgSSL := func(name, host string) string {
		return fmt.Sprintf(`exec 3<>/dev/tcp/%s/5432; printf '\x00\x00\x00\x08\x04\xd2\x16\x2f' >&3; read -N 1 -t 5 l <&3; case $l in S|N) l=postgres;; esac; echo %s=$l; exec 3>&-`, host, name)
	}
	script := strings.Join([]string{
		ping("redis-alias", "cache"), ping("redis-derived", "docker.io__library__redis"),
		pgSSL("pg-alias", "db"), pgSSL("pg-derived", "postgres"),
	}, "\n")
	out := results(j.must("run", j.script("ping", script), "build_script").stdout)
	for k, want := range map[string]string{"redis-alias": "+PONG", "redis-derived": "+PONG", "pg-alias": "postgres", "pg-derived": "postgres"} {
		if out[k] != want {
			t.Errorf("%s: %q, want %q", k, out[k], want)
		}
	}
	j.must("cleanup")
	h.assertClean(t)
}

// With machine.private_users, services (booted and command) work the
// same, on the private network (the job's namespace, which every machine
// of the job is started inside) and on the host's (the test's
// namespace): the hosts file and the command's environment reach them,
// and each machine is root of a uid range of its own.
func TestServicesPrivateUsers(t *testing.T) {
	h, w := newServiceHost(t, "  private_users: true\n")
	for _, network := range []string{"private", "host"} {
		t.Run(network, func(t *testing.T) {
			if network == "host" {
				cfg, err := os.ReadFile(h.config)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(h.config, []byte(strings.Replace(string(cfg), "network: private", "network: host", 1)), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			j := h.newJob()
			t.Cleanup(func() { j.call("cleanup") })
			r := j.prepareWith(`[{"name":"tcpsvc","alias":"db"},{"name":"tcpsvc:x","alias":"cmd","command":["/usr/local/bin/tcpsvc","7001"]}]`, "CUSTOM_ENV_GREETING=hi-private")
			if r.code != 0 || strings.Contains(r.stderr, "WARNING") {
				t.Fatalf("prepare: exit %d\n%s", r.code, r.stderr)
			}
			shifts := map[int]string{}
			for _, rec := range h.records() {
				s := num(rec["uid_shift"])
				if rec["private_users"] != true || s < 65536 || shifts[s] != "" {
					t.Errorf("machine %v: private_users %v uid_shift %d (also %q's)", rec["name"], rec["private_users"], s, shifts[s])
				}
				shifts[s], _ = rec["name"].(string)
			}
			if len(shifts) != 3 {
				t.Errorf("%d machines with distinct ranges, want the job's and its 2 services'", len(shifts))
			}
			script := strings.Join([]string{probe("boot", "db:7000"), probe("command", "cmd:7001"), `echo uid=$(id -u)`}, "\n")
			out := results(j.must("run", j.script("probe", script), "build_script").stdout)
			for k, v := range map[string]string{"boot": "ok:tcpsvc", "command": "ok:hi-private", "uid": "0"} {
				if out[k] != v {
					t.Errorf("%s = %q, want %q", k, out[k], v)
				}
			}
			j.must("cleanup")
			h.assertClean(t)
			if network == "private" {
				if left := netLeftovers(t, h, w); len(left) > 0 {
					t.Errorf("left after cleanup: %s", strings.Join(left, "; "))
				}
			}
		})
	}
}
