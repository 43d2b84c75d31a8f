package export

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

func slice(name string, family discoveryv1.AddressType, port int32, addrs ...string) discoveryv1.EndpointSlice {
	s := discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name},
		AddressType: family,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port)}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return s
}

func svc(families ...corev1.IPFamily) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "api"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.1", IPFamilies: families, Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
	}
}

func TestRecordGroupsAndDeduplicates(t *testing.T) {
	eps := []discoveryv1.EndpointSlice{
		slice("a", discoveryv1.AddressTypeIPv4, 8080, "10.0.0.2", "10.0.0.1"),
		slice("b", discoveryv1.AddressTypeIPv4, 8080, "10.0.0.1"), // the same pod in two slices (a rollout)
		slice("c", discoveryv1.AddressTypeIPv4, 9090, "10.0.0.3"), // another target port
		slice("d", discoveryv1.AddressTypeIPv6, 8080, "fd00::1"),  // a family the Service lacks
		slice("e", discoveryv1.AddressTypeFQDN, 8080, "x.example"),
	}
	eps[0].Endpoints = append(eps[0].Endpoints,
		discoveryv1.Endpoint{Addresses: []string{"10.0.0.9"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Terminating: ptr.To(true)}})
	rec := Record("east", &mcsv1beta1.ServiceExport{}, svc(corev1.IPv4Protocol), eps)
	if len(rec.EndpointGroups) != 2 {
		t.Fatalf("groups = %+v, want two (target ports 8080 and 9090)", rec.EndpointGroups)
	}
	g := rec.EndpointGroups[0]
	if g.Ports[0].Port != 8080 || len(g.Endpoints) != 2 || g.Endpoints[0].Address != "10.0.0.1" || g.Endpoints[1].Address != "10.0.0.2" {
		t.Errorf("first group = %+v", g)
	}
	if rec.EndpointGroups[1].Ports[0].Port != 9090 {
		t.Errorf("second group = %+v", rec.EndpointGroups[1])
	}
	if rec.Type != meshv1.ExportedClusterSetIP || rec.SessionAffinity != "None" {
		t.Errorf("type %s affinity %s", rec.Type, rec.SessionAffinity)
	}
}

func TestRecordCapsEndpoints(t *testing.T) {
	var addrs []string
	for i := range meshv1.MaxExportedEndpoints + 10 {
		addrs = append(addrs, fmt.Sprintf("10.%d.%d.%d", 1+i/65536, i/256%256, i%256))
	}
	rec := Record("east", &mcsv1beta1.ServiceExport{}, svc(corev1.IPv4Protocol), []discoveryv1.EndpointSlice{slice("big", discoveryv1.AddressTypeIPv4, 8080, addrs...)})
	if len(rec.EndpointGroups) != meshv1.MaxExportedEndpointGroups {
		t.Fatalf("%d groups, want %d", len(rec.EndpointGroups), meshv1.MaxExportedEndpointGroups)
	}
	n := 0
	for _, g := range rec.EndpointGroups {
		if len(g.Endpoints) > meshv1.MaxEndpointsPerExportGroup {
			t.Errorf("a group of %d endpoints", len(g.Endpoints))
		}
		n += len(g.Endpoints)
	}
	if n != meshv1.MaxExportedEndpoints {
		t.Errorf("%d endpoints, want the cap %d", n, meshv1.MaxExportedEndpoints)
	}
	if msg := readyMessage(rec); msg != "exported with the first 4000 ready endpoints (the most one export carries)" {
		t.Errorf("ready message %q", msg)
	}
}
