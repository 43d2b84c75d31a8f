// Package v1beta1 declares ClusterProperty (group about.k8s.io), the
// cluster-scoped name/value pair of KEP-2149 that the Multi-Cluster Services
// API uses to name a cluster: a ClusterProperty named
// cluster.clusterset.k8s.io holds the member's name and one named
// clusterset.k8s.io the ClusterSet's.
//
// The upstream sigs.k8s.io/about-api module is not available to this project,
// so the type is declared here, wire-compatible with upstream. Like every
// package under api/, it imports only apimachinery.
//
// +kubebuilder:object:generate=true
// +groupName=about.k8s.io
package v1beta1
