// Package fake builds a dataplane.Dataplane on in-memory kernels (the fakes
// of the wireguard, routing and netfilter packages) and counts its writes.
package fake

import (
	"context"
	"fmt"
	"sync"

	"github.com/go-logr/logr"

	"github.com/archipelago-mesh/archipelago/agent/dataplane"
	nffake "github.com/archipelago-mesh/archipelago/agent/netfilter/fake"
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
	Driver  *Driver

	sysctlBase int
}

// NewKernel returns an empty fake node with IPv4 forwarding off and strict
// rp_filter, as a fresh host has.
func NewKernel() *Kernel {
	k := &Kernel{
		WG:      wgfake.NewClient(),
		Links:   wgfake.NewLinks(true),
		Netlink: rtfake.NewNetlink(),
		NFT:     nffake.New(),
		Sysctl: rtfake.NewSysctl(map[string]string{
			"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0",
			"net.ipv4.conf.all.rp_filter": "1",
		}),
	}
	k.Driver = &Driver{k: k}
	return k
}

// Dataplane returns a Dataplane on k.
func (k *Kernel) Dataplane(tunnel string, log logr.Logger) *dataplane.Dataplane {
	return dataplane.New(dataplane.Options{
		Tunnels: k.Driver, Netlink: k.Netlink, Filter: k.NFT, Sysctl: k.Sysctl,
		TunnelInterface: tunnel, Log: log,
	})
}

// Writes is the number of kernel writes since ResetWrites.
func (k *Kernel) Writes() int {
	return len(k.WG.ConfigureCalls()) + len(k.Links.Changes()) + k.Netlink.Writes() + k.NFT.Writes() +
		len(k.Sysctl.Writes()) - k.sysctlBase + k.Driver.Writes()
}

// ResetWrites zeroes the write counters; the state stays.
func (k *Kernel) ResetWrites() {
	k.WG.ResetCalls()
	k.Links.ResetChanges()
	k.Netlink.ResetWrites()
	k.NFT.ResetCounts()
	k.sysctlBase = len(k.Sysctl.Writes())
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
	return wireguard.New(ctx, wireguard.Options{Name: name, MTU: mtu, Links: d.k.Links, Client: noClose{d.k.WG}, Log: logr.Discard()})
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
