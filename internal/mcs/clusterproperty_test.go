package mcs

import (
	"strings"
	"testing"

	aboutv1beta1 "github.com/archipelago-mesh/archipelago/api/about/v1beta1"
)

func TestClusterProperties(t *testing.T) {
	ps := ClusterProperties("east", "prod")
	if len(ps) != 2 || ps[0].Name != "cluster.clusterset.k8s.io" || ps[0].Spec.Value != "east" || ps[1].Name != "clusterset.k8s.io" || ps[1].Spec.Value != "prod" {
		t.Fatalf("properties = %+v", ps)
	}
	var have []aboutv1beta1.ClusterProperty
	for _, p := range ps {
		have = append(have, *p)
	}
	if err := CheckClusterProperties(have, "east", "prod"); err != nil {
		t.Errorf("matching properties: %v", err)
	}
	if err := CheckClusterProperties(nil, "east", "prod"); err != nil {
		t.Errorf("no properties yet: %v", err)
	}
	have[1].Spec.Value = "staging"
	err := CheckClusterProperties(have, "east", "prod")
	if err == nil || !strings.Contains(err.Error(), `ClusterProperty clusterset.k8s.io is "staging" but this cluster's membership says "prod"`) {
		t.Errorf("mismatch: %v", err)
	}
}
