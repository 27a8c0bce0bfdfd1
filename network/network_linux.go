package network

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/internal/logx"
	"github.com/nspawn-runner/nspawn-runner/sys/flock"
	"github.com/nspawn-runner/nspawn-runner/sys/netns"
	"github.com/nspawn-runner/nspawn-runner/sys/nft"
	"github.com/nspawn-runner/nspawn-runner/sys/sysctl"
)

// DefaultTable names our nftables tables.
const DefaultTable = "nspawn_runner"

// MachineLink is the machine's end of its veth pair.
const MachineLink = "eth0"

// Settings are the admin's choices for private machines.
type Settings struct {
	Bridge string
	Subnet netip.Prefix
	Allow  []netip.Prefix
	Deny   []netip.Prefix
	// DNS, when set, replaces the host's resolvers.
	DNS []netip.Addr
}

// FromConfig reads the settings of a validated machine config; an empty
// bridge or subnet is the default.
func FromConfig(m config.Machine) (Settings, error) {
	s := Settings{Bridge: cmpOr(m.Bridge, config.DefaultBridge)}
	var err error
	if s.Subnet, err = config.ParseSubnet(cmpOr(m.Subnet, config.DefaultSubnet)); err != nil {
		return s, fmt.Errorf("machine.subnet: %w", err)
	}
	if s.Allow, err = config.ParseNetworks(m.AllowNetworks); err != nil {
		return s, fmt.Errorf("machine.allow_networks: %w", err)
	}
	if s.Deny, err = config.ParseNetworks(m.DenyNetworks); err != nil {
		return s, fmt.Errorf("machine.deny_networks: %w", err)
	}
	if s.DNS, err = config.ParseDNS(m.DNS); err != nil {
		return s, fmt.Errorf("machine.dns: %w", err)
	}
	if err := config.CheckBridgeName(s.Bridge); err != nil {
		return s, fmt.Errorf("machine.bridge: %w", err)
	}
	return s, nil
}

// Network attaches machines to the private network.
type Network struct {
	Settings
	// StateDir holds the allocations and their lock (RUN_DIR/network).
	StateDir string
	// BridgeLock is the flock that every runner sharing the bridge
	// takes while it changes the bridge (creates it, adds a port,
	// removes it), whatever its StateDir: BridgeLockPath(Bridge) when
	// empty.
	BridgeLock string
	// Table names our nftables tables (DefaultTable when empty).
	Table string
	// HostNS is the pinned namespace holding the bridge; empty means the
	// namespace we run in (tests use one of their own).
	HostNS string
	// ResolvConf and Upstream are the host files ChooseDNS reads
	// (HostResolvConf, ResolvedUpstream and DnsmasqUpstream when empty).
	ResolvConf string
	Upstream   []string
	Log        *slog.Logger
}

// Attachment is a machine's network.
type Attachment struct {
	// Namespace is the pinned network namespace to run the machine in.
	Namespace string
	// ResolvConf is the file to bind onto the machine's /etc/resolv.conf.
	ResolvConf string
	Addr       netip.Addr
	Gateway    netip.Addr
	// Port is the host end of the veth pair.
	Port string
}

// allocation is RUN_DIR/network/NAME.json: what Detach needs to undo
// Attach whatever the config says by then.
type allocation struct {
	Name      string `json:"name"`
	Addr      string `json:"addr"`
	Port      string `json:"port"`
	Bridge    string `json:"bridge"`
	Table     string `json:"table"`
	Namespace string `json:"namespace"`
}

func (n *Network) log() *slog.Logger {
	return logx.OrDiscard(n.Log)
}

func (n *Network) table() string {
	if n.Table != "" {
		return n.Table
	}
	return DefaultTable
}

