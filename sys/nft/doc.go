// Package nft programs nspawn-runner's own nftables tables through
// netlink (nf_tables, github.com/google/nftables): never by running nft or
// iptables. Two tables of one name hold everything of ours, so other
// rulesets are never touched:
//
//	table ip NAME       nat postrouting: masquerade machines' traffic leaving
//	                    by another interface; forward: no new connections
//	                    into machines, machines' traffic filtered by the
//	                    allow and deny lists, link-local and the machines'
//	                    subnet; input: machines reach none of the host's own
//	                    addresses but allowed networks and the DNS servers
//	table bridge NAME   prerouting: a frame entering the bridge from a
//	                    machine's port passes only as IPv4 from that
//	                    machine's own address or ARP for it (no spoofing
//	                    another job's address, no IPv6 link-local to the
//	                    host); one pair of rules per port, added and
//	                    deleted with the machine
//
// Every change is one netlink batch, which nf_tables applies atomically.
package nft
