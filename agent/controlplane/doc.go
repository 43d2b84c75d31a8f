// Package controlplane is the Kubernetes side of the node agent: it reads
// this node, the cluster's ClusterSetMembership and (on the elected agent
// only) the hub, computes the node's plan.NodePlan and hands it to the data
// path, then publishes what it observed.
//
//   - Gateway candidates (nodes labelled archipelago.dev/gateway) publish
//     their WireGuard public key and endpoint as Node annotations and run a
//     leader election on a Lease in the member cluster. The leader is the
//     active gateway and the only agent that talks to the hub: it reads the
//     MemberCluster directory and the ClusterSet, publishes one TunnelGateway
//     object per candidate in its hub namespace (spec.active on itself) with
//     the tunnels' health in status, and writes ClusterSetMembership.status.
//   - Every other agent reads only the membership status, so the hub's load
//     grows with clusters, not nodes.
//   - Every agent writes its NodeReport annotation (archipelago.dev/datapath)
//     on its own Node.
//   - The elected agent also runs multi-cluster services (services.go): the
//     export and import controllers of internal/mcs in a manager of its own
//     on the member cluster, publishing the member's ExportedServices to its
//     hub namespace, and the merge of the hub's copies of the set's exports
//     (in the set's namespace) with the peer directory's liveness and ranges.
//
// The private key stays in this process and the data path: only its public
// key is ever written to an API object.
//
// This package must not touch the kernel (package dataplane does), compute
// plans itself (package plan does), or write to the hub anything but the
// TunnelGateway objects and their status and the ExportedServices in the
// member's own hub namespace.
package controlplane
