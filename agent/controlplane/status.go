package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/agent/plan"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// readStatus is the non-elected agents' view: everything comes from the
// local membership status the elected agent wrote; the hub is not read. A
// new active gateway that has not read the hub yet (it took over while the
// hub is unreachable, or just started) uses the same view: the status holds
// every peer's ranges, public key and endpoint.
func (a *Agent) readStatus(_ context.Context, s *scope) error {
	if s.role == meshv1.RoleGateway && s.dir != nil {
		return nil
	}
	d, err := a.localDirectory(s.membership)
	if err != nil || d == nil {
		return err
	}
	s.dir = d
	if s.role != meshv1.RoleGateway {
		if c := meta.FindStatusCondition(s.membership.Status.Conditions, meshv1.MembershipCIDRsMatch); c != nil && c.Status == metav1.ConditionFalse {
			s.hold = c.Message
		}
	}
	return nil
}

// cidrsMatch checks every Node's spec.podCIDRs against the assigned ranges.
func (a *Agent) cidrsMatch(ctx context.Context, local []netip.Prefix) (bool, string, error) {
	nodes := &corev1.NodeList{}
	if err := a.member.List(ctx, nodes); err != nil {
		return false, "", fmt.Errorf("list nodes: %w", err)
	}
	var bad []string
	for _, n := range nodes.Items {
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		ranges, err := plan.ParsePrefixes(cidrs)
		if err != nil {
			bad = append(bad, fmt.Sprintf("node %s: %v", n.Name, err))
			continue
		}
		if r, ok := plan.Inside(ranges, local); !ok {
			bad = append(bad, fmt.Sprintf("node %s podCIDR %s", n.Name, r))
		}
	}
	slices.Sort(bad)
	if len(bad) > 0 {
		const max = 5
		more := ""
		if len(bad) > max {
			more = fmt.Sprintf(" and %d more", len(bad)-max)
			bad = bad[:max]
		}
		return false, fmt.Sprintf("not routing: %s outside the assigned ranges %s%s; the cluster's pod CIDR must lie inside the range the hub assigned",
			strings.Join(bad, ", "), prefixList(local), more), nil
	}
	return true, fmt.Sprintf("every node's podCIDRs lie inside %s", prefixList(local)), nil
}

func prefixList(ps []netip.Prefix) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return strings.Join(out, ",")
}

func (a *Agent) applyPlan(ctx context.Context, s *scope) error {
	if s.dir == nil {
		return nil // nothing known yet: leave the kernel as it is
	}
	in := plan.Inputs{
		Node: a.cfg.NodeName, Role: s.role, LocalPodCIDRs: s.dir.local, Peers: s.dir.peers,
		Tunnel: s.dir.tunnel, Hold: s.hold,
	}
	if s.role == meshv1.RoleGateway {
		ok, msg, err := a.cidrsMatch(ctx, s.dir.local)
		if err != nil {
			return err
		}
		s.cidrsOK, s.cidrsMsg = ok, msg
		if !ok {
			in.Hold = msg
		}
		key, err := a.loadKey(ctx)
		if err != nil {
			return err
		}
		in.PrivateKey = key
		in.Peers, s.restart = a.followRoaming(s.dir.peers)
	} else if ips := a.activeGatewayIPs(ctx, s); len(ips) > 0 && !slices.ContainsFunc(ips, func(ip netip.Addr) bool { return slices.Contains(nodeIPs(s.node), ip) }) {
		// Right after this node lost the election the holder may not be
		// known yet; routing to itself would loop.
		in.ActiveGatewayIPs = ips
	}
	if s.role == meshv1.RoleGateway {
		// What the other nodes can route via this gateway.
		in.ActiveGatewayIPs = nodeIPs(s.node)
	}
	if s.role == meshv1.RoleStandby {
		key, err := a.loadKey(ctx)
		if err != nil {
			return err
		}
		in.PrivateKey = key
	}
	if s.role == meshv1.RoleGateway || s.role == meshv1.RoleStandby {
		in.Underlay = a.underlay(s, in.Peers)
	}
	p := plan.WithStandbyDevice(plan.Compute(in), in)
	if mode := a.cfg.Encapsulation; mode != "" && mode != plan.EncapDirect {
		in.Overlay = a.overlayInputs(ctx, s, p)
	}
	s.plan = plan.WithOverlay(p, in)
	if s.role == meshv1.RoleGateway && !a.stillLeading() {
		// Stepped down while this pass ran: never apply a gateway plan
		// after that; the pass the elector triggered applies the standby's.
		return errStop
	}
	a.mu.Lock()
	a.peerClusters = s.plan.PeerClusters
	a.mu.Unlock()
	res, err := a.cfg.Datapath.Apply(ctx, s.plan)
	s.applied, s.applyErr = true, err
	reconcileSeconds.Set(res.Duration.Seconds())
	peersTouched.Add(float64(res.PeersTouched()))
	if s.role == meshv1.RoleGateway {
		isGateway.Set(1)
	} else {
		isGateway.Set(0)
	}
	if err != nil {
		s.errs = append(s.errs, fmt.Errorf("apply data path: %w", err))
	} else if r, ok := a.cfg.Datapath.(peerRestarter); ok && len(s.restart) > 0 {
		if err := r.RestartPeers(s.restart); err != nil {
			s.errs = append(s.errs, err)
		}
	}
	return nil
}

