// Package wireguard is the agent's WireGuard layer on the active gateway: it
// keeps the gateway's private key (LoadOrCreateKey), finds or creates the
// WireGuard interface once at start, kernel or userspace, chosen by probing
// (New), runs the userspace wireguard-go device in its own long-lived process
// (RunUserspaceDevice, EnsureUserspaceDevice) so that agent restarts do not
// drop tunnels, and makes the device match a pure desired state (TunnelPlan)
// by diffing first and configuring only the peers that differ (Apply).
//
// Every kernel side effect goes through two narrow interfaces the agent owns:
// Client (the subset of *wgctrl.Client it calls) and LinkOps (MTU, up,
// addresses, create, delete). Package fake implements both for tests.
//
// This package must not:
//   - decide what the peers are: plans come from the hub's peer directory,
//     computed elsewhere;
//   - touch routes, rules or packet filters: other packages own those;
//   - branch on kernel versus userspace anywhere after New;
//   - replace all peers (ReplacePeers) in steady state, or configure a peer
//     that did not change: that would reset sessions of healthy tunnels;
//   - regenerate a key it cannot read or that has loose permissions, or let
//     the private key leave the host (callers publish key.PublicKey() only);
//   - stop a device process other than the one serving the device's own UAPI
//     socket, and never by name.
package wireguard
