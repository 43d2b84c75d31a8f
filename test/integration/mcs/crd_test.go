package mcs

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1alpha1 "sigs.k8s.io/mcs-api/pkg/apis/v1alpha1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	aboutv1beta1 "github.com/archipelago-mesh/archipelago/api/about/v1beta1"
)

func TestClusterPropertyValidation(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	prop := func(name, value string) *aboutv1beta1.ClusterProperty {
		return &aboutv1beta1.ClusterProperty{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       aboutv1beta1.ClusterPropertySpec{Value: value},
		}
	}
	for _, tc := range []struct {
		name, value, wantErr string
	}{
		{aboutv1beta1.ClusterIDProperty, "East_1", "spec.value of cluster.clusterset.k8s.io and clusterset.k8s.io must be a DNS label"},
		{aboutv1beta1.ClusterSetProperty, strings.Repeat("a", 64), "must be a DNS label"},
		{"empty.example.com", "", "spec.value"},
	} {
		err := c.Create(ctx, prop(tc.name, tc.value))
		if err == nil {
			cleanup(t, c, prop(tc.name, tc.value))
			t.Errorf("ClusterProperty %s=%q: accepted, want refused", tc.name, tc.value)
			continue
		}
		if !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("ClusterProperty %s=%q: error %q does not say %q", tc.name, tc.value, err, tc.wantErr)
		}
	}

	id := prop(aboutv1beta1.ClusterIDProperty, "east")
	if err := c.Create(ctx, id); err != nil {
		t.Fatalf("create %s: %v", id.Name, err)
	}
	cleanup(t, c, id)
	id.Spec.Value = "west"
	if err := c.Update(ctx, id); err == nil || !strings.Contains(err.Error(), "immutable") {
		t.Errorf("changing %s: got %v, want refused as immutable", id.Name, err)
	}

	free := prop("free-form.example.com", "any value, Spaces And_Underscores")
	if err := c.Create(ctx, free); err != nil {
		t.Fatalf("create free-form property: %v", err)
	}
	cleanup(t, c, free)
	free.Spec.Value = "changed"
	if err := c.Update(ctx, free); err != nil {
		t.Errorf("changing a free-form property: %v", err)
	}
}

// The MCS CRDs serve v1alpha1 and v1beta1 of one stored object: the
// controllers write v1beta1; CoreDNS's multicluster option reads v1alpha1.
func TestServiceImportServedInBothVersions(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "mcs-crd-"}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	cleanup(t, c, ns)
	si := &mcsv1beta1.ServiceImport{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "web"},
		Spec: mcsv1beta1.ServiceImportSpec{
			Type:       mcsv1beta1.ClusterSetIP,
			Ports:      []mcsv1beta1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
			IPs:        []string{"10.96.0.10"},
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
		},
	}
	if err := c.Create(ctx, si); err != nil {
		t.Fatalf("create v1beta1 ServiceImport: %v", err)
	}
	old := &mcsv1alpha1.ServiceImport{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(si), old); err != nil {
		t.Fatalf("get it as v1alpha1: %v", err)
	}
	if old.Spec.Type != mcsv1alpha1.ClusterSetIP || len(old.Spec.IPs) != 1 || old.Spec.IPs[0] != "10.96.0.10" || old.Spec.Ports[0].Port != 80 {
		t.Errorf("v1alpha1 view = %+v, want the v1beta1 object's spec", old.Spec)
	}

	bad := si.DeepCopy()
	bad.ResourceVersion, bad.Name, bad.Spec.Type = "", "bad", "LoadBalancer"
	if err := c.Create(ctx, bad); err == nil || !strings.Contains(err.Error(), "spec.type") {
		t.Errorf("ServiceImport of type LoadBalancer: got %v, want refused naming spec.type", err)
	}
}
