package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Limits of one ExportedService. etcd refuses objects above 1.5 MiB; with
// the limits below the largest valid object (8 groups of 500 IPv6 endpoints
// with 63-character hostnames and zones) stays under 1 MiB. A member with more
// ready endpoints for one service publishes the first MaxExportedEndpoints of
// them in address order and says so on its ServiceExport.
const (
	MaxExportedEndpointGroups      = 8
	MaxEndpointsPerExportGroup     = 500
	MaxExportedEndpoints           = MaxExportedEndpointGroups * MaxEndpointsPerExportGroup
	MaxExportedPorts               = 100
	MaxExportedLabelsOrAnnotations = 64
)

// ExportedServiceType is how importers reach the service.
// +kubebuilder:validation:Enum=ClusterSetIP;Headless
type ExportedServiceType string

// Exported service types (the ServiceImport types of the MCS API).
const (
	// ExportedClusterSetIP is a Service with a cluster IP: importers give it
	// a virtual IP of their own.
	ExportedClusterSetIP ExportedServiceType = "ClusterSetIP"
	// ExportedHeadless is a Service with clusterIP None: importers resolve
	// its name to the endpoints' addresses.
	ExportedHeadless ExportedServiceType = "Headless"
)

// ExportedServicePort is one port of the exported Service.
type ExportedServicePort struct {
	// Name is the port's name in the Service; empty only for a Service with one port.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Name string `json:"name,omitempty"`
	// Protocol is TCP, UDP or SCTP.
	// +kubebuilder:validation:Enum=TCP;UDP;SCTP
	Protocol string `json:"protocol"`
	// Port is the Service's port.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
	// AppProtocol is the port's application protocol, as in the Service.
	// +kubebuilder:validation:MaxLength=316
	// +optional
	AppProtocol *string `json:"appProtocol,omitempty"`
}

// ClientIPConfig is the session affinity of ClientIP.
type ClientIPConfig struct {
	// TimeoutSeconds is how long a client sticks to one endpoint.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=86400
	// +optional
	TimeoutSeconds *int32 `json:"timeoutSeconds,omitempty"`
}

// SessionAffinityConfig has the shape of a Service's sessionAffinityConfig.
type SessionAffinityConfig struct {
	// +optional
	ClientIP *ClientIPConfig `json:"clientIP,omitempty"`
}

// ExportedEndpointPort is a port of the endpoints of one group: the port the
// pods listen on (a Service's targetPort resolved), named as the Service's port.
type ExportedEndpointPort struct {
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Name string `json:"name,omitempty"`
	// +kubebuilder:validation:Enum=TCP;UDP;SCTP
	Protocol string `json:"protocol"`
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
}

// ExportedEndpoint is one ready endpoint: a pod address, routable across the
// archipelago.
type ExportedEndpoint struct {
	// Address is the endpoint's IP address, of the group's address type.
	// +kubebuilder:validation:MaxLength=45
	// +kubebuilder:validation:XValidation:rule="isIP(self) && ip.isCanonical(self)",message="address must be an IP address in canonical form"
	Address string `json:"address"`
	// Hostname is the endpoint's hostname (a StatefulSet pod's name): DNS
	// answers <hostname>.<cluster>.<service>.<namespace>.svc.clusterset.local.
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="hostname must be a DNS label"
	// +optional
	Hostname string `json:"hostname,omitempty"`
	// Zone is the endpoint's topology zone.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Zone string `json:"zone,omitempty"`
}

// ExportedEndpointGroup is a set of endpoints that share an address type and
// ports, as one EndpointSlice does.
//
// +kubebuilder:validation:XValidation:rule="self.endpoints.all(e, ip(e.address).family() == (self.addressType == 'IPv4' ? 4 : 6))",message="every endpoint address must be of the group's addressType"
type ExportedEndpointGroup struct {
	// AddressType is IPv4 or IPv6.
	// +kubebuilder:validation:Enum=IPv4;IPv6
	AddressType string `json:"addressType"`
	// Ports are the endpoints' ports.
	// +kubebuilder:validation:MaxItems=100
	// +listType=atomic
	// +optional
	Ports []ExportedEndpointPort `json:"ports,omitempty"`
	// Endpoints are the ready endpoints, sorted by address.
	// +kubebuilder:validation:MaxItems=500
	// +listType=atomic
	// +optional
	Endpoints []ExportedEndpoint `json:"endpoints,omitempty"`
}

