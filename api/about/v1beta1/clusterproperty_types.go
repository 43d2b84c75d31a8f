package v1beta1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Well-known ClusterProperty names (KEP-2149).
const (
	// ClusterIDProperty holds the cluster's name in its ClusterSet: for
	// archipelago, the name of its MemberCluster on the hub.
	ClusterIDProperty = "cluster.clusterset.k8s.io"
	// ClusterSetProperty holds the name of the ClusterSet the cluster belongs to.
	ClusterSetProperty = "clusterset.k8s.io"
)

// ClusterPropertySpec holds the property's value.
type ClusterPropertySpec struct {
	// Value is the property's value. For cluster.clusterset.k8s.io and
	// clusterset.k8s.io it is a DNS label; other properties may hold up to
	// 128k characters.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128000
	Value string `json:"value"`
}

// ClusterProperty is one name/value fact about the cluster it lives in.
// about.k8s.io is a protected group: the CRD carries the API approval of
// KEP-2149 (enhancements pull request 3084), as upstream's does.
// Its name is the property's name.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster
// +kubebuilder:metadata:annotations="api-approved.kubernetes.io=https://github.com/kubernetes/enhancements/pull/3084"
// +kubebuilder:printcolumn:name="Value",type=string,JSONPath=`.spec.value`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="!(self.metadata.name in ['cluster.clusterset.k8s.io', 'clusterset.k8s.io']) || self.spec.value.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.spec.value.size() <= 63",message="spec.value of cluster.clusterset.k8s.io and clusterset.k8s.io must be a DNS label: lowercase letters, digits and '-', at most 63"
// +kubebuilder:validation:XValidation:rule="!(self.metadata.name in ['cluster.clusterset.k8s.io', 'clusterset.k8s.io']) || self.spec.value == oldSelf.spec.value",message="spec.value of cluster.clusterset.k8s.io and clusterset.k8s.io is immutable while the cluster is in a ClusterSet: delete the property (leave the set) first"
type ClusterProperty struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ClusterPropertySpec `json:"spec"`
}

// ClusterPropertyList is a list of ClusterProperty.
//
// +kubebuilder:object:root=true
type ClusterPropertyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ClusterProperty `json:"items"`
}
