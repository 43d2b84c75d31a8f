package dataplane

import (
	"fmt"
	"net"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// RestartPeers drops the WireGuard sessions with the peers keys name and
// makes the device start a new handshake with each at once: the peer is
// removed and added again from the last applied plan, in one configuration
// (its ranges are gone only for the moment between the two), and a peer added
// with a persistent keepalive sends one immediately, which needs a
// handshake (kernel and wireguard-go alike).
//
// The control plane calls it when the hub's directory moves a peer to
// another endpoint under the same public key: the remote member failed over
// to another gateway that shares its identity. Our session belongs to the
// old gateway's device, and as long as it is valid the device would keep
// sending keepalives with it, which the new gateway cannot read, instead of
// a handshake (a member behind NAT stays unreachable until it rekeys,
// minutes later). Keys not in the last plan are ignored.
func (d *Dataplane) RestartPeers(keys []wgtypes.Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tunnel == nil || d.mem.tunnel == nil || len(keys) == 0 {
		return nil
	}
	pc, ok := d.tunnel.(PeerConfigurer)
	if !ok {
		return nil
	}
	want := map[wgtypes.Key]bool{}
	for _, k := range keys {
		want[k] = true
	}
	var cfg wgtypes.Config
	var restarted []wgtypes.Key
	for _, p := range d.mem.tunnel.Peers {
		if !want[p.PublicKey] {
			continue
		}
		keepalive := p.PersistentKeepalive.Truncate(time.Second)
		add := wgtypes.PeerConfig{
			PublicKey:                   p.PublicKey,
			PersistentKeepaliveInterval: &keepalive,
			ReplaceAllowedIPs:           true,
		}
		if p.Endpoint.IsValid() {
			add.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
		}
		for _, r := range p.AllowedIPs {
			add.AllowedIPs = append(add.AllowedIPs, net.IPNet{IP: r.Addr().AsSlice(), Mask: net.CIDRMask(r.Bits(), r.Addr().BitLen())})
		}
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true}, add)
		restarted = append(restarted, p.PublicKey)
	}
	if len(cfg.Peers) == 0 {
		return nil
	}
	if err := pc.Configure(cfg); err != nil {
		// The device may be between the two: the next pass diffs it.
		d.mem.tunnel = nil
		return fmt.Errorf("restart WireGuard peers: %w", err)
	}
	d.o.Log.Info("Restarted WireGuard sessions for a new endpoint", "peers", len(restarted))
	return nil
}
