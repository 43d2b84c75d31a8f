// Package fake builds a dataplane.Dataplane on in-memory kernels (the fakes
// of the wireguard, routing and netfilter packages) and counts its writes
// and reads.
package fake

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/go-logr/logr"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/dataplane"
	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	nffake "github.com/archipelago-mesh/archipelago/agent/netfilter/fake"
	ovfake "github.com/archipelago-mesh/archipelago/agent/overlay/fake"
	"github.com/archipelago-mesh/archipelago/agent/routing"
	rtfake "github.com/archipelago-mesh/archipelago/agent/routing/fake"
	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	wgfake "github.com/archipelago-mesh/archipelago/agent/wireguard/fake"
)

// Kernel is one fake node: WireGuard client and links, netlink, nftables
// and sysctls.
type Kernel struct {
	WG      *wgfake.Client
	Links   *wgfake.Links
	Netlink *rtfake.Netlink
	NFT     *nffake.Conn
	Sysctl  *rtfake.Sysctl
	Overlay *ovfake.Links
	Driver  *Driver

	sysctlBase  int
	overlayBase int
	reads       atomic.Int64
}

// NewKernel returns an empty fake node with IPv4 forwarding off and strict
// rp_filter, as a fresh host has.
func NewKernel() *Kernel {
	k := &Kernel{
		WG:      wgfake.NewClient(),
		Links:   wgfake.NewLinks(true),
		Netlink: rtfake.NewNetlink(),
		Overlay: ovfake.New(),
		NFT:     nffake.New(),
		Sysctl: rtfake.NewSysctl(map[string]string{
			"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0",
			"net.ipv4.conf.all.rp_filter": "1",
		}),
	}
	k.Driver = &Driver{k: k}
	// Routes name the VXLAN device: the routing fake knows it once made.
	k.Overlay.OnAdd = func(name string) { k.Netlink.AddLink(name) }
	return k
}

// Dataplane returns a Dataplane on k.
func (k *Kernel) Dataplane(tunnel string, log logr.Logger) *dataplane.Dataplane {
	return dataplane.New(dataplane.Options{
		Tunnels: k.Driver, Netlink: readNetlink{k.Netlink, &k.reads}, Filter: readConn{k.NFT, &k.reads},
		Sysctl: readSysctl{k.Sysctl, &k.reads}, Links: k.Netlink, Overlay: k.Overlay, TunnelInterface: tunnel, Log: log,
	})
}

// Reads is the number of kernel reads (WireGuard device, route, rule and
// link listings, nftables listings, sysctl reads) made through Dataplanes
// of k since ResetReads.
func (k *Kernel) Reads() int { return int(k.reads.Load()) }

// ResetReads zeroes the read counter.
func (k *Kernel) ResetReads() { k.reads.Store(0) }

// Writes is the number of kernel writes since ResetWrites.
func (k *Kernel) Writes() int {
	return len(k.WG.ConfigureCalls()) + len(k.Links.Changes()) + k.Netlink.Writes() + k.NFT.Writes() +
		len(k.Sysctl.Writes()) - k.sysctlBase + k.Driver.Writes() + k.Overlay.Writes() - k.overlayBase
}

// ResetWrites zeroes the write counters; the state stays.
func (k *Kernel) ResetWrites() {
	k.WG.ResetCalls()
	k.Links.ResetChanges()
	k.Netlink.ResetWrites()
	k.NFT.ResetCounts()
	k.sysctlBase = len(k.Sysctl.Writes())
	k.overlayBase = k.Overlay.Writes()
	k.Driver.mu.Lock()
	k.Driver.writes = 0
	k.Driver.mu.Unlock()
}

// Driver is a dataplane.TunnelDriver on the fake kernel: Open creates the
// device (kernel WireGuard, as with the module), Teardown deletes it.
type Driver struct {
	k      *Kernel
	mu     sync.Mutex
	writes int
	// FailOpen makes Open fail.
	FailOpen error
	// NoPeerConfigurer makes Open return a Tunnel that can only be applied
	// whole (read and diffed), as a Tunnel of another implementation.
	NoPeerConfigurer bool
}

// Writes counts device creations and deletions.
func (d *Driver) Writes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writes
}

// Open implements dataplane.TunnelDriver.
func (d *Driver) Open(ctx context.Context, name string, mtu int) (dataplane.Tunnel, error) {
	if d.FailOpen != nil {
		return nil, d.FailOpen
	}
	if !d.k.WG.HasDevice(name) {
		d.k.WG.AddDevice(name)
		d.mu.Lock()
		d.writes++
		d.mu.Unlock()
	}
	d.k.Netlink.AddLink(name)
	d.k.Sysctl.Define("net.ipv4.conf."+name+".rp_filter", "0")
	client := readClient{noClose{d.k.WG}, &d.k.reads}
	dev, err := wireguard.New(ctx, wireguard.Options{Name: name, MTU: mtu, Links: d.k.Links, Client: client, Log: logr.Discard()})
	if err != nil {
		return nil, err
	}
	if d.NoPeerConfigurer {
		return dev, nil
	}
	return dataplane.NewTunnel(dev, client), nil
}

// Teardown implements dataplane.TunnelDriver.
func (d *Driver) Teardown(_ context.Context, name string) error {
	if err := d.k.Links.Delete(name); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if d.k.WG.HasDevice(name) {
		d.k.WG.RemoveDevice(name)
		d.mu.Lock()
		d.writes++
		d.mu.Unlock()
	}
	return nil
}

// noClose keeps the shared fake client usable after a Device closes it.
type noClose struct{ *wgfake.Client }

func (noClose) Close() error { return nil }

// The read counters below wrap the fakes only in what a Dataplane is given,
// so that tests can tell a pass that skipped a layer from one that read it.

type readClient struct {
	wireguard.Client
	n *atomic.Int64
}

func (c readClient) Device(name string) (*wgtypes.Device, error) {
	c.n.Add(1)
	return c.Client.Device(name)
}

type readNetlink struct {
	routing.Netlink
	n *atomic.Int64
}

func (r readNetlink) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	r.n.Add(1)
	return r.Netlink.RouteListFiltered(family, filter, mask)
}

func (r readNetlink) RuleList(family int) ([]netlink.Rule, error) {
	r.n.Add(1)
	return r.Netlink.RuleList(family)
}

func (r readNetlink) LinkByName(name string) (netlink.Link, error) {
	r.n.Add(1)
	return r.Netlink.LinkByName(name)
}

type readConn struct {
	netfilter.Conn
	n *atomic.Int64
}

func (c readConn) ListTablesOfFamily(family nftables.TableFamily) ([]*nftables.Table, error) {
	c.n.Add(1)
	return c.Conn.ListTablesOfFamily(family)
}

func (c readConn) ListChainsOfTableFamily(family nftables.TableFamily) ([]*nftables.Chain, error) {
	c.n.Add(1)
	return c.Conn.ListChainsOfTableFamily(family)
}

func (c readConn) GetRules(t *nftables.Table, ch *nftables.Chain) ([]*nftables.Rule, error) {
	c.n.Add(1)
	return c.Conn.GetRules(t, ch)
}

func (c readConn) GetSets(t *nftables.Table) ([]*nftables.Set, error) {
	c.n.Add(1)
	return c.Conn.GetSets(t)
}

func (c readConn) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	c.n.Add(1)
	return c.Conn.GetSetElements(s)
}

type readSysctl struct {
	routing.Sysctl
	n *atomic.Int64
}

func (s readSysctl) Get(name string) (string, error) {
	s.n.Add(1)
	return s.Sysctl.Get(name)
}
