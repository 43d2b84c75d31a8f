package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MemberCluster condition types.
const (
	// MemberAccepted is True when the member's ClusterSet exists.
	MemberAccepted = "Accepted"
	// MemberCIDRAllocated is True when the member holds a pod range for every family it asks for
	// (spec.ipFamilies; empty: every family of its ClusterSet). A member that holds ranges stays
	// True when a family it asks for later cannot be assigned; the reason (PoolExhausted,
	// NoPoolForFamily) and message say so.
	MemberCIDRAllocated = "CIDRAllocated"
	// MemberGatewaysValid is False when one of the member's TunnelGateway objects is invalid.
	MemberGatewaysValid = "GatewaysValid"
	// MemberAgentConnected is True when the member's agent published at least
	// one valid TunnelGateway and its newest heartbeat (status.lastSeen) is fresh.
	MemberAgentConnected = "AgentConnected"
	// MemberConnected is True when the member's active gateway reports tunnels up to every other member.
	MemberConnected = "Connected"
	// MemberFamiliesShared is True when every other member of the set that
	// holds ranges has the same IP families as this one; False says which
	// members (by the families they hold) cannot reach this one's pods, or
	// whose pods this one's cannot reach.
	MemberFamiliesShared = "FamiliesShared"
)

// MemberCluster condition reasons.
const (
	ReasonAccepted           = "Accepted"
	ReasonClusterSetNotFound = "ClusterSetNotFound"
	ReasonClusterSetDeleting = "ClusterSetDeleting"
	ReasonAllocated          = "Allocated"
	ReasonAdopted            = "Adopted"
	ReasonConflict           = "Conflict"
	ReasonOutsidePool        = "OutsidePool"
	ReasonPoolExhausted      = "PoolExhausted"
	ReasonInvalidRequest     = "InvalidRequest"
	ReasonPending            = "Pending"
	ReasonValid              = "Valid"
	ReasonInvalidGateway     = "InvalidGateway"
	// ReasonDuplicatePublicKey: another member's gateway published this
	// WireGuard public key first; a key belongs to one member.
	ReasonDuplicatePublicKey = "DuplicatePublicKey"
	ReasonNoGateway          = "NoGateway"
	ReasonGatewayPublished   = "GatewayPublished"
	ReasonHeartbeatStale     = "HeartbeatStale"
	ReasonAllPeersUp         = "AllPeersUp"
	ReasonPeersDown          = "PeersDown"
	ReasonNoPeers            = "NoPeers"
	ReasonReady              = "Ready"
	ReasonRequestDiffers     = "RequestDiffersFromAssignment"
	ReasonMultipleActive     = "MultipleActiveGateways"
	// ReasonNoPoolForFamily: spec.ipFamilies lists a family the ClusterSet
	// has no pool of.
	ReasonNoPoolForFamily = "NoPoolForFamily"
	// ReasonFamiliesDiffer: an assigned range is of a family spec.ipFamilies
	// no longer lists; it stays assigned (reported, not applied).
	ReasonFamiliesDiffer = "FamiliesDifferFromAssignment"
	// FamiliesShared reasons (MemberCluster and ClusterSet).
	ReasonAllFamiliesShared = "AllFamiliesShared"
	ReasonPartialFamilies   = "PartialFamilies"
	ReasonNoCommonFamily    = "NoCommonFamily"
)

// MemberClusterSpec says which ClusterSet a member cluster belongs to.
//
// +kubebuilder:validation:XValidation:rule="!has(self.ipFamilies) || size(self.ipFamilies) == 0 || !has(self.podCIDRs) || self.podCIDRs.all(c, !isCIDR(c) || (cidr(c).ip().family() == 4 ? 'IPv4' : 'IPv6') in self.ipFamilies)",message="spec.podCIDRs adopts a range of an IP family that spec.ipFamilies does not list: add the family to spec.ipFamilies or remove the range",fieldPath=".podCIDRs"
type MemberClusterSpec struct {
	// ClusterSet is the name of the ClusterSet this member belongs to (a DNS label).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="spec.clusterSet must be a DNS label (the name of a ClusterSet): lowercase letters, digits and '-'"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.clusterSet is immutable: delete the MemberCluster and create it again to move it to another ClusterSet"
	ClusterSet string `json:"clusterSet"`

	// PodCIDRs are pod ranges the cluster already uses, at most one per
	// family, to adopt instead of being assigned new ones. They are accepted
	// only if they lie inside a pool of the ClusterSet and overlap no other
	// member. Once assigned, a range never changes while the member exists;
	// a later edit of this field is reported, not applied.
	// +kubebuilder:validation:MaxItems=2
	// +listType=set
	// +kubebuilder:validation:XValidation:rule="self.size() < 2 || !isCIDR(self[0]) || !isCIDR(self[1]) || cidr(self[0]).ip().family() != cidr(self[1]).ip().family()",message="spec.podCIDRs may hold at most one range per IP family"
	// +optional
	PodCIDRs []CIDR `json:"podCIDRs,omitempty"`

	// IPFamilies are the IP families the member's pods have addresses of:
	// [IPv4], [IPv6] or both. The hub assigns a block of these families
	// only. Empty means every family the ClusterSet has a pool of (a member
	// created before this field existed keeps its ranges). A listed family
	// the set has no pool of gets no block: CIDRAllocated=False,
	// NoPoolForFamily, and no family is assigned until it can be. Adding a
	// family later assigns it; removing one is reported, not applied: an
	// assigned range never changes while the member exists.
	// +kubebuilder:validation:MaxItems=2
	// +listType=set
	// +kubebuilder:validation:XValidation:rule="self.all(f, self.exists_one(g, g == f))",message="spec.ipFamilies must list each IP family at most once"
	// +optional
	IPFamilies []IPFamily `json:"ipFamilies,omitempty"`
}

