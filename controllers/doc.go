// Package controllers holds the hub's reconcilers: ClusterSet and
// MemberCluster, and the BlockLedger that assigns member pod ranges.
//
// The hub is the only authority over who owns which range. A block is taken
// when its CIDRClaim object is created (the name is derived from the block,
// so the API server refuses a second claim), and only then written into
// MemberCluster.status.podCIDRs with optimistic concurrency. The in-memory
// allocator (internal/ipam) is a cache of the claims, rebuilt from them and
// from every member's status before the first allocation after a start.
//
// This package must not talk to member clusters or to the kernel: members
// come to the hub, never the other way around.
package controllers
