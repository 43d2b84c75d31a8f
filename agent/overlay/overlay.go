package overlay

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/archipelago-mesh/archipelago/agent/desired"
)

// Links is the subset of *netlink.Handle that Apply calls.
type Links interface {
	LinkByName(name string) (netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkDel(link netlink.Link) error
	LinkSetUp(link netlink.Link) error
	LinkSetMTU(link netlink.Link, mtu int) error
	NeighList(linkIndex, family int) ([]netlink.Neigh, error)
	NeighSet(neigh *netlink.Neigh) error
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	AddrReplace(link netlink.Link, addr *netlink.Addr) error
}

var _ Links = (*netlink.Handle)(nil)

// Plan is the desired VXLAN device (package desired).
type Plan = desired.OverlayPlan

// Apply makes the device match p; with p nil it removes the device named
// name if it is a VXLAN device. It reports whether it wrote anything.
func Apply(l Links, name string, p *Plan) (bool, error) {
	if p == nil {
		cur, err := l.LinkByName(name)
		if err != nil {
			return false, nil // no device
		}
		if _, ok := cur.(*netlink.Vxlan); !ok {
			return false, fmt.Errorf("overlay: %s is a %s device, not the agent's VXLAN; leaving it alone", name, cur.Type())
		}
		if err := l.LinkDel(cur); err != nil {
			return false, fmt.Errorf("delete overlay device %s: %w", name, err)
		}
		return true, nil
	}
	if err := p.Validate(); err != nil {
		return false, err
	}
	changed := false
	cur, err := l.LinkByName(p.Interface)
	if err == nil {
		vx, ok := cur.(*netlink.Vxlan)
		switch {
		case !ok:
			return false, fmt.Errorf("overlay: %s is a %s device, not the agent's VXLAN; leaving it alone", p.Interface, cur.Type())
		case !matches(vx, p):
			if err := l.LinkDel(cur); err != nil {
				return false, fmt.Errorf("replace overlay device %s: %w", p.Interface, err)
			}
			changed, cur = true, nil
		case p.MTU != 0 && vx.MTU != p.MTU:
			if err := l.LinkSetMTU(cur, p.MTU); err != nil {
				return false, fmt.Errorf("set MTU %d on %s: %w", p.MTU, p.Interface, err)
			}
			changed = true
		}
	} else {
		cur = nil
	}
	if cur == nil {
		if err := l.LinkAdd(vxlanOf(p)); err != nil {
			return changed, fmt.Errorf("add VXLAN device %s (VNI %d, port %d): %w", p.Interface, p.VNI, p.Port, err)
		}
		changed = true
		if cur, err = l.LinkByName(p.Interface); err != nil {
			return changed, fmt.Errorf("read back %s: %w", p.Interface, err)
		}
	}
	if cur.Attrs().Flags&net.FlagUp == 0 {
		if err := l.LinkSetUp(cur); err != nil {
			return changed, fmt.Errorf("set %s up: %w", p.Interface, err)
		}
		changed = true
	}
	if p.Gateway() {
		// The overlay's IPv4 gateway address on the device: the kernel's
		// reverse path check (loose mode, which the agent sets) refuses
		// packets that arrive on an interface without any IPv4 address
		// unless the route back uses that interface, and the way back to
		// an off-link worker's pods is the underlay.
		addrs, err := l.AddrList(cur, netlink.FAMILY_V4)
		if err != nil {
			return changed, fmt.Errorf("list addresses of %s: %w", p.Interface, err)
		}
		gw := desired.OverlayGatewayIPv4
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == gw {
				return changed, nil
			}
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(gw.AsSlice()), Mask: net.CIDRMask(32, 32)}, Scope: int(netlink.SCOPE_LINK)}
		if err := l.AddrReplace(cur, a); err != nil {
			return changed, fmt.Errorf("address %s on %s: %w", gw, p.Interface, err)
		}
		return true, nil
	}
	// The worker side: the gateway's overlay addresses resolve to its MAC
	// without ARP or ND (the gateway device answers neither).
	mac := net.HardwareAddr(desired.OverlayGatewayMAC[:])
	var errs []error
	for _, ip := range []netip.Addr{desired.OverlayGatewayIPv4, desired.OverlayGatewayIPv6} {
		fam := netlink.FAMILY_V4
		if ip.Is6() {
			fam = netlink.FAMILY_V6
		}
		ns, err := l.NeighList(cur.Attrs().Index, fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("list neighbours of %s: %w", p.Interface, err))
			continue
		}
		have := false
		for _, n := range ns {
			if got, ok := netip.AddrFromSlice(n.IP); ok && got.Unmap() == ip && bytes.Equal(n.HardwareAddr, mac) && n.State&netlink.NUD_PERMANENT != 0 {
				have = true
			}
		}
		if have {
			continue
		}
		if err := l.NeighSet(&netlink.Neigh{LinkIndex: cur.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT,
			IP: net.IP(ip.AsSlice()), HardwareAddr: mac}); err != nil {
			errs = append(errs, fmt.Errorf("neighbour %s on %s: %w", ip, p.Interface, err))
			continue
		}
		changed = true
	}
	return changed, errors.Join(errs...)
}

func vxlanOf(p *Plan) *netlink.Vxlan {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = p.Interface, p.MTU
	if p.Gateway() {
		attrs.HardwareAddr = net.HardwareAddr(desired.OverlayGatewayMAC[:])
	}
	v := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: p.VNI, Port: p.Port, SrcAddr: net.IP(p.Local.Unmap().AsSlice()), Learning: false}
	if p.Remote.IsValid() {
		v.Group = net.IP(p.Remote.Unmap().AsSlice())
	}
	return v
}

func matches(vx *netlink.Vxlan, p *Plan) bool {
	if vx.VxlanId != p.VNI || vx.Port != p.Port || !ipIs(vx.SrcAddr, p.Local) {
		return false
	}
	if p.Gateway() {
		return (len(vx.Group) == 0 || vx.Group.IsUnspecified()) && bytes.Equal(vx.HardwareAddr, desired.OverlayGatewayMAC[:])
	}
	return ipIs(vx.Group, p.Remote)
}

func ipIs(ip net.IP, want netip.Addr) bool {
	got, ok := netip.AddrFromSlice(ip)
	return ok && got.Unmap() == want.Unmap()
}
