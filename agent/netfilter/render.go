package netfilter

import (
	"github.com/archipelago-mesh/archipelago/agent/desired"
	"github.com/archipelago-mesh/archipelago/internal/prefix"

	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

const (
	// TableName is the agent's nftables table, family inet (IPv4 and IPv6 in
	// one table; NAT in inet tables needs Linux 5.2+).
	TableName = "archipelago"

	// Set names. All four always exist, even when empty, so that a change of
	// ranges is an element update, not a ruleset change (except a new first
	// local range of a family, whose first address tunnel-icmp holds).
	SetLocal4  = "local4"
	SetRemote4 = "remote4"
	SetLocal6  = "local6"
	SetRemote6 = "remote6"
	// SetOverlay4 and SetOverlay6 (only on the active gateway, which has
	// the receiving VXLAN device) are the node addresses its port accepts.
	SetOverlay4 = "overlay4"
	SetOverlay6 = "overlay6"

	// Chain names.
	ChainNoSNAT  = "postrouting"
	ChainForward = "forward"
	ChainMSS     = "mss-clamp"
	// ChainTunnelGuard and ChainTunnelInput exist only on the gateway (a
	// plan with a tunnel interface); see tunnelGuard.
	ChainTunnelGuard = "tunnel-guard"
	ChainTunnelInput = "tunnel-input"
	// ChainTunnelICMP exists only on a gateway with a local pod range; see
	// tunnelICMP.
	ChainTunnelICMP = "tunnel-icmp"
	// ChainOverlayInput exists only with a receiving VXLAN device; see
	// overlayInput.
	ChainOverlayInput = "overlay-input"

	// PriorityNoSNAT runs before srcnat (100), where CNIs and iptables-nft's
	// nat POSTROUTING masquerade.
	PriorityNoSNAT = 100 - 10
	// PriorityForward runs before the default filter priority (0). Order only
	// decides who sees a packet first: an accept here does not stop a drop in
	// a later base chain (see doc.go).
	PriorityForward = 0 - 10
	// PriorityMSS is mangle (-150).
	PriorityMSS = -150
	// PriorityTunnelGuard is raw (-300) at prerouting: before conntrack
	// (-200) and before dstnat (-100), where kube-proxy turns a ClusterIP or
	// NodePort into a pod address that would pass the guard.
	PriorityTunnelGuard = -300
	// PriorityTunnelInput runs before the default filter priority (0).
	PriorityTunnelInput = 0 - 10
	// PriorityTunnelICMP runs after srcnat (100), where conntrack's NAT
	// rewrites related ICMP errors, so that nothing changes the source
	// after it.
	PriorityTunnelICMP = 100 + 200
)

// FilterPlan is the desired packet filter of one node (package desired).
type FilterPlan = desired.FilterPlan

// Ruleset is the rendered form of a FilterPlan: what the agent's table must
// contain. Two Rulesets with equal Shape differ at most in set elements.
type Ruleset struct {
	Sets   []Set
	Chains []Chain
}

// Set is one named interval set of addresses.
type Set struct {
	Name   string
	IPv6   bool
	Ranges []Range // sorted, merged, never overlapping or adjacent
}

// Range is an inclusive address range.
type Range struct{ First, Last netip.Addr }

func (r Range) String() string {
	if p, ok := r.prefix(); ok {
		return p.String()
	}
	return r.First.String() + "-" + r.Last.String()
}

// prefix returns the range as a prefix when it is exactly one.
func (r Range) prefix() (netip.Prefix, bool) {
	for bits := 0; bits <= r.First.BitLen(); bits++ {
		p := netip.PrefixFrom(r.First, bits)
		if p.Masked().Addr() == r.First && lastOf(p) == r.Last {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// Chain is one base chain with its rules in order.
type Chain struct {
	Name     string
	Type     nftables.ChainType
	Hook     nftables.ChainHook
	Priority nftables.ChainPriority
	Rules    []Rule
}

// Rule is one rule. Comment is stored in the rule's user data (nft shows it
// as `comment "…"`): the rule's ID plus a hash of its expressions, so that
// Apply can compare rules with the kernel without decoding expressions, and
// a new agent version with other expressions rebuilds the table.
type Rule struct {
	ID      string
	Comment string
	Exprs   []expr.Any
}

// Shape describes everything but set elements, for comparison.
func (r Ruleset) Shape() string {
	s := ""
	for _, set := range r.Sets {
		s += fmt.Sprintf("set %s ipv6=%v\n", set.Name, set.IPv6)
	}
	for _, c := range r.Chains {
		s += fmt.Sprintf("chain %s type %s hook %d priority %d\n", c.Name, c.Type, c.Hook, c.Priority)
		for _, rule := range c.Rules {
			s += fmt.Sprintf("  rule %q\n", rule.Comment)
		}
	}
	return s
}

// Render computes the agent's table for plan. It is pure: same plan, same
// Ruleset.
func Render(plan FilterPlan) (Ruleset, error) {
	sets := []Set{
		{Name: SetLocal4}, {Name: SetRemote4},
		{Name: SetLocal6, IPv6: true}, {Name: SetRemote6, IPv6: true},
	}
	var err error
	if sets[0].Ranges, sets[2].Ranges, err = ranges(plan.LocalPodCIDRs); err != nil {
		return Ruleset{}, fmt.Errorf("local pod CIDRs: %w", err)
	}
	if sets[1].Ranges, sets[3].Ranges, err = ranges(plan.RemotePodCIDRs); err != nil {
		return Ruleset{}, fmt.Errorf("remote pod CIDRs: %w", err)
	}
	if plan.OverlayPort < 0 || plan.OverlayPort > 65535 {
		return Ruleset{}, fmt.Errorf("overlay port %d out of range", plan.OverlayPort)
	}
	if plan.OverlayPort != 0 {
		o4, o6 := Set{Name: SetOverlay4}, Set{Name: SetOverlay6, IPv6: true}
		if o4.Ranges, o6.Ranges, err = ranges(plan.OverlaySenders); err != nil {
			return Ruleset{}, fmt.Errorf("overlay senders: %w", err)
		}
		sets = append(sets, o4, o6)
	}
	if len(plan.TunnelInterface) >= unix.IFNAMSIZ {
		return Ruleset{}, fmt.Errorf("tunnel interface name %q is longer than %d bytes", plan.TunnelInterface, unix.IFNAMSIZ-1)
	}

	v4 := family{proto: unix.NFPROTO_IPV4, saddrOff: 12, daddrOff: 16, alen: 4, hdr: 20, local: SetLocal4, remote: SetRemote4, name: "v4"}
	v6 := family{proto: unix.NFPROTO_IPV6, saddrOff: 8, daddrOff: 24, alen: 16, hdr: 40, local: SetLocal6, remote: SetRemote6, name: "v6"}

	noSNAT := Chain{Name: ChainNoSNAT, Type: nftables.ChainTypeNAT, Hook: *nftables.ChainHookPostrouting, Priority: PriorityNoSNAT}
	fwd := Chain{Name: ChainForward, Type: nftables.ChainTypeFilter, Hook: *nftables.ChainHookForward, Priority: PriorityForward}
	for _, f := range []family{v4, v6} {
		// ip saddr @local ip daddr @remote counter snat ip to ip saddr:
		// a NAT binding to the address the packet already has. Once any
		// nat chain at this hook has set up a binding, the kernel consults
		// no later nat chain for this connection (nf_nat_inet_fn stops at
		// nf_nat_initialized), so the CNI's masquerade never runs for it.
		noSNAT.Rules = append(noSNAT.Rules, rule("no-snat-"+f.name,
			f.match(f.saddr(), f.local),
			f.match(f.daddr(), f.remote),
			[]expr.Any{
				&expr.Counter{},
				f.saddr(),
				&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(f.proto), RegAddrMin: 1},
			}))
		fwd.Rules = append(fwd.Rules,
			rule("forward-out-"+f.name, f.match(f.saddr(), f.local), f.match(f.daddr(), f.remote), accept()),
			rule("forward-in-"+f.name, f.match(f.saddr(), f.remote), f.match(f.daddr(), f.local), accept()))
	}
	rs := Ruleset{Sets: sets, Chains: []Chain{noSNAT, fwd}}

	if plan.MSSClamp && plan.TunnelInterface != "" {
		mss := Chain{Name: ChainMSS, Type: nftables.ChainTypeFilter, Hook: *nftables.ChainHookForward, Priority: PriorityMSS}
		if plan.MTU != 0 && (plan.MTU < 1280 || plan.MTU > 65535) {
			return Ruleset{}, fmt.Errorf("tunnel MTU %d for MSS clamping out of range 1280-65535", plan.MTU)
		}
		for _, dir := range []struct {
			id  string
			key expr.MetaKey
		}{{"mss-out", expr.MetaKeyOIFNAME}, {"mss-in", expr.MetaKeyIIFNAME}} {
			dev := []expr.Any{
				&expr.Meta{Key: dir.key, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(plan.TunnelInterface)},
			}
			if plan.MTU == 0 {
				mss.Rules = append(mss.Rules, rule(dir.id, dev, clampMSS()))
				continue
			}
			// The tunnel's MTU in both directions: a SYN that leaves
			// through the tunnel, and one that arrives from it (whose
			// sender's gateway may have a larger MTU than this one).
			for _, f := range []family{v4, v6} {
				mss.Rules = append(mss.Rules, rule(dir.id+"-"+f.name,
					[]expr.Any{
						&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
						&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.proto}},
					},
					dev, clampMSSTo(plan.MTU-f.hdr-20)))
			}
			if dir.key == expr.MetaKeyOIFNAME {
				// And the MTU of its route, lower than the tunnel's for
				// a peer with a smaller path MTU. The kernel only ever
				// lowers an MSS, so the smaller of the two wins.
				mss.Rules = append(mss.Rules, rule(dir.id+"-route", dev, clampMSS()))
			}
		}
		rs.Chains = append(rs.Chains, mss)
	}
	if plan.OverlayPort != 0 {
		rs.Chains = append(rs.Chains, overlayInput(plan.OverlayPort, v4, v6))
	}
	if plan.TunnelInterface != "" {
		rs.Chains = append(rs.Chains, tunnelGuard(plan.TunnelInterface, v4, v6)...)
		if c, ok := tunnelICMP(plan.TunnelInterface, v4, v6, plan.LocalPodCIDRs); ok {
			rs.Chains = append(rs.Chains, c)
		}
	}
	return rs, nil
}

// tunnelICMP gives ICMP errors that leave through the tunnel from an
// address outside the local pod ranges (the gateway's own "fragmentation
// needed", "time exceeded", or another node's, forwarded) the first address
// of the first local range of the family as source: "oifname <tun> ip saddr
// != @local4 icmp type destination-unreachable ct state related ip saddr
// set <addr>", the
// same for time-exceeded and parameter-problem, and the ICMPv6 twins
// (destination unreachable, packet too big, time exceeded, parameter
// problem). The peer's WireGuard accepts from this member only sources
// inside its pod ranges (AllowedIPs), so without it the remote pod never
// learns that its packet was too large for this member's path. The address
// is only a label: nobody answers an ICMP error (with Calico or flannel it
// may be a pod's or a node's address; a new lower first range changes it,
// and the rule). The rewrite is stateless, after conntrack's NAT of related
// errors (a nat chain never sees them), and only for errors conntrack
// relates to a connection it tracks, so that an error forged on this side
// about no flow is not given a source the peer trusts.
//
// Checksums: IPv4's header checksum (offset 10) is updated; ICMP's covers
// no addresses. ICMPv6's covers them (pseudo-header): the rule matches only
// a packet whose IPv6 header is followed directly by ICMPv6 (next header
// 58, as the kernel's own errors are), and updates the checksum at offset
// 42 of the network header, ICMPv6's checksum field.
func tunnelICMP(tun string, v4, v6 family, local []netip.Prefix) (Chain, bool) {
	c := Chain{Name: ChainTunnelICMP, Type: nftables.ChainTypeFilter, Hook: *nftables.ChainHookPostrouting, Priority: PriorityTunnelICMP}
	for _, f := range []family{v4, v6} {
		var src netip.Addr
		for _, p := range local {
			if p.Addr().Is4() == (f.proto == unix.NFPROTO_IPV4) {
				src = p.Masked().Addr()
				break
			}
		}
		if !src.IsValid() {
			continue
		}
		type kind struct {
			id     string
			lo, hi byte
		}
		// The ICMP header's first byte (type), the header's protocol
		// match, and the checksum to update with the address.
		var (
			kinds   []kind
			proto   []expr.Any
			typeOff uint32
			csum    = uint32(10)
		)
		if f.proto == unix.NFPROTO_IPV4 {
			kinds = []kind{{"unreachable", 3, 3}, {"time-exceeded-parameter-problem", 11, 12}}
			proto = []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			}
		} else {
			kinds = []kind{{"errors", 1, 4}}
			typeOff, csum = 40, 42
			proto = []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 6, Len: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: typeOff, Len: 1},
			}
		}
		for _, k := range kinds {
			notLocal := f.match(f.saddr(), f.local)
			notLocal[len(notLocal)-1] = &expr.Lookup{SourceRegister: 1, SetName: f.local, Invert: true}
			c.Rules = append(c.Rules, rule("tunnel-icmp-"+f.name+"-"+k.id,
				[]expr.Any{
					&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(tun)},
				},
				notLocal,
				proto,
				[]expr.Any{
					&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{k.lo}, ToData: []byte{k.hi}},
					// "ct state related": only an error about a
					// connection conntrack knows. One forged on this
					// member's side about no flow keeps its source,
					// and the peer's WireGuard drops it.
					&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
					&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
						Mask: binary.NativeEndian.AppendUint32(nil, expr.CtStateBitRELATED), Xor: make([]byte, 4)},
					&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
					&expr.Counter{},
					&expr.Immediate{Register: 1, Data: src.AsSlice()},
					&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseNetworkHeader,
						Offset: f.saddrOff, Len: f.alen, CsumType: expr.CsumTypeInet, CsumOffset: csum},
				}))
		}
	}
	return c, len(c.Rules) > 0
}