// MemberGateway is a validated gateway of a member, copied by the hub from
// the member's TunnelGateway object, for kubectl users. Peers build their
// tunnels from the member's ClusterSetPeer (which the hub fills from this),
// never from the TunnelGateway object itself.
type MemberGateway struct {
	// Name of the TunnelGateway object in the member's hub namespace.
	Name string `json:"name"`
	// Node is the member cluster's node that runs this gateway.
	Node string `json:"node"`
	// PublicKey is the gateway's WireGuard public key (base64).
	PublicKey string `json:"publicKey"`
	// Endpoints are host:port addresses where the gateway receives tunnel traffic.
	// +optional
	Endpoints []string `json:"endpoints,omitempty"`
	// Active is true for the gateway that currently holds the member's tunnels.
	// +optional
	Active bool `json:"active,omitempty"`
	// MTU is the gateway's tunnel MTU (its TunnelGateway's spec.mtu).
	// +optional
	MTU int32 `json:"mtu,omitempty"`
}

// MemberClusterStatus is written by the hub alone.
type MemberClusterStatus struct {
	// ObservedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// PodCIDRs are the member's pod ranges, one per family. This is the
	// authoritative record of who owns which range: the hub copies it into
	// the member's ClusterSetPeer, and peers route exactly these ranges to
	// this member. Never changes while the member exists.
	// +optional
	// +listType=set
	PodCIDRs []string `json:"podCIDRs,omitempty"`

	// Namespace is the member's namespace on the hub: its credentials and the
	// TunnelGateway objects its agent writes live there.
	// +optional
	Namespace string `json:"namespace,omitempty"`

	// ServiceAccount is the name of the member's ServiceAccount in Namespace.
	// +optional
	ServiceAccount string `json:"serviceAccount,omitempty"`

	// Gateways are the member's validated gateways.
	// +optional
	// +listType=map
	// +listMapKey=name
	Gateways []MemberGateway `json:"gateways,omitempty"`

	// ActiveGateway is the node of the active gateway, for kubectl get.
	// +optional
	ActiveGateway string `json:"activeGateway,omitempty"`

	// ConnectedPeers is how many peers the active gateway reports a tunnel
	// up to (its TunnelGateway's status.peersUp). (Earlier versions wrote a
	// "k/n" string to status.connectedPeers; the API server prunes it.)
	// +optional
	ConnectedPeers int32 `json:"connectedPeerCount"`

	// TotalPeers is how many peers the active gateway's directory holds
	// (status.peersUp plus its status.downPeers).
	// +optional
	TotalPeers int32 `json:"totalPeers"`

	// Conditions: Ready, Accepted, CIDRAllocated, GatewaysValid, AgentConnected, Connected, FamiliesShared.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// MemberCluster is one cluster of a ClusterSet, as the hub sees it. Its name
// is the member's cluster ID.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=member
// +kubebuilder:validation:XValidation:rule="self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name is the member's cluster ID and must be a DNS label: lowercase letters, digits and '-', at most 63 characters"
// +kubebuilder:printcolumn:name="ClusterSet",type=string,JSONPath=`.spec.clusterSet`
// +kubebuilder:printcolumn:name="Pod CIDRs",type=string,JSONPath=`.status.podCIDRs`
// +kubebuilder:printcolumn:name="Gateway",type=string,JSONPath=`.status.activeGateway`
// +kubebuilder:printcolumn:name="Connected",type=integer,JSONPath=`.status.connectedPeerCount`
// +kubebuilder:printcolumn:name="Peers",type=integer,JSONPath=`.status.totalPeers`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Families",type=string,priority=1,JSONPath=`.spec.ipFamilies`
// +kubebuilder:printcolumn:name="Families Shared",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="FamiliesShared")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MemberCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MemberClusterSpec   `json:"spec"`
	Status MemberClusterStatus `json:"status,omitempty"`
}

// MemberClusterList is a list of MemberClusters.
//
// +kubebuilder:object:root=true
type MemberClusterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MemberCluster `json:"items"`
}