// Gateway is the bridge's address: the subnet's first.
func Gateway(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// PortName is the host end of the veth of the machine at addr: unique
// as long as addresses are, and within IFNAMSIZ.
func PortName(addr netip.Addr) string {
	a := addr.As4()
	return fmt.Sprintf("nr%08x", binary.BigEndian.Uint32(a[:]))
}

// Paths of a machine's network files in its run directory.
func nsPath(dir string) string     { return filepath.Join(dir, "netns") }
func resolvPath(dir string) string { return filepath.Join(dir, "resolv.conf") }

func (n *Network) allocPath(name string) string { return filepath.Join(n.StateDir, name+".json") }

// lock takes the flock on StateDir/lock; the kernel drops it if we die.
func (n *Network) lock() (*flock.Lock, error) {
	if err := os.MkdirAll(n.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("network state: %w", err)
	}
	l, err := flock.Wait(context.Background(), filepath.Join(n.StateDir, "lock"), flock.Exclusive)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	return l, nil
}

// BridgeLockPath is the default BridgeLock of bridge: in /run/lock, the
// one directory that runners with different run directories share.
func BridgeLockPath(bridge string) string {
	return filepath.Join("/run/lock", "nspawn-runner-bridge-"+bridge+".lock")
}

// lockBridge takes BridgeLock. It is always taken after the StateDir
// lock, never before: no two runners can deadlock.
func (n *Network) lockBridge() (*flock.Lock, error) {
	p := cmpOr(n.BridgeLock, BridgeLockPath(n.Bridge))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, fmt.Errorf("bridge lock: %w", err)
	}
	l, err := flock.Wait(context.Background(), p, flock.Exclusive)
	if err != nil {
		return nil, fmt.Errorf("bridge lock: %w", err)
	}
	return l, nil
}

// host holds handles to the namespace with the bridge.
type host struct {
	nl  *netlink.Handle
	nft *nft.Conn
	ns  *os.File
}

func (h *host) close() {
	if h.nl != nil {
		h.nl.Close()
	}
	if h.ns != nil {
		h.ns.Close()
	}
}

func (n *Network) openHost() (*host, error) {
	h := &host{}
	fd := -1
	if n.HostNS != "" {
		f, err := netns.Open(n.HostNS)
		if err != nil {
			return nil, err
		}
		h.ns, fd = f, int(f.Fd())
	}
	var err error
	h.nl, err = handleIn(h.ns)
	if err != nil {
		h.close()
		return nil, err
	}
	if h.nft, err = nft.Open(fd); err != nil {
		h.close()
		return nil, err
	}
	return h, nil
}

// handleIn opens a netlink handle in ns (nil: ours) by setns: the socket
// stays in the namespace it was made in.
func handleIn(ns *os.File) (*netlink.Handle, error) {
	var h *netlink.Handle
	open := func() (err error) {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		return nil
	}
	if ns == nil {
		return h, open()
	}
	return h, netns.Do(ns, open)
}

