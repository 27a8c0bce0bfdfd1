package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Policy is what the ip table enforces for the machines behind a bridge.
type Policy struct {
	// Table names our tables (ip and bridge families).
	Table string
	// Bridge is the host bridge the machines' ports are attached to.
	Bridge string
	// Subnet is the machines' IPv4 subnet.
	Subnet netip.Prefix
	// Allow lists networks machines may reach even where Deny, the
	// built-in blocks or the host's own addresses would stop them.
	Allow []netip.Prefix
	// Deny lists networks machines may not reach.
	Deny []netip.Prefix
	// DNS servers machines may query (UDP and TCP port 53), even on the
	// host's own addresses.
	DNS []netip.Addr
}

// Blocked are the networks no machine reaches unless allowed: link-local
// (cloud metadata services live at 169.254.169.254) and loopback.
var Blocked = []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("127.0.0.0/8")}

// Conn talks to nf_tables in one network namespace.
type Conn struct {
	c *nftables.Conn
}

// Open returns a connection to nf_tables in the network namespace of the
// open file nsFD (a pinned namespace or /proc/PID/ns/net), or in the
// caller's when nsFD < 0.
func Open(nsFD int) (*Conn, error) {
	var opts []nftables.ConnOption
	if nsFD >= 0 {
		opts = append(opts, nftables.WithNetNSFd(nsFD))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return &Conn{c: c}, nil
}

func ipTable(name string) *nftables.Table {
	return &nftables.Table{Name: name, Family: nftables.TableFamilyIPv4}
}

func bridgeTable(name string) *nftables.Table {
	return &nftables.Table{Name: name, Family: nftables.TableFamilyBridge}
}

const portsChain = "ports"

// Apply creates the tables when missing and replaces the policy rules
// with p's, in one transaction; the per-port rules (AddPort) stay.
func (c *Conn) Apply(p Policy) error {
	if p.Table == "" || p.Bridge == "" || !p.Subnet.Addr().Is4() {
		return fmt.Errorf("nftables policy: table, bridge and an IPv4 subnet are needed")
	}
	if len(p.Bridge) >= unix.IFNAMSIZ {
		return fmt.Errorf("nftables policy: bridge name %q longer than %d characters", p.Bridge, unix.IFNAMSIZ-1)
	}
	t := c.c.AddTable(ipTable(p.Table))
	accept := nftables.ChainPolicyAccept
	base := func(name string, hook *nftables.ChainHook, prio *nftables.ChainPriority, typ nftables.ChainType) *nftables.Chain {
		ch := c.c.AddChain(&nftables.Chain{Name: name, Table: t, Hooknum: hook, Priority: prio, Type: typ, Policy: &accept})
		c.c.FlushChain(ch)
		return ch
	}
	regular := func(name string) *nftables.Chain {
		ch := c.c.AddChain(&nftables.Chain{Name: name, Table: t})
		c.c.FlushChain(ch)
		return ch
	}
	post := base("postrouting", nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource, nftables.ChainTypeNAT)
	fwd := base("forward", nftables.ChainHookForward, nftables.ChainPriorityFilter, nftables.ChainTypeFilter)
	in := base("input", nftables.ChainHookInput, nftables.ChainPriorityFilter, nftables.ChainTypeFilter)
	egress := regular("egress")
	hostin := regular("host")
	rule := func(ch *nftables.Chain, e []expr.Any) {
		c.c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e})
	}
	cat := func(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

	// Masquerade what leaves by another interface than the bridge.
	rule(post, cat(saddr(p.Subnet), oifname(p.Bridge, expr.CmpOpNeq), []expr.Any{&expr.Masq{}}))

	// Into machines: replies only.
	rule(fwd, cat(oifname(p.Bridge, expr.CmpOpEq), established(), verdict(expr.VerdictAccept)))
	rule(fwd, cat(oifname(p.Bridge, expr.CmpOpEq), verdict(expr.VerdictDrop)))
	rule(fwd, cat(iifname(p.Bridge), jump(egress.Name)))
	rule(in, cat(iifname(p.Bridge), jump(hostin.Name)))

	// Shared by both: replies and what is explicitly allowed pass.
	for _, ch := range []*nftables.Chain{egress, hostin} {
		rule(ch, cat(established(), verdict(expr.VerdictAccept)))
		for _, a := range p.Allow {
			rule(ch, cat(daddr(a), verdict(expr.VerdictAccept)))
		}
		for _, d := range p.DNS {
			if !d.Is4() {
				continue
			}
			for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
				rule(ch, cat(daddr(netip.PrefixFrom(d, 32)), l4dport(proto, 53), verdict(expr.VerdictAccept)))
			}
		}
	}
	for _, d := range slices.Concat(p.Deny, Blocked, []netip.Prefix{p.Subnet.Masked()}) {
		rule(egress, cat(daddr(d), verdict(expr.VerdictDrop)))
	}
	rule(egress, verdict(expr.VerdictAccept))
	// The host itself: nothing else.
	rule(hostin, verdict(expr.VerdictDrop))

	// The bridge table: frames from machines' ports pass only through
	// the per-port rules.
	bt := c.c.AddTable(bridgeTable(p.Table))
	pre := c.c.AddChain(&nftables.Chain{Name: "prerouting", Table: bt, Hooknum: nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRef(-200), Type: nftables.ChainTypeFilter, Policy: &accept})
	c.c.FlushChain(pre)
	c.c.AddChain(&nftables.Chain{Name: portsChain, Table: bt})
	// Every port's rules end in a drop for that port; "meta ibrname" would
	// catch ports without rules too, but needs CONFIG_NFT_BRIDGE_META,
	// which not every kernel has: callers add a port's rules before the
	// port joins the bridge instead.
	c.c.AddRule(&nftables.Rule{Table: bt, Chain: pre, Exprs: jump(portsChain)})
	if err := c.c.Flush(); err != nil {
		return fmt.Errorf("nftables: program table %s: %w", p.Table, err)
	}
	return nil
}

