// Package dataplane makes one node's kernel match a plan.NodePlan: it opens
// (or finds, after an agent restart) the WireGuard device when the node is
// the active gateway and applies the TunnelPlan, sets the host sysctls, the
// nftables table and the routes, through the wireguard, routing and
// netfilter packages. Every step diffs first, so a pass with nothing to
// change makes no kernel write; a role change away from gateway tears the
// device down; Cleanup removes everything the agent made. Report turns the
// last pass into the NodeReport the agent publishes.
//
// Apply is the event-driven pass: the Dataplane remembers, per layer, the
// part of the plan its last successful pass applied, skips a layer whose
// part did not change without reading the kernel, and configures only the
// WireGuard peers that differ. ApplyFull and Resync (which RunResync calls
// periodically) diff every layer against the kernel and so repair drift (a
// route deleted by hand); the first pass, and a layer after an error, are
// always full.
//
// Kernel access goes through the narrow interfaces of those packages plus
// TunnelDriver (open/tear down the device) so that the whole applier runs on
// fakes in unit tests (package fake builds one).
//
// This package must not decide what the plan is (package plan does), talk
// to Kubernetes, or read the private key from anywhere but the plan.
package dataplane