// Attach gives machine name its network; dir is the machine's run
// directory (the namespace pin and resolv.conf go there). On failure
// nothing of it is left.
func (n *Network) Attach(name, dir string) (att *Attachment, err error) {
	dns, err := ChooseDNS(n.DNS, readFile, cmpOr(n.ResolvConf, HostResolvConf), n.upstream()...)
	if err != nil {
		return nil, err
	}
	lk, err := n.lock()
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	// Another runner sharing the bridge could otherwise add its address
	// at the same time as we do, or remove the bridge between our
	// ensureBridge and our port joining it.
	blk, err := n.lockBridge()
	if err != nil {
		return nil, err
	}
	defer blk.Unlock()
	h, err := n.openHost()
	if err != nil {
		return nil, err
	}
	defer h.close()
	br, err := n.ensureBridge(h)
	if err != nil {
		return nil, err
	}
	if err := n.enableForwarding(h); err != nil {
		return nil, err
	}
	pol := nft.Policy{Table: n.table(), Bridge: n.Bridge, Subnet: n.Subnet, Allow: n.Allow, Deny: n.Deny, DNS: dns.Nameservers}
	if err := n.applyPolicy(h, pol); err != nil {
		return nil, err
	}
	if a, err := readAlloc(n.allocPath(name)); err == nil {
		// A retried prepare: undo the earlier attempt first.
		if err := n.detachLocked(h, a); err != nil {
			return nil, err
		}
	}
	// The allocation is written before anything exists, and rewritten
	// with the address before the veth is made: whatever a crash leaves,
	// Detach and Reclaim find it from this file.
	a := allocation{Name: name, Bridge: n.Bridge, Table: n.table(), Namespace: nsPath(dir)}
	if err := writeAlloc(n.allocPath(name), a); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if derr := n.detachLocked(h, a); derr != nil {
				n.log().Error("undoing a failed network attach", "machine", name, "err", derr)
			}
		}
	}()
	if err := netns.New(a.Namespace); err != nil {
		return nil, err
	}
	mns, err := netns.Open(a.Namespace)
	if err != nil {
		return nil, err
	}
	defer mns.Close()
	addr, err := n.claim(h, &a, mns, br.Attrs().MTU)
	if err != nil {
		return nil, err
	}
	gw := Gateway(n.Subnet)
	// The port's rules come before it joins the bridge: its frames are
	// filtered from the first.
	if err := h.nft.AddPort(a.Table, a.Port, addr, n.tag(a.Port)); err != nil {
		return nil, err
	}
	port, err := h.nl.LinkByName(a.Port)
	if err != nil {
		return nil, fmt.Errorf("veth %s: %w", a.Port, err)
	}
	if err := h.nl.LinkSetAlias(port, n.alias(name)); err != nil {
		return nil, fmt.Errorf("name veth %s: %w", a.Port, err)
	}
	if err := h.nl.LinkSetMaster(port, br); err != nil {
		return nil, fmt.Errorf("add %s to bridge %s: %w", a.Port, n.Bridge, err)
	}
	// Isolated bridge ports forward only to non-isolated ones (the
	// bridge itself): machines never reach each other at layer 2.
	if err := h.nl.LinkSetIsolated(port, true); err != nil {
		return nil, fmt.Errorf("isolate bridge port %s: %w", a.Port, err)
	}
	if err := h.nl.LinkSetUp(port); err != nil {
		return nil, fmt.Errorf("set %s up: %w", a.Port, err)
	}
	if err := configureInside(mns, addr, n.Subnet.Bits(), gw); err != nil {
		return nil, err
	}
	rp := resolvPath(dir)
	if err := os.WriteFile(rp, dns.Format(), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", rp, err)
	}
	n.log().Info("private network", "machine", name, "addr", addr, "port", a.Port, "bridge", n.Bridge, "dns", dns.Nameservers, "dns_from", dns.Source)
	return &Attachment{Namespace: a.Namespace, ResolvConf: rp, Addr: addr, Gateway: gw, Port: a.Port}, nil
}

// applyPolicy programs the tables unless they exist with this very
// policy already (its digest is kept in StateDir/policy): rewriting them
// costs about 3 ms, most of a prepare's network setup.
func (n *Network) applyPolicy(h *host, pol nft.Policy) error {
	sum := sha256.Sum256(fmt.Appendf(nil, "%+v", pol))
	key := hex.EncodeToString(sum[:])
	p := filepath.Join(n.StateDir, "policy")
	if b, err := os.ReadFile(p); err == nil && string(b) == key {
		if ok, err := h.nft.Exists(pol.Table); err == nil && ok {
			return nil
		}
	}
	if err := h.nft.Apply(pol); err != nil {
		return fmt.Errorf("%w (is nf_tables with NAT in the kernel?)", err)
	}
	if err := os.WriteFile(p, []byte(key), 0o600); err != nil {
		return fmt.Errorf("network state: %w", err)
	}
	return nil
}

// claim picks a free address and creates the veth named after it, its
// peer directly in the machine's namespace as eth0. The name is the
// claim: runners with other state directories sharing the bridge may
// pick the same address at once, and the one whose veth exists first
// keeps it (the other sees EEXIST and takes the next).
func (n *Network) claim(h *host, a *allocation, mns *os.File, mtu int) (netip.Addr, error) {
	tried := map[netip.Addr]bool{}
	for range 64 {
		addr, err := n.allocate(h, tried)
		if err != nil {
			return addr, err
		}
		a.Addr, a.Port = addr.String(), PortName(addr)
		if err := writeAlloc(n.allocPath(a.Name), *a); err != nil {
			return addr, err
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: a.Port, MTU: mtu},
			PeerName:      MachineLink,
			PeerNamespace: netlink.NsFd(int(mns.Fd())),
		}
		err = h.nl.LinkAdd(veth)
		if err == nil {
			return addr, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			a.Addr, a.Port = "", ""
			_ = writeAlloc(n.allocPath(a.Name), *a)
			return addr, fmt.Errorf("create veth %s: %w (is veth in the kernel?)", PortName(addr), err)
		}
		tried[addr] = true
	}
	return netip.Addr{}, fmt.Errorf("no free address in machine.subnet %s after 64 tries", n.Subnet)
}

