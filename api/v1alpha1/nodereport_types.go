package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Node annotations written by the agent on its own Node in the member cluster.
const (
	// AnnotationPublicKey holds the node's WireGuard public key (gateway candidates only).
	AnnotationPublicKey = "archipelago.dev/public-key"
	// AnnotationEndpoint holds the host:port where the node receives tunnel
	// traffic; empty for a node behind NAT that only dials out.
	AnnotationEndpoint = "archipelago.dev/endpoint"
	// AnnotationDatapath holds a NodeReport as JSON.
	AnnotationDatapath = "archipelago.dev/datapath"
)

// Node roles in a NodeReport.
const (
	RoleGateway = "gateway" // the active gateway: holds the tunnels
	RoleStandby = "standby" // a gateway candidate that is not active
	RoleWorker  = "worker"  // routes remote ranges to the active gateway
)

// NodeReport is what an agent reports about the data path of its node: the
// kernel facts that `kubectl archipelago diagnose` checks. It is stored as JSON
// in the Node annotation archipelago.dev/datapath, not served as a kind.
//
// +k8s:deepcopy-gen=true
type NodeReport struct {
	// Role is gateway, standby or worker.
	Role string `json:"role"`
	// Interface is the tunnel interface (gateway only).
	Interface string `json:"interface,omitempty"`
	// InterfaceUp is true when the tunnel interface exists and is up.
	InterfaceUp bool `json:"interfaceUp,omitempty"`
	// WireGuard is "kernel" or "userspace".
	WireGuard string `json:"wireGuard,omitempty"`
	// MTU of the tunnel interface.
	MTU int `json:"mtu,omitempty"`
	// MTUSource is where the MTU comes from: ClusterSet, Underlay or Default.
	MTUSource string `json:"mtuSource,omitempty"`
	// UnderlayInterface and UnderlayMTU are the interface that carries the
	// tunnel and its MTU, when the agent could read them.
	UnderlayInterface string `json:"underlayInterface,omitempty"`
	UnderlayMTU       int    `json:"underlayMTU,omitempty"`
	// ListenPort of the tunnel.
	ListenPort int `json:"listenPort,omitempty"`
	// Peers are the tunnel's peers (gateway only).
	Peers []NodePeerReport `json:"peers,omitempty"`
	// NextHop is the active gateway's address (worker and standby only).
	NextHop string `json:"nextHop,omitempty"`
	// Encapsulation says how remote ranges reach the gateway when not
	// routed directly ("vxlan <device> to <gateway address>").
	Encapsulation string `json:"encapsulation,omitempty"`
	// NextHops are the active gateway's addresses, one per family.
	NextHops []string `json:"nextHops,omitempty"`
	// CannotRoute are the remote ranges this node does not forward, or
	// whose pods this cluster's pods cannot reach, and why.
	CannotRoute []UnroutableRange `json:"cannotRoute,omitempty"`
	// Routes is the number of forwarding routes the agent owns on the node.
	Routes int `json:"routes"`
	// Unreachable is the number of remote ranges the node drops instead of
	// forwarding (fail closed: an unreachable route in the agent's table
	// while the node cannot route them, e.g. no gateway known, a hold, or
	// the tunnel device not open).
	Unreachable int `json:"unreachable,omitempty"`
	// NoSNAT is true when the rule that keeps pod source addresses is in place.
	NoSNAT bool `json:"noSNAT"`
	// MSSClamp is true when TCP MSS clamping on the tunnel is in place.
	MSSClamp bool `json:"mssClamp,omitempty"`
	// IPForwarding is true when the node forwards IPv4 (and IPv6 where used).
	IPForwarding bool `json:"ipForwarding"`
	// LastReconcile is when the agent last made the kernel match its plan.
	LastReconcile metav1.Time `json:"lastReconcile"`
	// LastError is the last reconcile's error, empty when it succeeded.
	LastError string `json:"lastError,omitempty"`
}

// NodePeerReport is one tunnel peer as the gateway's kernel reports it. It
// holds no traffic counters: a report is rewritten when its meaning
// changes, and counters would make every packet a change (the agent's
// Prometheus metrics archipelago_agent_peer_{receive,transmit}_bytes_total
// carry them).
type NodePeerReport struct {
	Cluster         string       `json:"cluster"`
	Endpoint        string       `json:"endpoint,omitempty"`
	LatestHandshake *metav1.Time `json:"latestHandshake,omitempty"`
}
