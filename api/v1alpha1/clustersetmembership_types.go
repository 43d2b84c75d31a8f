package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClusterSetMembership condition types.
const (
	// MembershipJoined is True when the agent reached the hub and the hub assigned ranges.
	MembershipJoined = "Joined"
	// MembershipCIDRsMatch is True when every Node's spec.podCIDRs lie inside the assigned ranges.
	MembershipCIDRsMatch = "CIDRsMatch"
	// MembershipTunnelsReady is True when the tunnels to every peer are up.
	MembershipTunnelsReady = "TunnelsReady"
	// MembershipHubCredentials is True while the elected agent's hub token is
	// bound (revocable) and renewed in time; False names the problem.
	MembershipHubCredentials = "HubCredentials"
	// MembershipServices is True while the elected agent runs multi-cluster
	// services (exports and imports); False says why not, e.g. a
	// ClusterProperty that names another cluster or set.
	MembershipServices = "MultiClusterServices"
)

// HubConnection says how a member's agent reaches the hub.
type HubConnection struct {
	// Server is the URL of the hub's Kubernetes API.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() == 'https'",message="spec.hub.server must be an https:// URL"
	Server string `json:"server"`

	// SecretRef names the Secret with this member's hub credentials: keys
	// "token" (a token of the member's hub ServiceAccount) and "ca.crt" (the
	// hub API's CA bundle).
	SecretRef SecretReference `json:"secretRef"`
}

// SecretReference names a Secret in the member cluster.
type SecretReference struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// +kubebuilder:validation:MinLength=1
	Namespace string `json:"namespace"`
}

// ClusterSetMembershipSpec is the join of this cluster to a ClusterSet.
type ClusterSetMembershipSpec struct {
	// ClusterName is this cluster's name in the ClusterSet (the name of its
	// MemberCluster on the hub).
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="spec.clusterName must be a DNS label: lowercase letters, digits and '-'"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.clusterName is immutable: delete the membership and join again"
	ClusterName string `json:"clusterName"`

	// ClusterSet is the name of the ClusterSet on the hub (a DNS label).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="spec.clusterSet must be a DNS label (the name of a ClusterSet): lowercase letters, digits and '-'"
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="spec.clusterSet is immutable: delete the membership and join again"
	ClusterSet string `json:"clusterSet"`

	// Hub says how to reach the hub.
	Hub HubConnection `json:"hub"`
}

// MembershipPeer is one remote member as this cluster's gateway sees it.
type MembershipPeer struct {
	// Cluster is the peer's name.
	Cluster string `json:"cluster"`
	// PodCIDRs are the peer's ranges as the hub assigned them.
	// +optional
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	// Gateway is the peer's active gateway node.
	// +optional
	Gateway string `json:"gateway,omitempty"`
	// Endpoint is the address the tunnel sends to (or last received from).
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
	// PublicKey is the WireGuard public key of the peer's gateway, from the
	// hub's directory. With DirectoryEndpoint it lets a standby gateway
	// candidate build the same tunnel without the hub.
	// +optional
	PublicKey string `json:"publicKey,omitempty"`
	// DirectoryEndpoint is the endpoint the hub's directory gives for the
	// peer's active gateway (resolved); empty for a peer behind NAT.
	// +optional
	DirectoryEndpoint string `json:"directoryEndpoint,omitempty"`
	// MTU is the peer gateway's tunnel MTU from the hub's directory (0
	// when not known); kept so that a standby routes with it without the hub.
	// +optional
	MTU int32 `json:"mtu,omitempty"`
	// PathMTU is the route MTU of the peer's ranges on the active gateway
	// when it is lower than the tunnel's: the smaller of the two tunnel
	// MTUs, rounded down to a multiple of 16 (WireGuard pads packets to
	// one, up to the device's MTU). 0 when the tunnel's MTU applies.
	// +optional
	PathMTU int32 `json:"pathMTU,omitempty"`
	// State: Up, Connecting, Invalid.
	State string `json:"state"`
	// LatestHandshake is the time of the latest WireGuard handshake.
	// +optional
	LatestHandshake *metav1.Time `json:"latestHandshake,omitempty"`
	// Message explains a state that is not Up.
	// +optional
	Message string `json:"message,omitempty"`
}

// UnroutableRange is a remote pod range that cannot be reached, and why.
type UnroutableRange struct {
	// CIDR is the remote range.
	CIDR string `json:"cidr"`
	// Cluster is the member it belongs to.
	Cluster string `json:"cluster"`
	// Reason says why it cannot be reached.
	Reason string `json:"reason"`
}