// tunnelGuard limits what a remote member can reach through the tunnel to
// this member's pod ranges. WireGuard checks only a packet's source (the
// peer's AllowedIPs); without these chains a peer could send from its pod
// range to the gateway node itself, the node network, Service and NodePort
// addresses, kubelet or the agent's ports.
//
//   - tunnel-guard (prerouting, raw): "iifname <tun> ip daddr != @local4
//     counter drop" and the IPv6 twin. Prerouting and not forward, because
//     at forward kube-proxy's DNAT has already made a Service address a
//     pod address.
//   - tunnel-input (input): "iifname <tun> counter drop": nothing from the
//     tunnel is for the node itself, also when the node has an address
//     inside the pod range (a CNI bridge or tunnel address). ICMP errors are
//     dropped too: those for pod traffic are addressed to the pod and
//     forwarded; the node sends nothing of its own through the tunnel.
//
// WireGuard's own UDP arrives on the underlay interface and is not affected.
func tunnelGuard(tun string, fams ...family) []Chain {
	iif := func() []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(tun)},
		}
	}
	drop := func() []expr.Any { return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}} }
	guard := Chain{Name: ChainTunnelGuard, Type: nftables.ChainTypeFilter, Hook: *nftables.ChainHookPrerouting, Priority: PriorityTunnelGuard}
	for _, f := range fams {
		notLocal := f.match(f.daddr(), f.local)
		notLocal[len(notLocal)-1] = &expr.Lookup{SourceRegister: 1, SetName: f.local, Invert: true}
		guard.Rules = append(guard.Rules, rule("tunnel-guard-"+f.name, iif(), notLocal, drop()))
	}
	input := Chain{Name: ChainTunnelInput, Type: nftables.ChainTypeFilter, Hook: *nftables.ChainHookInput, Priority: PriorityTunnelInput,
		Rules: []Rule{rule("tunnel-input", iif(), drop())}}
	return []Chain{guard, input}
}

