package dataplane

import (
	"context"

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
	o := wireguard.Options{Name: name, MTU: mtu, Kind: w.Kind, Links: w.Links, Log: w.Log}
	if w.Userspace != nil {
		o.Userspace = w.Userspace(name, mtu)
	}
	return wireguard.New(ctx, o)
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
