package mcs

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

func hubNamespace(t *testing.T, c client.Client) string { return testNamespace(t, c, "member-") }

func validExport(ns string) *meshv1.ExportedService {
	return &meshv1.ExportedService{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: meshv1.ExportedServiceName("shop", "api")},
		Spec: meshv1.ExportedServiceSpec{
			Cluster: "east", Namespace: "shop", Name: "api",
			ExportCreationTimestamp: metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
			Type:                    meshv1.ExportedClusterSetIP,
			Ports:                   []meshv1.ExportedServicePort{{Name: "http", Protocol: "TCP", Port: 80, AppProtocol: ptr.To("http")}},
			SessionAffinity:         "ClientIP",
			SessionAffinityConfig:   &meshv1.SessionAffinityConfig{ClientIP: &meshv1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}},
			IPFamilies:              []string{"IPv4", "IPv6"},
			InternalTrafficPolicy:   ptr.To("Cluster"),
			TrafficDistribution:     ptr.To("PreferClose"),
			ExportedLabels:          map[string]string{"tier": "backend"},
			EndpointGroups: []meshv1.ExportedEndpointGroup{
				{AddressType: "IPv4", Ports: []meshv1.ExportedEndpointPort{{Name: "http", Protocol: "TCP", Port: 8080}},
					Endpoints: []meshv1.ExportedEndpoint{{Address: "10.244.1.5", Hostname: "api-0", Zone: "z1"}}},
				{AddressType: "IPv6", Ports: []meshv1.ExportedEndpointPort{{Name: "http", Protocol: "TCP", Port: 8080}},
					Endpoints: []meshv1.ExportedEndpoint{{Address: "fd00:10:244::5"}}},
			},
		},
	}
}

func TestExportedServiceValidation(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	ns := hubNamespace(t, c)

	good := validExport(ns)
	if err := c.Create(ctx, good); err != nil {
		t.Fatalf("a valid ExportedService is refused: %v", err)
	}

	for _, tc := range []struct {
		name    string
		edit    func(*meshv1.ExportedServiceSpec)
		wantErr string
	}{
		{"cluster not a DNS label", func(s *meshv1.ExportedServiceSpec) { s.Cluster = "East" }, "spec.cluster must be a DNS label"},
		{"bad type", func(s *meshv1.ExportedServiceSpec) { s.Type = "LoadBalancer" }, "spec.type"},
		{"no families", func(s *meshv1.ExportedServiceSpec) { s.IPFamilies = nil }, "spec.ipFamilies"},
		{"family twice", func(s *meshv1.ExportedServiceSpec) { s.IPFamilies = []string{"IPv4", "IPv4"} }, "ipFamilies must not repeat a family"},
		{"affinity config without ClientIP", func(s *meshv1.ExportedServiceSpec) { s.SessionAffinity = "None" }, "sessionAffinityConfig is allowed only with sessionAffinity ClientIP"},
		{"port 0", func(s *meshv1.ExportedServiceSpec) { s.Ports[0].Port = 0 }, "spec.ports[0].port"},
		{"bad protocol", func(s *meshv1.ExportedServiceSpec) { s.Ports[0].Protocol = "ICMP" }, "spec.ports[0].protocol"},
		{"address not an IP", func(s *meshv1.ExportedServiceSpec) { s.EndpointGroups[0].Endpoints[0].Address = "pod-a" }, "spec.endpointGroups[0].endpoints[0].address"},
		{"IPv6 address in an IPv4 group", func(s *meshv1.ExportedServiceSpec) { s.EndpointGroups[0].Endpoints[0].Address = "fd00::1" }, "every endpoint address must be of the group's addressType"},
		{"group of a family the service lacks", func(s *meshv1.ExportedServiceSpec) { s.IPFamilies = []string{"IPv4"} }, "every endpointGroups[].addressType must be one of ipFamilies"},
		{"hostname not a label", func(s *meshv1.ExportedServiceSpec) { s.EndpointGroups[0].Endpoints[0].Hostname = "a.b" }, "hostname must be a DNS label"},
		{"too many endpoints in a group", func(s *meshv1.ExportedServiceSpec) {
			eps := make([]meshv1.ExportedEndpoint, meshv1.MaxEndpointsPerExportGroup+1)
			for i := range eps {
				eps[i].Address = fmt.Sprintf("10.244.%d.%d", i/250, i%250+1)
			}
			s.EndpointGroups[0].Endpoints = eps
		}, "spec.endpointGroups[0].endpoints: Too many"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := validExport(ns)
			bad.Name = "bad." + strings.ReplaceAll(tc.name, " ", "-")
			tc.edit(&bad.Spec)
			err := c.Create(ctx, bad)
			if err == nil {
				cleanup(t, c, bad)
				t.Fatalf("accepted, want refused with %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not say %q", err, tc.wantErr)
			}
		})
	}
}

// The largest object the schema admits must fit etcd's request limit
// (1.5 MiB): 8 groups of 500 IPv6 endpoints with the longest hostnames and zones.
func TestLargestExportedServiceIsStored(t *testing.T) {
	c := needAPI(t)
	ns := hubNamespace(t, c)
	big := validExport(ns)
	big.Spec.IPFamilies = []string{"IPv6"}
	big.Spec.EndpointGroups = nil
	long := strings.Repeat("h", 63)
	for g := range meshv1.MaxExportedEndpointGroups {
		grp := meshv1.ExportedEndpointGroup{AddressType: "IPv6", Ports: []meshv1.ExportedEndpointPort{{Name: fmt.Sprintf("p%d", g), Protocol: "TCP", Port: 8000 + int32(g)}}}
		for i := range meshv1.MaxEndpointsPerExportGroup {
			grp.Endpoints = append(grp.Endpoints, meshv1.ExportedEndpoint{
				Address:  fmt.Sprintf("fd00:1234:5678:9abc:def0:%x:%x:%x", g+1, i+1, 0xffff-i),
				Hostname: long[:60] + fmt.Sprintf("%03d", i), Zone: strings.Repeat("z", 63),
			})
		}
		big.Spec.EndpointGroups = append(big.Spec.EndpointGroups, grp)
	}
	if err := c.Create(context.Background(), big); err != nil {
		t.Fatalf("the largest valid ExportedService is refused: %v", err)
	}
}
