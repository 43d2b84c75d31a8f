package controlplane

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/plan"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// localDirectory is the peer directory as the active gateway last wrote it
// into the member's ClusterSetMembership.status: ranges, and (since the
// status carries them) each peer's public key and directory endpoint, so a
// standby that takes over while the hub is unreachable builds the same
// tunnels. nil when the status has no ranges yet.
func (a *Agent) localDirectory(m *meshv1.ClusterSetMembership) (*directory, error) {
	st := m.Status
	if len(st.PodCIDRs) == 0 {
		return nil, nil // not joined yet: nothing to route
	}
	local, err := plan.ParsePrefixes(st.PodCIDRs)
	if err != nil {
		return nil, fmt.Errorf("membership status: %w", err)
	}
	d := &directory{
		clusterName: m.Spec.ClusterName, namespace: st.HubNamespace,
		local: local, localRaw: slices.Clone(st.PodCIDRs),
		tunnel: plan.Tunnel{Interface: a.cfg.TunnelInterface, Port: plan.DefaultPort, Keepalive: plan.DefaultKeepalive},
	}
	if t := st.Tunnel; t != nil {
		d.settings = *t.DeepCopy()
		if t.Port != 0 {
			d.tunnel.Port = int(t.Port)
		}
		if t.MTU != 0 {
			d.tunnel.MTU = int(t.MTU)
		}
		if t.PersistentKeepaliveSeconds != nil {
			d.tunnel.Keepalive = t.Keepalive()
		}
	}
	for _, p := range st.Peers {
		if p.State == meshv1.PeerInvalid || len(p.PodCIDRs) == 0 {
			d.invalid = append(d.invalid, plan.InvalidPeer{Cluster: p.Cluster, PodCIDRs: slices.Clone(p.PodCIDRs), Gateway: p.Gateway, Message: p.Message})
			continue
		}
		ranges, err := plan.ParsePrefixes(p.PodCIDRs)
		if err != nil {
			continue
		}
		peer := plan.Peer{Cluster: p.Cluster, PodCIDRs: ranges, Gateway: p.Gateway, MTU: int(p.MTU)}
		if k, err := wgtypes.ParseKey(p.PublicKey); err == nil {
			peer.PublicKey = k
		}
		if ep, err := netip.ParseAddrPort(p.DirectoryEndpoint); err == nil {
			peer.Endpoint = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
		}
		d.peers = append(d.peers, peer)
	}
	slices.SortFunc(d.peers, func(x, y plan.Peer) int { return strings.Compare(x.Cluster, y.Cluster) })
	return d, nil
}

// roamed is what followRoaming remembers of a peer: the endpoint the
// directory gave last time.
type roamed struct {
	directory netip.AddrPort
}

// followRoaming lets WireGuard's roaming win over an unchanged directory:
// when a remote member's gateway fails over with its shared identity, the
// new gateway's handshake moves the peer's endpoint on our device at once,
// long before the hub's directory names the new endpoint (or while the hub
// is down). A full resync must not put the dead endpoint back. So while the
// directory's endpoint for a peer is the one it gave last time, and the
// device had a fresh handshake with the peer at another endpoint, the plan
// uses the device's endpoint. A changed directory endpoint is enforced as
// before (that is how a member behind NAT learns a remote's new gateway),
// and the peer's session is restarted (restart lists those peers): the
// session belongs to the remote's old gateway, and the device would go on
// sending keepalives with it instead of a handshake.
func (a *Agent) followRoaming(peers []plan.Peer) (out []plan.Peer, restart []wgtypes.Key) {
	dev, err := a.cfg.Datapath.TunnelState()
	now := a.cfg.Now()
	a.mu.Lock()
	prev := a.roaming
	a.mu.Unlock()
	next := make(map[string]roamed, len(peers))
	out = peers
	cloned := false
	var byKey map[wgtypes.Key]*wgtypes.Peer
	if err == nil && dev != nil {
		byKey = make(map[wgtypes.Key]*wgtypes.Peer, len(dev.Peers))
		for i := range dev.Peers {
			byKey[dev.Peers[i].PublicKey] = &dev.Peers[i]
		}
	}
	for i, p := range peers {
		next[p.Cluster] = roamed{directory: p.Endpoint}
		last, seen := prev[p.Cluster]
		wp := byKey[p.PublicKey]
		fresh := wp != nil && wp.Endpoint != nil && !wp.LastHandshakeTime.IsZero() && now.Sub(wp.LastHandshakeTime) < handshakeFresh
		if !p.Endpoint.IsValid() {
			continue
		}
		if seen && last.directory != p.Endpoint {
			if wp != nil && last.directory.IsValid() && (!fresh || udpAddrPort(wp.Endpoint) != p.Endpoint) {
				restart = append(restart, p.PublicKey)
			}
			continue
		}
		if !fresh {
			continue
		}
		ep := udpAddrPort(wp.Endpoint)
		if !ep.IsValid() || ep == p.Endpoint {
			continue
		}
		if !cloned {
			out, cloned = slices.Clone(peers), true
		}
		out[i].Endpoint = ep
	}
	a.mu.Lock()
	a.roaming = next
	a.mu.Unlock()
	return out, restart
}

func udpAddrPort(u *net.UDPAddr) netip.AddrPort {
	ap := u.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
