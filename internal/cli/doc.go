// Package cli implements `kubectl archipelago`: the plugin commands for the
// steps that span the hub and a member cluster (join, leave), and the
// read-only views that explain an archipelago's health (status, diagnose,
// verify).
//
// The hub is the only authority for ranges, gateways and credentials: this
// package only asks it (creates a MemberCluster, requests a token) and
// copies what it answers into a member. It must not allocate ranges, write
// MemberCluster status, or touch a node's data path; diagnose and status
// read what the hub and the agents report and never guess kernel state.
//
// cmd/kubectl-archipelago only wires Main to the process.
package cli