// cannotRoute is the status form of the plan's unroutable ranges, sorted by
// range; nil when there are none.
func cannotRoute(us []plan.Unroutable) []meshv1.UnroutableRange {
	var out []meshv1.UnroutableRange
	for _, u := range us {
		out = append(out, meshv1.UnroutableRange{CIDR: u.Prefix.String(), Cluster: u.Cluster, Reason: u.Reason})
	}
	slices.SortStableFunc(out, func(a, b meshv1.UnroutableRange) int { return strings.Compare(a.CIDR, b.CIDR) })
	return out
}

// linkProber is a Datapath that tells on-link addresses and paths
// (*dataplane.Dataplane is one).
type linkProber interface {
	underlayProber
	OnLink(ip netip.Addr) (bool, error)
}

// overlayInputs are the facts the overlay decision needs: this node's
// address, whether the active gateway's address of that family is on-link,
// and the path the VXLAN packets take (for the device's MTU). Two route
// lookups, no packet.
func (a *Agent) overlayInputs(ctx context.Context, s *scope, p plan.NodePlan) plan.Overlay {
	o := plan.Overlay{Mode: a.cfg.Encapsulation, Local: nodeIP(s.node)}
	if s.role == meshv1.RoleGateway {
		o.Senders = a.nodeAddresses(ctx)
	}
	lp, ok := a.cfg.Datapath.(linkProber)
	if !ok || !o.Local.IsValid() {
		return o
	}
	var gw netip.Addr
	for _, h := range p.NextHops {
		if h.Is4() == o.Local.Is4() {
			gw = h
		}
	}
	var eps []netip.Addr
	if gw.IsValid() {
		on, err := lp.OnLink(gw)
		if err != nil {
			a.log.V(1).Info("Cannot tell whether the gateway is on-link", "gateway", gw, "error", err.Error())
		}
		o.GatewayOnLink = on || err != nil && o.Mode == plan.EncapAuto
		eps = []netip.Addr{gw}
	}
	if u, err := lp.Underlay(o.Local, eps); err == nil {
		o.Underlay = u
	}
	return o
}

// nodeAddresses are the InternalIPs of the cluster's Nodes (from the
// cache): who may send to the gateway's VXLAN port. A failed list keeps
// the last addresses read rather than shutting every off-link worker out.
func (a *Agent) nodeAddresses(ctx context.Context) []netip.Addr {
	nodes := &corev1.NodeList{}
	if err := a.member.List(ctx, nodes); err != nil {
		a.log.Info("Cannot list Nodes for the VXLAN senders; keeping the last ones", "error", err.Error())
		return a.overlaySenders
	}
	var out []netip.Addr
	for _, n := range nodes.Items {
		for _, ad := range n.Status.Addresses {
			if ad.Type != corev1.NodeInternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(ad.Address); err == nil {
				out = append(out, ip.Unmap())
			}
		}
	}
	a.overlaySenders = out
	return out
}

// underlayProber is a Datapath that finds the interface under the tunnel
// (*dataplane.Dataplane is one).
type underlayProber interface {
	Underlay(local netip.Addr, endpoints []netip.Addr) (plan.Underlay, error)
}

// underlayCache is the last underlay read: it is read again once per
// Resync (an interface's MTU rarely changes) or when the peers' endpoints
// change, not on every event.
type underlayCache struct {
	ip        netip.Addr
	endpoints []netip.Addr
	at        time.Time
	u         plan.Underlay
	err       string
}

