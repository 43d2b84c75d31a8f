// Package ipam hands out the pod ranges ("blocks") of the members of a ClusterSet.
//
// The hub controller owns one Allocator per ClusterSet. It carves fixed-size blocks
// out of the ClusterSet's IPv4 and IPv6 pools so that no two members overlap, adopts
// the ranges that existing clusters already use (Reserve), keeps released blocks in
// quarantine until every peer has dropped its routes to them, and rebuilds its whole
// state after a hub restart from the allocations recorded in MemberCluster status
// (Rebuild). Allocation is deterministic: the same inputs give the same blocks.
//
// The package is pure computation over net/netip values. It must not import
// Kubernetes packages or anything outside the standard library, and it must not do
// I/O, log, read the wall clock directly (the clock is injected through Config.Now),
// or start goroutines. Persisting the result is the caller's job: the hub writes the
// allocations into API objects and feeds them back through Rebuild.
package ipam
