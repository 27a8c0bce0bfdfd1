package nft

import (
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/nftables"

	"github.com/nspawn-runner/nspawn-runner/internal/testutil"
	"github.com/nspawn-runner/nspawn-runner/sys/netns"
)

// testNS pins a fresh network namespace for the test and returns a
// connection to nf_tables in it.
func testNS(t *testing.T) *Conn {
	t.Helper()
	testutil.RequireRoot(t)
	path := filepath.Join(t.TempDir(), "ns")
	if err := netns.New(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.Remove(path) })
	f, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	c, err := Open(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ruleCount(t *testing.T, c *Conn, tab *nftables.Table) int {
	t.Helper()
	chains, err := c.c.ListChainsOfTableFamily(tab.Family)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ch := range chains {
		if ch.Table.Name != tab.Name {
			continue
		}
		rules, err := c.c.GetRules(tab, ch)
		if err != nil {
			t.Fatal(err)
		}
		n += len(rules)
	}
	return n
}

func TestApplyPortsDelete(t *testing.T) {
	c := testNS(t)
	const table = "nrtest_nft"
	p := Policy{Table: table, Bridge: "nrt-br0", Subnet: netip.MustParsePrefix("10.250.0.0/24"),
		Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
		Deny:  []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
		DNS:   []netip.Addr{netip.MustParseAddr("203.0.113.53")}}
	if ok, err := c.Exists(table); err != nil || ok {
		t.Fatalf("Exists before Apply = %v, %v", ok, err)
	}
	if err := c.Apply(p); err != nil {
		t.Fatal(err)
	}
	first := ruleCount(t, c, ipTable(table))
	// Postrouting 1, forward 4 (3 + the jump to egress... see Apply), and
	// the lists in both egress and host: the exact count is Apply's
	// business; what matters is that a second Apply replaces, not adds.
	if first == 0 {
		t.Fatal("no rules in the ip table after Apply")
	}
	if err := c.AddPort(table, "nrt-p1", netip.MustParseAddr("10.250.0.2"), "nrt-p1"); err != nil {
		t.Fatal(err)
	}
	if err := c.AddPort(table, "nrt-p2", netip.MustParseAddr("10.250.0.3"), "nrt-p2"); err != nil {
		t.Fatal(err)
	}
	if err := c.Apply(p); err != nil {
		t.Fatal(err)
	}
	if n := ruleCount(t, c, ipTable(table)); n != first {
		t.Errorf("ip table rules after a second Apply = %d, want %d", n, first)
	}
	// 1 prerouting rule, 3 per port.
	if n := ruleCount(t, c, bridgeTable(table)); n != 7 {
		t.Errorf("bridge table rules = %d, want 7 (Apply kept the ports' rules?)", n)
	}
	ports, err := c.Ports(table)
	slices.Sort(ports)
	if err != nil || !slices.Equal(ports, []string{"nrt-p1", "nrt-p2"}) {
		t.Fatalf("Ports = %q, %v, want [nrt-p1 nrt-p2]", ports, err)
	}
	if err := c.DelPort(table, "nrt-p1"); err != nil {
		t.Fatal(err)
	}
	if err := c.DelPort(table, "nrt-p1"); err != nil {
		t.Errorf("second DelPort = %v", err)
	}
	if ports, _ := c.Ports(table); !slices.Equal(ports, []string{"nrt-p2"}) {
		t.Errorf("Ports after DelPort = %q, want [nrt-p2]", ports)
	}
	if err := c.Delete(table); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.Exists(table); err != nil || ok {
		t.Errorf("Exists after Delete = %v, %v", ok, err)
	}
	if err := c.Delete(table); err != nil {
		t.Errorf("second Delete = %v", err)
	}
	if ports, err := c.Ports(table); err != nil || len(ports) != 0 {
		t.Errorf("Ports of a missing table = %q, %v", ports, err)
	}
}

func TestApplyRefusesBadPolicy(t *testing.T) {
	c := &Conn{}
	for _, p := range []Policy{
		{Bridge: "b", Subnet: netip.MustParsePrefix("10.0.0.0/24")},
		{Table: "t", Subnet: netip.MustParsePrefix("10.0.0.0/24")},
		{Table: "t", Bridge: "b", Subnet: netip.MustParsePrefix("fd00::/64")},
		{Table: "t", Bridge: "a-name-far-too-long", Subnet: netip.MustParsePrefix("10.0.0.0/24")},
	} {
		if err := c.Apply(p); err == nil {
			t.Errorf("Apply(%+v) succeeded", p)
		}
	}
}
