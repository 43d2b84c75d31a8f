package plan

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/desired"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/prefix"
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
	// MTU of the tunnel interface (the ClusterSet's spec.tunnel.mtu); 0
	// derives it from Inputs.Underlay (TunnelMTU).
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
	// MTU is the tunnel MTU of the member's active gateway; 0 when not
	// known. The gateway routes the member's ranges with PathMTU.
	MTU int
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
	// ActiveGatewayIPs are the active gateway's node addresses, at most one
	// per family counts (the first): the next hop of remote ranges of that
	// family. ActiveGatewayIP is one of them when set. On the gateway they
	// are its own addresses, which decide what the other nodes can route.
	ActiveGatewayIPs []netip.Addr
	// Tunnel are the tunnel settings.
	Tunnel Tunnel
	// Underlay is the interface that carries this node's tunnel traffic;
	// the zero value when it could not be read.
	Underlay Underlay
	// PrivateKey is this node's WireGuard key (gateway only).
	PrivateKey wgtypes.Key
	// Overlay says whether and how worker → gateway traffic is
	// encapsulated (WithOverlay); the zero value routes directly.
	Overlay Overlay
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
	Tunnel *desired.TunnelPlan
	// PeerClusters maps peer public keys to cluster names, for reports.
	PeerClusters map[wgtypes.Key]string
	Routes       desired.RoutePlan
	Filter       desired.FilterPlan
	Host         desired.HostSettings
	// MTU is the tunnel MTU this node uses (device and MSS clamp), and why.
	MTU MTUDecision
	// Overlay is the node's VXLAN device (WithOverlay); nil means none.
	Overlay *desired.OverlayPlan
	// NextHop is the active gateway's address on other nodes (IPv4 when it
	// has one), NextHops its addresses per family (IPv4 first).
	NextHop  netip.Addr
	NextHops []netip.Addr
	// CannotRoute are remote ranges this node does not forward, or whose
	// pods this cluster's pods cannot reach, and why.
	CannotRoute []Unroutable
	// WorkersCannotRoute (gateway only) are the remote ranges the other
	// nodes cannot route via this gateway's addresses, and why.
	WorkersCannotRoute []Unroutable
	// Skipped are peers left out, with the reason.
	Skipped []InvalidPeer
	// Hold repeats Inputs.Hold or says why nothing is routed (no active
	// gateway known yet).
	Hold string
}

// Unroutable is a remote range that cannot be reached, and why.
type Unroutable struct {
	Prefix  netip.Prefix
	Cluster string
	Reason  string
}

// nextHops returns the first IPv4 and IPv6 address of the active gateway.
func nextHops(in Inputs) (v4, v6 netip.Addr) {
	for _, ip := range append([]netip.Addr{in.ActiveGatewayIP}, in.ActiveGatewayIPs...) {
		ip = ip.Unmap()
		switch {
		case !ip.IsValid():
		case ip.Is4() && !v4.IsValid():
			v4 = ip
		case ip.Is6() && !v6.IsValid():
			v6 = ip
		}
	}
	return v4, v6
}

func familyName(v4 bool) string {
	if v4 {
		return "IPv4"
	}
	return "IPv6"
}

