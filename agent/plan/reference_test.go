package plan

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/desired"
	"github.com/archipelago-mesh/archipelago/internal/prefix"
)

// TestComputeMatchesReference checks that Compute returns exactly what the
// straightforward implementation below returns, on random directories with
// overlaps, duplicate and missing keys, both families, unsorted input, holds
// and every role. (IPv4-mapped ranges are left out: the reference turned
// ::ffff:a.b.c.d/104 into an invalid prefix and panicked; TestMappedRanges
// covers them.)
func TestComputeMatchesReference(t *testing.T) {
	keys := make([]wgtypes.Key, 6)
	for i := range keys {
		var seed [32]byte
		seed[1], seed[2] = byte(i), 0x77
		keys[i], _ = wgtypes.NewKey(seed[:])
	}
	roles := []string{RoleGateway, RoleStandby, RoleWorker}
	randPrefix := func(r *rand.Rand) netip.Prefix {
		if r.IntN(5) == 0 {
			a := netip.AddrFrom16([16]byte{0xfd, 0, 0, byte(r.IntN(4)), 8: byte(r.IntN(3))})
			return netip.PrefixFrom(a, 48+r.IntN(3)*16)
		}
		a := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(4)), byte(r.IntN(3))})
		return netip.PrefixFrom(a, 8+r.IntN(4)*8)
	}
	for seed := range 3000 {
		r := rand.New(rand.NewPCG(uint64(seed), 3))
		in := Inputs{
			Node: "n", Role: roles[r.IntN(3)],
			Tunnel:     Tunnel{Interface: "wg0", Port: 51820, MTU: r.IntN(2) * 1400, Keepalive: 25 * time.Second},
			PrivateKey: keys[0],
		}
		for range r.IntN(3) {
			in.LocalPodCIDRs = append(in.LocalPodCIDRs, randPrefix(r))
		}
		if r.IntN(3) > 0 {
			in.ActiveGatewayIP = netip.MustParseAddr([]string{"172.18.0.2", "fd00::2", "::ffff:172.18.0.3"}[r.IntN(3)])
		}
		for range r.IntN(3) {
			in.ActiveGatewayIPs = append(in.ActiveGatewayIPs, netip.MustParseAddr([]string{"172.18.0.4", "fd00::4", "::ffff:172.18.0.5"}[r.IntN(3)]))
		}
		if r.IntN(10) == 0 {
			in.Hold = "hold"
		}
		for i := range r.IntN(12) {
			p := Peer{Cluster: fmt.Sprintf("c%d", r.IntN(20)), Gateway: fmt.Sprintf("g%d", i), PublicKey: keys[r.IntN(len(keys))].PublicKey()}
			if r.IntN(10) == 0 {
				p.PublicKey = wgtypes.Key{}
			}
			if r.IntN(2) == 0 {
				p.Endpoint = netip.MustParseAddrPort("192.0.2.1:51820")
			}
			for range r.IntN(4) {
				p.PodCIDRs = append(p.PodCIDRs, randPrefix(r))
			}
			in.Peers = append(in.Peers, p)
		}
		if r.IntN(2) == 0 {
			slices.SortFunc(in.Peers, func(a, b Peer) int { return cmp.Compare(a.Cluster, b.Cluster) })
		}
		want := computeRef(in)
		got := Compute(in)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("seed %d: Compute differs from the reference\n got %+v\nwant %+v", seed, got, want)
		}
	}
}