// AddPort lets frames from the bridge port named port through as IPv4
// from addr and ARP for addr; everything else from it is dropped. Add
// them before the port joins the bridge. The rules carry tag as their
// comment: DelPort and Ports know them by it.
func (c *Conn) AddPort(table, port string, addr netip.Addr, tag string) error {
	if !addr.Is4() {
		return fmt.Errorf("nftables: port %s: %s is not IPv4", port, addr)
	}
	bt := bridgeTable(table)
	ch := &nftables.Chain{Name: portsChain, Table: bt}
	ud := userdata.AppendString(nil, userdata.TypeComment, tag)
	a := addr.As4()
	// ETH_P_IP and ETH_P_ARP in network order (meta protocol).
	for _, m := range []struct {
		proto []byte
		off   uint32
	}{{[]byte{0x08, 0x00}, 12}, {[]byte{0x08, 0x06}, 14}} {
		c.c.AddRule(&nftables.Rule{Table: bt, Chain: ch, UserData: ud, Exprs: slices.Concat(
			iifname(port),
			[]expr.Any{
				&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: m.proto},
				// IPv4 source address (offset 12) or ARP sender
				// protocol address (offset 14, RFC 826).
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: m.off, Len: 4},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
			},
			verdict(expr.VerdictAccept))})
	}
	c.c.AddRule(&nftables.Rule{Table: bt, Chain: ch, UserData: ud, Exprs: slices.Concat(iifname(port), verdict(expr.VerdictDrop))})
	if err := c.c.Flush(); err != nil {
		return fmt.Errorf("nftables: rules of port %s in table %s: %w", port, table, err)
	}
	return nil
}

// DelPort deletes the rules tagged tag. Missing rules or tables are fine.
func (c *Conn) DelPort(table, tag string) error {
	rules, err := c.portRules(table)
	if err != nil {
		return err
	}
	n := 0
	for _, r := range rules {
		if name, _ := userdata.GetString(r.UserData, userdata.TypeComment); name == tag {
			if err := c.c.DelRule(r); err != nil {
				return fmt.Errorf("nftables: delete rule %s: %w", tag, err)
			}
			n++
		}
	}
	if n == 0 {
		return nil
	}
	if err := c.c.Flush(); err != nil {
		return fmt.Errorf("nftables: delete rules %s in table %s: %w", tag, table, err)
	}
	return nil
}

// Ports lists the tags of the per-port rules in table.
func (c *Conn) Ports(table string) ([]string, error) {
	rules, err := c.portRules(table)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, r := range rules {
		if name, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}

func (c *Conn) portRules(table string) ([]*nftables.Rule, error) {
	ok, err := c.Exists(table)
	if err != nil || !ok {
		return nil, err
	}
	bt := bridgeTable(table)
	rules, err := c.c.GetRules(bt, &nftables.Chain{Name: portsChain, Table: bt})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("nftables: list rules of table %s: %w", table, err)
	}
	return rules, nil
}

// Exists reports whether our tables (either of them) exist.
func (c *Conn) Exists(table string) (bool, error) {
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyBridge} {
		_, err := c.c.ListTableOfFamily(table, fam)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("nftables: look up table %s: %w", table, err)
		}
	}
	return false, nil
}

// Delete deletes both tables; missing ones are fine.
func (c *Conn) Delete(table string) error {
	n := 0
	for _, t := range []*nftables.Table{ipTable(table), bridgeTable(table)} {
		if _, err := c.c.ListTableOfFamily(table, t.Family); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("nftables: look up table %s: %w", table, err)
		}
		c.c.DelTable(t)
		n++
	}
	if n == 0 {
		return nil
	}
	if err := c.c.Flush(); err != nil {
		return fmt.Errorf("nftables: delete table %s: %w", table, err)
	}
	return nil
}

// ifnameData is an interface name as nf_tables compares it: IFNAMSIZ
// bytes, NUL-padded.
func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func iifname(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameData(name)},
	}
}

func oifname(name string, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifnameData(name)},
	}
}

// prefixMatch compares the 4 bytes at offset of the IPv4 header with p.
func prefixMatch(offset uint32, p netip.Prefix) []expr.Any {
	p = p.Masked()
	a := p.Addr().As4()
	e := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	if p.Bits() < 32 {
		mask := binaryutil.BigEndian.PutUint32(^uint32(0) << (32 - p.Bits()))
		if p.Bits() == 0 {
			mask = []byte{0, 0, 0, 0}
		}
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}})
	}
	return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]})
}

func saddr(p netip.Prefix) []expr.Any { return prefixMatch(12, p) }
func daddr(p netip.Prefix) []expr.Any { return prefixMatch(16, p) }

func l4dport(proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

// established matches ct state established,related.
func established() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}
