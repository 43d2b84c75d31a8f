package routing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Links is the subset of *netlink.Handle that finds the interface carrying a
// node's tunnel traffic. Every call only reads.
type Links interface {
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	LinkByIndex(index int) (netlink.Link, error)
	RouteGet(destination net.IP) ([]netlink.Route, error)
}

var _ Links = (*netlink.Handle)(nil)

// ErrNoUnderlay is returned by Underlay when no interface holds the address.
var ErrNoUnderlay = errors.New("no interface holds the address")

// Underlay returns the name and MTU of the interface that holds ip (the
// node's InternalIP, the address its tunnel packets leave from).
func Underlay(nl Links, ip netip.Addr) (name string, mtu int, err error) {
	if !ip.IsValid() {
		return "", 0, errors.New("underlay: no node address")
	}
	ip = ip.Unmap()
	fam := netlink.FAMILY_V4
	if ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := nl.AddrList(nil, fam)
	if err != nil {
		return "", 0, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		got, ok := netip.AddrFromSlice(a.IP)
		if !ok || got.Unmap() != ip {
			continue
		}
		link, err := nl.LinkByIndex(a.LinkIndex)
		if err != nil {
			return "", 0, fmt.Errorf("link %d of address %s: %w", a.LinkIndex, ip, err)
		}
		return link.Attrs().Name, link.Attrs().MTU, nil
	}
	return "", 0, fmt.Errorf("underlay of %s: %w", ip, ErrNoUnderlay)
}

// PathTo returns the interface the kernel sends packets to dst through, and
// the path's MTU: the route's MTU when it sets a lower one, else the
// interface's.
func PathTo(nl Links, dst netip.Addr) (name string, mtu int, err error) {
	dst = dst.Unmap()
	routes, err := nl.RouteGet(net.IP(dst.AsSlice()))
	if err != nil {
		return "", 0, fmt.Errorf("route to %s: %w", dst, err)
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return "", 0, fmt.Errorf("route to %s: no outgoing interface", dst)
	}
	r := routes[0]
	link, err := nl.LinkByIndex(r.LinkIndex)
	if err != nil {
		return "", 0, fmt.Errorf("link %d of the route to %s: %w", r.LinkIndex, dst, err)
	}
	mtu = link.Attrs().MTU
	if r.MTU > 0 && r.MTU < mtu {
		mtu = r.MTU
	}
	return link.Attrs().Name, mtu, nil
}

// OnLink reports whether dst is on one of the node's links: the kernel's
// route to it has no gateway (a neighbour, not a hop away).
func OnLink(nl Links, dst netip.Addr) (bool, error) {
	dst = dst.Unmap()
	routes, err := nl.RouteGet(net.IP(dst.AsSlice()))
	if err != nil {
		return false, fmt.Errorf("route to %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return false, fmt.Errorf("route to %s: none", dst)
	}
	return len(routes[0].Gw) == 0 || routes[0].Gw.IsUnspecified(), nil
}
