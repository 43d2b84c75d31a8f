package wireguard

import (
	"github.com/archipelago-mesh/archipelago/agent/desired"
	"github.com/archipelago-mesh/archipelago/internal/prefix"

	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// DefaultMTU leaves room for the WireGuard, UDP and outer IPv6 headers on a
// 1500-byte underlay.
const DefaultMTU = desired.DefaultMTU

// TunnelPlan and PeerPlan are the device's desired state (package desired).
type (
	TunnelPlan = desired.TunnelPlan
	PeerPlan   = desired.PeerPlan
)

// Changes reports what one Apply pass did, for logs and metrics.
type Changes struct {
	// DeviceChanged is true when the private key or listen port was set.
	DeviceChanged bool
	Added         []wgtypes.Key
	Updated       []wgtypes.Key
	Removed       []wgtypes.Key
}

// Empty reports whether the pass changed nothing.
func (c Changes) Empty() bool {
	return !c.DeviceChanged && len(c.Added) == 0 && len(c.Updated) == 0 && len(c.Removed) == 0
}

// String is a compact summary for logs.
func (c Changes) String() string {
	if c.Empty() {
		return "no change"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "device=%t", c.DeviceChanged)
	for _, x := range []struct {
		what string
		keys []wgtypes.Key
	}{{"added", c.Added}, {"updated", c.Updated}, {"removed", c.Removed}} {
		if len(x.keys) == 0 {
			continue
		}
		s := make([]string, len(x.keys))
		for i, k := range x.keys {
			s[i] = shortKey(k)
		}
		fmt.Fprintf(&b, " %s=[%s]", x.what, strings.Join(s, ","))
	}
	return b.String()
}

func shortKey(k wgtypes.Key) string { return k.String()[:8] }

// Apply makes the WireGuard configuration of device name match plan (all but
// MTU). It reads the device, computes the difference and sends one
// ConfigureDevice with only the differing peers: added peers in full, changed
// peers with UpdateOnly and only the changed fields, surplus peers with
// Remove. Untouched peers keep their sessions and handshake state. A pass with
// nothing to change makes no ConfigureDevice call.
func Apply(client Client, name string, plan TunnelPlan) (Changes, error) {
	if err := plan.Validate(); err != nil {
		return Changes{}, fmt.Errorf("apply WireGuard plan to %s: %w", name, err)
	}
	dev, err := client.Device(name)
	if err != nil {
		return Changes{}, fmt.Errorf("read WireGuard device %s: %w", name, err)
	}
	cfg, changes := Diff(dev, plan)
	if changes.Empty() {
		return changes, nil
	}
	if err := client.ConfigureDevice(name, cfg); err != nil {
		return Changes{}, fmt.Errorf("configure WireGuard device %s (%s): %w", name, changes, err)
	}
	return changes, nil
}

// Diff computes the configuration that turns dev into plan, and what it
// changes. It is pure; plan is assumed valid.
func Diff(dev *wgtypes.Device, plan TunnelPlan) (wgtypes.Config, Changes) {
	var (
		cfg     wgtypes.Config
		changes Changes
	)
	if dev.PrivateKey != plan.PrivateKey {
		k := plan.PrivateKey
		cfg.PrivateKey = &k
		changes.DeviceChanged = true
	}
	if plan.ListenPort != 0 && dev.ListenPort != plan.ListenPort {
		p := plan.ListenPort
		cfg.ListenPort = &p
		changes.DeviceChanged = true
	}

	current := make(map[wgtypes.Key]*wgtypes.Peer, len(dev.Peers))
	for i := range dev.Peers {
		current[dev.Peers[i].PublicKey] = &dev.Peers[i]
	}
	planned := make(map[wgtypes.Key]bool, len(plan.Peers))

	// Sorted by key so that calls and Changes are deterministic.
	peers := slices.Clone(plan.Peers)
	slices.SortFunc(peers, func(a, b PeerPlan) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	for _, want := range peers {
		planned[want.PublicKey] = true
		wantIPs := prefix.Set(want.AllowedIPs)
		keepalive := want.PersistentKeepalive.Truncate(time.Second)
		have, ok := current[want.PublicKey]
		if !ok {
			pc := wgtypes.PeerConfig{
				PublicKey:                   want.PublicKey,
				PersistentKeepaliveInterval: &keepalive,
				ReplaceAllowedIPs:           true,
				AllowedIPs:                  toIPNets(wantIPs),
			}
			if want.Endpoint.IsValid() {
				pc.Endpoint = net.UDPAddrFromAddrPort(canonicalAddrPort(want.Endpoint))
			}
			cfg.Peers = append(cfg.Peers, pc)
			changes.Added = append(changes.Added, want.PublicKey)
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: want.PublicKey, UpdateOnly: true}
		changed := false
		if want.Endpoint.IsValid() && canonicalAddrPort(want.Endpoint) != udpAddrPort(have.Endpoint) {
			pc.Endpoint = net.UDPAddrFromAddrPort(canonicalAddrPort(want.Endpoint))
			changed = true
		}
		if have.PersistentKeepaliveInterval != keepalive {
			pc.PersistentKeepaliveInterval = &keepalive
			changed = true
		}
		if !slices.Equal(wantIPs, ipNetsToPrefixes(have.AllowedIPs)) {
			pc.ReplaceAllowedIPs = true
			pc.AllowedIPs = toIPNets(wantIPs)
			changed = true
		}
		if changed {
			cfg.Peers = append(cfg.Peers, pc)
			changes.Updated = append(changes.Updated, want.PublicKey)
		}
	}

	var surplus []wgtypes.Key
	for k := range current {
		if !planned[k] {
			surplus = append(surplus, k)
		}
	}
	slices.SortFunc(surplus, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	for _, k := range surplus {
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		changes.Removed = append(changes.Removed, k)
	}
	return cfg, changes
}

func prefixFromIPNet(n *net.IPNet, mask bool) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	if a.Is4In6() {
		a = a.Unmap()
		if bits == 128 {
			ones -= 96
		}
	}
	p := netip.PrefixFrom(a, ones)
	if mask {
		p = p.Masked()
	}
	return p, p.IsValid()
}

func ipNetsToPrefixes(in []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for i := range in {
		if p, ok := prefixFromIPNet(&in[i], true); ok {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, prefix.Compare)
	return slices.Compact(out)
}

func toIPNets(in []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(in))
	for _, p := range in {
		out = append(out, net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
	}
	return out
}

func canonicalAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func udpAddrPort(u *net.UDPAddr) netip.AddrPort {
	if u == nil {
		return netip.AddrPort{}
	}
	return canonicalAddrPort(u.AddrPort())
}
