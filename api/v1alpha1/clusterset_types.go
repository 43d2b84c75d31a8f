package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClusterSet condition types and reasons.
const (
	// ClusterSetPoolExhausted is True when some family has no free block left.
	ClusterSetPoolExhausted = "PoolExhausted"
	// ClusterSetRemovedPoolsInUse is True when blocks are in use outside the
	// current pools (a pool was removed from spec while members still use it).
	ClusterSetRemovedPoolsInUse = "RemovedPoolsInUse"
	// ClusterSetFamiliesShared is True when every member that holds ranges
	// holds the same IP families; False names the groups of members whose
	// pods cannot reach each other over some family (PartialFamilies) or at
	// all (NoCommonFamily).
	ClusterSetFamiliesShared = "FamiliesShared"

	ReasonAvailable          = "BlocksAvailable"
	ReasonExhausted          = "Exhausted"
	ReasonBlocksOutsidePools = "BlocksOutsidePools"
	ReasonAllInsidePools     = "AllInsidePools"
	ReasonInvalidPools       = "InvalidPools"
)

// BlockSize is the prefix length of the pod range each member gets, per family.
type BlockSize struct {
	// IPv4 is the prefix length of each member's IPv4 range.
	// +kubebuilder:default=16
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=32
	// +optional
	IPv4 int32 `json:"ipv4,omitempty"`

	// IPv6 is the prefix length of each member's IPv6 range.
	// +kubebuilder:default=64
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=128
	// +optional
	IPv6 int32 `json:"ipv6,omitempty"`
}