// computeRef is Compute as it was before it was made cheaper; it returns the NodePlan for in. It is pure and deterministic: equal
// inputs give equal plans, whatever the order of Peers.
func computeRef(in Inputs) NodePlan {
	p := NodePlan{
		Role:            in.Role,
		TunnelInterface: in.Tunnel.Interface,
		Hold:            in.Hold,
		PeerClusters:    map[wgtypes.Key]string{},
	}
	local := canonicalRef(in.LocalPodCIDRs)
	p.Filter.LocalPodCIDRs = local
	p.Host.IPv4 = hasFamily(local, true)
	p.Host.IPv6 = hasFamily(local, false)

	peers, skipped := usablePeersRef(in, local)
	p.Skipped = skipped
	p.MTU = TunnelMTU(in.Tunnel.MTU, in.Underlay)
	if in.Role == RoleGateway {
		p.Tunnel = &desired.TunnelPlan{PrivateKey: in.PrivateKey, ListenPort: in.Tunnel.Port, MTU: p.MTU.MTU}
		p.Filter.TunnelInterface = in.Tunnel.Interface
		p.Filter.MSSClamp = true
		p.Filter.MTU = p.MTU.MTU
		p.Host.TunnelInterface = in.Tunnel.Interface
	}
	for _, peer := range peers {
		p.Routes.Unreachable = append(p.Routes.Unreachable, canonicalRef(peer.PodCIDRs)...)
	}
	slices.SortFunc(p.Routes.Unreachable, prefix.Compare)
	// The gateway's address of each family: the first one given.
	hops := map[bool]netip.Addr{}
	for _, ip := range append([]netip.Addr{in.ActiveGatewayIP}, in.ActiveGatewayIPs...) {
		if ip = ip.Unmap(); ip.IsValid() && !hops[ip.Is4()].IsValid() {
			hops[ip.Is4()] = ip
		}
	}
	if in.Hold != "" || (in.Role != RoleGateway && len(hops) == 0) {
		if in.Hold == "" && len(peers) > 0 {
			p.Hold = "no active gateway known yet"
		}
		p.Filter.RemotePodCIDRs = slices.Clone(p.Routes.Unreachable)
		return p
	}
	if in.Role != RoleGateway {
		for _, v4 := range []bool{true, false} {
			if h, ok := hops[v4]; ok {
				p.NextHops = append(p.NextHops, h)
			}
		}
		p.NextHop = p.NextHops[0]
	}
	fam := map[bool]string{true: "IPv4", false: "IPv6"}

	for _, peer := range peers {
		ranges := canonicalRef(peer.PodCIDRs)
		if in.Role == RoleGateway {
			p.Tunnel.Peers = append(p.Tunnel.Peers, desired.PeerPlan{
				PublicKey:           peer.PublicKey,
				Endpoint:            peer.Endpoint,
				AllowedIPs:          ranges,
				PersistentKeepalive: in.Tunnel.Keepalive,
			})
			p.PeerClusters[peer.PublicKey] = peer.Cluster
		}
		for _, r := range ranges {
			v4 := r.Addr().Is4()
			if len(local) > 0 && !hasFamily(local, v4) {
				p.CannotRoute = append(p.CannotRoute, Unroutable{Prefix: r, Cluster: peer.Cluster,
					Reason: "this cluster has no " + fam[v4] + " pod range: its pods have no address of that family"})
			}
			hop, ok := hops[v4]
			route := desired.Route{Dst: r}
			if in.Role == RoleGateway {
				route.Dev = in.Tunnel.Interface
				if !ok {
					p.WorkersCannotRoute = append(p.WorkersCannotRoute, Unroutable{Prefix: r, Cluster: peer.Cluster,
						Reason: "the active gateway " + in.Node + " has no " + fam[v4] + " InternalIP: only its own pods reach this range"})
				}
			} else {
				if !ok {
					p.CannotRoute = append(p.CannotRoute, Unroutable{Prefix: r, Cluster: peer.Cluster,
						Reason: "the active gateway has no " + fam[v4] + " InternalIP"})
					continue
				}
				route.Via = hop
			}
			p.Routes.Routes = append(p.Routes.Routes, route)
			p.Filter.RemotePodCIDRs = append(p.Filter.RemotePodCIDRs, r)
		}
	}
	byPrefix := func(a, b Unroutable) int { return prefix.Compare(a.Prefix, b.Prefix) }
	slices.SortStableFunc(p.CannotRoute, byPrefix)
	slices.SortStableFunc(p.WorkersCannotRoute, byPrefix)
	slices.SortFunc(p.Filter.RemotePodCIDRs, prefix.Compare)
	slices.SortFunc(p.Routes.Routes, func(a, b desired.Route) int { return prefix.Compare(a.Dst, b.Dst) })
	if in.Role == RoleGateway {
		p.Host.IPv4 = p.Host.IPv4 || hasFamily(p.Filter.RemotePodCIDRs, true)
		p.Host.IPv6 = p.Host.IPv6 || hasFamily(p.Filter.RemotePodCIDRs, false)
	}
	return p
}

