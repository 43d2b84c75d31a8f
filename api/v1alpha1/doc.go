// Package v1alpha1 holds the archipelago API (group mesh.archipelago.dev):
// ClusterSet, MemberCluster, CIDRClaim and Gateway on the hub, and
// ClusterSetMembership in each member cluster.
//
// The package imports only apimachinery: it is shared by the hub, the agent
// and the kubectl plugin, and must not depend on any of them. Validation that
// a user should see at apply time lives here, as kubebuilder markers and CEL
// rules, so that a bad object is refused with a message naming the field.
//
// +kubebuilder:object:generate=true
// +groupName=mesh.archipelago.dev
package v1alpha1
