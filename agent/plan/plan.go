package plan

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	"github.com/archipelago-mesh/archipelago/agent/routing"
	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// Roles of a node, as in NodeReport.
const (
	RoleGateway = meshv1.RoleGateway
	RoleStandby = meshv1.RoleStandby
	RoleWorker  = meshv1.RoleWorker
)

// DefaultPort and DefaultKeepalive are the ClusterSet defaults, used when
// the settings are not known yet.
const (
	DefaultPort      = 51820
	DefaultKeepalive = 25 * time.Second
)

// Tunnel holds the WireGuard settings of the ClusterSet plus the local
// interface name.
type Tunnel struct {
	// Interface is the WireGuard interface on this node (a flag: it must be
	// unique per network namespace and per UAPI socket directory).
	Interface string
	// Port is the UDP listen port.
	Port int
	// MTU of the tunnel interface; wireguard.DefaultMTU when 0.
	MTU int
	// Keepalive is the persistent keepalive sent to every peer.
	Keepalive time.Duration
}

// Peer is one remote member cluster as the hub's directory describes it.
type Peer struct {
	Cluster string
	// PodCIDRs are the member's hub-assigned ranges (MemberCluster.status).
	PodCIDRs []netip.Prefix
	// Gateway is the node name of the member's active gateway.
	Gateway string
	// PublicKey of the member's active gateway.
	PublicKey wgtypes.Key
	// Endpoint is where to send to; the zero value means the peer only
	// dials out (behind NAT) and the device learns its address.
	Endpoint netip.AddrPort
}

// InvalidPeer is a member that cannot be peered with, and why. It is
// reported (membership status, state Invalid) and left out of the plan.
type InvalidPeer struct {
	Cluster  string
	PodCIDRs []string
	Gateway  string
	Message  string
}

// Inputs is everything Compute needs.
type Inputs struct {
	// Node is this node's name.
	Node string
	// Role is RoleGateway (holds the tunnels), RoleStandby or RoleWorker.
	Role string
	// LocalPodCIDRs are this cluster's hub-assigned ranges.
	LocalPodCIDRs []netip.Prefix
	// Peers is the peer directory.
	Peers []Peer
	// ActiveGatewayIP is the active gateway's node address, the next hop of
	// remote ranges on every other node.
	ActiveGatewayIP netip.Addr
	// Tunnel are the tunnel settings.
	Tunnel Tunnel
	// PrivateKey is this node's WireGuard key (gateway only).
	PrivateKey wgtypes.Key
	// Hold, when not empty, says why this node must not route (for example
	// a Node's podCIDR lies outside the assigned ranges): the plan keeps the
	// gateway's device but has no peers, routes or remote ranges.
	Hold string
}

// NodePlan is the desired data path of one node.
type NodePlan struct {
	Role string
	// TunnelInterface is the WireGuard interface name, set on every role so
	// that a non-gateway plan knows which device must not exist.
	TunnelInterface string
	// Tunnel is the WireGuard device's desired state; nil unless Role is
	// gateway.
	Tunnel *wireguard.TunnelPlan
	// PeerClusters maps peer public keys to cluster names, for reports.
	PeerClusters map[wgtypes.Key]string
	Routes       routing.RoutePlan
	Filter       netfilter.FilterPlan
	Host         routing.HostSettings
	// NextHop is the active gateway's address on other nodes.
	NextHop netip.Addr
	// Skipped are peers left out, with the reason.
	Skipped []InvalidPeer
	// Hold repeats Inputs.Hold or says why nothing is routed (no active
	// gateway known yet).
	Hold string
}