// owner tells our ports and rules from those of runners with another
// state directory sharing the bridge: a hash of StateDir.
func (n *Network) owner() string {
	h := fnv.New32a()
	h.Write([]byte(n.StateDir))
	return fmt.Sprintf("%08x", h.Sum32())
}

// tag is the comment of a port's nftables rules.
func (n *Network) tag(port string) string { return port + "@" + n.owner() }

// alias is the ifalias of a machine's veth: who made it, for whom.
func (n *Network) alias(name string) string { return "nspawn-runner " + n.owner() + " " + name }

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (n *Network) upstream() []string {
	if n.Upstream != nil {
		return n.Upstream
	}
	return []string{ResolvedUpstream, DnsmasqUpstream}
}

// configureInside sets up lo and eth0 and the default route from inside
// the machine's namespace.
func configureInside(ns *os.File, addr netip.Addr, bits int, gw netip.Addr) error {
	h, err := handleIn(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("machine's lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set the machine's lo up: %w", err)
	}
	eth, err := h.LinkByName(MachineLink)
	if err != nil {
		return fmt.Errorf("machine's %s: %w", MachineLink, err)
	}
	ipn := &net.IPNet{IP: net.IP(addr.AsSlice()), Mask: net.CIDRMask(bits, 32)}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipn}); err != nil {
		return fmt.Errorf("address %s on the machine's %s: %w", ipn, MachineLink, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set the machine's %s up: %w", MachineLink, err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.IP(gw.AsSlice())}); err != nil {
		return fmt.Errorf("default route via %s in the machine: %w", gw, err)
	}
	return nil
}

// ensureBridge returns the bridge, made with the gateway address when
// missing. A subnet overlapping another interface's is refused.
func (n *Network) ensureBridge(h *host) (netlink.Link, error) {
	gw := Gateway(n.Subnet)
	want := netip.PrefixFrom(gw, n.Subnet.Bits())
	br, err := h.nl.LinkByName(n.Bridge)
	var nf netlink.LinkNotFoundError
	switch {
	case errors.As(err, &nf):
		addrs, err := h.nl.AddrList(nil, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("list host addresses: %w", err)
		}
		for _, a := range addrs {
			p, ok := prefixOf(a.IPNet)
			if ok && p.Overlaps(n.Subnet) {
				name := "another interface"
				if l, err := h.nl.LinkByIndex(a.LinkIndex); err == nil {
					name = l.Attrs().Name
				}
				return nil, fmt.Errorf("machine.subnet %s overlaps %s on %s: choose another machine.subnet", n.Subnet, p, name)
			}
		}
		// Made with its address set, the bridge keeps it: see BridgeMAC.
		if err := h.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge, HardwareAddr: BridgeMAC(n.Bridge)}}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w (is bridge support in the kernel?)", n.Bridge, err)
		}
		if br, err = h.nl.LinkByName(n.Bridge); err != nil {
			return nil, fmt.Errorf("bridge %s: %w", n.Bridge, err)
		}
		n.log().Info("created the machines' bridge", "bridge", n.Bridge, "address", want)
	case err != nil:
		return nil, fmt.Errorf("bridge %s: %w", n.Bridge, err)
	case br.Type() != "bridge":
		return nil, fmt.Errorf("machine.bridge %s exists and is a %s, not a bridge: choose another name", n.Bridge, br.Type())
	}
	addrs, err := h.nl.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", n.Bridge, err)
	}
	have := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if ok && p == want {
			have = true
		} else if ok {
			return nil, fmt.Errorf("bridge %s has address %s, not %s: another program uses it, or machine.subnet changed while machines ran; choose another machine.bridge", n.Bridge, p, want)
		}
	}
	if !have {
		ipn := &net.IPNet{IP: net.IP(gw.AsSlice()), Mask: net.CIDRMask(want.Bits(), 32)}
		if err := h.nl.AddrAdd(br, &netlink.Addr{IPNet: ipn}); err != nil {
			return nil, fmt.Errorf("address %s on %s: %w", ipn, n.Bridge, err)
		}
	}
	if err := n.pinBridgeMAC(h, br); err != nil {
		return nil, err
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := h.nl.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("set %s up: %w", n.Bridge, err)
		}
	}
	return br, nil
}