// overlayInput keeps the receiving VXLAN port to the cluster's nodes:
// "meta l4proto udp udp dport <port> ip saddr != @overlay4 counter drop"
// and the IPv6 twin, at input (VXLAN is delivered to a local UDP socket,
// after this hook). What the device decapsulates is forwarded like the
// LAN's traffic; without the chain anyone who reaches the port (the WAN
// side included) could send packets with this cluster's pod addresses
// into the tunnels.
func overlayInput(port int, fams ...family) Chain {
	c := Chain{Name: ChainOverlayInput, Type: nftables.ChainTypeFilter, Hook: *nftables.ChainHookInput, Priority: PriorityTunnelInput}
	set := map[string]string{"v4": SetOverlay4, "v6": SetOverlay6}
	for _, f := range fams {
		notNode := f.match(f.saddr(), set[f.name])
		notNode[len(notNode)-1] = &expr.Lookup{SourceRegister: 1, SetName: set[f.name], Invert: true}
		c.Rules = append(c.Rules, rule("overlay-input-"+f.name,
			[]expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.proto}},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, uint16(port))},
			},
			notNode,
			[]expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}))
	}
	return c
}

type family struct {
	proto              byte
	saddrOff, daddrOff uint32
	alen               uint32
	hdr                int // the IP header's length, without options
	local, remote      string
	name               string
}

