package plan

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/archipelago-mesh/archipelago/agent/desired"
)

// Encapsulation modes of worker → gateway traffic.
const (
	// EncapDirect routes remote ranges via the gateway's address (it must
	// be on the node's link). The zero value means the same.
	EncapDirect = "direct"
	// EncapVXLAN always sends them through the agent's VXLAN device.
	EncapVXLAN = "vxlan"
	// EncapAuto uses the VXLAN device when the gateway's address is not
	// on-link, and routes directly when it is.
	EncapAuto = "auto"
)

// VXLAN's overhead on the underlay: outer IP, UDP (8), VXLAN (8) and the
// inner Ethernet header (14).
const (
	VXLANOverheadIPv4 = 50
	VXLANOverheadIPv6 = 70
)

// Overlay are the settings and facts WithOverlay needs.
type Overlay struct {
	// Mode is EncapAuto, EncapVXLAN or EncapDirect ("" = direct).
	Mode string
	// Interface, VNI and Port of the VXLAN device; the desired defaults
	// when zero.
	Interface string
	VNI, Port int
	// Local is this node's address the encapsulated packets leave from.
	Local netip.Addr
	// GatewayOnLink is true when the active gateway's address of Local's
	// family is on one of this node's links (auto mode routes directly).
	GatewayOnLink bool
	// Underlay is the path the VXLAN packets take, for the device's MTU.
	Underlay Underlay
	// Senders (gateway) are the cluster's node addresses: the only ones
	// its VXLAN port accepts packets from.
	Senders []netip.Addr
}

// WithOverlay adds the VXLAN device to p when in.Overlay asks for one: on
// the gateway always (it receives from any worker that needs it), on other
// nodes when the mode is vxlan, or auto with the gateway off-link. A worker
// then routes every remote range, of both families, through the device to
// the overlay's gateway addresses; the outer packets need only the
// gateway's address of Local's family, so a range the direct path could not
// route for want of a gateway address of its family is routed too. p is
// returned unchanged otherwise (direct mode, a hold, no gateway known).
func WithOverlay(p NodePlan, in Inputs) NodePlan {
	o := in.Overlay
	if o.Mode == "" || o.Mode == EncapDirect || !o.Local.IsValid() {
		return p
	}
	local := o.Local.Unmap()
	dev := desired.OverlayPlan{Interface: o.Interface, VNI: o.VNI, Port: o.Port, Local: local}
	if dev.Interface == "" {
		dev.Interface = desired.DefaultOverlayInterface
	}
	if dev.VNI == 0 {
		dev.VNI = desired.DefaultOverlayVNI
	}
	if dev.Port == 0 {
		dev.Port = desired.DefaultOverlayPort
	}
	if u := o.Underlay; u.MTU > 0 {
		over := VXLANOverheadIPv4
		if u.IPv6 {
			over = VXLANOverheadIPv6
		}
		dev.MTU = max(u.MTU-over, MinMTU)
	}
	if p.Role == RoleGateway {
		p.Overlay = &dev
		p.Filter.OverlayPort = dev.Port
		p.Filter.OverlaySenders = make([]netip.Prefix, 0, len(o.Senders))
		for _, a := range o.Senders {
			if a.IsValid() {
				a = a.Unmap()
				p.Filter.OverlaySenders = append(p.Filter.OverlaySenders, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		return p
	}
	if p.Hold != "" || (o.Mode == EncapAuto && o.GatewayOnLink) {
		return p
	}
	for _, h := range p.NextHops {
		if h.Is4() == local.Is4() {
			dev.Remote = h
		}
	}
	if !dev.Remote.IsValid() {
		return p // no gateway address of the underlay's family
	}
	p.Overlay = &dev
	p.Routes.Routes = make([]desired.Route, 0, len(p.Routes.Unreachable))
	for _, r := range p.Routes.Unreachable {
		route := desired.Route{Dst: r, Dev: dev.Interface, Via: desired.OverlayGatewayIPv6}
		if r.Addr().Is4() {
			route.Via, route.OnLink = desired.OverlayGatewayIPv4, true
		}
		p.Routes.Routes = append(p.Routes.Routes, route)
	}
	p.Filter.RemotePodCIDRs = slices.Clone(p.Routes.Unreachable)
	p.CannotRoute = slices.DeleteFunc(slices.Clone(p.CannotRoute), func(u Unroutable) bool {
		return strings.HasPrefix(u.Reason, "the active gateway has no")
	})
	return p
}