// pinBridgeMAC pins the address of a bridge made by another program or
// an earlier version (ours are made with BridgeMAC): its present one, set
// explicitly, so that it never changes (a change would cut its machines
// off as well). The kernel does not say whether an address is pinned,
// and setting it, even to itself, flushes the bridge's neighbour entries:
// StateDir/bridge-pinned records the bridge (by index) and address
// pinned, so that this happens once per bridge, not at every attach.
func (n *Network) pinBridgeMAC(h *host, br netlink.Link) error {
	mac := br.Attrs().HardwareAddr
	if bytes.Equal(mac, BridgeMAC(n.Bridge)) {
		return nil
	}
	p := filepath.Join(n.StateDir, "bridge-pinned")
	key := fmt.Sprintf("%s %d %s", n.Bridge, br.Attrs().Index, mac)
	if b, err := os.ReadFile(p); err == nil && string(b) == key {
		return nil
	}
	if err := h.nl.LinkSetHardwareAddr(br, mac); err != nil {
		return fmt.Errorf("pin the MAC address %s of %s: %w", mac, n.Bridge, err)
	}
	if err := os.WriteFile(p, []byte(key), 0o600); err != nil {
		return fmt.Errorf("network state: %w", err)
	}
	return nil
}

// BridgeMAC is the MAC address a bridge named name is made with: locally
// administered, unicast, derived from the name (runners sharing the
// bridge agree on it). Set explicitly, it never changes. A bridge whose
// address is not set takes the lowest of its ports' addresses, so every
// machine whose veth happened to have a lower one than all before it
// changed the gateway's address under the running machines: their ARP
// caches kept the old one, the bridge no longer took frames sent to it
// as its own, and their connections failed until the entries went stale
// (tens of seconds).
func BridgeMAC(name string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("nspawn-runner bridge " + name))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^1 | 2
	return mac
}

