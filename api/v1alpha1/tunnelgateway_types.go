package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TunnelGateway condition types.
const (
	// TunnelGatewayValid is set by the hub: False (reason InvalidGateway) when the
	// public key or an endpoint does not parse, False (reason DuplicatePublicKey)
	// when another member's gateway published the same public key first; such a
	// gateway is never given to peers.
	TunnelGatewayValid = "Valid"
)

// TunnelGatewaySpec is what a member's agent publishes about one gateway candidate.
// It never holds a private key.
type TunnelGatewaySpec struct {
	// NodeName is the member cluster's node that runs this gateway.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	NodeName string `json:"nodeName"`

	// PublicKey is the gateway's WireGuard public key: 32 bytes, base64.
	// +kubebuilder:validation:MaxLength=64
	PublicKey string `json:"publicKey"`

	// Endpoints are host:port addresses where the gateway receives tunnel
	// traffic, preferred first. Empty for a gateway behind NAT that only dials out.
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=261
	// +optional
	Endpoints []string `json:"endpoints,omitempty"`

	// Active is true for the gateway the member elected to hold its tunnels.
	// +optional
	Active bool `json:"active,omitempty"`

	// MTU is the gateway's tunnel MTU: the largest packet it can take
	// through its tunnel, from the underlay it receives on. Peers whose own
	// tunnel MTU is larger route this member's ranges with a lower route
	// MTU, so that what they send fits this gateway's underlay. Unset when
	// not known (peers then use their own).
	// +kubebuilder:validation:Minimum=1280
	// +kubebuilder:validation:Maximum=65535
	// +optional
	MTU int32 `json:"mtu,omitempty"`
}

// TunnelGatewayStatus is written by the agent (tunnel summary, dropped
// peers, heartbeat) and the hub (conditions). It holds no entry per peer:
// its fields change only when their meaning does (a tunnel goes down, a
// withdrawn peer is dropped), so a set of n members does not rewrite n
// entries on every gateway at every rekey. Per-peer handshakes stay in the
// member cluster (ClusterSetMembership.status.peers).
type TunnelGatewayStatus struct {
	// PeersUp is how many of the peers in the gateway's directory have a
	// tunnel with a recent handshake.
	// +optional
	PeersUp int32 `json:"peersUp,omitempty"`

	// DownPeers are the peers the gateway has a tunnel peer for but no
	// recent handshake with (normally empty).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=4096
	// +kubebuilder:validation:items:MaxLength=63
	DownPeers []string `json:"downPeers,omitempty"`

	// DroppedPeers are the withdrawn peers (ClusterSetPeer spec.withdrawn)
	// that this gateway has removed from its data path. The hub frees a
	// deleted member's ranges once every live peer lists it here.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=4096
	// +kubebuilder:validation:items:MaxLength=63
	DroppedPeers []string `json:"droppedPeers,omitempty"`

	// LastSeen is the agent's heartbeat: when it last refreshed this object
	// (every minute by default). The hub reports a member whose newest
	// heartbeat is older than its staleness bound as AgentConnected=False.
	// +optional
	LastSeen *metav1.Time `json:"lastSeen,omitempty"`

	// Conditions: Valid.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TunnelGateway is one gateway candidate of a member cluster, written by that
// member's agent in the member's hub namespace. The hub validates it, copies valid gateways into
// MemberCluster.status.gateways and the active one into the member's
// ClusterSetPeer.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=tgw
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Active",type=boolean,JSONPath=`.spec.active`
// +kubebuilder:printcolumn:name="Endpoints",type=string,JSONPath=`.spec.endpoints`
// +kubebuilder:printcolumn:name="MTU",type=integer,priority=1,JSONPath=`.spec.mtu`
// +kubebuilder:printcolumn:name="Valid",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].status`
// +kubebuilder:printcolumn:name="Up",type=integer,JSONPath=`.status.peersUp`
// +kubebuilder:printcolumn:name="Last Seen",type=date,JSONPath=`.status.lastSeen`
// +kubebuilder:printcolumn:name="Public Key",type=string,priority=1,JSONPath=`.spec.publicKey`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TunnelGateway struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   TunnelGatewaySpec   `json:"spec"`
	Status TunnelGatewayStatus `json:"status,omitempty"`
}

// TunnelGatewayList is a list of TunnelGateways.
//
// +kubebuilder:object:root=true
type TunnelGatewayList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TunnelGateway `json:"items"`
}