// underlay is the interface that carries this node's tunnel (towards the
// peers' endpoints, else the one with its InternalIP), for the derived
// tunnel MTU; the zero value when the data path cannot say.
func (a *Agent) underlay(s *scope, peers []plan.Peer) plan.Underlay {
	p, ok := a.cfg.Datapath.(underlayProber)
	if !ok {
		return plan.Underlay{}
	}
	ip := nodeIP(s.node)
	var eps []netip.Addr
	for _, peer := range peers {
		if peer.Endpoint.IsValid() {
			eps = append(eps, peer.Endpoint.Addr().Unmap())
		}
	}
	slices.SortFunc(eps, netip.Addr.Compare)
	eps = slices.Compact(eps)
	a.mu.Lock()
	c := a.underlayRead
	a.mu.Unlock()
	if !c.at.IsZero() && c.ip == ip && slices.Equal(c.endpoints, eps) && s.now.Sub(c.at) < a.cfg.Resync {
		return c.u
	}
	u, err := p.Underlay(ip, eps)
	n := underlayCache{ip: ip, endpoints: eps, at: s.now, u: u}
	if err != nil {
		n.err = err.Error()
		if n.err != c.err {
			a.log.Info("Cannot find the interface under the tunnel; the tunnel MTU is the default", "address", ip, "error", n.err)
		}
	} else if u != c.u {
		a.log.Info("Interface under the tunnel", "interface", u.Interface, "mtu", u.MTU, "ipv6", u.IPv6)
	}
	a.mu.Lock()
	a.underlayRead = n
	a.mu.Unlock()
	return u
}

