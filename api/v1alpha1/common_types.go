package v1alpha1

// CIDR is an IPv4 or IPv6 prefix in canonical form: no host bits set and
// written the way Go's net/netip prints it ("10.64.0.0/16", "fd00:10::/48").
// Requiring the canonical form means two spellings of one range can never
// pass as two different ranges.
//
// +kubebuilder:validation:MaxLength=43
// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="must be a CIDR such as 10.64.0.0/16 or fd00:10::/48"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || string(cidr(self).masked()) == self",message="must be canonical: no host bits set (10.1.0.0/16, not 10.1.2.3/16) and in canonical spelling (lowercase, shortest IPv6 form)"
type CIDR string

// IPFamily is IPv4 or IPv6.
//
// +kubebuilder:validation:Enum=IPv4;IPv6
type IPFamily string

// The IP families.
const (
	IPv4 IPFamily = "IPv4"
	IPv6 IPFamily = "IPv6"
)

// Condition types and reasons shared by several kinds.
const (
	// ConditionReady summarizes whether an object does what it is for.
	ConditionReady = "Ready"
)

// Labels and annotations.
const (
	// LabelMember marks hub objects that belong to one member cluster.
	LabelMember = "archipelago.dev/member"
	// LabelClusterSet marks hub objects that belong to one ClusterSet.
	LabelClusterSet = "archipelago.dev/clusterset"
	// LabelGatewayCandidate marks the nodes of a member cluster that may act as its gateway.
	LabelGatewayCandidate = "archipelago.dev/gateway"
	// Finalizer is the finalizer the hub puts on MemberClusters and ClusterSets.
	Finalizer = "mesh.archipelago.dev/cleanup"
)