// ExportedServiceSpec is what importers need of one member's export of a
// Service: its shape and its ready endpoints.
//
// +kubebuilder:validation:XValidation:rule="self.sessionAffinity == 'ClientIP' || !has(self.sessionAffinityConfig)",message="sessionAffinityConfig is allowed only with sessionAffinity ClientIP"
// +kubebuilder:validation:XValidation:rule="self.ipFamilies.size() < 2 || self.ipFamilies[0] != self.ipFamilies[1]",message="ipFamilies must not repeat a family"
// +kubebuilder:validation:XValidation:rule="self.endpointGroups.all(g, g.addressType in self.ipFamilies)",message="every endpointGroups[].addressType must be one of ipFamilies"
type ExportedServiceSpec struct {
	// Cluster is the exporting member's name.
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="spec.cluster must be a DNS label"
	Cluster string `json:"cluster"`
	// Namespace is the exported Service's namespace.
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="spec.namespace must be a DNS label"
	Namespace string `json:"namespace"`
	// Name is the exported Service's name.
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",message="spec.name must be a DNS label that starts with a letter (a Service name)"
	Name string `json:"name"`

	// ExportCreationTimestamp is when the ServiceExport was created. The
	// oldest export wins a conflict.
	ExportCreationTimestamp metav1.Time `json:"exportCreationTimestamp"`

	// Type is ClusterSetIP for a Service with a cluster IP, Headless for one without.
	Type ExportedServiceType `json:"type"`

	// Ports are the Service's ports.
	// +kubebuilder:validation:MaxItems=100
	// +listType=atomic
	// +optional
	Ports []ExportedServicePort `json:"ports,omitempty"`

	// SessionAffinity is None or ClientIP.
	// +kubebuilder:validation:Enum=None;ClientIP
	// +kubebuilder:default=None
	// +optional
	SessionAffinity string `json:"sessionAffinity,omitempty"`
	// SessionAffinityConfig is the Service's, with ClientIP affinity only.
	// +optional
	SessionAffinityConfig *SessionAffinityConfig `json:"sessionAffinityConfig,omitempty"`

	// IPFamilies are the Service's IP families, in its order.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=2
	// +kubebuilder:validation:items:Enum=IPv4;IPv6
	// +listType=atomic
	IPFamilies []string `json:"ipFamilies"`

	// InternalTrafficPolicy is the Service's: Cluster or Local.
	// +kubebuilder:validation:Enum=Cluster;Local
	// +optional
	InternalTrafficPolicy *string `json:"internalTrafficPolicy,omitempty"`

	// TrafficDistribution is the Service's (for example PreferClose).
	// +kubebuilder:validation:MaxLength=63
	// +optional
	TrafficDistribution *string `json:"trafficDistribution,omitempty"`

	// ExportedLabels and ExportedAnnotations are the ServiceExport's
	// spec.exportedLabels and spec.exportedAnnotations.
	// +kubebuilder:validation:MaxProperties=64
	// +optional
	ExportedLabels map[string]string `json:"exportedLabels,omitempty"`
	// +kubebuilder:validation:MaxProperties=64
	// +optional
	ExportedAnnotations map[string]string `json:"exportedAnnotations,omitempty"`

	// EndpointGroups are the ready endpoints, grouped by address type and
	// ports. At most 8 groups of 500 endpoints.
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	// +optional
	EndpointGroups []ExportedEndpointGroup `json:"endpointGroups,omitempty"`
}

// ExportedService is one member's export of one Service (a ServiceExport
// and its Service and EndpointSlices), written by the member's agent in the
// member's hub namespace, one object per exported Service, named
// <namespace>.<name>. Every member merges the exports of a namespace/name
// into its ServiceImport.
//
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=exsvc
// +kubebuilder:printcolumn:name="Cluster",type=string,JSONPath=`.spec.cluster`
// +kubebuilder:printcolumn:name="Namespace",type=string,JSONPath=`.spec.namespace`
// +kubebuilder:printcolumn:name="Service",type=string,JSONPath=`.spec.name`
// +kubebuilder:printcolumn:name="Type",type=string,JSONPath=`.spec.type`
// +kubebuilder:printcolumn:name="Ports",type=string,JSONPath=`.spec.ports[*].port`
// +kubebuilder:printcolumn:name="Exported",type=date,JSONPath=`.spec.exportCreationTimestamp`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ExportedService struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ExportedServiceSpec `json:"spec"`
}

// ExportedServiceList is a list of ExportedService.
//
// +kubebuilder:object:root=true
type ExportedServiceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ExportedService `json:"items"`
}

// ExportedServiceName is the name of the ExportedService of Service
// namespace/name: both are DNS labels, so the name is a valid, unique object name.
func ExportedServiceName(namespace, name string) string { return namespace + "." + name }

func init() {
	schemeBuilder.Register(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, &ExportedService{}, &ExportedServiceList{})
		return nil
	})
}