func (f family) saddr() expr.Any {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrOff, Len: f.alen}
}

func (f family) daddr() expr.Any {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.alen}
}

// match is "meta nfproto <f>" (an inet table sees both families, and the
// payload offsets only make sense for one) followed by a set lookup.
func (f family) match(load expr.Any, set string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.proto}},
		load,
		&expr.Lookup{SourceRegister: 1, SetName: set},
	}
}

func accept() []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
}

// clampMSS is `tcp flags syn / syn,rst tcp option maxseg size set rt mtu`,
// in the byte code nft 1.0 generates for it. "rt mtu" is NFT_RT_TCPMSS: the
// route's MTU minus the IP and TCP headers. The kernel only ever lowers the
// MSS option with it, never raises it.
func clampMSS() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x02 | 0x04}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Type: 2 /* maxseg */, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
	}
}

// clampMSSTo is `tcp flags syn / syn,rst tcp option maxseg size set <mss>`:
// the kernel lowers the option to mss and never raises it.
func clampMSSTo(mss int) []expr.Any {
	c := clampMSS()
	// Replace the route lookup and its byte order conversion by the value.
	out := append([]expr.Any{}, c[:5]...)
	out = append(out, &expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, uint16(mss))})
	return append(out, c[7:]...)
}

func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func rule(id string, parts ...[]expr.Any) Rule {
	r := Rule{ID: id}
	for _, p := range parts {
		r.Exprs = append(r.Exprs, p...)
	}
	h := sha256.New()
	for _, e := range r.Exprs {
		b, err := expr.Marshal(byte(nftables.TableFamilyINet), e)
		if err != nil {
			// Only reachable with an expression type the library cannot
			// marshal, which would be a bug in this file.
			panic(fmt.Sprintf("marshal expression of rule %s: %v", id, err))
		}
		h.Write(b)
	}
	r.Comment = "archipelago:" + id + ":" + hex.EncodeToString(h.Sum(nil)[:4])
	return r
}