// usablePeers sorts the directory by cluster and sets aside peers that the
// tunnel could not converge to: no key, our own key, a key used twice, no
// range, or a range overlapping ours or another peer's (of overlapping
// owners, this cluster wins, then the first cluster by name).
func usablePeersRef(in Inputs, local []netip.Prefix) ([]Peer, []InvalidPeer) {
	peers := slices.Clone(in.Peers)
	slices.SortFunc(peers, func(a, b Peer) int { return cmp.Compare(a.Cluster, b.Cluster) })
	var self wgtypes.Key
	if in.PrivateKey != (wgtypes.Key{}) {
		self = in.PrivateKey.PublicKey()
	}
	reasons := make([]string, len(peers))
	keys := make(map[wgtypes.Key]string, len(peers))
	type owned struct {
		p     netip.Prefix
		owner int // -1 is this cluster, else index into peers
	}
	all := make([]owned, 0, len(peers)+len(local))
	for _, l := range local {
		all = append(all, owned{l, -1})
	}
	for i, peer := range peers {
		ranges := canonicalRef(peer.PodCIDRs)
		// Only the gateway needs keys: other nodes route by range alone.
		gw := in.Role == RoleGateway
		switch {
		case len(ranges) == 0:
			reasons[i] = "no pod range assigned by the hub"
		case gw && peer.PublicKey == (wgtypes.Key{}):
			reasons[i] = fmt.Sprintf("active gateway %q has no public key", peer.Gateway)
		case gw && self != (wgtypes.Key{}) && peer.PublicKey == self:
			reasons[i] = fmt.Sprintf("active gateway %q uses this cluster's own public key", peer.Gateway)
		case gw && keys[peer.PublicKey] != "":
			reasons[i] = fmt.Sprintf("active gateway %q uses the same public key as cluster %s", peer.Gateway, keys[peer.PublicKey])
		default:
			keys[peer.PublicKey] = peer.Cluster
			for _, r := range ranges {
				all = append(all, owned{r, i})
			}
		}
	}
	// Prefixes are either nested or disjoint. Sorted by first address, the
	// prefixes a prefix overlaps are its ancestors, which a stack of open
	// ranges holds: O(n log n) where pairwise checks would be quadratic at
	// 10,000 peers. Conflicts are then settled in priority order: this
	// cluster first, then peers by name; a peer loses only to a winner.
	slices.SortFunc(all, func(a, b owned) int { return prefix.Compare(a.p, b.p) })
	conflicts := map[int][]owned{}
	var stack []owned
	for _, o := range all {
		for len(stack) > 0 {
			top := stack[len(stack)-1]
			if top.p.Addr().BitLen() == o.p.Addr().BitLen() && lastAddrRef(top.p).Compare(o.p.Addr()) >= 0 {
				break
			}
			stack = stack[:len(stack)-1]
		}
		for _, anc := range stack {
			if anc.owner != o.owner {
				conflicts[o.owner] = append(conflicts[o.owner], owned{o.p, anc.owner})
				conflicts[anc.owner] = append(conflicts[anc.owner], owned{anc.p, o.owner})
			}
		}
		stack = append(stack, o)
	}
	for i := range peers {
		if reasons[i] != "" {
			continue
		}
		for _, c := range conflicts[i] {
			if c.owner == -1 {
				reasons[i] = fmt.Sprintf("pod range %s overlaps this cluster's range", c.p)
				break
			}
			if c.owner < i && reasons[c.owner] == "" {
				reasons[i] = fmt.Sprintf("pod range %s overlaps cluster %s", c.p, peers[c.owner].Cluster)
				break
			}
		}
	}
	var (
		out     []Peer
		skipped []InvalidPeer
	)
	for i, peer := range peers {
		if reasons[i] != "" {
			skipped = append(skipped, InvalidPeer{
				Cluster: peer.Cluster, Gateway: peer.Gateway,
				PodCIDRs: prefixStrings(peer.PodCIDRs), Message: reasons[i],
			})
			continue
		}
		out = append(out, peer)
	}
	return out, skipped
}

func lastAddrRef(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	b := a.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}

func canonicalRef(in []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if p.IsValid() {
			out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked())
		}
	}
	slices.SortFunc(out, prefix.Compare)
	return slices.Compact(out)
}

func TestMappedRanges(t *testing.T) {
	k, _ := wgtypes.GeneratePrivateKey()
	p := Compute(Inputs{Role: RoleGateway, LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("::ffff:10.1.0.0/112")},
		Tunnel: Tunnel{Interface: "wg0"}, PrivateKey: k,
		Peers: []Peer{{Cluster: "b", PublicKey: k.PublicKey(), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("::ffff:10.2.0.0/112")}}}})
	if got := fmt.Sprint(p.Filter.LocalPodCIDRs); got != "[10.1.0.0/16]" {
		t.Errorf("local %s, want [10.1.0.0/16]", got)
	}
	// The peer uses our own key: skipped, with its range shown as given.
	if len(p.Skipped) != 1 || p.Skipped[0].PodCIDRs[0] != "::ffff:10.2.0.0/112" {
		t.Errorf("skipped %+v", p.Skipped)
	}
	p = Compute(Inputs{Role: RoleGateway, LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")},
		Tunnel: Tunnel{Interface: "wg0"}, PrivateKey: k,
		Peers: []Peer{{Cluster: "b", PublicKey: key2().PublicKey(), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("::ffff:10.2.0.0/112")}}}})
	if len(p.Routes.Routes) != 1 || p.Routes.Routes[0] != (desired.Route{Dst: netip.MustParsePrefix("10.2.0.0/16"), Dev: "wg0"}) ||
		p.Tunnel.Peers[0].AllowedIPs[0] != netip.MustParsePrefix("10.2.0.0/16") {
		t.Errorf("mapped peer range: routes %+v", p.Routes.Routes)
	}
}

func key2() wgtypes.Key {
	k, _ := wgtypes.GeneratePrivateKey()
	return k
}
