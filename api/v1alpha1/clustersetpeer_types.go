package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// clusterSetNamespacePrefix starts the name of every ClusterSet's peer directory namespace.
const clusterSetNamespacePrefix = "archipelago-set-"

// ClusterSetNamespace returns the hub namespace that holds the peer directory
// (the ClusterSetPeer objects) of a ClusterSet. Hub and agents both derive it
// from the set's name. Namespace names are DNS labels (63 characters), so a
// long set name is shortened with a hash that keeps names unique.
func ClusterSetNamespace(set string) string {
	name := clusterSetNamespacePrefix + set
	if len(name) <= 63 {
		return name
	}
	sum := sha256.Sum256([]byte(set))
	keep := 63 - len(clusterSetNamespacePrefix) - 9
	return clusterSetNamespacePrefix + strings.TrimRight(set[:keep], "-") + "-" + hex.EncodeToString(sum[:])[:8]
}

// PeerGateway is the active gateway of a member, as the hub validated it.
type PeerGateway struct {
	// Node is the member cluster's node that holds the member's tunnels.
	Node string `json:"node"`
	// PublicKey is the gateway's WireGuard public key (base64).
	PublicKey string `json:"publicKey"`
	// Endpoints are host:port addresses where the gateway receives tunnel
	// traffic, preferred first. Empty for a gateway behind NAT that only dials out.
	// +optional
	Endpoints []string `json:"endpoints,omitempty"`
	// MTU is the gateway's tunnel MTU; peers with a larger one lower the
	// route MTU of this member's ranges to it. 0 when not known.
	// +optional
	MTU int32 `json:"mtu,omitempty"`
}

// ClusterSetPeerSpec is what every other member of the set needs to know of
// one member: the ranges to route to it and where its tunnel ends.
type ClusterSetPeerSpec struct {
	// PodCIDRs are the member's pod ranges as the hub assigned them (a copy
	// of MemberCluster.status.podCIDRs). Peers route exactly these ranges to
	// the member: they are a tunnel's AllowedIPs.
	// +listType=set
	PodCIDRs []string `json:"podCIDRs"`

	// Gateway is the member's active gateway; empty while it has none.
	// +optional
	Gateway *PeerGateway `json:"gateway,omitempty"`

	// Withdrawn is set when the member is being deleted: peers remove its
	// tunnel peer and routes, then list it in their TunnelGateway's
	// status.droppedPeers. The hub frees the member's ranges once every live
	// peer did (or the drain timeout passed).
	// +optional
	Withdrawn bool `json:"withdrawn,omitempty"`

	// AgentConnected is true while the member's agent is alive as the hub
	// sees it: a valid gateway and a heartbeat no older than the hub's
	// --heartbeat-stale-after (its MemberCluster's AgentConnected
	// condition). Written only when it changes. Other members import the
	// member's exported endpoints only while it is true.
	// +optional
	AgentConnected bool `json:"agentConnected,omitempty"`
}

// ClusterSetPeer is one member's entry in its ClusterSet's peer directory,
// in the set's hub namespace (archipelago-set-<set>); its name is the
// member's name. The hub alone writes it, and only when a value peers need
// changes (never on a heartbeat). Members of the set may read the directory
// of their own set and no other.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=csp
// +kubebuilder:printcolumn:name="Pod CIDRs",type=string,JSONPath=`.spec.podCIDRs`
// +kubebuilder:printcolumn:name="Gateway",type=string,JSONPath=`.spec.gateway.node`
// +kubebuilder:printcolumn:name="Endpoints",type=string,JSONPath=`.spec.gateway.endpoints`
// +kubebuilder:printcolumn:name="MTU",type=integer,priority=1,JSONPath=`.spec.gateway.mtu`
// +kubebuilder:printcolumn:name="Withdrawn",type=boolean,JSONPath=`.spec.withdrawn`
// +kubebuilder:printcolumn:name="Connected",type=boolean,JSONPath=`.spec.agentConnected`
// +kubebuilder:printcolumn:name="Public Key",type=string,priority=1,JSONPath=`.spec.gateway.publicKey`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ClusterSetPeer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ClusterSetPeerSpec `json:"spec"`
}

// ClusterSetPeerList is a list of ClusterSetPeers.
//
// +kubebuilder:object:root=true
type ClusterSetPeerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ClusterSetPeer `json:"items"`
}
