package network

import (
	"errors"
	"io/fs"
	"net/netip"
	"strings"
	"testing"
)

func files(m map[string]string) func(string) ([]byte, error) {
	return func(p string) ([]byte, error) {
		if s, ok := m[p]; ok {
			return []byte(s), nil
		}
		return nil, fs.ErrNotExist
	}
}

func TestChooseDNS(t *testing.T) {
	const host, resolved, dnsmasq = "/etc/resolv.conf", "/run/systemd/resolve/resolv.conf", "/run/dnsmasq/resolv.conf"
	stub := "# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp.example\n"
	for _, tc := range []struct {
		name       string
		configured []string
		files      map[string]string
		want       []string
		source     string
		search     string
	}{
		{"plain host resolvers", nil, map[string]string{host: "nameserver 192.0.2.53\nnameserver ::1\nnameserver 198.51.100.53\n"}, []string{"192.0.2.53", "198.51.100.53"}, host, ""},
		{"systemd-resolved stub", nil, map[string]string{host: stub, resolved: "nameserver 192.0.2.1\nnameserver fe80::1%eth0\nsearch lan\n"}, []string{"192.0.2.1"}, resolved, "lan"},
		{"stub, upstream without search", nil, map[string]string{host: stub, resolved: "nameserver 192.0.2.1\n"}, []string{"192.0.2.1"}, resolved, "corp.example"},
		{"dnsmasq on 127.0.0.1", nil, map[string]string{host: "nameserver 127.0.0.1\n", dnsmasq: "nameserver 203.0.113.9\n"}, []string{"203.0.113.9"}, dnsmasq, ""},
		{"configured wins", []string{"203.0.113.53"}, map[string]string{host: "nameserver 192.0.2.53\nsearch a b\n"}, []string{"203.0.113.53"}, "machine.dns", "a b"},
	} {
		var conf []netip.Addr
		for _, c := range tc.configured {
			conf = append(conf, netip.MustParseAddr(c))
		}
		got, err := ChooseDNS(conf, files(tc.files), host, resolved, dnsmasq)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		var gs []string
		for _, a := range got.Nameservers {
			gs = append(gs, a.String())
		}
		if strings.Join(gs, ",") != strings.Join(tc.want, ",") || got.Source != tc.source || strings.Join(got.Search, " ") != tc.search {
			t.Errorf("%s: ChooseDNS = %v from %s search %q, want %v from %s search %q", tc.name, gs, got.Source, got.Search, tc.want, tc.source, tc.search)
		}
	}
	// A loopback stub and no upstream list: one line telling what to do.
	_, err := ChooseDNS(nil, files(map[string]string{host: stub}), host, resolved, dnsmasq)
	if err == nil || !strings.Contains(err.Error(), "machine.dns") || strings.Contains(err.Error(), "\n") {
		t.Errorf("ChooseDNS with only a stub = %v, want one line naming machine.dns", err)
	}
	if _, err := ChooseDNS(nil, files(nil), host); err == nil {
		t.Errorf("ChooseDNS without any resolv.conf succeeded")
	}
	_ = errors.New
}

func TestResolvConfFormat(t *testing.T) {
	rc := ResolvConf{Nameservers: []netip.Addr{netip.MustParseAddr("192.0.2.53")}, Search: []string{"a.example", "b"}}
	got := string(rc.Format())
	if !strings.Contains(got, "nameserver 192.0.2.53\n") || !strings.Contains(got, "search a.example b\n") {
		t.Errorf("Format = %q", got)
	}
	back := ParseResolvConf(rc.Format())
	if len(back.Nameservers) != 1 || back.Nameservers[0] != rc.Nameservers[0] || len(back.Search) != 2 {
		t.Errorf("ParseResolvConf(Format()) = %+v", back)
	}
}

func TestPortNameAndRange(t *testing.T) {
	a := netip.MustParseAddr("10.213.0.2")
	if p := PortName(a); p != "nr0ad50002" || !isPortName(p) || len(p) > 15 {
		t.Errorf("PortName(%s) = %q", a, p)
	}
	for _, bad := range []string{"eth0", "nr0ad5000", "nr0ad5000g", "nr0AD50002"} {
		if isPortName(bad) {
			t.Errorf("isPortName(%q) = true", bad)
		}
	}
	p := netip.MustParsePrefix("10.213.0.0/20")
	if g, l := Gateway(p), lastAddr(p); g.String() != "10.213.0.1" || l.String() != "10.213.15.255" {
		t.Errorf("Gateway, lastAddr(%s) = %s, %s", p, g, l)
	}
}
