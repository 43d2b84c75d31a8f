package plan

import "github.com/archipelago-mesh/archipelago/agent/desired"

// WithStandbyDevice gives a standby candidate's plan p a WireGuard device
// with in's key and tunnel settings and no peers. A standby with its device
// already open takes over by configuring peers alone (no device to create:
// half a second of a failover in the lab's userspace devices), and a device
// without peers sends nothing with the member's shared key, so it never
// pulls a remote's endpoint away from the active gateway. An active that
// steps down gets the same plan: its peers are removed, its device stays.
// Routes and the filter stay as Compute made them (via the active gateway).
// p is returned unchanged for any other role or without a key.
func WithStandbyDevice(p NodePlan, in Inputs) NodePlan {
	if p.Role != RoleStandby || in.PrivateKey == ([32]byte{}) {
		return p
	}
	p.Tunnel = &desired.TunnelPlan{PrivateKey: in.PrivateKey, ListenPort: in.Tunnel.Port, MTU: p.MTU.MTU}
	return p
}