// TunnelSettings are the WireGuard settings every gateway of the set uses.
type TunnelSettings struct {
	// Port is the UDP port gateways listen on.
	// +kubebuilder:default=51820
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`

	// MTU of the tunnel interface on every gateway. Unset, each gateway
	// derives it from the interface that carries its tunnel: that
	// interface's MTU less WireGuard's overhead (60 bytes over IPv4, 80
	// over IPv6), and reports it in its ClusterSetMembership's
	// status.tunnelMTU.
	// +kubebuilder:validation:Minimum=1280
	// +kubebuilder:validation:Maximum=9000
	// +optional
	MTU int32 `json:"mtu,omitempty"`

	// PersistentKeepaliveSeconds keeps NAT mappings open for gateways behind NAT; 0 disables it.
	// +kubebuilder:default=25
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=3600
	// +optional
	PersistentKeepaliveSeconds *int32 `json:"persistentKeepaliveSeconds,omitempty"`
}

// ClusterSetSpec is the address space and tunnel settings of a set of member clusters.
//
// +kubebuilder:validation:XValidation:rule="self.podCIDRPools.all(a, self.podCIDRPools.all(b, a == b || !isCIDR(a) || !isCIDR(b) || !(cidr(a).containsCIDR(cidr(b)) || cidr(b).containsCIDR(cidr(a)))))",message="spec.podCIDRPools must not overlap each other",fieldPath=".podCIDRPools"
// +kubebuilder:validation:XValidation:rule="self.podCIDRPools.all(p, !isCIDR(p) || cidr(p).ip().family() != 4 || cidr(p).prefixLength() <= self.blockSize.ipv4)",message="spec.blockSize.ipv4 must be at least the prefix length of every IPv4 pool (a block must fit inside its pool)",fieldPath=".blockSize.ipv4"
// +kubebuilder:validation:XValidation:rule="self.podCIDRPools.all(p, !isCIDR(p) || cidr(p).ip().family() != 6 || cidr(p).prefixLength() <= self.blockSize.ipv6)",message="spec.blockSize.ipv6 must be at least the prefix length of every IPv6 pool (a block must fit inside its pool)",fieldPath=".blockSize.ipv6"
type ClusterSetSpec struct {
	// PodCIDRPools are the supernets member pod ranges are carved from,
	// IPv4 and/or IPv6. They must not overlap each other. Removing a pool
	// whose blocks are in use keeps those blocks assigned (see the
	// RemovedPoolsInUse condition).
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +listType=set
	PodCIDRPools []CIDR `json:"podCIDRPools"`

	// BlockSize is the size of the pod range each member gets, per family.
	// It cannot change once set: members keep their ranges for life.
	// +kubebuilder:default={}
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.blockSize is immutable: members keep their ranges for life; create a new ClusterSet for another block size"
	// +optional
	BlockSize BlockSize `json:"blockSize,omitempty"`

	// Tunnel holds the WireGuard settings of the set.
	// +kubebuilder:default={}
	// +optional
	Tunnel TunnelSettings `json:"tunnel,omitempty"`

	// QuarantineSeconds is how long a released block stays unassignable, so
	// that a stale route somewhere cannot deliver traffic to a new owner.
	// +kubebuilder:default=300
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=604800
	// +optional
	QuarantineSeconds *int32 `json:"quarantineSeconds,omitempty"`
}

// FamilyStatus counts the blocks of one IP family. Counts saturate at the
// largest int64 (an IPv6 pool can hold more blocks than that).
type FamilyStatus struct {
	Family IPFamily `json:"family"`
	// BlockPrefixLength is the size of each block.
	BlockPrefixLength int32 `json:"blockPrefixLength"`
	// Total blocks in all pools of this family.
	Total int64 `json:"total"`
	// Allocated blocks (held by members).
	Allocated int64 `json:"allocated"`
	// Quarantined blocks (released, not yet reusable).
	Quarantined int64 `json:"quarantined"`
	// Free blocks.
	Free int64 `json:"free"`
}

// FamilyGroup counts the members that hold ranges of exactly these IP families.
type FamilyGroup struct {
	// Families: [IPv4], [IPv6] or [IPv4, IPv6].
	// +listType=atomic
	Families []IPFamily `json:"families"`
	// Members is how many members hold exactly these families.
	Members int32 `json:"members"`
}

// ClusterSetStatus is what the hub observed of a ClusterSet.
type ClusterSetStatus struct {
	// ObservedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Members is the number of MemberClusters in this set.
	// +optional
	Members int32 `json:"members"`

	// Families counts blocks per IP family.
	// +optional
	// +listType=map
	// +listMapKey=family
	Families []FamilyStatus `json:"families,omitempty"`

	// MemberFamilies groups the members that hold ranges by their IP
	// families (IPv4 only, IPv6 only, both), in that order. Each member's
	// FamiliesShared condition follows from the groups present.
	// +optional
	// +listType=atomic
	MemberFamilies []FamilyGroup `json:"memberFamilies,omitempty"`

	// BlocksOutsidePools lists assigned blocks that lie outside every current
	// pool because their pool was removed from spec.
	// +optional
	BlocksOutsidePools []string `json:"blocksOutsidePools,omitempty"`

	// Conditions: Ready, PoolExhausted, RemovedPoolsInUse, FamiliesShared.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ClusterSet is a pool of address space shared by a set of member clusters.
// The hub gives each member a pod range from it that overlaps no other member's.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=cset
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name of a ClusterSet must be a DNS label: lowercase letters, digits and '-', at most 63 characters"
// +kubebuilder:printcolumn:name="Pools",type=string,JSONPath=`.spec.podCIDRPools`
// +kubebuilder:printcolumn:name="Members",type=integer,JSONPath=`.status.members`
// +kubebuilder:printcolumn:name="Free IPv4",type=integer,JSONPath=`.status.families[?(@.family=="IPv4")].free`
// +kubebuilder:printcolumn:name="Free IPv6",type=integer,JSONPath=`.status.families[?(@.family=="IPv6")].free`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Families Shared",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="FamiliesShared")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ClusterSet struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ClusterSetSpec   `json:"spec"`
	Status ClusterSetStatus `json:"status,omitempty"`
}

// ClusterSetList is a list of ClusterSets.
//
// +kubebuilder:object:root=true
type ClusterSetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ClusterSet `json:"items"`
}

// Quarantine returns how long a released block stays unassignable.
func (s *ClusterSetSpec) Quarantine() time.Duration {
	if s.QuarantineSeconds == nil {
		return 300 * time.Second
	}
	return time.Duration(*s.QuarantineSeconds) * time.Second
}

// Keepalive returns the tunnels' persistent keepalive interval (0: off).
func (t *TunnelSettings) Keepalive() time.Duration {
	if t.PersistentKeepaliveSeconds == nil {
		return 25 * time.Second
	}
	return time.Duration(*t.PersistentKeepaliveSeconds) * time.Second
}
