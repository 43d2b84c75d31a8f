package wireguard

import (
	"errors"
	"fmt"
	"github.com/archipelago-mesh/archipelago/internal/prefix"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// LinkKind is what an existing interface is, as far as this package cares.
type LinkKind string

const (
	// LinkAbsent means no interface has the name.
	LinkAbsent LinkKind = ""
	// LinkWireGuard is a kernel WireGuard interface.
	LinkWireGuard LinkKind = "wireguard"
	// LinkTUN is a TUN interface, which for our names means a userspace
	// wireguard-go device.
	LinkTUN LinkKind = "tun"
	// LinkOther is any other interface type: a name clash.
	LinkOther LinkKind = "other"
)

// ErrKernelUnsupported is returned by LinkOps.AddWireGuard when the kernel
// has no WireGuard module.
var ErrKernelUnsupported = errors.New("kernel WireGuard not supported")

// LinkOps are the link-level kernel operations on the WireGuard interface
// that wgctrl does not cover. Every method is idempotent, so that a no-change
// pass makes no kernel change.
type LinkOps interface {
	// Kind reports whether name exists and what it is.
	Kind(name string) (LinkKind, error)
	// AddWireGuard creates a kernel WireGuard interface. It returns an error
	// wrapping ErrKernelUnsupported when the module is missing.
	AddWireGuard(name string, mtu int) error
	// SetMTU sets the MTU if it differs.
	SetMTU(name string, mtu int) error
	// SetUp sets the interface administratively up if it is not.
	SetUp(name string) error
	// ReplaceAddrs makes the interface's addresses exactly addrs, removing
	// and adding only the difference.
	ReplaceAddrs(name string, addrs []netip.Prefix) error
	// Delete removes the interface; an absent interface is not an error.
	Delete(name string) error
}

// NetlinkLinks implements LinkOps with rtnetlink.
type NetlinkLinks struct {
	h *netlink.Handle
}

var _ LinkOps = (*NetlinkLinks)(nil)

// NewNetlinkLinks returns LinkOps in the network namespace ns; pass
// netns.None() for the caller's namespace. The handle's sockets are bound to
// ns at creation, so later calls need no thread pinning.
func NewNetlinkLinks(ns netns.NsHandle) (*NetlinkLinks, error) {
	var (
		h   *netlink.Handle
		err error
	)
	if ns.IsOpen() {
		h, err = netlink.NewHandleAt(ns)
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	return &NetlinkLinks{h: h}, nil
}

// Close releases the netlink sockets.
func (l *NetlinkLinks) Close() { l.h.Close() }

func (l *NetlinkLinks) link(name string) (netlink.Link, error) {
	link, err := l.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find interface %s: %w", name, err)
	}
	return link, nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// Kind implements LinkOps.
func (l *NetlinkLinks) Kind(name string) (LinkKind, error) {
	link, err := l.h.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return LinkAbsent, nil
		}
		return LinkAbsent, fmt.Errorf("find interface %s: %w", name, err)
	}
	switch link.Type() {
	case "wireguard":
		return LinkWireGuard, nil
	case "tuntap":
		return LinkTUN, nil
	default:
		return LinkOther, nil
	}
}

// AddWireGuard implements LinkOps.
func (l *NetlinkLinks) AddWireGuard(name string, mtu int) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = mtu
	err := l.h.LinkAdd(&netlink.Wireguard{LinkAttrs: attrs})
	// Without the module rtnetlink has no "wireguard" kind and answers
	// EOPNOTSUPP (iproute2 prints "Unknown device type"). Some older kernels
	// and locked-down sandboxes answer EAFNOSUPPORT or ENOENT instead
	// (module autoload attempted and failed).
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("add WireGuard interface %s: %w (%w)", name, ErrKernelUnsupported, err)
	}
	if err != nil {
		return fmt.Errorf("add WireGuard interface %s: %w", name, err)
	}
	return nil
}

// SetMTU implements LinkOps.
func (l *NetlinkLinks) SetMTU(name string, mtu int) error {
	link, err := l.link(name)
	if err != nil {
		return err
	}
	if link.Attrs().MTU == mtu {
		return nil
	}
	if err := l.h.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("set MTU %d on %s: %w", mtu, name, err)
	}
	return nil
}

// SetUp implements LinkOps.
func (l *NetlinkLinks) SetUp(name string) error {
	link, err := l.link(name)
	if err != nil {
		return err
	}
	if link.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := l.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// ReplaceAddrs implements LinkOps.
func (l *NetlinkLinks) ReplaceAddrs(name string, addrs []netip.Prefix) error {
	link, err := l.link(name)
	if err != nil {
		return err
	}
	current, err := l.h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	want := make(map[netip.Prefix]bool, len(addrs))
	for _, p := range addrs {
		want[netip.PrefixFrom(p.Addr().Unmap(), p.Bits())] = true
	}
	have := make(map[netip.Prefix]bool, len(current))
	for _, a := range current {
		p, ok := prefixFromIPNet(a.IPNet, false)
		if !ok {
			continue
		}
		// IPv6 link-local addresses are the kernel's, not ours.
		if p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			continue
		}
		have[p] = true
		if !want[p] {
			if err := l.h.AddrDel(link, &a); err != nil {
				return fmt.Errorf("delete address %s from %s: %w", p, name, err)
			}
		}
	}
	for _, p := range sortedPrefixes(want) {
		if have[p] {
			continue
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if err := l.h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add address %s to %s: %w", p, name, err)
		}
	}
	return nil
}

// Delete implements LinkOps.
func (l *NetlinkLinks) Delete(name string) error {
	link, err := l.h.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("find interface %s: %w", name, err)
	}
	if err := l.h.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete interface %s: %w", name, err)
	}
	return nil
}

func sortedPrefixes(set map[netip.Prefix]bool) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	slices.SortFunc(out, prefix.Compare)
	return out
}