// Compute returns the NodePlan for in. It is pure and deterministic: equal
// inputs give equal plans, whatever the order of Peers.
func Compute(in Inputs) NodePlan {
	p := NodePlan{
		Role:            in.Role,
		TunnelInterface: in.Tunnel.Interface,
		Hold:            in.Hold,
		PeerClusters:    map[wgtypes.Key]string{},
	}
	local := canonical(in.LocalPodCIDRs)
	p.Filter.LocalPodCIDRs = local
	p.Host.IPv4 = hasFamily(local, true)
	p.Host.IPv6 = hasFamily(local, false)

	peers, skipped := usablePeers(in, local)
	p.Skipped = skipped
	if in.Role == RoleGateway {
		mtu := in.Tunnel.MTU
		if mtu == 0 {
			mtu = wireguard.DefaultMTU
		}
		p.Tunnel = &wireguard.TunnelPlan{PrivateKey: in.PrivateKey, ListenPort: in.Tunnel.Port, MTU: mtu}
		p.Filter.TunnelInterface = in.Tunnel.Interface
		p.Filter.MSSClamp = true
		p.Host.TunnelInterface = in.Tunnel.Interface
	}
	if in.Hold != "" {
		return p
	}
	if in.Role != RoleGateway && !in.ActiveGatewayIP.IsValid() {
		if len(peers) > 0 {
			p.Hold = "no active gateway known yet"
		}
		return p
	}
	if in.Role != RoleGateway {
		p.NextHop = in.ActiveGatewayIP.Unmap()
	}

	for _, peer := range peers {
		ranges := canonical(peer.PodCIDRs)
		if in.Role == RoleGateway {
			p.Tunnel.Peers = append(p.Tunnel.Peers, wireguard.PeerPlan{
				PublicKey:           peer.PublicKey,
				Endpoint:            peer.Endpoint,
				AllowedIPs:          ranges,
				PersistentKeepalive: in.Tunnel.Keepalive,
			})
			p.PeerClusters[peer.PublicKey] = peer.Cluster
		}
		for _, r := range ranges {
			route := routing.Route{Dst: r}
			if in.Role == RoleGateway {
				route.Dev = in.Tunnel.Interface
			} else {
				if r.Addr().Is4() != p.NextHop.Is4() {
					// No next hop of this family: an IPv6 range behind an
					// IPv4-only gateway address is not routable from here.
					continue
				}
				route.Via = p.NextHop
			}
			p.Routes.Routes = append(p.Routes.Routes, route)
			p.Filter.RemotePodCIDRs = append(p.Filter.RemotePodCIDRs, r)
		}
	}
	slices.SortFunc(p.Filter.RemotePodCIDRs, comparePrefix)
	slices.SortFunc(p.Routes.Routes, func(a, b routing.Route) int { return comparePrefix(a.Dst, b.Dst) })
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
func usablePeers(in Inputs, local []netip.Prefix) ([]Peer, []InvalidPeer) {
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
		ranges := canonical(peer.PodCIDRs)
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
	slices.SortFunc(all, func(a, b owned) int { return comparePrefix(a.p, b.p) })
	conflicts := map[int][]owned{}
	var stack []owned
	for _, o := range all {
		for len(stack) > 0 {
			top := stack[len(stack)-1]
			if top.p.Addr().BitLen() == o.p.Addr().BitLen() && lastAddr(top.p).Compare(o.p.Addr()) >= 0 {
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

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	b := a.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}

// PeersFromMembers builds the peer directory from the hub's MemberClusters.
// self is this cluster's name; members being deleted are left out (the hub
// frees their ranges only after peers dropped them). resolve, when not nil,
// turns a DNS endpoint host into an address; without it DNS endpoints are
// ignored.
func PeersFromMembers(self string, members []meshv1.MemberCluster, resolve func(host string) (netip.Addr, error)) ([]Peer, []InvalidPeer) {
	var (
		peers   []Peer
		invalid []InvalidPeer
	)
	for i := range members {
		m := &members[i]
		if m.Name == self || m.DeletionTimestamp != nil {
			continue
		}
		bad := func(gw, format string, args ...any) {
			invalid = append(invalid, InvalidPeer{Cluster: m.Name, Gateway: gw, PodCIDRs: slices.Clone(m.Status.PodCIDRs),
				Message: fmt.Sprintf(format, args...)})
		}
		if len(m.Status.PodCIDRs) == 0 {
			bad("", "no pod range assigned by the hub")
			continue
		}
		var ranges []netip.Prefix
		var parseErr error
		for _, s := range m.Status.PodCIDRs {
			pr, err := netip.ParsePrefix(s)
			if err != nil {
				parseErr = fmt.Errorf("pod range %q: %w", s, err)
				break
			}
			ranges = append(ranges, pr.Masked())
		}
		if parseErr != nil {
			bad("", "%v", parseErr)
			continue
		}
		var active []meshv1.MemberGateway
		for _, g := range m.Status.Gateways {
			if g.Active {
				active = append(active, g)
			}
		}
		if len(active) != 1 {
			bad("", "%d active gateways in the hub's status (want exactly 1)", len(active))
			continue
		}
		gw := active[0]
		key, err := wgtypes.ParseKey(gw.PublicKey)
		if err != nil || key == (wgtypes.Key{}) {
			bad(gw.Node, "active gateway %q: invalid public key", gw.Node)
			continue
		}
		ep, err := endpoint(gw.Endpoints, resolve)
		if err != nil {
			bad(gw.Node, "active gateway %q: %v", gw.Node, err)
			continue
		}
		peers = append(peers, Peer{Cluster: m.Name, PodCIDRs: ranges, Gateway: gw.Node, PublicKey: key, Endpoint: ep})
	}
	slices.SortFunc(peers, func(a, b Peer) int { return cmp.Compare(a.Cluster, b.Cluster) })
	slices.SortFunc(invalid, func(a, b InvalidPeer) int { return cmp.Compare(a.Cluster, b.Cluster) })
	return peers, invalid
}

// endpoint picks the first usable endpoint, preferring the listed order. No
// endpoints at all is fine (the peer dials out); endpoints that are all
// unusable are an error.
func endpoint(eps []string, resolve func(string) (netip.Addr, error)) (netip.AddrPort, error) {
	if len(eps) == 0 {
		return netip.AddrPort{}, nil
	}
	var errs []string
	for _, e := range eps {
		if ap, err := netip.ParseAddrPort(e); err == nil {
			if ap.Port() == 0 {
				errs = append(errs, e+": port 0")
				continue
			}
			return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
		}
		host, port, ok := strings.Cut(e, ":")
		if !ok || resolve == nil || strings.Contains(port, ":") {
			errs = append(errs, e+": not an IP:port")
			continue
		}
		pn, err := netip.ParseAddrPort("0.0.0.0:" + port)
		if err != nil || pn.Port() == 0 {
			errs = append(errs, e+": bad port")
			continue
		}
		a, err := resolve(host)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", e, err))
			continue
		}
		return netip.AddrPortFrom(a.Unmap(), pn.Port()), nil
	}
	return netip.AddrPort{}, fmt.Errorf("no usable endpoint (%s)", strings.Join(errs, "; "))
}

func canonical(in []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if p.IsValid() {
			out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked())
		}
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func hasFamily(ps []netip.Prefix, v4 bool) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr().Is4() == v4 })
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// ParsePrefixes parses CIDR strings, skipping none: the first error is
// returned.
func ParsePrefixes(ss []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("parse range %q: %w", s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Inside reports the first of ranges that does not lie inside any of
// within, or false when all do.
func Inside(ranges, within []netip.Prefix) (netip.Prefix, bool) {
	for _, r := range ranges {
		ok := false
		for _, w := range within {
			if w.Bits() <= r.Bits() && w.Contains(r.Addr()) {
				ok = true
				break
			}
		}
		if !ok {
			return r, false
		}
	}
	return netip.Prefix{}, true
}
