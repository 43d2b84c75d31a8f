package fake

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/wireguard"
)

// Client is an in-memory wireguard.Client. ConfigureDevice follows the
// kernel's semantics (UpdateOnly, Remove, ReplaceAllowedIPs, ReplacePeers, an
// allowed IP belonging to one peer only) and every call is recorded.
type Client struct {
	mu       sync.Mutex
	devices  map[string]*wgtypes.Device
	calls    []wgtypes.Config
	reads    int
	failNext error
	closed   bool
}

var _ wireguard.Client = (*Client)(nil)

// NewClient returns a fake with one empty device per name.
func NewClient(names ...string) *Client {
	c := &Client{devices: map[string]*wgtypes.Device{}}
	for _, n := range names {
		c.AddDevice(n)
	}
	return c
}

// AddDevice creates an empty device, as a freshly created interface is.
func (c *Client) AddDevice(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.devices[name] = &wgtypes.Device{Name: name, Type: wgtypes.Userspace}
}

// Device implements wireguard.Client; it returns a deep copy.
func (c *Client) Device(name string) (*wgtypes.Device, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	d, ok := c.devices[name]
	if !ok {
		return nil, fmt.Errorf("fake device %s: %w", name, os.ErrNotExist)
	}
	return copyDevice(d), nil
}

// ConfigureDevice implements wireguard.Client.
func (c *Client) ConfigureDevice(name string, cfg wgtypes.Config) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, copyConfig(cfg))
	if err := c.failNext; err != nil {
		c.failNext = nil
		return err
	}
	d, ok := c.devices[name]
	if !ok {
		return fmt.Errorf("fake device %s: %w", name, os.ErrNotExist)
	}
	if cfg.PrivateKey != nil {
		d.PrivateKey = *cfg.PrivateKey
		d.PublicKey = cfg.PrivateKey.PublicKey()
	}
	if cfg.ListenPort != nil {
		d.ListenPort = *cfg.ListenPort
	}
	if cfg.ReplacePeers {
		d.Peers = nil
	}
	for _, pc := range cfg.Peers {
		i := slices.IndexFunc(d.Peers, func(p wgtypes.Peer) bool { return p.PublicKey == pc.PublicKey })
		if pc.Remove {
			if i >= 0 {
				d.Peers = slices.Delete(d.Peers, i, i+1)
			}
			continue
		}
		if i < 0 {
			if pc.UpdateOnly {
				continue
			}
			d.Peers = append(d.Peers, wgtypes.Peer{PublicKey: pc.PublicKey, ProtocolVersion: 1})
			i = len(d.Peers) - 1
		}
		p := &d.Peers[i]
		if pc.Endpoint != nil {
			e := *pc.Endpoint
			p.Endpoint = &e
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		for _, ip := range pc.AllowedIPs {
			// An allowed IP moves to the last peer configured with it.
			for j := range d.Peers {
				d.Peers[j].AllowedIPs = slices.DeleteFunc(d.Peers[j].AllowedIPs, func(n net.IPNet) bool { return sameNet(n, ip) })
			}
			p.AllowedIPs = append(p.AllowedIPs, ip)
		}
	}
	return nil
}

// Close implements wireguard.Client.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

// Closed reports whether Close was called.
func (c *Client) Closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// FailNextConfigure makes the next ConfigureDevice fail with err and change
// nothing.
func (c *Client) FailNextConfigure(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failNext = err
}

// ConfigureCalls returns copies of every ConfigureDevice config so far.
func (c *Client) ConfigureCalls() []wgtypes.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]wgtypes.Config, len(c.calls))
	for i := range c.calls {
		out[i] = copyConfig(c.calls[i])
	}
	return out
}

// PeersTouched returns the distinct peer keys named in any ConfigureDevice
// call so far, sorted.
func (c *Client) PeersTouched() []wgtypes.Key {
	c.mu.Lock()
	defer c.mu.Unlock()
	var keys []wgtypes.Key
	for _, cfg := range c.calls {
		for _, p := range cfg.Peers {
			keys = append(keys, p.PublicKey)
		}
	}
	slices.SortFunc(keys, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
	return slices.Compact(keys)
}

// UsedReplacePeers reports whether any call so far set ReplacePeers.
func (c *Client) UsedReplacePeers() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.calls, func(cfg wgtypes.Config) bool { return cfg.ReplacePeers })
}

// ResetCalls forgets recorded calls; the device state stays.
func (c *Client) ResetCalls() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = nil
	c.reads = 0
}

// Roam simulates the device learning a new endpoint for a peer from its
// authenticated packets (NAT rebinding), as WireGuard does.
func (c *Client) Roam(name string, peer wgtypes.Key, endpoint *net.UDPAddr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peer(name, peer).Endpoint = endpoint
}

// Handshake simulates a completed handshake with a peer at time t.
func (c *Client) Handshake(name string, peer wgtypes.Key, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peer(name, peer).LastHandshakeTime = t
}

// Transfer simulates traffic with a peer: rx and tx bytes more, as the
// device counts them.
func (c *Client) Transfer(name string, peer wgtypes.Key, rx, tx int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peer(name, peer)
	p.ReceiveBytes += rx
	p.TransmitBytes += tx
}

func (c *Client) peer(name string, key wgtypes.Key) *wgtypes.Peer {
	d, ok := c.devices[name]
	if !ok {
		panic("fake: no device " + name)
	}
	for i := range d.Peers {
		if d.Peers[i].PublicKey == key {
			return &d.Peers[i]
		}
	}
	panic("fake: no peer " + key.String())
}

func sameNet(a, b net.IPNet) bool {
	return a.IP.Equal(b.IP) && bytes.Equal(normMask(a), normMask(b))
}

func normMask(n net.IPNet) []byte {
	ones, bits := n.Mask.Size()
	if bits == 128 && n.IP.To4() != nil {
		ones, bits = ones-96, 32
	}
	return net.CIDRMask(ones, bits)
}

func copyDevice(d *wgtypes.Device) *wgtypes.Device {
	out := *d
	out.Peers = make([]wgtypes.Peer, len(d.Peers))
	for i, p := range d.Peers {
		if p.Endpoint != nil {
			e := *p.Endpoint
			p.Endpoint = &e
		}
		p.AllowedIPs = slices.Clone(p.AllowedIPs)
		out.Peers[i] = p
	}
	return &out
}

func copyConfig(cfg wgtypes.Config) wgtypes.Config {
	out := cfg
	out.Peers = make([]wgtypes.PeerConfig, len(cfg.Peers))
	for i, p := range cfg.Peers {
		p.AllowedIPs = slices.Clone(p.AllowedIPs)
		out.Peers[i] = p
	}
	return out
}

// RemoveDevice forgets a device, as deleting its interface does.
func (c *Client) RemoveDevice(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.devices, name)
}

// HasDevice reports whether the device exists.
func (c *Client) HasDevice(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.devices[name]
	return ok
}