// publishStatus is the elected agent's write of ClusterSetMembership.status
// and of its TunnelGateway's status on the hub.
func (a *Agent) publishStatus(ctx context.Context, s *scope) error {
	if s.role != meshv1.RoleGateway {
		return nil
	}
	m := s.membership
	st := *m.Status.DeepCopy()
	st.ObservedGeneration = m.Generation
	gen := m.Generation
	setCond := func(typ string, ok bool, reason, msg string) {
		status := metav1.ConditionFalse
		if ok {
			status = metav1.ConditionTrue
		}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	if s.join.reason != "" {
		setCond(meshv1.MembershipJoined, s.join.ok, s.join.reason, s.join.message)
	}
	if c := s.cred; c != nil {
		setCond(meshv1.MembershipHubCredentials, c.ok, c.reason, c.message)
	}
	if c := s.svc; c != nil {
		setCond(meshv1.MembershipServices, c.ok, c.reason, c.message)
	}
	st.ActiveGateway = a.cfg.NodeName
	if ip := nodeIP(s.node); ip.IsValid() {
		st.ActiveGatewayIP = ip.String()
	}
	st.ActiveGatewayIPs = nil
	for _, ip := range nodeIPs(s.node) {
		st.ActiveGatewayIPs = append(st.ActiveGatewayIPs, ip.String())
	}
	if s.applied {
		st.CannotRoute = cannotRoute(append(slices.Clone(s.plan.CannotRoute), s.plan.WorkersCannotRoute...))
	}
	if s.applied {
		d := s.plan.MTU
		st.TunnelMTU = &meshv1.TunnelMTUStatus{Effective: int32(d.MTU), Source: d.Source, UnderlayInterface: d.Underlay.Interface,
			UnderlayMTU: int32(d.Underlay.MTU), Message: d.Message}
	}
	var summary tunnelSummary
	if d := s.dir; d != nil {
		st.PodCIDRs = slices.Clone(d.localRaw)
		st.HubNamespace = d.namespace
		ts := d.settings
		st.Tunnel = &ts
		if s.applied {
			if s.cidrsOK {
				setCond(meshv1.MembershipCIDRsMatch, true, "Inside", s.cidrsMsg)
			} else {
				setCond(meshv1.MembershipCIDRsMatch, false, "OutsideAssignedRange", s.cidrsMsg)
			}
		}
		dev, err := a.cfg.Datapath.TunnelState()
		if err != nil {
			s.errs = append(s.errs, err)
		}
		st.Peers, summary = a.peerStates(s, d, dev)
		up, down := 0, []string{}
		for _, p := range st.Peers {
			if p.State == meshv1.PeerUp {
				up++
			} else {
				down = append(down, p.Cluster)
			}
		}
		st.ReadyPeers, st.TotalPeers = int32(up), int32(len(st.Peers))
		peersUpMsg := fmt.Sprintf("%d/%d", up, len(st.Peers))
		peersUp.Set(float64(up))
		peersTotal.Set(float64(len(st.Peers)))
		switch {
		case s.applyErr != nil:
			setCond(meshv1.MembershipTunnelsReady, false, "DataPathError", s.applyErr.Error())
		case len(st.Peers) == 0:
			setCond(meshv1.MembershipTunnelsReady, true, "NoPeers", "no other member clusters")
		case len(down) == 0:
			setCond(meshv1.MembershipTunnelsReady, true, "AllPeersUp", peersUpMsg+" peers up")
		default:
			setCond(meshv1.MembershipTunnelsReady, false, "PeersDown", peersUpMsg+" peers up; not up: "+strings.Join(down, ","))
		}
	}
	if !equality.Semantic.DeepEqual(st, m.Status) {
		patch := client.MergeFrom(m.DeepCopy())
		m.Status = st
		if err := a.direct.Status().Patch(ctx, m, patch); err != nil {
			s.errs = append(s.errs, fmt.Errorf("write ClusterSetMembership status: %w", err))
		} else {
			a.mu.Lock()
			a.wroteStatus = m.Status.DeepCopy()
			a.mu.Unlock()
		}
	}
	if gw := s.ownGateway; gw != nil && s.dir != nil {
		a.publishGatewayStatus(ctx, s, gw, summary)
	}
	return nil
}

// tunnelSummary is what the hub learns of this gateway's tunnels: values
// that change only when a tunnel goes up or down, never at a rekey.
type tunnelSummary struct {
	up   int32
	down []string
}

// publishGatewayStatus writes the active gateway's status on the hub: the
// tunnel summary and dropped peers when they change, and the heartbeat
// (lastSeen) at most every ReportInterval otherwise.
func (a *Agent) publishGatewayStatus(ctx context.Context, s *scope, gw *meshv1.TunnelGateway, sum tunnelSummary) {
	a.mu.Lock()
	hub := a.hub
	// A tenth of slack: the resync tick that should carry the heartbeat
	// may run a little before a whole interval has passed.
	due := s.now.Sub(a.lastGW) >= a.cfg.ReportInterval-a.cfg.ReportInterval/10
	a.mu.Unlock()
	if hub == nil {
		return
	}
	dropped := droppedPeers(s, gw)
	same := gw.Status.PeersUp == sum.up && slices.Equal(gw.Status.DownPeers, sum.down) && slices.Equal(gw.Status.DroppedPeers, dropped)
	if same && gw.Status.LastSeen != nil && !due {
		return
	}
	patch := client.MergeFrom(gw.DeepCopy())
	gw.Status.PeersUp, gw.Status.DownPeers, gw.Status.DroppedPeers = sum.up, sum.down, dropped
	now := metav1.NewTime(s.now.Truncate(time.Second))
	gw.Status.LastSeen = &now
	if err := hub.client.Status().Patch(ctx, gw, patch); err != nil {
		s.errs = append(s.errs, fmt.Errorf("write TunnelGateway %s/%s status: %w", gw.Namespace, gw.Name, err))
		return
	}
	a.mu.Lock()
	a.lastGW = s.now
	a.mu.Unlock()
}

// droppedPeers are the withdrawn peers this gateway no longer has in its
// data path. Only a plan applied without error proves that; otherwise the
// earlier acknowledgements of peers still withdrawn stay.
func droppedPeers(s *scope, gw *meshv1.TunnelGateway) []string {
	if s.applied && s.applyErr == nil {
		return slices.Clone(s.dir.withdrawn)
	}
	var out []string
	for _, p := range gw.Status.DroppedPeers {
		if slices.Contains(s.dir.withdrawn, p) {
			out = append(out, p)
		}
	}
	return out
}

// peerStates joins the directory, the plan's skipped peers and the
// device's view into the status' peers (sorted by cluster) and the summary
// for the hub: peers up, and the names of all others (down, connecting or
// unusable), sorted.
func (a *Agent) peerStates(s *scope, d *directory, dev *wgtypes.Device) ([]meshv1.MembershipPeer, tunnelSummary) {
	byKey := map[wgtypes.Key]*wgtypes.Peer{}
	if dev != nil {
		for i := range dev.Peers {
			byKey[dev.Peers[i].PublicKey] = &dev.Peers[i]
		}
	}
	skipped := map[string]string{}
	for _, sk := range s.plan.Skipped {
		skipped[sk.Cluster] = sk.Message
	}
	var out []meshv1.MembershipPeer
	for _, p := range d.peers {
		mp := meshv1.MembershipPeer{Cluster: p.Cluster, Gateway: p.Gateway, State: meshv1.PeerConnecting}
		for _, r := range p.PodCIDRs {
			mp.PodCIDRs = append(mp.PodCIDRs, r.String())
		}
		if p.Endpoint.IsValid() {
			mp.Endpoint = p.Endpoint.String()
			mp.DirectoryEndpoint = mp.Endpoint
		}
		if p.PublicKey != (wgtypes.Key{}) {
			mp.PublicKey = p.PublicKey.String()
		}
		mp.MTU = int32(p.MTU)
		if s.plan.Tunnel != nil {
			mp.PathMTU = int32(plan.PathMTU(s.plan.Tunnel.MTU, p.MTU))
		}
		if msg, ok := skipped[p.Cluster]; ok {
			mp.State, mp.Message = meshv1.PeerInvalid, msg
			out = append(out, mp)
			continue
		}
		switch wp := byKey[p.PublicKey]; {
		case !s.applied || s.hold != "" || s.plan.Hold != "":
			mp.Message = "not routing: " + s.plan.Hold
		case wp == nil:
			mp.Message = "peer not configured on the device yet"
		default:
			if wp.Endpoint != nil {
				mp.Endpoint = wp.Endpoint.String()
			}
			if !wp.LastHandshakeTime.IsZero() {
				hs := metav1.NewTime(wp.LastHandshakeTime.Truncate(time.Second))
				mp.LatestHandshake = &hs
			}
			if !wp.LastHandshakeTime.IsZero() && s.now.Sub(wp.LastHandshakeTime) < handshakeFresh {
				mp.State = meshv1.PeerUp
			} else {
				mp.Message = "no handshake in the last 3 minutes"
				if mp.Endpoint == "" {
					mp.Message = "waiting for the peer to dial in (it has no endpoint)"
				}
			}
		}
		out = append(out, mp)
	}
	for _, inv := range d.invalid {
		out = append(out, meshv1.MembershipPeer{Cluster: inv.Cluster, PodCIDRs: inv.PodCIDRs, Gateway: inv.Gateway,
			State: meshv1.PeerInvalid, Message: inv.Message})
	}
	slices.SortFunc(out, func(x, y meshv1.MembershipPeer) int { return strings.Compare(x.Cluster, y.Cluster) })
	var sum tunnelSummary
	for _, p := range out {
		if p.State == meshv1.PeerUp {
			sum.up++
		} else {
			sum.down = append(sum.down, p.Cluster)
		}
	}
	return out, sum
}

// reportDebounce is the shortest time between two NodeReport writes: a
// report that flaps is written at most once a second, the last state a
// moment later.
const reportDebounce = time.Second

// publishReport writes the NodeReport annotation when it changed, and
// refreshes lastReconcile at most every ReportInterval.
func (a *Agent) publishReport(ctx context.Context, s *scope) error {
	r := a.cfg.Datapath.Report()
	if !s.applied && r.LastError == "no plan applied yet" {
		switch {
		case s.membership == nil:
			r.LastError = "no ClusterSetMembership " + a.cfg.MembershipName + ": run 'kubectl archipelago join'"
		case s.role == meshv1.RoleGateway:
			r.LastError = "waiting for the hub: " + s.join.message
		default:
			r.LastError = "waiting for the active gateway to publish the membership status"
		}
	}
	cmp := r
	cmp.LastReconcile = metav1.Time{}
	key, _ := json.Marshal(cmp)
	var cur meshv1.NodeReport
	if raw := s.node.Annotations[meshv1.AnnotationDatapath]; raw != "" && json.Unmarshal([]byte(raw), &cur) == nil {
		last := cur.LastReconcile.Time
		cur.LastReconcile = metav1.Time{}
		curKey, _ := json.Marshal(cur)
		if string(curKey) == string(key) && s.now.Sub(last) < a.cfg.ReportInterval {
			return nil
		}
	}
	a.mu.Lock()
	wait := a.lastReport.Add(reportDebounce).Sub(s.now)
	a.mu.Unlock()
	if wait > 0 {
		// Written a moment ago: write this one in a while, unless
		// another pass does first.
		if a.reportPending.CompareAndSwap(false, true) {
			time.AfterFunc(wait, func() {
				a.reportPending.Store(false)
				a.Trigger()
			})
		}
		return nil
	}
	if r.LastReconcile.IsZero() {
		r.LastReconcile = metav1.NewTime(s.now.Truncate(time.Second))
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := a.mergePatchNode(ctx, s.node, map[string]any{meshv1.AnnotationDatapath: string(raw)}); err != nil {
		return err
	}
	a.mu.Lock()
	a.lastReport = s.now
	a.mu.Unlock()
	return nil
}

func (a *Agent) mergePatchNode(ctx context.Context, node *corev1.Node, annotations map[string]any) error {
	data, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return err
	}
	if err := a.direct.Patch(ctx, node, client.RawPatch(types.MergePatchType, data)); err != nil {
		return fmt.Errorf("annotate node %s: %w", node.Name, err)
	}
	return nil
}
