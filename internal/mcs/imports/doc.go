// Package imports is the import side of multi-cluster services, run in every
// member cluster (exporters included): from the merged imports of the
// ClusterSet (mcs.Result, handed over with SetImports) it keeps, in each
// namespace that exists, a ServiceImport per multi-cluster service; for
// ClusterSetIP a derived selectorless Service whose cluster IPs become the
// ServiceImport's spec.ips; and one EndpointSlice per exporting cluster and
// endpoint group, labelled for kube-proxy (kubernetes.io/service-name = the
// derived Service) and for CoreDNS's multicluster option
// (multicluster.kubernetes.io/service-name and source-cluster).
//
// Objects are updated in place: a ServiceImport is deleted only when no
// cluster exports the service any more, and nothing is deleted before the
// first SetImports after a start, so an agent restart leaves DNS and
// kube-proxy undisturbed. The package touches only objects it labelled as its
// own, and must not talk to the hub.
package imports
