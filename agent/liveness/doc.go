// Package liveness is the data-path health check between gateway
// candidates: a small UDP echo. Standby candidates send a probe to the active
// gateway's node every interval; the active node's responder (which runs in
// the long-lived WireGuard device process, not in the agent, so that an agent
// restart is not mistaken for a dead node) echoes it back. A holder that
// answered before and then misses a number of probes in a row is dead, and a
// standby may take the gateway Lease at once instead of waiting for it to
// expire.
//
// Requests and replies are distinct messages: the responder answers only
// requests, with a reply, and never answers a reply, so a spoofed request
// whose source is another responder costs one reply and cannot start an echo
// loop between two responders. The prober starts its sequence numbers at a
// random value and counts a reply only when it comes from the target's
// address and port and answers one of its latest probes not answered yet.
// Messages are not authenticated: the responder runs in the device process,
// which holds no key the candidates share (see docs/agent.md).
//
// This package only sends and answers probes; it must not decide who is the
// gateway (package controlplane does, with the Lease as the fence).
package liveness
