package mcs

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

// Test builders: an export of shop/api by cluster, created at t0 + age
// minutes, with one endpoint in the cluster's range.
type exportOpt func(*meshv1.ExportedServiceSpec)

func export(cluster string, minute int, opts ...exportOpt) meshv1.ExportedServiceSpec {
	e := meshv1.ExportedServiceSpec{
		Cluster: cluster, Namespace: "shop", Name: "api",
		ExportCreationTimestamp: metav1.NewTime(t0.Add(time.Duration(minute) * time.Minute)),
		Type:                    meshv1.ExportedClusterSetIP,
		Ports:                   []meshv1.ExportedServicePort{{Name: "http", Protocol: "TCP", Port: 80}},
		IPFamilies:              []string{"IPv4"},
		EndpointGroups: []meshv1.ExportedEndpointGroup{{
			AddressType: "IPv4",
			Ports:       []meshv1.ExportedEndpointPort{{Name: "http", Protocol: "TCP", Port: 8080}},
			Endpoints:   []meshv1.ExportedEndpoint{{Address: podIP(cluster, 5)}},
		}},
	}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func withPorts(ps ...meshv1.ExportedServicePort) exportOpt {
	return func(e *meshv1.ExportedServiceSpec) {
		e.Ports = ps
		var eps []meshv1.ExportedEndpointPort
		for _, p := range ps {
			eps = append(eps, meshv1.ExportedEndpointPort{Name: p.Name, Protocol: p.Protocol, Port: p.Port + 8000})
		}
		e.EndpointGroups[0].Ports = eps
	}
}

func port(name, proto string, n int32) meshv1.ExportedServicePort {
	return meshv1.ExportedServicePort{Name: name, Protocol: proto, Port: n}
}

// clusterIndex maps a test cluster name to its /16.
func clusterIndex(c string) int { return int(c[0]-'a') + 1 }

func podIP(cluster string, host int) string {
	return fmt.Sprintf("10.%d.0.%d", clusterIndex(cluster), host)
}

func member(name string, lastSeen time.Time) Member {
	return Member{Name: name, LastSeen: lastSeen, PodCIDRs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", clusterIndex(name)))}}
}

func live(names ...string) []Member {
	var ms []Member
	for _, n := range names {
		ms = append(ms, member(n, t0.Add(time.Hour)))
	}
	return ms
}

var now = Options{Now: t0.Add(time.Hour)}

func only(t *testing.T, r Result) *Import {
	t.Helper()
	if len(r.Imports) != 1 {
		t.Fatalf("got %d imports, want 1", len(r.Imports))
	}
	for _, im := range r.Imports {
		return im
	}
	return nil
}

func reasons(im *Import) []string {
	var out []string
	for _, c := range im.Conflicts {
		out = append(out, string(c.Reason))
	}
	return out
}

func endpointsOf(im *Import, cluster string) (addrs []string, ports []string) {
	for _, ci := range im.Clusters {
		if ci.Cluster != cluster {
			continue
		}
		for _, g := range ci.EndpointGroups {
			for _, e := range g.Endpoints {
				addrs = append(addrs, e.Address)
			}
			for _, p := range g.Ports {
				ports = append(ports, p.Name)
			}
		}
	}
	return addrs, ports
}

func TestMergeOneExporter(t *testing.T) {
	im := only(t, Merge([]meshv1.ExportedServiceSpec{export("a", 0)}, live("a", "b"), now))
	if im.Key != (Key{"shop", "api"}) || im.Type != meshv1.ExportedClusterSetIP || len(im.Conflicts) != 0 {
		t.Fatalf("import = %+v", im)
	}
	if !reflect.DeepEqual(im.Ports, []meshv1.ExportedServicePort{port("http", "TCP", 80)}) {
		t.Errorf("ports = %v", im.Ports)
	}
	if im.ConflictReason() != string(mcsv1beta1.ServiceExportReasonNoConflicts) {
		t.Errorf("conflict reason = %s, want NoConflicts", im.ConflictReason())
	}
	if a, _ := endpointsOf(im, "a"); !slices.Equal(a, []string{"10.1.0.5"}) {
		t.Errorf("endpoints of a = %v", a)
	}
	if im.SessionAffinity != "None" || !slices.Equal(im.IPFamilies, []string{"IPv4"}) {
		t.Errorf("affinity %q families %v", im.SessionAffinity, im.IPFamilies)
	}
}

func TestMergeConflicts(t *testing.T) {
	for _, tc := range []struct {
		name        string
		exports     []meshv1.ExportedServiceSpec
		wantReasons []string
		check       func(t *testing.T, im *Import)
	}{
		{
			name:    "same shape: no conflict, both serve",
			exports: []meshv1.ExportedServiceSpec{export("a", 0), export("b", 1)},
			check: func(t *testing.T, im *Import) {
				for _, c := range []string{"a", "b"} {
					if _, ps := endpointsOf(im, c); !slices.Equal(ps, []string{"http"}) {
						t.Errorf("%s serves %v, want [http]", c, ps)
					}
				}
			},
		},
		{
			name: "ports union without duplicates",
			exports: []meshv1.ExportedServiceSpec{
				export("a", 0, withPorts(port("http", "TCP", 80))),
				export("b", 1, withPorts(port("http", "TCP", 80), port("metrics", "TCP", 9090))),
			},
			wantReasons: []string{"PortConflict"},
			check: func(t *testing.T, im *Import) {
				if want := []meshv1.ExportedServicePort{port("http", "TCP", 80), port("metrics", "TCP", 9090)}; !reflect.DeepEqual(im.Ports, want) {
					t.Errorf("ports = %v, want %v", im.Ports, want)
				}
				if _, ps := endpointsOf(im, "a"); !slices.Equal(ps, []string{"http"}) {
					t.Errorf("a serves %v, want only http: traffic to metrics must go to b alone", ps)
				}
				if _, ps := endpointsOf(im, "b"); !slices.Equal(ps, []string{"http", "metrics"}) {
					t.Errorf("b serves %v", ps)
				}
			},
		},
		{
			name: "same name, other number: the oldest's wins and the other cluster does not serve it",
			exports: []meshv1.ExportedServiceSpec{
				export("b", 5, withPorts(port("http", "TCP", 8080))),
				export("a", 0, withPorts(port("http", "TCP", 80))),
			},
			wantReasons: []string{"PortConflict"},
			check: func(t *testing.T, im *Import) {
				if !reflect.DeepEqual(im.Ports, []meshv1.ExportedServicePort{port("http", "TCP", 80)}) {
					t.Errorf("ports = %v, want a's http/80", im.Ports)
				}
				if _, ps := endpointsOf(im, "b"); len(ps) != 0 {
					t.Errorf("b serves %v, want nothing", ps)
				}
				if !strings.Contains(im.Conflicts[0].Message, "TCP/80 in a (oldest export), TCP/8080 in b") {
					t.Errorf("message %q does not name both and the winner", im.Conflicts[0].Message)
				}
			},
		},
		{
			name: "same number, other name",
			exports: []meshv1.ExportedServiceSpec{
				export("a", 0, withPorts(port("http", "TCP", 80))),
				export("b", 1, withPorts(port("web", "TCP", 80))),
			},
			wantReasons: []string{"PortConflict"},
			check: func(t *testing.T, im *Import) {
				if len(im.Ports) != 1 || im.Ports[0].Name != "http" {
					t.Errorf("ports = %v", im.Ports)
				}
			},
		},
		{
			name: "same number, other protocol: two ports",
			exports: []meshv1.ExportedServiceSpec{
				export("a", 0, withPorts(port("dns", "UDP", 53))),
				export("b", 1, withPorts(port("dns", "UDP", 53), port("dns-tcp", "TCP", 53))),
			},
			wantReasons: []string{"PortConflict"},
			check: func(t *testing.T, im *Import) {
				if len(im.Ports) != 2 {
					t.Errorf("ports = %v, want dns/UDP and dns-tcp/TCP", im.Ports)
				}
			},
		},
		{
			name: "unnamed port cannot join a union",
			exports: []meshv1.ExportedServiceSpec{
				export("a", 0, withPorts(port("", "TCP", 80))),
				export("b", 1, withPorts(port("", "TCP", 80), port("admin", "TCP", 81))),
			},
			wantReasons: []string{"PortConflict"},
			check: func(t *testing.T, im *Import) {
				if len(im.Ports) != 1 || im.Ports[0].Name != "" {
					t.Errorf("ports = %v, want the unnamed 80 alone", im.Ports)
				}
			},
		},
		{
			name: "type: the oldest's",
			exports: []meshv1.ExportedServiceSpec{
				export("a", 3, func(e *meshv1.ExportedServiceSpec) { e.Type = meshv1.ExportedHeadless }),
				export("b", 1),
			},
			wantReasons: []string{"TypeConflict"},
			check: func(t *testing.T, im *Import) {
				if im.Type != meshv1.ExportedClusterSetIP {
					t.Errorf("type = %s, want b's (older) ClusterSetIP", im.Type)
				}
			},
		},
		{
			name: "session affinity and its config",
			exports: []meshv1.ExportedServiceSpec{
				export("a", 0, func(e *meshv1.ExportedServiceSpec) {
					e.SessionAffinity = "ClientIP"
					e.SessionAffinityConfig = &meshv1.SessionAffinityConfig{ClientIP: &meshv1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](30)}}
				}),
				export("b", 1),
				export("c", 2, func(e *meshv1.ExportedServiceSpec) {
					e.SessionAffinity = "ClientIP"
					e.SessionAffinityConfig = &meshv1.SessionAffinityConfig{ClientIP: &meshv1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
				}),
			},
			wantReasons: []string{"SessionAffinityConflict", "SessionAffinityConfigConflict"},
			check: func(t *testing.T, im *Import) {
				if im.SessionAffinity != "ClientIP" || *im.SessionAffinityConfig.ClientIP.TimeoutSeconds != 30 {
					t.Errorf("affinity = %s %+v, want a's", im.SessionAffinity, im.SessionAffinityConfig)
				}
				if im.ConflictReason() != "SessionAffinityConflict,SessionAffinityConfigConflict" {
					t.Errorf("reason = %s", im.ConflictReason())
				}
			},
		},
		{
			name: "ip families: the oldest's, other families' endpoints dropped",
			exports: []meshv1.ExportedServiceSpec{
				export("a", 0),
				export("b", 1, func(e *meshv1.ExportedServiceSpec) {
					e.IPFamilies = []string{"IPv6", "IPv4"}
					e.EndpointGroups = append(e.EndpointGroups, meshv1.ExportedEndpointGroup{AddressType: "IPv6", Endpoints: []meshv1.ExportedEndpoint{{Address: "fd00::5"}}})
				}),
			},
			wantReasons: []string{"IPFamilyConflict"},
			check: func(t *testing.T, im *Import) {
				if a, _ := endpointsOf(im, "b"); !slices.Equal(a, []string{"10.2.0.5"}) {
					t.Errorf("b's endpoints = %v, want its IPv4 one only", a)
				}
			},
		},
		{
			name: "traffic policy, distribution, labels, annotations",
			exports: []meshv1.ExportedServiceSpec{
				export("a", 0, func(e *meshv1.ExportedServiceSpec) {
					e.ExportedLabels = map[string]string{"tier": "web", "team": "x"}
					e.ExportedAnnotations = map[string]string{"note": "a"}
				}),
				export("b", 1, func(e *meshv1.ExportedServiceSpec) {
					e.InternalTrafficPolicy = ptr.To("Local")
					e.TrafficDistribution = ptr.To("PreferClose")
					e.ExportedLabels = map[string]string{"tier": "db", "owner": "y"}
					e.ExportedAnnotations = map[string]string{"note": "a"}
				}),
			},
			wantReasons: []string{"InternalTrafficPolicyConflict", "TrafficDistributionConflict", "LabelsConflict"},
			check: func(t *testing.T, im *Import) {
				if want := map[string]string{"tier": "web", "team": "x", "owner": "y"}; !reflect.DeepEqual(im.Labels, want) {
					t.Errorf("labels = %v, want %v", im.Labels, want)
				}
				if im.InternalTrafficPolicy != nil || im.TrafficDistribution != nil {
					t.Errorf("itp/td = %v/%v, want a's (unset)", im.InternalTrafficPolicy, im.TrafficDistribution)
				}
			},
		},
		{
			name: "creation tie: the lower cluster name",
			exports: []meshv1.ExportedServiceSpec{
				export("b", 0, withPorts(port("http", "TCP", 8080))),
				export("a", 0, withPorts(port("http", "TCP", 80))),
			},
			wantReasons: []string{"PortConflict"},
			check: func(t *testing.T, im *Import) {
				if im.Ports[0].Port != 80 {
					t.Errorf("ports = %v, want a's", im.Ports)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im := only(t, Merge(tc.exports, live("a", "b", "c"), now))
			if got := reasons(im); !slices.Equal(got, tc.wantReasons) {
				t.Errorf("conflicts = %v, want %v (%s)", got, tc.wantReasons, im.ConflictMessage())
			}
			if len(im.Clusters) != len(tc.exports) {
				t.Errorf("clusters = %v, want every exporter", im.Clusters)
			}
			if tc.check != nil {
				tc.check(t, im)
			}
		})
	}
}

func TestMergeWithdrawsStaleAndDeparted(t *testing.T) {
	exports := []meshv1.ExportedServiceSpec{export("a", 0), export("b", 1), export("c", 2)}
	grace := 90 * time.Second
	members := []Member{
		member("a", now.Now.Add(-10*time.Second)), // live
		member("b", now.Now.Add(-grace)),          // stale exactly at the grace
		// c departed: not a member any more
	}
	r := Merge(exports, members, Options{Now: now.Now, EndpointGrace: grace})
	im := only(t, r)
	if len(im.Clusters) != 2 || im.Clusters[0].Cluster != "a" || im.Clusters[1].Cluster != "b" {
		t.Fatalf("clusters = %+v, want a and b (c departed)", im.Clusters)
	}
	if im.Clusters[0].Withdrawn || !im.Clusters[1].Withdrawn {
		t.Errorf("withdrawn a=%v b=%v, want false/true", im.Clusters[0].Withdrawn, im.Clusters[1].Withdrawn)
	}
	if a, _ := endpointsOf(im, "b"); len(a) != 0 {
		t.Errorf("stale b still has endpoints %v", a)
	}
	if want := now.Now.Add(-10 * time.Second).Add(grace); !r.RecheckAt.Equal(want) {
		t.Errorf("recheck at %v, want %v (when a goes stale)", r.RecheckAt, want)
	}

	// The local member is never stale to itself; a member never seen is.
	r = Merge(exports[:2], []Member{member("a", time.Time{}), member("b", time.Time{})}, Options{Now: now.Now, LocalCluster: "a"})
	im = only(t, r)
	if im.Clusters[0].Withdrawn || !im.Clusters[1].Withdrawn || !r.RecheckAt.IsZero() {
		t.Errorf("local a withdrawn=%v, never-seen b withdrawn=%v, recheck %v", im.Clusters[0].Withdrawn, im.Clusters[1].Withdrawn, r.RecheckAt)
	}

	// A service whose exporters all departed has no import.
	if r := Merge(exports, nil, now); len(r.Imports) != 0 {
		t.Errorf("imports without members: %v", r.Imports)
	}
}

func TestMergeDropsEndpointsOutsideTheMembersRanges(t *testing.T) {
	e := export("b", 0)
	e.EndpointGroups[0].Endpoints = []meshv1.ExportedEndpoint{
		{Address: podIP("b", 7)}, {Address: podIP("a", 9)}, {Address: "192.0.2.1"},
	}
	im := only(t, Merge([]meshv1.ExportedServiceSpec{e}, live("a", "b"), now))
	if a, _ := endpointsOf(im, "b"); !slices.Equal(a, []string{"10.2.0.7"}) {
		t.Errorf("b's endpoints = %v, want only its own range's", a)
	}
	if im.Clusters[0].Rejected != 2 {
		t.Errorf("rejected = %d, want 2", im.Clusters[0].Rejected)
	}
}

// randomExports builds exports of a few services by a few clusters with
// random shapes that collide often.
func randomExports(r *rand.Rand) []meshv1.ExportedServiceSpec {
	var out []meshv1.ExportedServiceSpec
	for _, c := range []string{"a", "b", "c", "d"} {
		for _, svc := range []string{"api", "db"} {
			if r.IntN(4) == 0 {
				continue
			}
			e := export(c, r.IntN(3), func(e *meshv1.ExportedServiceSpec) { e.Name = svc })
			var ps []meshv1.ExportedServicePort
			for i := range 1 + r.IntN(3) {
				ps = append(ps, port([]string{"http", "grpc", "metrics", ""}[r.IntN(4)], []string{"TCP", "UDP"}[r.IntN(2)], int32(80+r.IntN(3)+i)))
			}
			withPorts(ps...)(&e)
			if r.IntN(3) == 0 {
				e.Type = meshv1.ExportedHeadless
			}
			if r.IntN(3) == 0 {
				e.SessionAffinity = "ClientIP"
			}
			if r.IntN(3) == 0 {
				e.ExportedLabels = map[string]string{"k": fmt.Sprint(r.IntN(2))}
			}
			for i := range r.IntN(4) {
				e.EndpointGroups[0].Endpoints = append(e.EndpointGroups[0].Endpoints, meshv1.ExportedEndpoint{Address: podIP(c, 10+i)})
			}
			out = append(out, e)
		}
	}
	return out
}

// Every member merges the records in the order its watch delivered them:
// the answer must not depend on it.
func TestMergeOrderDoesNotMatter(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 1))
		exports := randomExports(r)
		members := live("a", "b", "c", "d")
		want := Merge(exports, members, now)
		for range 5 {
			shuffled := slices.Clone(exports)
			r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			ms := slices.Clone(members)
			r.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
			if got := Merge(shuffled, ms, now); !reflect.DeepEqual(got, want) {
				t.Fatalf("seed %d: merge of a reordered input differs:\n got %+v\nwant %+v", seed, got.Imports, want.Imports)
			}
		}
		// Invariants: ports unique by name and by protocol/number; every
		// exporter has Conflict iff any export differs.
		for _, im := range want.Imports {
			names, nums := map[string]bool{}, map[string]bool{}
			for _, p := range im.Ports {
				k := fmt.Sprintf("%s/%d", p.Protocol, p.Port)
				if names[p.Name] || nums[k] {
					t.Fatalf("seed %d: duplicate port %v in %v", seed, p, im.Ports)
				}
				names[p.Name], nums[k] = true, true
			}
			if len(im.Ports) > 1 && names[""] {
				t.Fatalf("seed %d: unnamed port among several: %v", seed, im.Ports)
			}
			for _, ci := range im.Clusters {
				for _, g := range ci.EndpointGroups {
					for _, p := range g.Ports {
						if !names[p.Name] {
							t.Fatalf("seed %d: cluster %s serves port %q the import lacks", seed, ci.Cluster, p.Name)
						}
					}
				}
			}
		}
	}
}

// Merge must not alias its input: the import side keeps results across passes.
func TestMergeDoesNotShareInput(t *testing.T) {
	e := export("a", 0, func(e *meshv1.ExportedServiceSpec) { e.TrafficDistribution = ptr.To("PreferClose") })
	im := only(t, Merge([]meshv1.ExportedServiceSpec{e}, live("a"), now))
	e.Ports[0].Port = 1
	*e.TrafficDistribution = "x"
	e.IPFamilies[0] = "IPv6"
	if im.Ports[0].Port != 80 || *im.TrafficDistribution != "PreferClose" || im.IPFamilies[0] != "IPv4" {
		t.Errorf("import changed with its input: %+v", im)
	}
}
