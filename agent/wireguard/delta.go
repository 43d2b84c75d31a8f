package wireguard

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/internal/prefix"
)

// SameDevice reports whether two tunnel plans agree on the device itself
// (key, port, MTU), so that only their peers can differ and Delta applies.
func SameDevice(a, b TunnelPlan) bool {
	return a.PrivateKey == b.PrivateKey && a.ListenPort == b.ListenPort && a.MTU == b.MTU
}

// Delta returns the configuration that makes a device that holds last hold
// want, where SameDevice(last, want), without reading the device: one
// ConfigureDevice naming only the peers that differ between the two plans
// (added in full, changed with UpdateOnly and the changed fields, removed
// with Remove), exactly as Apply would send for a device at last; and the
// Changes it makes. want is validated as Apply validates it (for a few
// changed peers, only what they can break). An empty Changes means there is
// nothing to send.
func Delta(last, want TunnelPlan) (wgtypes.Config, Changes, error) {
	was, now, aligned := changedPeers(last.Peers, want.Peers)
	if len(was) == 0 && len(now) == 0 {
		return wgtypes.Config{}, Changes{}, nil // the plan is the validated last one
	}
	if err := validateDelta(want, was, now, aligned); err != nil {
		return wgtypes.Config{}, Changes{}, fmt.Errorf("apply WireGuard plan: %w", err)
	}
	// The device as last configured, reduced to the peers that differ; Diff
	// then builds the same per-peer configuration a full pass would.
	dev := &wgtypes.Device{PrivateKey: want.PrivateKey, ListenPort: want.ListenPort, Peers: make([]wgtypes.Peer, 0, len(was))}
	for _, peer := range was {
		dev.Peers = append(dev.Peers, devicePeer(peer))
	}
	sub := want
	sub.Peers = now
	cfg, ch := Diff(dev, sub)
	return cfg, ch, nil
}

// validateDelta is want.Validate for a plan that differs from the valid,
// last applied plan only in the peers now (new versions) and was (old
// versions). When the peers are the same keys in the same order (aligned), only the
// changed peers can break a rule: they are checked on their own, and their
// allowed IPs, where changed, against the other peers'. Otherwise, or when
// many peers changed, the whole plan is validated.
func validateDelta(want TunnelPlan, was, now []PeerPlan, aligned bool) error {
	const few = 16
	if !aligned || len(now) > few {
		return want.Validate()
	}
	// The per-peer rules of TunnelPlan.Validate, on the changed peers.
	// (Validate itself would derive the device's public key, a scalar
	// multiplication that costs as much as the rest of a pass.)
	self := PublicKey(want.PrivateKey)
	for _, peer := range now {
		switch {
		case peer.PublicKey == (wgtypes.Key{}):
			return errors.New("tunnel plan has a peer without public key")
		case peer.PublicKey == self:
			return fmt.Errorf("tunnel plan lists the device's own public key %s as a peer", peer.PublicKey)
		case peer.PersistentKeepalive < 0 || peer.PersistentKeepalive > 65535*time.Second:
			return fmt.Errorf("peer %s: persistent keepalive %s out of range", peer.PublicKey, peer.PersistentKeepalive)
		case peer.Endpoint.IsValid() && peer.Endpoint.Port() == 0:
			return fmt.Errorf("peer %s: endpoint %s has no port", peer.PublicKey, peer.Endpoint)
		}
		for _, ip := range peer.AllowedIPs {
			if !ip.IsValid() {
				return fmt.Errorf("peer %s: invalid allowed IP prefix", peer.PublicKey)
			}
		}
	}
	for i, peer := range now {
		if slices.Equal(peer.AllowedIPs, was[i].AllowedIPs) {
			continue
		}
		for _, ip := range peer.AllowedIPs {
			c := prefix.Canonical(ip)
			for j := range want.Peers {
				other := &want.Peers[j]
				if other.PublicKey == peer.PublicKey {
					continue
				}
				for _, o := range other.AllowedIPs {
					if prefix.Canonical(o) == c {
						return fmt.Errorf("allowed IP %s is planned for both peer %s and peer %s", c, other.PublicKey, peer.PublicKey)
					}
				}
			}
		}
	}
	return nil
}

// changedPeers returns the peers of last and of want that are not equal in
// both: was holds the old versions (changed or removed), now the new ones
// (changed or added). aligned reports that both list the same keys in the
// same order; then was[i] is the old version of now[i].
func changedPeers(last, want []PeerPlan) (was, now []PeerPlan, aligned bool) {
	aligned = len(last) == len(want)
	for i := 0; aligned && i < len(want); i++ {
		aligned = last[i].PublicKey == want[i].PublicKey
	}
	if aligned {
		// The usual case (same peers, same order): no index needed.
		for i := range want {
			if !samePeer(last[i], want[i]) {
				was, now = append(was, last[i]), append(now, want[i])
			}
		}
		return was, now, true
	}
	old := make(map[wgtypes.Key]int, len(last))
	for i := range last {
		old[last[i].PublicKey] = i
	}
	for _, w := range want {
		i, ok := old[w.PublicKey]
		if !ok {
			now = append(now, w)
			continue
		}
		delete(old, w.PublicKey)
		if !samePeer(last[i], w) {
			was, now = append(was, last[i]), append(now, w)
		}
	}
	for _, i := range old {
		was = append(was, last[i])
	}
	return was, now, false
}

func samePeer(a, b PeerPlan) bool {
	return a.PublicKey == b.PublicKey && a.Endpoint == b.Endpoint &&
		a.PersistentKeepalive == b.PersistentKeepalive && slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

// devicePeer is what a device configured with p reports for it (the
// endpoint as set; a peer without one has none as far as the plan knows).
func devicePeer(p PeerPlan) wgtypes.Peer {
	out := wgtypes.Peer{PublicKey: p.PublicKey, PersistentKeepaliveInterval: p.PersistentKeepalive.Truncate(time.Second)}
	if p.Endpoint.IsValid() {
		out.Endpoint = net.UDPAddrFromAddrPort(p.Endpoint)
	}
	for _, ip := range p.AllowedIPs {
		out.AllowedIPs = append(out.AllowedIPs, net.IPNet{IP: ip.Addr().AsSlice(), Mask: net.CIDRMask(ip.Bits(), ip.Addr().BitLen())})
	}
	return out
}
