// Command mcscrds writes the ServiceExport and ServiceImport CRDs that the
// sigs.k8s.io/mcs-api module embeds (package config/crd) into config/mcs, so
// that the project's manifests install exactly the CRDs of the API version
// go.mod requires. `make manifests` runs it; `make verify-generated` fails
// when the files differ from the module's.
//
// It only copies bytes: it must not edit the CRDs.
package main
