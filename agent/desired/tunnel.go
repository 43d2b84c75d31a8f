package desired

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/internal/prefix"
)

// DefaultMTU leaves room for the WireGuard, UDP and outer IPv6 headers on a
// 1500-byte underlay.
const DefaultMTU = 1420

// TunnelPlan is the desired state of the gateway's WireGuard device. It is a
// plain value computed from the hub's peer directory; wireguard.Apply makes
// the device match it.
type TunnelPlan struct {
	PrivateKey wgtypes.Key
	// ListenPort is the UDP port; 0 leaves the device's current port alone.
	ListenPort int
	// MTU of the interface; 0 leaves it alone. Only Device.Apply sets it:
	// wgctrl has no MTU.
	MTU   int
	Peers []PeerPlan
}

// PeerPlan is one remote cluster's gateway.
type PeerPlan struct {
	PublicKey wgtypes.Key
	// Endpoint is where to send to. The zero value means "unknown": the
	// device keeps whatever endpoint it learned from the peer's own packets
	// (a gateway behind NAT roams and WireGuard follows it; we must not
	// fight that). A valid Endpoint is enforced, so that a gateway failover
	// to another node takes effect on the next pass.
	Endpoint netip.AddrPort
	// AllowedIPs are the peer's hub-assigned ranges. Order and host bits do
	// not matter; they are compared as a set of masked prefixes.
	AllowedIPs []netip.Prefix
	// PersistentKeepalive is sent so that NAT mappings on the way stay open;
	// 0 disables it. The kernel keeps whole seconds, so it is truncated.
	PersistentKeepalive time.Duration
}

// Validate rejects plans the device could never converge to: WireGuard gives
// an allowed prefix to the last peer configured with it, so the same prefix
// on two peers would make every pass move it back and forth.
func (p TunnelPlan) Validate() error {
	if p.PrivateKey == (wgtypes.Key{}) {
		return errors.New("tunnel plan has no private key")
	}
	if p.ListenPort < 0 || p.ListenPort > 65535 {
		return fmt.Errorf("tunnel plan listen port %d out of range", p.ListenPort)
	}
	if p.MTU != 0 && (p.MTU < 1280 || p.MTU > 65535) {
		return fmt.Errorf("tunnel plan MTU %d out of range 1280-65535", p.MTU)
	}
	self := p.PrivateKey.PublicKey()
	keys := make(map[wgtypes.Key]bool, len(p.Peers))
	owner := make(map[netip.Prefix]wgtypes.Key)
	for _, peer := range p.Peers {
		if peer.PublicKey == (wgtypes.Key{}) {
			return errors.New("tunnel plan has a peer without public key")
		}
		if peer.PublicKey == self {
			return fmt.Errorf("tunnel plan lists the device's own public key %s as a peer", peer.PublicKey)
		}
		if keys[peer.PublicKey] {
			return fmt.Errorf("tunnel plan lists peer %s twice", peer.PublicKey)
		}
		keys[peer.PublicKey] = true
		if peer.PersistentKeepalive < 0 || peer.PersistentKeepalive > 65535*time.Second {
			return fmt.Errorf("peer %s: persistent keepalive %s out of range", peer.PublicKey, peer.PersistentKeepalive)
		}
		if peer.Endpoint.IsValid() && peer.Endpoint.Port() == 0 {
			return fmt.Errorf("peer %s: endpoint %s has no port", peer.PublicKey, peer.Endpoint)
		}
		for _, ip := range peer.AllowedIPs {
			if !ip.IsValid() {
				return fmt.Errorf("peer %s: invalid allowed IP prefix", peer.PublicKey)
			}
			c := prefix.Canonical(ip)
			if other, dup := owner[c]; dup && other != peer.PublicKey {
				return fmt.Errorf("allowed IP %s is planned for both peer %s and peer %s", c, other, peer.PublicKey)
			}
			owner[c] = peer.PublicKey
		}
	}
	return nil
}

// lastKey remembers the last public key derived: the private key is the same
// on every pass, and deriving its public key is a scalar multiplication that
// would otherwise be a sizeable part of a pass at 1,000 peers.
var lastKey atomic.Pointer[[2]wgtypes.Key]

// PublicKey returns private.PublicKey(), remembering the last result. The
// cache is not observable: PublicKey is a function of its argument.
func PublicKey(private wgtypes.Key) wgtypes.Key {
	if k := lastKey.Load(); k != nil && k[0] == private {
		return k[1]
	}
	pub := private.PublicKey()
	lastKey.Store(&[2]wgtypes.Key{private, pub})
	return pub
}
