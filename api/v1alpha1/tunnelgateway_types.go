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
}

// TunnelGatewayPeerStatus is the health of one tunnel as the gateway observes it.
type TunnelGatewayPeerStatus struct {
	// Cluster is the peer member's name.
	Cluster string `json:"cluster"`
	// Up is true when the tunnel had a handshake recently.
	Up bool `json:"up"`
	// LatestHandshake is the time of the latest WireGuard handshake.
	// +optional
	LatestHandshake *metav1.Time `json:"latestHandshake,omitempty"`
	// Endpoint is where the peer's packets come from.
	// +optional
	Endpoint string `json:"endpoint,omitempty"`
}

// TunnelGatewayStatus is written by the agent (peers, heartbeat) and the hub (conditions).
type TunnelGatewayStatus struct {
	// Peers is the tunnel health the gateway observes.
	// +optional
	// +listType=map
	// +listMapKey=cluster
	Peers []TunnelGatewayPeerStatus `json:"peers,omitempty"`

	// LastSeen is when the agent last refreshed this object.
	// +optional
	LastSeen *metav1.Time `json:"lastSeen,omitempty"`

	// Conditions: Valid.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TunnelGateway is one gateway candidate of a member cluster, written by that
// member's agent in the member's hub namespace. The hub validates it and
// copies valid gateways into MemberCluster.status.gateways.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=tgw
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Active",type=boolean,JSONPath=`.spec.active`
// +kubebuilder:printcolumn:name="Endpoints",type=string,JSONPath=`.spec.endpoints`
// +kubebuilder:printcolumn:name="Valid",type=string,JSONPath=`.status.conditions[?(@.type=="Valid")].status`
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