// Compute returns the NodePlan for in. It is pure and deterministic: equal
// inputs give equal plans, whatever the order of Peers. The plan shares no
// memory with in.
//
// Compute runs on every event-driven pass of the agent, so it is written to
// be linear after one sort: the directory is sorted once (not at all when it
// comes sorted, as PeersFromDirectory returns it), every range is canonicalised
// once into one backing array, and the routes and filter ranges come out of
// the overlap check already in order.
func Compute(in Inputs) NodePlan {
	p := NodePlan{
		Role:            in.Role,
		TunnelInterface: in.Tunnel.Interface,
		Hold:            in.Hold,
	}
	gw := in.Role == RoleGateway
	local := prefix.Set(in.LocalPodCIDRs)
	p.Filter.LocalPodCIDRs = local
	p.Host.IPv4 = hasFamily(local, true)
	p.Host.IPv6 = hasFamily(local, false)

	d := usablePeers(in, local)
	p.Skipped = d.skipped
	p.MTU = TunnelMTU(in.Tunnel.MTU, in.Underlay)
	if gw {
		p.Tunnel = &desired.TunnelPlan{PrivateKey: in.PrivateKey, ListenPort: in.Tunnel.Port, MTU: p.MTU.MTU}
		p.Filter.TunnelInterface = in.Tunnel.Interface
		p.Filter.MSSClamp = true
		p.Filter.MTU = p.MTU.MTU
		p.Host.TunnelInterface = in.Tunnel.Interface
	}
	p.PeerClusters = map[wgtypes.Key]string{}
	// d.sorted holds every range of the usable peers in prefix order, so
	// routes and filter ranges need no sort of their own. Ranges are unique:
	// equal ranges of two owners are an overlap, and one owner's are
	// deduplicated.
	n := 0
	for _, o := range d.sorted {
		if o.owner >= 0 && d.reasons[o.owner] == "" {
			n++
		}
	}
	if n > 0 {
		// Fail closed: every remote range is unreachable in the agent's
		// table, under its forwarding route when there is one, so that no
		// state of this plan (hold, no gateway, no device) lets it fall
		// through to the main table.
		p.Routes.Unreachable = make([]netip.Prefix, 0, n)
		for _, o := range d.sorted {
			if o.owner >= 0 && d.reasons[o.owner] == "" {
				p.Routes.Unreachable = append(p.Routes.Unreachable, o.p)
			}
		}
	}
	closed := func() NodePlan {
		// Not routing: the ranges stay unreachable and in the no-SNAT sets
		// (a flow opened now must not be masqueraded for its whole life).
		p.Filter.RemotePodCIDRs = slices.Clone(p.Routes.Unreachable)
		return p
	}
	if in.Hold != "" {
		return closed()
	}
	hop4, hop6 := nextHops(in)
	if !gw && !hop4.IsValid() && !hop6.IsValid() {
		if d.usable > 0 {
			p.Hold = "no active gateway known yet"
		}
		return closed()
	}
	for _, h := range []netip.Addr{hop4, hop6} {
		if h.IsValid() && !gw {
			p.NextHops = append(p.NextHops, h)
		}
	}
	if len(p.NextHops) > 0 {
		p.NextHop = p.NextHops[0]
	}
	local4, local6 := p.Host.IPv4, p.Host.IPv6

	if gw && d.usable > 0 {
		// The map of keys that passed the key checks, less the peers that
		// lost an overlap, is exactly the usable peers' keys.
		p.PeerClusters = d.keys
		p.Tunnel.Peers = make([]desired.PeerPlan, 0, d.usable)
		for i, peer := range d.peers {
			if d.reasons[i] != "" {
				continue
			}
			p.Tunnel.Peers = append(p.Tunnel.Peers, desired.PeerPlan{
				PublicKey:           peer.PublicKey,
				Endpoint:            peer.Endpoint,
				AllowedIPs:          d.ranges[i],
				PersistentKeepalive: in.Tunnel.Keepalive,
			})
		}
	}
	if n > 0 {
		p.Routes.Routes = make([]desired.Route, 0, n)
		p.Filter.RemotePodCIDRs = make([]netip.Prefix, 0, n)
	}
	for _, o := range d.sorted {
		if o.owner < 0 || d.reasons[o.owner] != "" {
			continue
		}
		r := o.p
		is4 := r.Addr().Is4()
		cluster := d.peers[o.owner].Cluster
		if len(local) > 0 && ((is4 && !local4) || (!is4 && !local6)) {
			p.CannotRoute = append(p.CannotRoute, Unroutable{Prefix: r, Cluster: cluster,
				Reason: fmt.Sprintf("this cluster has no %s pod range: its pods have no address of that family", familyName(is4))})
		}
		hop := hop6
		if is4 {
			hop = hop4
		}
		route := desired.Route{Dst: r}
		if gw {
			route.Dev = in.Tunnel.Interface
			route.MTU = PathMTU(p.MTU.MTU, d.peers[o.owner].MTU)
			if !hop.IsValid() {
				p.WorkersCannotRoute = append(p.WorkersCannotRoute, Unroutable{Prefix: r, Cluster: cluster,
					Reason: fmt.Sprintf("the active gateway %s has no %s InternalIP: only its own pods reach this range", in.Node, familyName(is4))})
			}
		} else {
			if !hop.IsValid() {
				// No next hop of this family: an IPv6 range behind a
				// gateway with only an IPv4 address is not routable
				// from here (its unreachable route stays).
				p.CannotRoute = append(p.CannotRoute, Unroutable{Prefix: r, Cluster: cluster,
					Reason: fmt.Sprintf("the active gateway has no %s InternalIP", familyName(is4))})
				continue
			}
			route.Via = hop
		}
		p.Routes.Routes = append(p.Routes.Routes, route)
		p.Filter.RemotePodCIDRs = append(p.Filter.RemotePodCIDRs, r)
	}
	if len(p.Routes.Routes) == 0 {
		// As before: no remote range is a nil list, not an empty one.
		p.Routes.Routes, p.Filter.RemotePodCIDRs = nil, nil
	}
	if gw {
		p.Host.IPv4 = p.Host.IPv4 || hasFamily(p.Filter.RemotePodCIDRs, true)
		p.Host.IPv6 = p.Host.IPv6 || hasFamily(p.Filter.RemotePodCIDRs, false)
	}
	return p
}

