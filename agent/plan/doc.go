// Package plan computes what the data path of one node must look like: the
// WireGuard tunnel (on the active gateway only), the routes to the remote
// clusters' pod ranges, and the packet filter. Compute is a pure function of
// its Inputs (this node's role, the cluster's hub-assigned ranges, the peer
// directory, the active gateway's address, the ClusterSet's tunnel settings
// and the node's private key); the dataplane package makes the kernel match
// the NodePlan it returns.
//
// PeersFromDirectory turns the hub's peer directory (the ClusterSetPeers of
// this cluster's set) into peers. A peer's AllowedIPs come only from
// ClusterSetPeer.spec.podCIDRs (which the hub alone writes, from its own
// record), never from anything the member wrote itself; a peer without
// ranges, without a valid active gateway or with a conflicting range is
// returned as Invalid with a message, and the others are unaffected; a
// withdrawn peer is left out and named, so its drop can be acknowledged.
//
// This package must not do any I/O: no Kubernetes client, no netlink, no
// clock. It imports no kernel package: the plan is made of the pure types of
// package desired, and prefixes are canonicalised by internal/prefix. It never logs or publishes the private key it is given; the key
// only travels into the TunnelPlan for the local device.
package plan
