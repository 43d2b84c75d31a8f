// Package liveness is the data-path health check between gateway
// candidates: a small UDP echo. Standby candidates send a probe to the active
// gateway's node every interval; the active node's responder (which runs in
// the long-lived WireGuard device process, not in the agent, so that an agent
// restart is not mistaken for a dead node) echoes it back. A holder that
// answered before and then misses a number of probes in a row is dead, and a
// standby may take the gateway Lease at once instead of waiting for it to
// expire.
//
// This package only sends and answers probes; it must not decide who is the
// gateway (package controlplane does, with the Lease as the fence).
package liveness