// owned is a range and who has it: -1 is this cluster, else an index into
// directory.peers.
type owned struct {
	p     netip.Prefix
	owner int
}

// directory is the peer directory sorted by cluster, with each peer's
// canonical ranges and, when it is left out, the reason.
type directory struct {
	peers   []Peer           // sorted by cluster; read only (may be Inputs.Peers itself)
	ranges  [][]netip.Prefix // canonical ranges per peer
	reasons []string         // "" when usable
	usable  int
	// keys maps the keys of the usable peers to their cluster (gateway
	// only).
	keys map[wgtypes.Key]string
	// sorted holds this cluster's ranges and those of every peer that
	// passed the key checks, in prefix order.
	sorted  []owned
	skipped []InvalidPeer
}

func byCluster(a, b Peer) int { return cmp.Compare(a.Cluster, b.Cluster) }

// usablePeers sorts the directory by cluster and sets aside peers that the
// tunnel could not converge to: no key, our own key, a key used twice, no
// range, or a range overlapping ours or another peer's (of overlapping
// owners, this cluster wins, then the first cluster by name).
func usablePeers(in Inputs, local []netip.Prefix) directory {
	peers := in.Peers
	if !slices.IsSortedFunc(peers, byCluster) {
		peers = slices.Clone(peers)
		slices.SortFunc(peers, byCluster)
	}
	// Only the gateway needs keys: other nodes route by range alone.
	gw := in.Role == RoleGateway
	var self wgtypes.Key
	if gw && in.PrivateKey != (wgtypes.Key{}) {
		self = desired.PublicKey(in.PrivateKey)
	}
	d := directory{
		peers:   peers,
		ranges:  make([][]netip.Prefix, len(peers)),
		reasons: make([]string, len(peers)),
	}
	total := 0
	for i := range peers {
		total += len(peers[i].PodCIDRs)
	}
	// One backing array for every peer's canonical ranges; each peer's
	// slice is capped so that appending to it cannot reach its neighbour.
	buf := make([]netip.Prefix, 0, total)
	var keys map[wgtypes.Key]string
	if gw {
		keys = make(map[wgtypes.Key]string, len(peers))
	}
	d.keys = keys
	d.sorted = make([]owned, 0, total+len(local))
	for _, l := range local {
		d.sorted = append(d.sorted, owned{l, -1})
	}
	for i := range peers {
		peer := &peers[i]
		start := len(buf)
		buf = prefix.AppendCanonical(buf, peer.PodCIDRs)
		ranges := buf[start:len(buf):len(buf)]
		d.ranges[i] = ranges
		switch {
		case len(ranges) == 0:
			d.reasons[i] = "no pod range assigned by the hub"
		case gw && peer.PublicKey == (wgtypes.Key{}):
			d.reasons[i] = fmt.Sprintf("active gateway %q has no public key", peer.Gateway)
		case gw && self != (wgtypes.Key{}) && peer.PublicKey == self:
			d.reasons[i] = fmt.Sprintf("active gateway %q uses this cluster's own public key", peer.Gateway)
		case gw && keys[peer.PublicKey] != "":
			d.reasons[i] = fmt.Sprintf("active gateway %q uses the same public key as cluster %s", peer.Gateway, keys[peer.PublicKey])
		default:
			if gw {
				keys[peer.PublicKey] = peer.Cluster
			}
			for _, r := range ranges {
				d.sorted = append(d.sorted, owned{r, i})
			}
		}
	}
	// Prefixes are either nested or disjoint. Sorted by first address, the
	// prefixes a prefix overlaps are its ancestors, which a stack of open
	// ranges holds: O(n log n) where pairwise checks would be quadratic at
	// 10,000 peers. Conflicts are then settled in priority order: this
	// cluster first, then peers by name; a peer loses only to a winner.
	slices.SortFunc(d.sorted, func(a, b owned) int { return prefix.Compare(a.p, b.p) })
	var conflicts map[int][]owned // rare: made on the first one
	var stack []owned
	for _, o := range d.sorted {
		// o starts at or after every range on the stack, so it overlaps one
		// exactly when that range contains its first address.
		for len(stack) > 0 && !stack[len(stack)-1].p.Contains(o.p.Addr()) {
			stack = stack[:len(stack)-1]
		}
		for _, anc := range stack {
			if anc.owner != o.owner {
				if conflicts == nil {
					conflicts = map[int][]owned{}
				}
				conflicts[o.owner] = append(conflicts[o.owner], owned{o.p, anc.owner})
				conflicts[anc.owner] = append(conflicts[anc.owner], owned{anc.p, o.owner})
			}
		}
		stack = append(stack, o)
	}
	for i := range peers {
		if d.reasons[i] != "" {
			continue
		}
		for _, c := range conflicts[i] {
			if c.owner == -1 {
				d.reasons[i] = fmt.Sprintf("pod range %s overlaps this cluster's range", c.p)
				break
			}
			if c.owner < i && d.reasons[c.owner] == "" {
				d.reasons[i] = fmt.Sprintf("pod range %s overlaps cluster %s", c.p, peers[c.owner].Cluster)
				break
			}
		}
	}
	for i := range peers {
		if d.reasons[i] == "" {
			d.usable++
			continue
		}
		peer := &peers[i]
		if gw && keys[peer.PublicKey] == peer.Cluster && len(conflicts[i]) > 0 {
			// Passed the key checks, then lost an overlap.
			delete(keys, peer.PublicKey)
		}
		d.skipped = append(d.skipped, InvalidPeer{
			Cluster: peer.Cluster, Gateway: peer.Gateway,
			PodCIDRs: prefixStrings(peer.PodCIDRs), Message: d.reasons[i],
		})
	}
	return d
}

