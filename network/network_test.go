package network

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/netns"
	"github.com/nspawn-runner/nspawn-runner/sys/nft"
	"github.com/nspawn-runner/nspawn-runner/sys/sysctl"
)

// A test world, every part of it in namespaces the test makes:
//
//	"internet" ns  uplink 192.0.2.1/24 (+ 198.51.100.1/24 on lo)
//	      | veth
//	"host" ns      uplink 192.0.2.2/24, default via 192.0.2.1; the bridge
//	      | bridge nrt-br, 10.99.0.0/24
//	machines       their own namespaces
type world struct {
	dir        string
	host, inet string // pins
}

func newWorld(t testing.TB) *world {
	t.Helper()
	testutil.RequireRoot(t)
	w := &world{dir: t.TempDir()}
	w.host = filepath.Join(w.dir, "host")
	w.inet = filepath.Join(w.dir, "inet")
	for _, p := range []string{w.host, w.inet} {
		if err := netns.New(p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netns.Remove(p) })
	}
	hf, inf := w.open(t, w.host), w.open(t, w.inet)
	hh, ih := handle(t, hf), handle(t, inf)
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up0", PeerNamespace: netlink.NsFd(int(inf.Fd()))}); err != nil {
		t.Fatal(err)
	}
	setup := func(h *netlink.Handle, name string, addrs ...string) {
		for _, n := range []string{"lo", name} {
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
	setup(hh, "up0", "up0=192.0.2.2/24")
	setup(ih, "up0", "up0=192.0.2.1/24", "lo=198.51.100.1/24")
	up, _ := hh.LinkByName("up0")
	if err := hh.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index, Gw: net.ParseIP("192.0.2.1")}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *world) open(t testing.TB, p string) *os.File {
	t.Helper()
	f, err := netns.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func handle(t testing.TB, f *os.File) *netlink.Handle {
	t.Helper()
	h, err := handleIn(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// network is a runner's network in the world. Whatever the test does,
// its machines' pins are gone when it ends.
func (w *world) network(t testing.TB) *Network {
	n := &Network{
		Settings: Settings{Bridge: "nrt-br", Subnet: netip.MustParsePrefix("10.99.0.0/24"),
			DNS: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
		StateDir:   filepath.Join(w.dir, "state"),
		BridgeLock: filepath.Join(w.dir, "bridge.lock"),
		HostNS:     w.host,
		Table:      "nrtest",
	}
	t.Cleanup(func() {
		if _, err := n.Reclaim(func(string) bool { return false }); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return n
}

// listen serves a greeting on addr inside the namespace pinned at ns,
// naming the peer it saw, until the test ends.
func listen(t *testing.T, ns, addr string) {
	t.Helper()
	f, err := netns.Open(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ln net.Listener
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
			fmt.Fprintf(c, "hello %s\n", c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
}

// dial connects from inside ns and returns the greeting, or the error.
func dial(ns, addr string) (string, error) {
	f, err := netns.Open(ns)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var out string
	err = netns.Do(f, func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		out = strings.TrimSpace(string(b))
		return err
	})
	return out, err
}

func attach(t *testing.T, n *Network, name string) *Attachment {
	t.Helper()
	dir := filepath.Join(filepath.Dir(n.StateDir), "m-"+name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	a, err := n.Attach(name, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Detach(name, dir) })
	return a
}

func TestPrivateNetworkPolicy(t *testing.T) {
	w := newWorld(t)
	n := w.network(t)
	n.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.2/32")}
	n.Deny = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	m1, m2 := attach(t, n, "m1"), attach(t, n, "m2")
	if m1.Addr == m2.Addr || !n.Subnet.Contains(m1.Addr) || m1.Gateway.String() != "10.99.0.1" {
		t.Fatalf("addresses %s, %s gateway %s", m1.Addr, m2.Addr, m1.Gateway)
	}
	listen(t, w.inet, "192.0.2.1:8080")
	listen(t, w.inet, "198.51.100.1:8080")
	listen(t, w.host, "127.0.0.1:8081")
	listen(t, w.host, "10.99.0.1:8082")
	listen(t, w.host, "192.0.2.2:8083")
	listen(t, m2.Namespace, ":8084")

	// The "internet" is reached, through the NAT.
	if got, err := dial(m1.Namespace, "192.0.2.1:8080"); err != nil || got != "hello 192.0.2.2" {
		t.Errorf("machine -> internet = %q, %v, want hello 192.0.2.2 (masqueraded)", got, err)
	}
	for _, tc := range []struct{ what, addr string }{
		{"host loopback", "127.0.0.1:8081"},
		{"bridge address", "10.99.0.1:8082"},
		{"another machine", m2.Addr.String() + ":8084"},
		{"a denied network", "198.51.100.1:8080"},
	} {
		if got, err := dial(m1.Namespace, tc.addr); err == nil {
			t.Errorf("machine -> %s (%s) = %q, want unreachable", tc.what, tc.addr, got)
		}
	}
	// An allowed network, even on the host itself.
	if got, err := dial(m1.Namespace, "192.0.2.2:8083"); err != nil || !strings.HasPrefix(got, "hello 10.99.0.") {
		t.Errorf("machine -> allowed host address = %q, %v", got, err)
	}
	// The machine's resolv.conf names the configured server.
	if b, err := os.ReadFile(m1.ResolvConf); err != nil || !strings.Contains(string(b), "nameserver 192.0.2.1\n") {
		t.Errorf("resolv.conf = %q, %v", b, err)
	}
	// A machine that spoofs another's address gets nothing through.
	mf := w.open(t, m1.Namespace)
	mh := handle(t, mf)
	eth, _ := mh.LinkByName(MachineLink)
	spoof, _ := netlink.ParseAddr(m2.Addr.String() + "/32")
	if err := mh.AddrAdd(eth, spoof); err != nil {
		t.Fatal(err)
	}
	// UDP to a receiver in the "internet": the spoofed datagram goes
	// first, the genuine one second; only the genuine one arrives.
	inf := w.open(t, w.inet)
	var pc net.PacketConn
	if err := netns.Do(inf, func() (err error) { pc, err = net.ListenPacket("udp", "192.0.2.1:9000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	err := netns.Do(mf, func() error {
		for _, from := range []netip.Addr{m2.Addr, m1.Addr} {
			c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IP(from.AsSlice())}, &net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 9000})
			if err != nil {
				return err
			}
			_, err = c.Write([]byte("from " + from.String()))
			c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	k, _, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:k]) != "from "+m1.Addr.String() {
		t.Errorf("first datagram in the internet = %q, %v, want the genuine one from %s (spoofed one dropped)", buf[:k], err, m1.Addr)
	}
}

func TestConcurrentAttachDetachReclaim(t *testing.T) {
	w := newWorld(t)
	n := w.network(t)
	var wg sync.WaitGroup
	atts := make([]*Attachment, 8)
	errs := make([]error, 8)
	for i := range atts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := filepath.Join(w.dir, fmt.Sprintf("m%d", i))
			_ = os.MkdirAll(dir, 0o700)
			atts[i], errs[i] = n.Attach(fmt.Sprintf("m%d", i), dir)
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i, a := range atts {
		if errs[i] != nil {
			t.Fatalf("Attach m%d: %v", i, errs[i])
		}
		if seen[a.Addr] {
			t.Errorf("address %s given twice", a.Addr)
		}
		seen[a.Addr] = true
	}
	hh := handle(t, w.open(t, w.host))
	nc, err := nft.Open(int(w.open(t, w.host).Fd()))
	if err != nil {
		t.Fatal(err)
	}
	ports := func() []string {
		links, _ := hh.LinkList()
		var out []string
		for _, l := range links {
			if isPortName(l.Attrs().Name) {
				out = append(out, l.Attrs().Name)
			}
		}
		return out
	}
	if p := ports(); len(p) != 8 {
		t.Errorf("ports after 8 attaches = %q", p)
	}
	// Detach one the way cleanup does; twice is fine.
	if err := n.Detach("m0", filepath.Join(w.dir, "m0")); err != nil {
		t.Fatal(err)
	}
	if err := n.Detach("m0", filepath.Join(w.dir, "m0")); err != nil {
		t.Errorf("second Detach = %v", err)
	}
	// The kernel deletes the veth with its namespace, in the background.
	for deadline := time.Now().Add(10 * time.Second); len(ports()) != 7 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if p := ports(); len(p) != 7 || slices.Contains(p, atts[0].Port) {
		t.Errorf("ports after Detach = %q", p)
	}
	if netns.Pinned(atts[0].Namespace) {
		t.Errorf("namespace still pinned after Detach")
	}
	// The process that attached the rest "dies": gc reclaims them all,
	// then the bridge and the tables, since no machine is left.
	gone, err := n.Reclaim(func(name string) bool { return false })
	if err != nil || len(gone) != 7 {
		t.Fatalf("Reclaim = %q, %v, want 7 machines", gone, err)
	}
	if p := ports(); len(p) != 0 {
		t.Errorf("ports after Reclaim = %q", p)
	}
	if _, err := hh.LinkByName("nrt-br"); err == nil {
		t.Errorf("bridge left after Reclaim")
	}
	if ok, err := nc.Exists("nrtest"); err != nil || ok {
		t.Errorf("tables left after Reclaim: %v %v", ok, err)
	}
	if left, _ := n.allocations(); len(left) != 0 {
		t.Errorf("allocations left: %+v", left)
	}
	for _, a := range atts {
		if netns.Pinned(a.Namespace) {
			t.Errorf("namespace %s still pinned", a.Namespace)
		}
	}
	// Addresses are free again.
	a := attach(t, n, "again")
	if a.Addr.String() != "10.99.0.2" {
		t.Errorf("first address after Reclaim = %s, want 10.99.0.2", a.Addr)
	}
}

// Two runners with their own state directories share the bridge: their
// machines get distinct addresses, and one's gc leaves the other's
// machines and the bridge alone.
func TestTwoRunnersShareBridge(t *testing.T) {
	w := newWorld(t)
	n1, n2 := w.network(t), w.network(t)
	n2.StateDir = filepath.Join(w.dir, "state2")
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[netip.Addr]bool{}
	for i := range 8 {
		n := n1
		if i%2 == 1 {
			n = n2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := filepath.Join(w.dir, fmt.Sprintf("m%d", i))
			_ = os.MkdirAll(dir, 0o700)
			a, err := n.Attach(fmt.Sprintf("m%d", i), dir)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("Attach m%d: %v", i, err)
				return
			}
			if seen[a.Addr] {
				t.Errorf("address %s given twice", a.Addr)
			}
			seen[a.Addr] = true
		}()
	}
	wg.Wait()
	gone, err := n1.Reclaim(func(string) bool { return false })
	if err != nil || len(gone) != 4 {
		t.Fatalf("Reclaim of the first runner = %q, %v", gone, err)
	}
	hh := handle(t, w.open(t, w.host))
	if _, err := hh.LinkByName("nrt-br"); err != nil {
		t.Errorf("the first runner's gc removed the bridge the second still uses: %v", err)
	}
	left, _ := n2.allocations()
	for _, a := range left {
		if _, err := hh.LinkByName(a.Port); err != nil {
			t.Errorf("the first runner's gc removed %s of the second: %v", a.Port, err)
		}
	}
	if gone, err := n2.Reclaim(func(string) bool { return false }); err != nil || len(gone) != 4 {
		t.Fatalf("Reclaim of the second runner = %q, %v", gone, err)
	}
	if _, err := hh.LinkByName("nrt-br"); err == nil {
		t.Errorf("bridge left when no runner has machines")
	}
}

// A subnet already used by an interface of the host is refused with one
// line, and nothing is left.
func TestAttachRefusesOverlap(t *testing.T) {
	w := newWorld(t)
	n := w.network(t)
	n.Subnet = netip.MustParsePrefix("192.0.2.0/25")
	dir := filepath.Join(w.dir, "m")
	_ = os.MkdirAll(dir, 0o700)
	_, err := n.Attach("m", dir)
	if err == nil || !strings.Contains(err.Error(), "overlaps 192.0.2.2/24 on up0") || !strings.Contains(err.Error(), "machine.subnet") {
		t.Fatalf("Attach with an overlapping subnet = %v", err)
	}
	if left, _ := n.allocations(); len(left) != 0 {
		t.Errorf("allocations left: %+v", left)
	}
	if _, err := os.Lstat(filepath.Join(dir, "netns")); err == nil {
		t.Errorf("namespace pin left")
	}
}

// TestForUnprivilegedRoot: the settings land in the machine's namespace
// only, never in the caller's.
func TestForUnprivilegedRoot(t *testing.T) {
	testutil.RequireRoot(t)
	p := filepath.Join(t.TempDir(), "ns")
	if err := netns.New(p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Remove(p) })
	read := func() (got []string) {
		for _, s := range unprivilegedSysctls {
			v, err := sysctl.Dir("").Get(s.Name)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, strings.Join(strings.Fields(v), " "))
		}
		return got
	}
	before := read()
	if err := ForUnprivilegedRoot(p); err != nil {
		t.Fatal(err)
	}
	f, err := netns.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var inside []string
	if err := netns.Do(f, func() error { inside = read(); return nil }); err != nil {
		t.Fatal(err)
	}
	for i, s := range unprivilegedSysctls {
		if inside[i] != s.Value {
			t.Errorf("%s in the namespace = %q, want %q", s.Name, inside[i], s.Value)
		}
	}
	if after := read(); !slices.Equal(after, before) {
		t.Errorf("the caller's namespace changed: %q, was %q", after, before)
	}
	if err := ForUnprivilegedRoot(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Errorf("ForUnprivilegedRoot of a missing namespace: no error")
	}
}

// TestBridgeMACStays: a port joining the bridge never changes the
// bridge's MAC address. An unpinned Linux bridge takes the lowest MAC of
// its ports, so a new machine whose veth had a lower one changed the
// gateway's address under the running machines: their ARP caches kept
// the old one, the bridge took their frames for another host's, and
// every connection of theirs failed until the entry went stale (about
// 40 s; seen as a pooled job's DNS failing while a refill started).
//
// Both for a bridge we make and for one that exists already (made by an
// earlier version, or by hand), whose address Attach pins.
func TestBridgeMACStays(t *testing.T) {
	t.Run("made", func(t *testing.T) { bridgeMACStays(t, false) })
	t.Run("existing", func(t *testing.T) { bridgeMACStays(t, true) })
}

func bridgeMACStays(t *testing.T, existing bool) {
	w := newWorld(t)
	n := w.network(t)
	hh := handle(t, w.open(t, w.host))
	want := BridgeMAC(n.Bridge).String()
	if existing {
		if err := hh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge}}); err != nil {
			t.Fatal(err)
		}
		br, err := hh.LinkByName(n.Bridge)
		if err != nil {
			t.Fatal(err)
		}
		want = br.Attrs().HardwareAddr.String()
	}
	ms := []*Attachment{attach(t, n, "m1"), attach(t, n, "m2")}
	br, err := hh.LinkByName(n.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	before := br.Attrs().HardwareAddr.String()
	if before != want {
		t.Errorf("the bridge's MAC with two machines = %s, want %s", before, want)
	}
	// An existing bridge is pinned once (setting the address flushes its
	// neighbour entries), and the state says which bridge: ours need none.
	marker, err := os.ReadFile(filepath.Join(n.StateDir, "bridge-pinned"))
	if wantMarker := fmt.Sprintf("%s %d %s", n.Bridge, br.Attrs().Index, want); existing && string(marker) != wantMarker {
		t.Errorf("bridge-pinned = %q, %v, want %q", marker, err, wantMarker)
	} else if !existing && err == nil {
		t.Errorf("bridge-pinned written for a bridge made with BridgeMAC: %q", marker)
	}
	// The machine whose own port does not carry the bridge's address (a
	// frame to a port's own address is taken by the port's veth).
	m := ms[0]
	if p, err := hh.LinkByName(ms[0].Port); err == nil && p.Attrs().HardwareAddr.String() == before {
		m = ms[1]
	}
	listen(t, w.inet, "192.0.2.1:8080")
	// The machine learns the gateway's address.
	if got, err := dial(m.Namespace, "192.0.2.1:8080"); err != nil || got != "hello 192.0.2.2" {
		t.Fatalf("machine -> internet = %q, %v", got, err)
	}
	// A port with the lowest locally administered unicast address (a
	// veth's is random, and locally administered).
	low, _ := net.ParseMAC("02:00:00:00:00:01")
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "nrt-low", HardwareAddr: low}, PeerName: "nrt-lowp"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := hh.LinkByName("nrt-low"); err == nil {
			_ = hh.LinkDel(l)
		}
	})
	l, err := hh.LinkByName("nrt-low")
	if err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkSetMaster(l, br); err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	if br, err = hh.LinkByName(n.Bridge); err != nil {
		t.Fatal(err)
	}
	if after := br.Attrs().HardwareAddr.String(); after != before {
		t.Errorf("the bridge's MAC changed from %s to %s when a port joined", before, after)
	}
	if got, err := dial(m.Namespace, "192.0.2.1:8080"); err != nil || got != "hello 192.0.2.2" {
		t.Errorf("machine -> internet after a port joined = %q, %v", got, err)
	}
	// Another machine: the same.
	attach(t, n, "m3")
	if br, err = hh.LinkByName(n.Bridge); err != nil || br.Attrs().HardwareAddr.String() != before {
		t.Errorf("the bridge's MAC after another machine = %v, %v, want %s", br.Attrs().HardwareAddr, err, before)
	}
}