// ranges turns prefixes into sorted, merged ranges per family. Interval sets
// without auto-merge reject overlapping elements, and adjacent ranges would
// share a key (one's end is the next one's start), so both are merged here.
func ranges(ps []netip.Prefix) (v4, v6 []Range, _ error) {
	for _, p := range ps {
		if !p.IsValid() {
			return nil, nil, fmt.Errorf("invalid prefix %v", p)
		}
		p = prefix.Canonical(p)
		r := Range{First: p.Addr(), Last: lastOf(p)}
		if p.Addr().Is4() {
			v4 = append(v4, r)
		} else {
			v6 = append(v6, r)
		}
	}
	return merge(v4), merge(v6), nil
}

func merge(rs []Range) []Range {
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, func(a, b Range) int { return a.First.Compare(b.First) })
	out := []Range{rs[0]}
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		next := last.Last.Next()
		if r.First.Compare(last.Last) <= 0 || (next.IsValid() && r.First == next) {
			if r.Last.Compare(last.Last) > 0 {
				last.Last = r.Last
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// elements encodes ranges the way nft does for interval sets: a start key and
// an end key one past the last address, flagged IntervalEnd. A range that
// reaches the top of the address space has no end key.
func elements(rs []Range) []nftables.SetElement {
	var out []nftables.SetElement
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: r.First.AsSlice()})
		if end := r.Last.Next(); end.IsValid() {
			out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// rangesOf decodes interval set elements (in any order) back into ranges.
// ok is false when the elements are not a well-formed sequence the agent
// could have written; the caller then rewrites the set.
func rangesOf(els []nftables.SetElement, ipv6 bool) (rs []Range, ok bool) {
	type el struct {
		a   netip.Addr
		end bool
	}
	var sorted []el
	for _, e := range els {
		a, valid := netip.AddrFromSlice(e.Key)
		if !valid || a.Is4() == ipv6 {
			return nil, false
		}
		sorted = append(sorted, el{a, e.IntervalEnd})
	}
	slices.SortFunc(sorted, func(x, y el) int { return x.a.Compare(y.a) })
	for i := 0; i < len(sorted); i++ {
		e := sorted[i]
		if e.end {
			// nft(8) writes an end element at the zero address as a
			// "nothing below the first start" marker; tolerate stray ends.
			continue
		}
		if i+1 < len(sorted) {
			n := sorted[i+1]
			if !n.end {
				return nil, false
			}
			rs = append(rs, Range{First: e.a, Last: n.a.Prev()})
			i++
			continue
		}
		top := netip.IPv6Unspecified()
		if !ipv6 {
			top = netip.IPv4Unspecified()
		}
		rs = append(rs, Range{First: e.a, Last: lastOf(netip.PrefixFrom(top, 0))})
	}
	return rs, true
}