// PeersFromDirectory builds the peers of this cluster from its ClusterSet's
// peer directory (the hub's ClusterSetPeers). self is this cluster's name.
// Withdrawn peers (members being deleted) are left out of peers and returned
// by name, sorted, so that the gateway can acknowledge that it dropped them.
// resolve, when not nil, turns a DNS endpoint host into an address; without
// it DNS endpoints are ignored.
func PeersFromDirectory(self string, dir []meshv1.ClusterSetPeer, resolve func(host string) (netip.Addr, error)) (peers []Peer, invalid []InvalidPeer, withdrawn []string) {
	for i := range dir {
		p := &dir[i]
		if p.Name == self {
			continue
		}
		if p.Spec.Withdrawn {
			withdrawn = append(withdrawn, p.Name)
			continue
		}
		gwNode := ""
		if p.Spec.Gateway != nil {
			gwNode = p.Spec.Gateway.Node
		}
		bad := func(format string, args ...any) {
			invalid = append(invalid, InvalidPeer{Cluster: p.Name, Gateway: gwNode, PodCIDRs: slices.Clone(p.Spec.PodCIDRs),
				Message: fmt.Sprintf(format, args...)})
		}
		if len(p.Spec.PodCIDRs) == 0 {
			bad("no pod range assigned by the hub")
			continue
		}
		var ranges []netip.Prefix
		var parseErr error
		for _, s := range p.Spec.PodCIDRs {
			pr, err := netip.ParsePrefix(s)
			if err != nil {
				parseErr = fmt.Errorf("pod range %q: %w", s, err)
				break
			}
			ranges = append(ranges, pr.Masked())
		}
		if parseErr != nil {
			bad("%v", parseErr)
			continue
		}
		if p.Spec.Gateway == nil {
			bad("no active gateway in the hub's directory yet")
			continue
		}
		gw := p.Spec.Gateway
		key, err := wgtypes.ParseKey(gw.PublicKey)
		if err != nil || key == (wgtypes.Key{}) {
			bad("active gateway %q: invalid public key", gw.Node)
			continue
		}
		ep, err := endpoint(gw.Endpoints, resolve)
		if err != nil {
			bad("active gateway %q: %v", gw.Node, err)
			continue
		}
		peers = append(peers, Peer{Cluster: p.Name, PodCIDRs: ranges, Gateway: gw.Node, PublicKey: key, Endpoint: ep, MTU: int(gw.MTU)})
	}
	slices.SortFunc(peers, func(a, b Peer) int { return cmp.Compare(a.Cluster, b.Cluster) })
	slices.SortFunc(invalid, func(a, b InvalidPeer) int { return cmp.Compare(a.Cluster, b.Cluster) })
	slices.Sort(withdrawn)
	return peers, invalid, withdrawn
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