// TunnelMTUStatus is the MTU of the active gateway's tunnel device, which
// its MSS clamping follows.
type TunnelMTUStatus struct {
	// Effective is the MTU in use.
	Effective int32 `json:"effective"`
	// Source is ClusterSet (spec.tunnel.mtu), Underlay (derived from the
	// interface that carries the tunnel) or Default (the underlay could
	// not be read).
	// +kubebuilder:validation:Enum=ClusterSet;Underlay;Default
	Source string `json:"source"`
	// UnderlayInterface is the interface that carries the tunnel (the one
	// holding the gateway's InternalIP).
	// +optional
	UnderlayInterface string `json:"underlayInterface,omitempty"`
	// UnderlayMTU is that interface's MTU.
	// +optional
	UnderlayMTU int32 `json:"underlayMTU,omitempty"`
	// Message explains the value.
	// +optional
	Message string `json:"message,omitempty"`
}

// Peer states.
const (
	PeerUp         = "Up"
	PeerConnecting = "Connecting"
	PeerInvalid    = "Invalid"
)

// ClusterSetMembershipStatus is written by the member's elected agent.
type ClusterSetMembershipStatus struct {
	// ObservedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// PodCIDRs are the ranges the hub assigned to this cluster.
	// +optional
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	// HubNamespace is this member's namespace on the hub.
	// +optional
	HubNamespace string `json:"hubNamespace,omitempty"`
	// ActiveGateway is the node that holds this cluster's tunnels.
	// +optional
	ActiveGateway string `json:"activeGateway,omitempty"`
	// ActiveGatewayIP is that node's address, the next hop of the other nodes' routes.
	// +optional
	ActiveGatewayIP string `json:"activeGatewayIP,omitempty"`
	// ActiveGatewayIPs are that node's InternalIPs, one per family (IPv4
	// first): the next hop of the other nodes' routes to remote ranges of
	// that family.
	// +optional
	// +listType=atomic
	ActiveGatewayIPs []string `json:"activeGatewayIPs,omitempty"`
	// CannotRoute are the remote ranges that pods of this cluster cannot
	// reach, and why: a family this cluster has no pod range of, or one
	// the active gateway has no InternalIP of (the other nodes cannot
	// route it).
	// +optional
	// +listType=atomic
	CannotRoute []UnroutableRange `json:"cannotRoute,omitempty"`
	// Tunnel are the ClusterSet's tunnel settings, copied from the hub by
	// the elected agent so that every node (gateway candidates publishing
	// their endpoint port) knows them without reading the hub.
	// +optional
	Tunnel *TunnelSettings `json:"tunnel,omitempty"`

	// TunnelMTU is the active gateway's effective tunnel MTU and where it
	// comes from.
	// +optional
	TunnelMTU *TunnelMTUStatus `json:"tunnelMTU,omitempty"`

	// Peers are the other members.
	// +optional
	// +listType=map
	// +listMapKey=cluster
	Peers []MembershipPeer `json:"peers,omitempty"`
	// ReadyPeers is how many peers have their tunnel up. (Earlier versions
	// wrote a "k/n" string to status.readyPeers; the API server prunes it.)
	// +optional
	ReadyPeers int32 `json:"readyPeerCount"`
	// TotalPeers is how many peers this cluster has.
	// +optional
	TotalPeers int32 `json:"totalPeers"`
	// Conditions: Joined, CIDRsMatch, TunnelsReady.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ClusterSetMembership joins the member cluster it lives in to a ClusterSet
// on the hub. There is one per member cluster.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=csm
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'membership'",message="metadata.name of a ClusterSetMembership must be 'membership': a cluster joins one ClusterSet, through the one object its agents follow"
// +kubebuilder:printcolumn:name="Cluster",type=string,JSONPath=`.spec.clusterName`
// +kubebuilder:printcolumn:name="ClusterSet",type=string,JSONPath=`.spec.clusterSet`
// +kubebuilder:printcolumn:name="Pod CIDRs",type=string,JSONPath=`.status.podCIDRs`
// +kubebuilder:printcolumn:name="Gateway",type=string,JSONPath=`.status.activeGateway`
// +kubebuilder:printcolumn:name="MTU",type=integer,JSONPath=`.status.tunnelMTU.effective`
// +kubebuilder:printcolumn:name="Ready Peers",type=integer,JSONPath=`.status.readyPeerCount`
// +kubebuilder:printcolumn:name="Peers",type=integer,JSONPath=`.status.totalPeers`
// +kubebuilder:printcolumn:name="Joined",type=string,JSONPath=`.status.conditions[?(@.type=="Joined")].status`
// +kubebuilder:printcolumn:name="CIDRs Match",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="CIDRsMatch")].status`
// +kubebuilder:printcolumn:name="Tunnels",type=string,JSONPath=`.status.conditions[?(@.type=="TunnelsReady")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ClusterSetMembership struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ClusterSetMembershipSpec   `json:"spec"`
	Status ClusterSetMembershipStatus `json:"status,omitempty"`
}

// ClusterSetMembershipList is a list of ClusterSetMemberships.
//
// +kubebuilder:object:root=true
type ClusterSetMembershipList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ClusterSetMembership `json:"items"`
}
