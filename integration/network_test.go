package integration

// End-to-end tests of machine.network (issue 9) through the real binary.
// Every call of the binary runs in a network namespace the test made (its
// "host"), linked to a second one standing for the internet; the machines'
// bridge, nftables tables and forwarding setting all live in that "host",
// so the real host's network is never touched and tests running at once
// never collide. Tests only talk to addresses inside these namespaces.

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nspawn-runner/nspawn-runner/sys/netns"
	"github.com/nspawn-runner/nspawn-runner/sys/nft"
)

// netWorld makes the two namespaces:
//
//	"internet"  up0 192.0.2.1/24, lo also 198.51.100.1/24
//	"host"      up0 192.0.2.2/24, default route via 192.0.2.1
type netWorld struct {
	host, inet string
}

func newNetWorld(t testing.TB) *netWorld {
	t.Helper()
	// Short paths: they appear in systemd-nspawn's arguments.
	dir, err := os.MkdirTemp("", "nrt-net-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	w := &netWorld{host: filepath.Join(dir, "host"), inet: filepath.Join(dir, "inet")}
	for _, p := range []string{w.host, w.inet} {
		if err := netns.New(p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netns.Remove(p) })
	}
	hh, ih := nlHandle(t, w.host), nlHandle(t, w.inet)
	inf := openNS(t, w.inet)
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up0", PeerNamespace: netlink.NsFd(int(inf.Fd()))}); err != nil {
		t.Fatal(err)
	}
	setup := func(h *netlink.Handle, addrs ...string) {
		for _, n := range []string{"lo", "up0"} {
			l, err := h.LinkByName(n)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		for _, a := range addrs {
			dev, cidr, _ := strings.Cut(a, "=")
			l, _ := h.LinkByName(dev)
			addr, err := netlink.ParseAddr(cidr)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.AddrAdd(l, addr); err != nil {
				t.Fatal(err)
			}
		}
	}
	setup(hh, "up0=192.0.2.2/24")
	setup(ih, "up0=192.0.2.1/24", "lo=198.51.100.1/24")
	up, _ := hh.LinkByName("up0")
	if err := hh.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Gw: net.ParseIP("192.0.2.1")}); err != nil {
		t.Fatal(err)
	}
	return w
}

