package desired

import "net/netip"

// FilterPlan is the desired packet filter of one node.
type FilterPlan struct {
	// LocalPodCIDRs are the pod ranges of this cluster (all of them, not
	// only this node's: a gateway forwards traffic of every node's pods).
	LocalPodCIDRs []netip.Prefix
	// RemotePodCIDRs are the pod ranges of all other member clusters.
	RemotePodCIDRs []netip.Prefix
	// TunnelInterface is the WireGuard interface; empty on non-gateway nodes.
	TunnelInterface string
	// MSSClamp clamps the MSS of TCP SYNs through TunnelInterface (both
	// ways) to MTU less the IP and TCP headers, or to the route's MTU when
	// MTU is 0. Ignored when TunnelInterface is empty. The kernel only
	// ever lowers an MSS.
	MSSClamp bool
	// MTU is the tunnel's effective MTU that MSSClamp clamps to.
	MTU int
	// OverlayPort is the UDP port of the receiving VXLAN device of a
	// gateway candidate (0: none). Only OverlaySenders may send to it:
	// what the device decapsulates is forwarded like traffic from the
	// node's LAN, so anyone else reaching the port could inject packets
	// with this cluster's pod addresses into the tunnels.
	OverlayPort int
	// OverlaySenders are the addresses (the cluster's node InternalIPs) the
	// VXLAN port accepts packets from.
	OverlaySenders []netip.Prefix
}
