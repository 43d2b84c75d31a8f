package mcs

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// BenchmarkMerge merges what every member merges on each change: here 100
// members each exporting the same 50 services with 20 ready endpoints
// (5,000 records, 100,000 endpoints).
func BenchmarkMerge(b *testing.B) {
	const nMembers, nServices, nEndpoints = 100, 50, 20
	var exports []meshv1.ExportedServiceSpec
	var members []Member
	for m := range nMembers {
		name := fmt.Sprintf("m%03d", m)
		members = append(members, Member{Name: name, LastSeen: t0, PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(m), 0, 0}), 16)}})
		for s := range nServices {
			e := meshv1.ExportedServiceSpec{
				Cluster: name, Namespace: "ns", Name: fmt.Sprintf("svc-%d", s), Type: meshv1.ExportedClusterSetIP,
				ExportCreationTimestamp: metav1.NewTime(t0.Add(time.Duration(m) * time.Second)),
				Ports:                   []meshv1.ExportedServicePort{{Name: "http", Protocol: "TCP", Port: 80}},
				IPFamilies:              []string{"IPv4"},
			}
			g := meshv1.ExportedEndpointGroup{AddressType: "IPv4", Ports: []meshv1.ExportedEndpointPort{{Name: "http", Protocol: "TCP", Port: 8080}}}
			for i := range nEndpoints {
				g.Endpoints = append(g.Endpoints, meshv1.ExportedEndpoint{Address: fmt.Sprintf("10.%d.%d.%d", m, s, i+1)})
			}
			e.EndpointGroups = []meshv1.ExportedEndpointGroup{g}
			exports = append(exports, e)
		}
	}
	opts := Options{Now: t0.Add(time.Second)}
	b.ReportAllocs()
	for b.Loop() {
		if r := Merge(exports, members, opts); len(r.Imports) != nServices {
			b.Fatalf("%d imports", len(r.Imports))
		}
	}
}