func prefixOf(ipn *net.IPNet) (netip.Prefix, bool) {
	if ipn == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(ipn.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := ipn.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

// enableForwarding turns IPv4 forwarding on in the bridge's namespace
// (net.ipv4.ip_forward, as docker and libvirt do): routing the
// machines' traffic needs it.
func (n *Network) enableForwarding(h *host) error {
	const p = "/proc/sys/net/ipv4/ip_forward"
	do := func() error {
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if strings.TrimSpace(string(b)) == "1" {
			return nil
		}
		if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("enable IPv4 forwarding (%s): %w", p, err)
		}
		n.log().Info("enabled IPv4 forwarding for private machines (net.ipv4.ip_forward=1)")
		return nil
	}
	if h.ns == nil {
		return do()
	}
	return netns.Do(h.ns, do)
}

// allocate returns the lowest machine address not in used, not
// allocated here and without a veth (of any runner sharing the bridge).
// The caller holds the lock.
func (n *Network) allocate(h *host, used map[netip.Addr]bool) (netip.Addr, error) {
	used = maps.Clone(used)
	allocs, err := n.allocations()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range allocs {
		if ad, err := netip.ParseAddr(a.Addr); err == nil {
			used[ad] = true
		}
	}
	links, err := h.nl.LinkList()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if ad, ok := portAddr(l.Attrs().Name); ok {
			used[ad] = true
		}
	}
	sub := n.Subnet.Masked()
	last := lastAddr(sub)
	for a := Gateway(sub).Next(); a.IsValid() && a.Less(last); a = a.Next() {
		if !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("machine.subnet %s is full (%d machines): choose a larger one", sub, len(used))
}

// lastAddr is the broadcast address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

func (n *Network) allocations() ([]allocation, error) {
	ents, err := os.ReadDir(n.StateDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("network state: %w", err)
	}
	var out []allocation
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		a, err := readAlloc(filepath.Join(n.StateDir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func readAlloc(p string) (allocation, error) {
	var a allocation
	b, err := os.ReadFile(p)
	if err != nil {
		return a, err
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return a, fmt.Errorf("network allocation %s: %w", p, err)
	}
	return a, nil
}

func writeAlloc(p string, a allocation) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("network allocation: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("network allocation: %w", err)
	}
	return nil
}

// Rename hands machine old's network to machine name, whose run
// directory dir is old's renamed (a claimed pooled machine): the
// allocation, the namespace pin's path in it and the veth's alias follow.
// The veth, the address and the port's rules stay: they depend on the
// address only. Nothing allocated for old is fine.
func (n *Network) Rename(old, name, dir string) error {
	lk, err := n.lock()
	if err != nil {
		return err
	}
	defer lk.Unlock()
	a, err := readAlloc(n.allocPath(old))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	a.Name, a.Namespace = name, nsPath(dir)
	// The new allocation first: whatever a crash leaves, one of the two
	// names accounts for the port (Detach of either is safe).
	if err := writeAlloc(n.allocPath(name), a); err != nil {
		return err
	}
	if err := os.Remove(n.allocPath(old)); err != nil {
		return fmt.Errorf("release allocation of %s: %w", old, err)
	}
	if a.Port == "" {
		return nil
	}
	h, err := n.openHost()
	if err != nil {
		return err
	}
	defer h.close()
	port, err := h.nl.LinkByName(a.Port)
	if err != nil {
		return fmt.Errorf("veth %s: %w", a.Port, err)
	}
	if err := h.nl.LinkSetAlias(port, n.alias(name)); err != nil {
		return fmt.Errorf("name veth %s: %w", a.Port, err)
	}
	return nil
}

// Detach removes machine name's network: its veth, its nftables rules,
// its namespace pin and its address. Nothing to remove is fine.
func (n *Network) Detach(name, dir string) error {
	a, err := readAlloc(n.allocPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		// Never attached, or already detached: only a pin could be left
		// (none is made before the allocation is written).
		return netns.Remove(nsPath(dir))
	}
	if err != nil {
		return err
	}
	lk, err := n.lock()
	if err != nil {
		return err
	}
	defer lk.Unlock()
	h, err := n.openHost()
	if err != nil {
		return err
	}
	defer h.close()
	return n.detachLocked(h, a)
}

func (n *Network) detachLocked(h *host, a allocation) error {
	var errs []error
	pinned := netns.Pinned(a.Namespace)
	if a.Port != "" {
		if err := h.nft.DelPort(a.Table, n.tag(a.Port)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := netns.Remove(a.Namespace); err != nil {
		errs = append(errs, err)
	}
	// Unpinned, a namespace nothing else holds (the machine is dead)
	// goes away with its veth pair: the kernel deletes them in the
	// background, which spares cleanup the 20-25 ms a veth deletion
	// waits for RCU. Without a pin, the veth is deleted here (only ours:
	// after a crash the name may be another runner's by now); gc also
	// deletes ports of ours that no allocation accounts for.
	if a.Port != "" && !pinned {
		if l, err := h.nl.LinkByName(a.Port); err == nil && l.Attrs().Alias == n.alias(a.Name) {
			if err := h.nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete veth %s: %w", a.Port, err))
			}
		}
	}
	if len(errs) > 0 {
		// Keep the allocation: cleanup or gc tries again.
		return errors.Join(errs...)
	}
	if err := os.Remove(n.allocPath(a.Name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("release address of %s: %w", a.Name, err)
	}
	return nil
}

// Reclaim detaches the machines exists says are gone, removes ports of
// our bridge and per-port rules that no allocation accounts for, and,
// when no machine is attached any more, our nftables tables and the
// bridge. It returns the machines it detached.
func (n *Network) Reclaim(exists func(name string) bool) ([]string, error) {
	if _, err := os.Stat(n.StateDir); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	lk, err := n.lock()
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	h, err := n.openHost()
	if err != nil {
		return nil, err
	}
	defer h.close()
	allocs, err := n.allocations()
	if err != nil {
		return nil, err
	}
	var errs []error
	var gone []string
	ports := map[string]bool{}
	for _, a := range allocs {
		if exists(a.Name) {
			ports[a.Port] = true
			continue
		}
		if err := n.detachLocked(h, a); err != nil {
			errs = append(errs, err)
			ports[a.Port] = true
			continue
		}
		gone = append(gone, a.Name)
	}
	// Strays: veths of ours on the bridge, rules of ports, with no
	// allocation (state removed by hand).
	if br, err := h.nl.LinkByName(n.Bridge); err == nil {
		links, err := h.nl.LinkList()
		if err != nil {
			errs = append(errs, fmt.Errorf("list links: %w", err))
		}
		mine := "nspawn-runner " + n.owner() + " "
		for _, l := range links {
			name := l.Attrs().Name
			if l.Attrs().MasterIndex == br.Attrs().Index && isPortName(name) && !ports[name] && strings.HasPrefix(l.Attrs().Alias, mine) {
				// ENODEV: the kernel deleted it with its namespace meanwhile.
				if err := h.nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
					errs = append(errs, fmt.Errorf("delete stray veth %s: %w", name, err))
				}
			}
		}
	}
	if tags, err := h.nft.Ports(n.table()); err == nil {
		for _, tg := range tags {
			p, own, _ := strings.Cut(tg, "@")
			if own == n.owner() && !ports[p] {
				if err := h.nft.DelPort(n.table(), tg); err != nil {
					errs = append(errs, err)
				}
			}
		}
	} else {
		errs = append(errs, err)
	}
	if len(ports) == 0 && len(errs) == 0 {
		if blk, err := n.lockBridge(); err != nil {
			errs = append(errs, err)
		} else {
			if err := n.removeShared(h); err != nil {
				errs = append(errs, err)
			}
			blk.Unlock()
		}
	}
	return gone, errors.Join(errs...)
}

// removeShared deletes our tables and the bridge when no port is left on
// it (other runners sharing the bridge may still have machines).
func (n *Network) removeShared(h *host) error {
	br, err := h.nl.LinkByName(n.Bridge)
	if err == nil {
		links, err := h.nl.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index {
				return nil
			}
		}
	}
	if err := h.nft.Delete(n.table()); err != nil {
		return err
	}
	if br, err := h.nl.LinkByName(n.Bridge); err == nil && br.Type() == "bridge" {
		if err := h.nl.LinkDel(br); err != nil {
			return fmt.Errorf("delete bridge %s: %w", n.Bridge, err)
		}
		n.log().Info("removed the machines' bridge and nftables tables: no machine uses them", "bridge", n.Bridge, "table", n.table())
	}
	return nil
}

func isPortName(s string) bool {
	_, ok := portAddr(s)
	return ok
}

// portAddr is the address a port name stands for (PortName's inverse).
func portAddr(s string) (netip.Addr, bool) {
	if len(s) != 10 || !strings.HasPrefix(s, "nr") {
		return netip.Addr{}, false
	}
	for _, c := range s[2:] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return netip.Addr{}, false
		}
	}
	v, err := strconv.ParseUint(s[2:], 16, 32)
	if err != nil {
		return netip.Addr{}, false
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(v))
	return netip.AddrFrom4(b), true
}

// unprivilegedSysctls let processes without network capabilities in a
// machine's namespace bind ports below 1024 and send ICMP echo requests
// (datagram ICMP sockets, as ping uses without CAP_NET_RAW): what a
// machine's root could do before it lost those capabilities. Both are
// per network namespace.
var unprivilegedSysctls = []sysctl.Setting{
	{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"},
	{Name: "net.ipv4.ping_group_range", Value: "0 2147483647"},
}

// ForUnprivilegedRoot sets unprivilegedSysctls in the network namespace
// pinned at namespace: for a machine whose root is root of its own user
// namespace only, and so has no capability over a namespace the host's
// user namespace owns.
func ForUnprivilegedRoot(namespace string) error {
	f, err := netns.Open(namespace)
	if err != nil {
		return err
	}
	defer f.Close()
	return netns.Do(f, func() error {
		for _, s := range unprivilegedSysctls {
			if err := sysctl.Dir("").Set(s.Name, s.Value); err != nil {
				return fmt.Errorf("machine's network namespace: %w", err)
			}
		}
		return nil
	})
}
