// Command kindcni is a small kindnet-like CNI for offline kind clusters: the
// default CNI of the node image that hack/kind builds (kindnetd cannot be
// built from the Go module proxy). One pod per node (hostNetwork):
//
//   - writes a ptp + host-local conflist for the node's spec.podCIDRs into
//     /etc/cni/net.d (the plugins are Debian's, in the node's /opt/cni/bin);
//   - routes every other node's podCIDRs via that node's InternalIP (the nodes
//     share one Docker network);
//   - masquerades traffic from the cluster's pod range to anything outside it,
//     exactly as kindnet does, with an nftables NAT chain at priority srcnat
//     (table "inet kindcni"). That is the masquerade the agent's no-SNAT rule
//     (docs/no-snat.md) has to win against in the kind e2e suite.
//
// It is test infrastructure: it must not be used by the agent or the hub.
package main
