package mcs

import (
	"crypto/sha256"
	"encoding/hex"
)

const (
	// EndpointSliceManager is the endpointslice.kubernetes.io/managed-by
	// value of every EndpointSlice the import side writes. The export side
	// never exports slices that carry it.
	EndpointSliceManager = "mcs.archipelago.dev"
	// LabelManagedBy marks the derived Services and the ServiceImports the
	// project created.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of LabelManagedBy on those objects.
	ManagedByValue = "archipelago-mcs"
	// DerivedServicePrefix starts the name of every derived Service.
	DerivedServicePrefix = "derived-"
)

// DerivedServiceName names the selectorless Service behind the ServiceImport
// of namespace/name: a hash, so that it never collides with a user's Service
// (the ServiceImport has the Service's own name) and fits a DNS label.
func DerivedServiceName(k Key) string {
	sum := sha256.Sum256([]byte(k.Namespace + "/" + k.Name))
	return DerivedServicePrefix + hex.EncodeToString(sum[:])[:16]
}
