package network

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// Host files describing the host's resolver.
const (
	HostResolvConf = "/etc/resolv.conf"
	// ResolvedUpstream is systemd-resolved's list of its upstream
	// servers (systemd-resolved.service(8)).
	ResolvedUpstream = "/run/systemd/resolve/resolv.conf"
	// DnsmasqUpstream is where Debian's dnsmasq keeps its upstream servers
	// when resolvconf manages them.
	DnsmasqUpstream = "/run/dnsmasq/resolv.conf"
)

// ResolvConf is what a resolv.conf(5) says that we keep.
type ResolvConf struct {
	Nameservers []netip.Addr
	Search      []string
}

// ParseResolvConf reads nameserver and search (or domain) lines.
func ParseResolvConf(b []byte) ResolvConf {
	var rc ResolvConf
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			// A zone index (fe80::1%eth0) is the host's business.
			if a, err := netip.ParseAddr(f[1]); err == nil {
				rc.Nameservers = append(rc.Nameservers, a.WithZone(""))
			}
		case "search", "domain":
			rc.Search = f[1:]
		}
	}
	return rc
}

// usable are the IPv4 nameservers a machine can reach: not loopback, not
// link-local (machines have IPv4 only, and link-local is blocked).
func usable(ns []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range ns {
		a = a.Unmap()
		if a.Is4() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsUnspecified() {
			out = append(out, a)
		}
	}
	return out
}

// DNSChoice is the resolver configuration of private machines and where
// it came from (for the log).
type DNSChoice struct {
	ResolvConf
	Source string
}

// ChooseDNS picks private machines' resolvers: the configured ones; else
// the host's usable nameservers; else, when the host's are a loopback stub
// (systemd-resolved at 127.0.0.53, dnsmasq at 127.0.0.1), the upstream
// servers listed in the first of upstream that has usable ones. read
// reads a file (os.ReadFile).
func ChooseDNS(configured []netip.Addr, read func(string) ([]byte, error), hostFile string, upstream ...string) (DNSChoice, error) {
	host := ResolvConf{}
	if b, err := read(hostFile); err == nil {
		host = ParseResolvConf(b)
	}
	if len(configured) > 0 {
		return DNSChoice{ResolvConf{Nameservers: configured, Search: host.Search}, "machine.dns"}, nil
	}
	if u := usable(host.Nameservers); len(u) > 0 {
		return DNSChoice{ResolvConf{Nameservers: u, Search: host.Search}, hostFile}, nil
	}
	for _, f := range upstream {
		b, err := read(f)
		if err != nil {
			continue
		}
		rc := ParseResolvConf(b)
		if u := usable(rc.Nameservers); len(u) > 0 {
			search := rc.Search
			if len(search) == 0 {
				search = host.Search
			}
			return DNSChoice{ResolvConf{Nameservers: u, Search: search}, f}, nil
		}
	}
	return DNSChoice{}, fmt.Errorf("no DNS server a private machine can reach: %s lists %v (loopback or none) and no upstream list was found in %s: set machine.dns", hostFile, host.Nameservers, strings.Join(upstream, " or "))
}

// Format writes a resolv.conf(5).
func (rc ResolvConf) Format() []byte {
	var b bytes.Buffer
	b.WriteString("# written by nspawn-runner for a private machine\n")
	for _, a := range rc.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	if len(rc.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(rc.Search, " "))
	}
	return b.Bytes()
}

// readFile is os.ReadFile (ChooseDNS takes it as a parameter for tests).
func readFile(p string) ([]byte, error) { return os.ReadFile(p) }
