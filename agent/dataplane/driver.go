package dataplane

import (
	"context"
	"sync"

	"github.com/go-logr/logr"

	"github.com/archipelago-mesh/archipelago/agent/wireguard"
)

// WireGuardDriver is the real TunnelDriver: wireguard.New and
// wireguard.Teardown.
type WireGuardDriver struct {
	// Links defaults to netlink in the agent's network namespace.
	Links wireguard.LinkOps
	// Kind forces kernel or userspace; the zero value probes.
	Kind wireguard.Kind
	// Userspace says how to start the userspace device process for name.
	Userspace func(name string, mtu int) wireguard.UserspaceProcess
	// BeforeTeardown runs before the device is deleted, e.g. to withdraw
	// the request a device supervisor (sidecar) watches, so that it does not
	// start the device again.
	BeforeTeardown func(name string) error
	Log            logr.Logger
}

var _ TunnelDriver = (*WireGuardDriver)(nil)

// Open implements TunnelDriver.
func (w *WireGuardDriver) Open(ctx context.Context, name string, mtu int) (Tunnel, error) {
	// The Device is opened with a client of ours so that event-driven
	// passes can send just the changed peers through it (NewTunnel).
	wg, err := wireguard.NewClient()
	if err != nil {
		return nil, err
	}
	client := &closeOnce{Client: wg}
	o := wireguard.Options{Name: name, MTU: mtu, Kind: w.Kind, Links: w.Links, Client: client, Log: w.Log}
	if w.Userspace != nil {
		o.Userspace = w.Userspace(name, mtu)
	}
	dev, err := wireguard.New(ctx, o)
	if err != nil {
		// New closes the client on some of its errors, not on all.
		_ = client.Close()
		return nil, err
	}
	return NewTunnel(dev, client), nil
}

// closeOnce makes a second Close of a client a no-op.
type closeOnce struct {
	wireguard.Client
	once sync.Once
	err  error
}

func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.Client.Close() })
	return c.err
}

// Teardown implements TunnelDriver.
func (w *WireGuardDriver) Teardown(ctx context.Context, name string) error {
	if w.BeforeTeardown != nil {
		if err := w.BeforeTeardown(name); err != nil {
			return err
		}
	}
	return wireguard.Teardown(ctx, name, w.Links, w.Log)
}
