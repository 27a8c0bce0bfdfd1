// Package network gives a machine a network of its own (machine.network:
// private): a network namespace pinned in the machine's run directory,
// a veth pair whose host end is an isolated port of a host bridge made on
// demand and whose other end is the machine's eth0, an address from
// machine.subnet, a default route through the bridge, a resolv.conf, and
// the nftables rules (sys/nft) that masquerade its traffic and keep it
// away from the host, other machines and link-local addresses.
//
// systemd-nspawn then runs in that namespace (--network-namespace-path):
// everything is set up before the machine starts, by netlink from our
// process, so it works the same in fast mode (no systemd in the machine)
// and boot mode (no systemd-networkd needed), and a failure leaves no
// half-started machine.
//
// Allocations live in RUN_DIR/network/NAME.json, written under an
// flock(2) on RUN_DIR/network/lock, so concurrent prepares never share an
// address and a crashed one's address is found and reclaimed by cleanup
// or gc.
package network
