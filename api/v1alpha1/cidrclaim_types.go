package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// CIDRClaimSpec records that one block of a ClusterSet is taken.
//
// +kubebuilder:validation:XValidation:rule="has(self.memberUID) == has(oldSelf.memberUID)",message="spec.memberUID is immutable"
// +kubebuilder:validation:XValidation:rule="has(self.podCIDR) == has(oldSelf.podCIDR)",message="spec.podCIDR is immutable"
type CIDRClaimSpec struct {
	// ClusterSet the block belongs to.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.clusterSet is immutable"
	ClusterSet string `json:"clusterSet"`

	// CIDR is the block: one block of the set's grid (a prefix of the set's
	// block size, aligned to it).
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.cidr is immutable"
	CIDR CIDR `json:"cidr"`

	// Member holds the block.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.member is immutable"
	Member string `json:"member"`

	// MemberUID is the UID of the MemberCluster that holds the block, so that
	// a member deleted and created again under the same name does not
	// inherit the claims of the one before.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.memberUID is immutable"
	// +optional
	MemberUID types.UID `json:"memberUID,omitempty"`

	// PodCIDR is the member's range the block serves. It is the block itself
	// for a block the hub chose. An adopted range is the range as requested:
	// one that covers several blocks has one claim per block, one smaller
	// than a block has the claim of the block that contains it (nobody else
	// can get the rest of that block). Empty means CIDR.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.podCIDR is immutable"
	// +optional
	PodCIDR CIDR `json:"podCIDR,omitempty"`

	// ReleasedAt is set when the member let the block go; the block stays
	// claimed (quarantined) until the ClusterSet's quarantine has passed.
	// +optional
	ReleasedAt *metav1.Time `json:"releasedAt,omitempty"`
}

// CIDRClaim is the hub's record that a block of a ClusterSet is taken. Its
// name is derived from the ClusterSet and the block of the set's grid, so
// creating it is the atomic step that takes the block: a second hub (or a
// hub restarted midway) that chose the same block, or a range that covers
// it, gets AlreadyExists and can never hand it to another member. Written
// by the hub only.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster
// +kubebuilder:printcolumn:name="ClusterSet",type=string,JSONPath=`.spec.clusterSet`
// +kubebuilder:printcolumn:name="CIDR",type=string,JSONPath=`.spec.cidr`
// +kubebuilder:printcolumn:name="Member",type=string,JSONPath=`.spec.member`
// +kubebuilder:printcolumn:name="PodCIDR",type=string,JSONPath=`.spec.podCIDR`,priority=1
// +kubebuilder:printcolumn:name="Released",type=date,JSONPath=`.spec.releasedAt`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type CIDRClaim struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec CIDRClaimSpec `json:"spec"`
}

// CIDRClaimList is a list of CIDRClaims.
//
// +kubebuilder:object:root=true
type CIDRClaimList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CIDRClaim `json:"items"`
}
