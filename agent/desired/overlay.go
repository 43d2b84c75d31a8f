package desired

import (
	"fmt"
	"net/netip"
)

// Overlay defaults: the VXLAN that carries worker → gateway traffic when the
// gateway is not on the worker's link. Its own VNI and UDP port, so it never
// meets a CNI's VXLAN (flannel 1/8472, the IANA port 4789).
const (
	DefaultOverlayInterface = "archipelago-vx"
	DefaultOverlayVNI       = 0xa7c
	DefaultOverlayPort      = 4790
)

// The overlay's gateway side: one MAC and one address per family that every
// gateway candidate's VXLAN device answers to, so that workers need nothing
// but the active gateway's node address (the VXLAN remote). The addresses
// are link-local: no route or subnet is needed for them.
var (
	OverlayGatewayMAC  = [6]byte{0x02, 0xa7, 0xc0, 0x00, 0x0a, 0x7c}
	OverlayGatewayIPv4 = netip.MustParseAddr("169.254.167.1")
	OverlayGatewayIPv6 = netip.MustParseAddr("fe80::a7c")
)

// OverlayPlan is the desired VXLAN device of a node.
type OverlayPlan struct {
	// Interface is the device name.
	Interface string
	VNI       int
	Port      int
	// MTU of the device: the underlay's less VXLAN's 50 (IPv4) or 70
	// (IPv6) bytes.
	MTU int
	// Local is this node's address the VXLAN packets leave from.
	Local netip.Addr
	// Remote is the active gateway's node address on a worker; invalid on
	// the gateway, which receives from every worker.
	Remote netip.Addr
}

// Gateway reports whether this is the gateway side (no remote).
func (p OverlayPlan) Gateway() bool { return !p.Remote.IsValid() }

// Validate checks what the kernel would reject less helpfully.
func (p OverlayPlan) Validate() error {
	switch {
	case p.Interface == "" || len(p.Interface) > 15:
		return fmt.Errorf("overlay interface %q: want 1 to 15 bytes", p.Interface)
	case p.VNI <= 0 || p.VNI >= 1<<24:
		return fmt.Errorf("overlay VNI %d out of range 1-16777215", p.VNI)
	case p.Port <= 0 || p.Port > 65535:
		return fmt.Errorf("overlay UDP port %d out of range", p.Port)
	case p.MTU != 0 && p.MTU < 1280:
		return fmt.Errorf("overlay MTU %d below 1280", p.MTU)
	case !p.Local.IsValid():
		return fmt.Errorf("overlay %s has no local address", p.Interface)
	case p.Remote.IsValid() && p.Remote.Unmap().Is4() != p.Local.Unmap().Is4():
		return fmt.Errorf("overlay local %s and remote %s are of different families", p.Local, p.Remote)
	}
	return nil
}
