package plan

import (
	"fmt"

	"github.com/archipelago-mesh/archipelago/agent/desired"
)

// Overheads of the encapsulations the data path uses, in bytes: what each
// adds to a packet on the underlay.
const (
	// WireGuardOverheadIPv4 is the outer IPv4 header (20), UDP (8) and
	// WireGuard's data header and authentication tag (32).
	WireGuardOverheadIPv4 = 60
	// WireGuardOverheadIPv6 is the same with an outer IPv6 header (40).
	WireGuardOverheadIPv6 = 80
	// MinMTU is IPv6's minimum link MTU: the tunnel carries IPv6 pod
	// traffic, so its MTU never goes below it.
	MinMTU = 1280
	// MaxMTU is the largest tunnel MTU the agent sets.
	MaxMTU = 65535
)

// MTU sources, as reported in status.
const (
	// MTUFromClusterSet: spec.tunnel.mtu of the ClusterSet sets it.
	MTUFromClusterSet = "ClusterSet"
	// MTUFromUnderlay: derived from the interface that carries the tunnel.
	MTUFromUnderlay = "Underlay"
	// MTUDefault: neither is known (the underlay could not be read).
	MTUDefault = "Default"
)

// Underlay is the interface that carries a node's tunnel traffic: the one
// holding the address it sends from (its InternalIP).
type Underlay struct {
	// Interface is the link's name; empty when unknown.
	Interface string
	// MTU is the link's MTU (or the route's, when lower); 0 when unknown.
	MTU int
	// IPv6 is true when the tunnel's outer packets are IPv6.
	IPv6 bool
}

// MTUDecision is the tunnel MTU a node uses and why.
type MTUDecision struct {
	// MTU is the effective tunnel MTU.
	MTU int
	// Source is MTUFromClusterSet, MTUFromUnderlay or MTUDefault.
	Source string
	// Underlay is what it was derived from (set when it was read).
	Underlay Underlay
	// Message explains the value in one sentence.
	Message string
}

// WireGuardOverhead is what WireGuard adds on an underlay of the family.
func WireGuardOverhead(ipv6 bool) int {
	if ipv6 {
		return WireGuardOverheadIPv6
	}
	return WireGuardOverheadIPv4
}

// TunnelMTU decides the WireGuard device's MTU: the ClusterSet's setting
// when it is not 0, else the underlay's MTU less WireGuard's overhead for
// the underlay's family (never below MinMTU nor above MaxMTU), else
// desired.DefaultMTU when the underlay is not known.
func TunnelMTU(setting int, u Underlay) MTUDecision {
	d := MTUDecision{Underlay: u}
	fam := "IPv4"
	if u.IPv6 {
		fam = "IPv6"
	}
	switch {
	case setting != 0:
		d.MTU, d.Source = setting, MTUFromClusterSet
		d.Message = "set by the ClusterSet's spec.tunnel.mtu"
		if u.MTU > 0 && setting > u.MTU-WireGuardOverhead(u.IPv6) {
			d.Message += fmt.Sprintf("; larger than the %d bytes the underlay %s (MTU %d, %s) leaves: large packets are fragmented or dropped on the way",
				u.MTU-WireGuardOverhead(u.IPv6), u.Interface, u.MTU, fam)
		}
	case u.MTU > 0:
		d.MTU, d.Source = u.MTU-WireGuardOverhead(u.IPv6), MTUFromUnderlay
		d.Message = fmt.Sprintf("underlay %s MTU %d less WireGuard's %d bytes over %s", u.Interface, u.MTU, WireGuardOverhead(u.IPv6), fam)
		if d.MTU < MinMTU {
			d.MTU = MinMTU
			d.Message += fmt.Sprintf(" is below IPv6's minimum: %d, the outer packets of large ones are fragmented", MinMTU)
		}
		d.MTU = min(d.MTU, MaxMTU)
	default:
		d.MTU, d.Source = desired.DefaultMTU, MTUDefault
		d.Message = fmt.Sprintf("the underlay interface is not known: %d fits a 1500-byte path", desired.DefaultMTU)
	}
	return d
}

// wireGuardPadding is the multiple WireGuard pads a packet's plaintext to
// (never beyond the device's MTU).
const wireGuardPadding = 16

// PathMTU is the route MTU of a peer's ranges on the gateway: 0 (the
// device's MTU applies) when the peer's tunnel MTU is not known or is the
// same as this gateway's, else the smaller of the two rounded down to a
// multiple of 16, never below MinMTU. Both ends compute the same value, so
// the MSS each gateway's clamp writes into a SYN (the route's MTU) is the
// same in both directions.
//
// Why the rounding: WireGuard pads every packet to a multiple of 16 bytes,
// up to the MTU of the device that sends it (wireguard-go, the userspace
// device; kernel WireGuard pads up to the route's MTU). A gateway whose
// device MTU is 1440 sends a 1340-byte packet as 1344 bytes of ciphertext,
// four bytes too many for a peer whose underlay leaves room for 1340. A
// multiple of 16 is never padded.
func PathMTU(own, peer int) int {
	if own <= 0 || peer <= 0 || own == peer {
		return 0
	}
	m := min(own, peer) / wireGuardPadding * wireGuardPadding
	return max(m, MinMTU)
}
