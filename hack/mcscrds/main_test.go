package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	mcscrd "sigs.k8s.io/mcs-api/config/crd"
)

// The committed copies must be the CRDs of the module version go.mod
// requires: a `go get` of another mcs-api version without `make manifests`
// fails here.
func TestCommittedCRDsMatchTheModule(t *testing.T) {
	for name, want := range map[string][]byte{
		"multicluster.x-k8s.io_serviceexports.yaml": mcscrd.ServiceExportCRD,
		"multicluster.x-k8s.io_serviceimports.yaml": mcscrd.ServiceImportCRD,
	} {
		got, err := os.ReadFile(filepath.Join("..", "..", "config", "mcs", name))
		if err != nil {
			t.Fatalf("read config/mcs/%s: %v (run 'make manifests')", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("config/mcs/%s differs from the CRD that sigs.k8s.io/mcs-api embeds: run 'make manifests'", name)
		}
	}
}
