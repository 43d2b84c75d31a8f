// Package mcs tests the multi-cluster services building blocks against a real
// kube-apiserver and etcd: the CRDs as installed (ServiceExport, ServiceImport,
// ClusterProperty, ExportedService), the export controller and the import
// controller of internal/mcs.
package mcs