func openNS(t testing.TB, p string) *os.File {
	t.Helper()
	f, err := netns.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func nlHandle(t testing.TB, p string) *netlink.Handle {
	t.Helper()
	var h *netlink.Handle
	err := netns.Do(openNS(t, p), func() (err error) { h, err = netlink.NewHandle(); return err })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// serve answers every TCP connection to addr inside ns with a greeting;
// the listener is closed when the test ends or by the function returned
// (an open socket keeps its namespace, and the machine's veth, alive).
func serve(t *testing.T, ns, addr string) func() {
	t.Helper()
	var ln net.Listener
	f, err := netns.Open(ns)
	if err != nil {
		t.Fatal(err)
	}
	// Closed at once: an open namespace file keeps the namespace alive.
	defer f.Close()
	if err := netns.Do(f, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hello-from-%s\n", c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
	return func() { ln.Close() }
}

// serveDNS answers every A query on addr:53 (UDP) inside ns with answer,
// and every other query with no data: the stand-in for an upstream
// resolver. It returns the number of queries received so far, for
// failure messages.
func serveDNS(t *testing.T, ns, addr string, answer net.IP) func() int64 {
	t.Helper()
	var queries atomic.Int64
	var pc net.PacketConn
	if err := netns.Do(openNS(t, ns), func() (err error) { pc, err = net.ListenPacket("udp", addr+":53"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			queries.Add(1)
			if n < 12 {
				continue
			}
			q := buf[:n]
			// Question: QNAME labels, then QTYPE and QCLASS (RFC 1035 4.1.2).
			end := 12
			for end < n && q[end] != 0 {
				end += int(q[end]) + 1
			}
			end += 5
			if end > n {
				continue
			}
			qtype := be.Uint16(q[end-4:])
			resp := append([]byte{}, q[:end]...)
			resp[2], resp[3] = 0x81, 0x80 // response, recursion desired and available
			be.PutUint16(resp[6:], 0)
			be.PutUint16(resp[8:], 0)
			be.PutUint16(resp[10:], 0)
			if qtype == 1 {
				be.PutUint16(resp[6:], 1)
				resp = append(resp, 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
				resp = append(resp, answer.To4()...)
			}
			_, _ = pc.WriteTo(resp, from)
		}
	}()
	return queries.Load
}

// dnsProbe is a job script line printing dns=ADDRESS, the first IPv4
// address NAME resolves to in the machine, trying three times (a loaded
// host can lose a datagram; getent's status is taken with "||", or the
// job script's set -e would end the script at the first failure); when
// all fail, dnsdebug= says what the machine's resolv.conf held and how
// getent failed.
func dnsProbe(name string) string {
	return fmt.Sprintf(`for i in 1 2 3; do rc=0; a=$(getent ahostsv4 %[1]s) || rc=$?; [ -n "$a" ] && break; done; `+
		`echo dns=$(echo "$a" | awk 'NR==1{print $1}'); `+
		`[ -n "$a" ] || echo "dnsdebug=getent exit $rc; resolv.conf: $(tr '\n' ' ' </etc/resolv.conf)"`, name)
}

// hostNetwork is the network setting of tests that are not about the
// network: host, so that they never make a bridge, nftables tables or
// forwarding changes in the real host's namespace (the network tests make
// theirs in namespaces of their own). Empty when machineYAML sets one.
func hostNetwork(machineYAML string) string {
	if strings.Contains(machineYAML, "network:") {
		return ""
	}
	return "  network: host\n"
}

const netYAML = `  network: private
  bridge: nrt-net-br
  subnet: 10.99.0.0/24
  dns: [192.0.2.1]
  allow_networks: [192.0.2.2]
  deny_networks: [198.51.100.0/24]
`

func newNetHost(t testing.TB, machineYAML string) (*lcHost, *netWorld) {
	t.Helper()
	w := newNetWorld(t)
	h := newLCHost(t, true, machineYAML)
	h.netNS = w.host
	h.prefix = "nrt-net-"
	return h, w
}

// netLeftovers lists what private machines left in the test's host
// namespace and run directory.
func netLeftovers(t *testing.T, h *lcHost, w *netWorld) []string {
	t.Helper()
	var left []string
	// Veths go with their machine's namespace, which the kernel tears
	// down in the background: give it time.
	hh := nlHandle(t, w.host)
	ours := func() int {
		links, _ := hh.LinkList()
		n := 0
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, "nr") && l.Attrs().Name != "nrt-net-br" {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(10 * time.Second); ours() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	links, _ := hh.LinkList()
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, "nr") && n != "nrt-net-br" {
			left = append(left, "link "+n)
		}
	}
	files, _ := filepath.Glob(filepath.Join(h.runDir, "network", "*.json"))
	for _, f := range files {
		left = append(left, "allocation "+filepath.Base(f))
	}
	c, err := nft.Open(int(openNS(t, w.host).Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if ports, _ := c.Ports("nspawn_runner"); len(ports) > 0 {
		left = append(left, "nft port rules "+strings.Join(ports, " "))
	}
	return left
}

// probe is a job script line: it prints NAME=ok when a TCP connection to
// addr:port gives a greeting, NAME=no otherwise.
func probe(name, addr string) string {
	host, port, _ := strings.Cut(addr, ":")
	return fmt.Sprintf("if out=$(timeout 5 bash -c 'exec 3<>/dev/tcp/%s/%s; cat <&3' 2>/dev/null); then echo %s=ok:$out; else echo %s=no; fi", host, port, name, name)
}

func results(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			m[k] = v
		}
	}
	return m
}

func privateJob(t *testing.T, h *lcHost, mode string) (*job, string) {
	t.Helper()
	j := h.newJob()
	j.must("prepare", "bookworm", "--mode", mode)
	t.Cleanup(func() { j.call("cleanup") })
	rec := h.recordOf(j)
	addr, _ := rec["address"].(string)
	if rec["network"] != "private" || addr == "" {
		t.Fatalf("record of a private machine: network %v address %v", rec["network"], rec["address"])
	}
	return j, addr
}

func TestNetworkPrivate(t *testing.T) {
	h, w := newNetHost(t, netYAML)
	serve(t, w.inet, "192.0.2.1:8080")
	serve(t, w.inet, "198.51.100.1:8080")
	serve(t, w.host, "127.0.0.1:8081")
	serve(t, w.host, "192.0.2.2:8083")
	dnsQueries := serveDNS(t, w.inet, "192.0.2.1", net.ParseIP("203.0.113.7"))

	j1, a1 := privateJob(t, h, "fast")
	j2, a2 := privateJob(t, h, "boot")
	// The bridge exists now.
	serve(t, w.host, "10.99.0.1:8082")
	if a1 == a2 {
		t.Fatalf("two machines share the address %s", a1)
	}
	// A listener inside the second machine's namespace.
	close2 := serve(t, filepath.Join(h.recordOf(j2)["run_dir"].(string), "netns"), ":8084")
	var close1 func()

	for _, j := range []*job{j1, j2} {
		other := a2
		if j == j2 {
			other = a1
			close1 = serve(t, filepath.Join(h.recordOf(j1)["run_dir"].(string), "netns"), ":8084")
		}
		script := strings.Join([]string{
			probe("internet", "192.0.2.1:8080"),
			probe("loopback", "127.0.0.1:8081"),
			probe("bridge", "10.99.0.1:8082"),
			probe("allowed", "192.0.2.2:8083"),
			probe("denied", "198.51.100.1:8080"),
			probe("machine", other+":8084"),
			"echo links=$(ls /sys/class/net | tr '\\n' ' ')",
			dnsProbe("ci.test.example"),
		}, "\n")
		r := j.must("run", j.script("probe", script), "build_script")
		got := results(r.stdout)
		want := map[string]string{
			"internet": "ok:hello-from-192.0.2.2", // masqueraded
			"loopback": "no", "bridge": "no", "denied": "no", "machine": "no",
			"links": "eth0 lo", "dns": "203.0.113.7",
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("job %s: %s = %q, want %q (the test resolver got %d queries)\n%s", j.id, k, got[k], v, dnsQueries(), r.stdout)
			}
		}
		if !strings.HasPrefix(got["allowed"], "ok:hello-from-10.99.0.") {
			t.Errorf("job %s: allowed host address = %q, want a greeting to the machine's address", j.id, got["allowed"])
		}
	}
	close1()
	close2()
	j1.must("cleanup")
	j2.must("cleanup")
	if left := netLeftovers(t, h, w); len(left) > 0 {
		t.Errorf("left after cleanup: %s", strings.Join(left, "; "))
	}
	// gc removes the bridge and the tables once no machine is left.
	h.exec(context.Background(), nil, "", "gc")
	if _, err := nlHandle(t, w.host).LinkByName("nrt-net-br"); err == nil {
		t.Errorf("bridge left after gc with no machine")
	}
}

// Eight prepares at once get eight addresses; SIGKILLed prepares, runs and
// cleanups, then gc, leave no veth, allocation or rule behind.
func TestNetworkConcurrentAndKilled(t *testing.T) { networkConcurrentAndKilled(t, "") }

// TestPrivateUsersNetworkKilled: the same with private users (each
// machine also gets a uid range of its own, whose lock gc removes).
func TestPrivateUsersNetworkKilled(t *testing.T) {
	networkConcurrentAndKilled(t, "  private_users: true\n")
}

func networkConcurrentAndKilled(t *testing.T, machineYAML string) {
	h, w := newNetHost(t, netYAML+machineYAML)
	jobs, codes := prepareAtOnce(h, 8, "fast")
	seen := map[string]string{}
	shifts := map[int]string{}
	for i, j := range jobs {
		if codes[i].code != 0 {
			t.Fatalf("prepare %d: exit %d: %s", i, codes[i].code, codes[i].stderr)
		}
		rec := h.recordOf(j)
		a, _ := rec["address"].(string)
		if a == "" || seen[a] != "" {
			t.Errorf("job %s: address %q (also %q)", j.id, a, seen[a])
		}
		seen[a] = j.id
		if machineYAML != "" {
			s := num(rec["uid_shift"])
			if s < 65536 || shifts[s] != "" {
				t.Errorf("job %s: uid_shift %d (also %q's)", j.id, s, shifts[s])
			}
			shifts[s] = j.id
		}
	}
	// SIGKILL: a run in progress, a cleanup in progress, prepares at
	// different points (the kill lands wherever the prepare is).
	kill := func(args ...string) {
		cmd := h.command(context.Background(), nil, t.TempDir(), args...)
		if err := h.start(cmd); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(len(args)*37%200) * time.Millisecond)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}
	kill("run", "--id", jobs[0].id, jobs[0].script("s", "sleep 100"), "build_script")
	kill("cleanup", "--id", jobs[1].id)
	for i := 0; i < 3; i++ {
		j := h.newJob()
		cmd := h.command(context.Background(), nil, j.dir, "prepare", "bookworm", "--mode", "fast", "--id", j.id)
		if err := h.start(cmd); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(20+i*60) * time.Millisecond)
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}
	// Every nspawn-runner process is gone; the machines they left are
	// garbage to gc.
	r := h.exec(context.Background(), nil, "", "gc", "--max-age", "1ns")
	if r.code != 0 {
		t.Fatalf("gc: exit %d: %s", r.code, r.stderr)
	}
	if left := netLeftovers(t, h, w); len(left) > 0 {
		t.Errorf("left after gc: %s", strings.Join(left, "; "))
	}
	if _, err := nlHandle(t, w.host).LinkByName("nrt-net-br"); err == nil {
		t.Errorf("bridge left after gc removed every machine")
	}
	c, _ := nft.Open(int(openNS(t, w.host).Fd()))
	if ok, _ := c.Exists("nspawn_runner"); ok {
		t.Errorf("nftables tables left after gc removed every machine")
	}
	h.assertClean(t)
	for s := range shifts {
		if _, err := os.Stat(filepath.Join("/run/systemd/nspawn-uid", strconv.Itoa(s))); err == nil {
			t.Errorf("/run/systemd/nspawn-uid/%d is left after gc", s)
		}
	}
}

// none: loopback only; host: the namespace the runner runs in. Both with
// and without private users.
func TestNetworkNoneAndHost(t *testing.T) {
	w := newNetWorld(t)
	serve(t, w.inet, "192.0.2.1:8080")
	for _, users := range []string{"", "  private_users: true\n"} {
		for _, mode := range []string{"none", "host"} {
			h := newLCHost(t, true, "  network: "+mode+"\n"+users)
			h.netNS = w.host
			h.prefix = "nrt-net-" + mode + "-"
			j := h.newJob()
			j.must("prepare", "bookworm", "--mode", "fast")
			if pu := h.recordOf(j)["private_users"] == true; pu != (users != "") {
				t.Errorf("network %s: record's private_users = %v", mode, pu)
			}
			r := j.must("run", j.script("probe", probe("internet", "192.0.2.1:8080")+"\necho uid=$(id -u) links=$(ls /sys/class/net | tr '\\n' ' ')"), "build_script")
			got := results(r.stdout)
			want := map[string]string{"none": "no", "host": "ok:hello-from-192.0.2.2"}[mode]
			links := map[string]string{"none": "0 links=lo", "host": "0 links=lo up0"}[mode]
			if got["internet"] != want || got["uid"] != links {
				t.Errorf("network %s %s: internet = %q, uid = %q; want %q, %q", mode, users, got["internet"], got["uid"], want, links)
			}
			j.must("cleanup")
		}
	}
}

var _ = io.EOF

// be is encoding/binary.BigEndian (the package name is taken here).
var be = bigEndian{}

type bigEndian struct{}

func (bigEndian) Uint16(b []byte) uint16       { return uint16(b[0])<<8 | uint16(b[1]) }
func (bigEndian) PutUint16(b []byte, v uint16) { b[0], b[1] = byte(v>>8), byte(v) }
