// Package netfilter keeps the agent's nftables table on one node equal to a
// FilterPlan. The table is "inet archipelago": one table for IPv4 and IPv6
// (inet NAT chains need Linux 5.2+). It holds
//
//   - four interval sets, local4/remote4/local6/remote6, with the local and
//     remote pod ranges. They always exist, so a range change is a set
//     element update, not a ruleset change;
//   - chain "postrouting" (type nat, hook postrouting, priority srcnat-10 =
//     90): "ip saddr @local4 ip daddr @remote4 snat ip to ip saddr" and the
//     IPv6 twin. This no-op SNAT keeps pod source addresses on traffic to
//     remote clusters even when the CNI masquerades everything that leaves
//     the pod range; docs/no-snat.md explains why it wins over the CNI's rule
//     and why an accept verdict would not;
//   - chain "forward" (type filter, hook forward, priority filter-10 = -10):
//     accept local↔remote pod traffic;
//   - chain "mss-clamp" (type filter, hook forward, priority mangle), only on
//     the gateway with clamping on: TCP SYNs in or out of the tunnel get
//     their MSS option lowered to the tunnel's MTU (FilterPlan.MTU; "rt
//     mtu" when it is 0), and SYNs out of it also to their route's MTU
//     ("rt mtu": lower than the tunnel's for a peer with a smaller path
//     MTU; the kernel only lowers, so the smaller wins);
//   - chain "overlay-input" (type filter, hook input, priority filter-10)
//     with sets "overlay4"/"overlay6", only with a receiving VXLAN device
//     (the active gateway): UDP to the VXLAN port from an address that is
//     no Node's InternalIP is dropped ("udp dport 4790 ip saddr !=
//     @overlay4 drop" and the IPv6 twin); see overlayInput;
//   - chains "tunnel-guard" (type filter, hook prerouting, priority raw) and
//     "tunnel-input" (type filter, hook input, priority filter-10), only on
//     the gateway: what comes in through the tunnel interface may only go to
//     the local pod ranges ("iifname <tun> ip daddr != @local4 drop" and the
//     IPv6 twin) and never to the node itself ("iifname <tun> drop").
//     WireGuard checks only the source of what a peer sends (AllowedIPs);
//     without the guard a remote member could reach the gateway node, its
//     node network, Service and NodePort addresses through the tunnel. The
//     guard runs at prerouting, before kube-proxy's DNAT turns a Service
//     address into a pod address. ICMP errors to the node are dropped too:
//     errors for pod traffic are addressed to the pod, and the node sends
//     nothing of its own through the tunnel but ICMP errors (below);
//   - chain "tunnel-icmp" (type filter, hook postrouting, priority
//     srcnat+200 = 300), only on the gateway: ICMP and ICMPv6 errors
//     (destination unreachable, packet too big, time exceeded, parameter
//     problem) about a connection conntrack tracks ("ct state related")
//     that leave through the tunnel from an address outside the local pod
//     ranges get the first address of the first local range of their
//     family as source ("ip saddr set", checksums updated), so that
//     the peer's WireGuard, which takes only this member's pod ranges as
//     sources, lets the gateway's "fragmentation needed" reach the remote
//     pod.
//
// The tunnel guard's rules are the only ones that drop (tunnel-icmp only
// rewrites a source); every chain has
// policy accept, and nothing else in the table drops. The accepts have a
// limit: in nftables an accept verdict ends only the base
// chain it is in. Every other base chain on the same hook still sees the
// packet, and a drop in any of them (a host firewall's forward chain with
// policy drop, Docker's iptables FORWARD policy DROP) is final. The forward
// chain here therefore cannot override a host firewall; it only makes sure the
// agent's own table never blocks the traffic and documents intent (and
// counts). Hosts with a drop policy must allow the pod ranges themselves.
//
// Apply reads the table first and writes nothing when it matches; when only
// set elements differ it updates only them; otherwise it replaces the whole
// table in one atomic batch. Rules are compared by their comment (rule id plus
// a hash of the rule's expressions) instead of decoding the kernel's
// expressions, which google/nftables does not round-trip exactly (lookups come
// back without set ids, for example). A rule edited by hand while keeping its
// comment is therefore not detected; one deleted, added or re-commented is.
//
// Testing: Conn is the subset of *nftables.Conn that Apply uses. Package fake
// implements it in memory (queued writes applied on Flush, all-or-nothing) so
// that the apply logic (no writes when equal, element-only updates, rebuilds)
// is unit-tested without root; the byte code itself is only meaningful to the
// kernel, so privileged tests (build tag "privileged") apply the table in
// throwaway network namespaces and check real traffic: the receiver sees the
// sender's pod address despite a CNI-style masquerade rule, the MSS clamp
// lowers the MSS, and a remote pod address coming in on the tunnel reaches a
// local pod but neither the node nor anything else behind it.
//
// What this package must not do: read or write any table but its own (no
// flush ruleset, no edits to the CNI's or kube-proxy's tables), drop or reject
// packets other than those the tunnel guard is for, or decide the ranges (the agent's planner builds the FilterPlan).
// It does not fall back to iptables (see docs/no-snat.md).
package netfilter
