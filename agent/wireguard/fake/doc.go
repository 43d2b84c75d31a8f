// Package fake provides in-memory implementations of wireguard.Client and
// wireguard.LinkOps for unit tests of the agent's WireGuard layer and of its
// callers, with assertion helpers (ConfigureCalls, PeersTouched,
// UsedReplacePeers, Changes) and simulations of what the data path does on its
// own (Roam, Handshake).
//
// It follows the kernel's configuration semantics closely enough that a
// state-machine test against it is meaningful, but it must not be used
// outside tests and must not grow logic of its own: when the real device and
// the fake disagree, the fake is wrong.
package fake
