package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/archipelago-mesh/archipelago/agent/controlplane"
	dpfake "github.com/archipelago-mesh/archipelago/agent/dataplane/fake"
	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	aboutv1beta1 "github.com/archipelago-mesh/archipelago/api/about/v1beta1"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// svcMember is one member cluster of the services test: its own API
// server and the agent of its single (gateway candidate) node.
type svcMember struct {
	name, node, podCIDR string
	api                 *framework.APIServer
	keyDir              string
	stopAgent           func()
}

// start runs the member's agent (again, after stop: same node, same key)
// until it is stopped or the test t ends: pass the top-level test, not a
// subtest (whose end would stop the agent).
func (m *svcMember) start(t *testing.T) {
	t.Helper()
	kernel := dpfake.NewKernel()
	a, err := controlplane.New(controlplane.Config{
		NodeName: m.node, Member: m.api.Config, TunnelInterface: "arch0",
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond,
		Key:      func() (wgtypes.Key, error) { return wireguard.LoadOrCreateKey(m.keyDir) },
		Datapath: kernel.Dataplane("arch0", testr.New(t)), Resync: time.Second, ReportInterval: time.Second,
		Log: testr.NewWithOptions(t, testr.Options{Verbosity: 0}).WithValues("agent", m.node),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			t.Errorf("agent %s: %v", m.node, err)
		}
	}()
	stopped := false
	m.stopAgent = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(m.stopAgent)
}

// imported is a member's view of shop/api: the ServiceImport and its
// EndpointSlices (source cluster → addresses and ports).
func imported(c client.Client) (*mcsv1beta1.ServiceImport, map[string][]string, error) {
	ctx := context.Background()
	si := &mcsv1beta1.ServiceImport{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "api"}, si); err != nil {
		return nil, nil, err
	}
	var l discoveryv1.EndpointSliceList
	if err := c.List(ctx, &l, client.InNamespace("shop"), client.MatchingLabels{mcsv1beta1.LabelServiceName: "api"}); err != nil {
		return nil, nil, err
	}
	out := map[string][]string{}
	for _, s := range l.Items {
		if s.Labels[discoveryv1.LabelServiceName] != mcs.DerivedServiceName(mcs.Key{Namespace: "shop", Name: "api"}) {
			return nil, nil, fmt.Errorf("slice %s labels %v", s.Name, s.Labels)
		}
		cl := s.Labels[mcsv1beta1.LabelSourceCluster]
		for _, e := range s.Endpoints {
			out[cl] = append(out[cl], e.Addresses[0])
		}
		for _, p := range s.Ports {
			out[cl] = append(out[cl], fmt.Sprintf("%s:%d", *p.Name, *p.Port))
		}
	}
	return si, out, nil
}

func exporters(si *mcsv1beta1.ServiceImport) []string {
	var out []string
	for _, c := range si.Status.Clusters {
		out = append(out, c.Cluster)
	}
	return out
}

func exportCondition(c client.Client, typ string) *metav1.Condition {
	se := &mcsv1beta1.ServiceExport{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "shop", Name: "api"}, se); err != nil {
		return nil
	}
	return meta.FindStatusCondition(se.Status.Conditions, typ)
}

// deletionWatch records DELETED events of ServiceImports and EndpointSlices.
type deletionWatch struct {
	mu   sync.Mutex
	seen []string
	stop func()
}

func watchDeletions(t *testing.T, cfg *rest.Config) *deletionWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &deletionWatch{}
	var wg sync.WaitGroup
	kube := kubernetes.NewForConfigOrDie(cfg)
	slices, err := kube.DiscoveryV1().EndpointSlices("shop").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	sis, err := wc.Watch(ctx, &mcsv1beta1.ServiceImportList{}, client.InNamespace("shop"))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []watch.Interface{slices, sis} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ev := range w.ResultChan() {
				if ev.Type == watch.Deleted {
					o := ev.Object.(client.Object)
					d.mu.Lock()
					d.seen = append(d.seen, fmt.Sprintf("%T %s", o, o.GetName()))
					d.mu.Unlock()
				}
			}
		}()
	}
	d.stop = func() { slices.Stop(); sis.Stop(); cancel(); wg.Wait() }
	t.Cleanup(d.stop)
	return d
}

func (d *deletionWatch) get() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.seen)
}

// The real hub sync of two members' agents against a hub: exports go to the
// hub, the hub copies them into the set's namespace, every agent merges
// them into imports; conflicts are fed back; a member whose agent stops is
// withdrawn after the hub's heartbeat staleness; a restarted agent deletes
// no import; a member that leaves is withdrawn and drops its own imports;
// unexport removes the imports.
func TestAgentsExportAndImportServices(t *testing.T) {
	needAPIServers(t)
	top := t
	framework.StartHub(t, hub.Config, controllers.Options{PeerDrainTimeout: time.Minute, HeartbeatStaleAfter: 5 * time.Second})
	ctx := context.Background()
	hc := hub.Client
	for _, cs := range []*meshv1.ClusterSet{framework.NewClusterSet("svc", []string{"10.112.0.0/12"}), framework.NewClusterSet("svc-other", []string{"10.128.0.0/12"})} {
		if err := hc.Create(ctx, cs); err != nil {
			t.Fatal(err)
		}
	}
	east := &svcMember{name: "east", node: "e1", podCIDR: "10.112.0.0/16"}
	west := &svcMember{name: "west", node: "w1", podCIDR: "10.113.0.0/16"}
	members := []*svcMember{east, west}
	for _, m := range append(members, &svcMember{name: "lone", podCIDR: "10.128.0.0/16"}) {
		set := "svc"
		if m.name == "lone" {
			set = "svc-other"
		}
		if err := hc.Create(ctx, framework.NewMember(m.name, set, framework.WithPodCIDRs(m.podCIDR))); err != nil {
			t.Fatal(err)
		}
	}
	tokens := map[string]string{}
	for _, m := range members {
		m.keyDir = filepath.Join(t.TempDir(), "key")
		a, why, err := framework.StartAPIServer()
		if err != nil || a == nil {
			t.Fatalf("member API server: %v %s", err, why)
		}
		t.Cleanup(func() { _ = a.Stop() })
		m.api = a
		n := node(m.node, "172.19.0."+map[string]string{"east": "2", "west": "3"}[m.name], strings.Replace(m.podCIDR, ".0.0/16", ".1.0/24", 1), true)
		createNode(t, a.Client, n)
		tokens[m.name] = framework.MemberHubTokenTTL(t, hub.Config, m.name, tokenTTL)
		framework.JoinMember(t, a.Client, hub.Config, m.name, "svc", tokens[m.name])
		for _, p := range mcs.ClusterProperties(m.name, "svc") {
			if err := a.Client.Create(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}); err != nil {
			t.Fatal(err)
		}
		m.start(t)
	}
	for _, m := range members {
		eventually(t, m.name+" runs multi-cluster services", func() (bool, string) {
			ms := &meshv1.ClusterSetMembership{}
			if err := m.api.Client.Get(ctx, client.ObjectKey{Name: framework.MembershipName}, ms); err != nil {
				return false, err.Error()
			}
			c := meta.FindStatusCondition(ms.Status.Conditions, meshv1.MembershipServices)
			return c != nil && c.Status == metav1.ConditionTrue && c.Reason == controlplane.ReasonServicesRunning, fmt.Sprintf("%+v", c)
		})
	}

	// What a member may do on the hub with its own token.
	t.Run("hub RBAC", func(t *testing.T) {
		asWest := memberClient(t, tokens["west"])
		rec := &meshv1.ExportedService{ObjectMeta: metav1.ObjectMeta{Namespace: controllers.MemberNamespace("east"), Name: "shop.fake"},
			Spec: meshv1.ExportedServiceSpec{Cluster: "east", Namespace: "shop", Name: "fake", Type: meshv1.ExportedClusterSetIP,
				ExportCreationTimestamp: metav1.Now(), IPFamilies: []string{"IPv4"}}}
		if err := asWest.Create(ctx, rec); !apierrors.IsForbidden(err) {
			t.Errorf("west writes a record in east's namespace: %v, want Forbidden", err)
		}
		rec.Namespace = meshv1.ClusterSetNamespace("svc")
		if err := asWest.Create(ctx, rec); !apierrors.IsForbidden(err) {
			t.Errorf("west writes a record in the set's namespace: %v, want Forbidden", err)
		}
		for _, ns := range []string{controllers.MemberNamespace("east"), meshv1.ClusterSetNamespace("svc-other")} {
			if err := asWest.List(ctx, &meshv1.ExportedServiceList{}, client.InNamespace(ns)); !apierrors.IsForbidden(err) {
				t.Errorf("west lists the records in %s: %v, want Forbidden", ns, err)
			}
		}
		if err := asWest.List(ctx, &meshv1.ExportedServiceList{}, client.InNamespace(meshv1.ClusterSetNamespace("svc"))); err != nil {
			t.Errorf("west cannot read its set's exports: %v", err)
		}
	})

	exportService := func(m *svcMember, ports []corev1.ServicePort, affinity corev1.ServiceAffinity, addr string) {
		t.Helper()
		c := m.api.Client
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "api"},
			Spec: corev1.ServiceSpec{Ports: ports, Selector: map[string]string{"app": "api"}, SessionAffinity: affinity}}
		if err := c.Create(ctx, svc); err != nil {
			t.Fatal(err)
		}
		eps := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "api-" + m.name,
				Labels: map[string]string{discoveryv1.LabelServiceName: "api", discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		}
		if err := c.Create(ctx, eps); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "api"}}); err != nil {
			t.Fatal(err)
		}
	}
	importIn := func(t *testing.T, m *svcMember, what string, check func(*mcsv1beta1.ServiceImport, map[string][]string) string) {
		t.Helper()
		eventually(t, what+" in "+m.name, func() (bool, string) {
			si, sl, err := imported(m.api.Client)
			if err != nil {
				return false, err.Error()
			}
			msg := check(si, sl)
			return msg == "", msg
		})
	}
	http := corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}
	start := time.Now()
	exportService(east, []corev1.ServicePort{http}, corev1.ServiceAffinityNone, "10.112.1.5")
	for _, m := range members {
		importIn(t, m, "east's export", func(si *mcsv1beta1.ServiceImport, sl map[string][]string) string {
			if si.Spec.Type != mcsv1beta1.ClusterSetIP || len(si.Spec.IPs) != 1 || !slices.Equal(exporters(si), []string{"east"}) ||
				fmt.Sprint(sl) != "map[east:[10.112.1.5 http:8080]]" {
				return fmt.Sprintf("import %+v %+v slices %v", si.Spec, si.Status, sl)
			}
			return ""
		})
	}
	t.Logf("export → imported in both members: %s", time.Since(start).Round(time.Millisecond))
	eventually(t, "east's export Ready and without conflict", func() (bool, string) {
		r, c := exportCondition(east.api.Client, "Ready"), exportCondition(east.api.Client, "Conflict")
		return r != nil && r.Status == metav1.ConditionTrue && c != nil && c.Reason == "NoConflicts", fmt.Sprintf("Ready %+v Conflict %+v", r, c)
	})
	uids := map[string]string{}
	for _, m := range members {
		si, _, _ := imported(m.api.Client)
		uids[m.name] = string(si.UID)
	}

	// West exports later, with another port and ClientIP affinity: the
	// union, east's (older) affinity, Conflict on both exports.
	time.Sleep(1100 * time.Millisecond) // a later creation time, to the second
	exportService(west, []corev1.ServicePort{http, {Name: "metrics", Protocol: corev1.ProtocolTCP, Port: 9090}}, corev1.ServiceAffinityClientIP, "10.113.1.7")
	both := func(si *mcsv1beta1.ServiceImport, sl map[string][]string) string {
		if len(si.Spec.Ports) != 2 || si.Spec.SessionAffinity != corev1.ServiceAffinityNone || !slices.Equal(exporters(si), []string{"east", "west"}) ||
			fmt.Sprint(sl) != "map[east:[10.112.1.5 http:8080] west:[10.113.1.7 http:8080]]" {
			return fmt.Sprintf("import %+v %+v slices %v", si.Spec, si.Status, sl)
		}
		return ""
	}
	for _, m := range members {
		importIn(t, m, "the union", both)
		eventually(t, "Conflict on "+m.name+"'s export", func() (bool, string) {
			c := exportCondition(m.api.Client, "Conflict")
			return c != nil && c.Status == metav1.ConditionTrue && c.Reason == "PortConflict,SessionAffinityConflict" &&
				strings.Contains(c.Message, "ClientIP in west"), fmt.Sprintf("%+v", c)
		})
	}

	t.Run("agent restart deletes nothing", func(t *testing.T) {
		watches := map[string]*deletionWatch{}
		for _, m := range members {
			watches[m.name] = watchDeletions(t, m.api.Config)
		}
		east.stopAgent()
		east.start(top)
		// The new agent is at work when a change of east's endpoints reaches west.
		eps := &discoveryv1.EndpointSlice{}
		if err := east.api.Client.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "api-east"}, eps); err != nil {
			t.Fatal(err)
		}
		eps.Endpoints = append(eps.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.112.1.6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
		if err := east.api.Client.Update(ctx, eps); err != nil {
			t.Fatal(err)
		}
		for _, m := range members {
			importIn(t, m, "east's new endpoint", func(si *mcsv1beta1.ServiceImport, sl map[string][]string) string {
				if fmt.Sprint(sl["east"]) != "[10.112.1.5 10.112.1.6 http:8080]" {
					return fmt.Sprintf("slices %v", sl)
				}
				return ""
			})
		}
		time.Sleep(2 * time.Second) // a late deletion would show here
		for _, m := range members {
			watches[m.name].stop()
			if d := watches[m.name].get(); len(d) != 0 {
				t.Errorf("%s saw DELETED events across east's agent restart: %v", m.name, d)
			}
			if si, _, _ := imported(m.api.Client); si == nil || string(si.UID) != uids[m.name] {
				t.Errorf("the ServiceImport in %s was recreated", m.name)
			}
		}
	})

	t.Run("a stopped agent's endpoints are withdrawn", func(t *testing.T) {
		west.stopAgent()
		importIn(t, east, "west withdrawn after its heartbeat went stale", func(si *mcsv1beta1.ServiceImport, sl map[string][]string) string {
			if !slices.Equal(exporters(si), []string{"east", "west"}) || sl["west"] != nil || sl["east"] == nil {
				p := &meshv1.ClusterSetPeer{}
				_ = hc.Get(ctx, client.ObjectKey{Namespace: meshv1.ClusterSetNamespace("svc"), Name: "west"}, p)
				mc := &meshv1.MemberCluster{}
				_ = hc.Get(ctx, client.ObjectKey{Name: "west"}, mc)
				return fmt.Sprintf("exporters %v slices %v; peer %+v; member %+v", exporters(si), sl, p.Spec, meta.FindStatusCondition(mc.Status.Conditions, meshv1.MemberAgentConnected))
			}
			return ""
		})
		west.start(top)
		importIn(t, east, "west's endpoints back with its agent", func(si *mcsv1beta1.ServiceImport, sl map[string][]string) string {
			if sl["west"] == nil {
				return fmt.Sprintf("slices %v", sl)
			}
			return ""
		})
	})

	t.Run("a ClusterProperty that disagrees stops the services", func(t *testing.T) {
		p := &aboutv1beta1.ClusterProperty{}
		if err := east.api.Client.Get(ctx, client.ObjectKey{Name: aboutv1beta1.ClusterSetProperty}, p); err != nil {
			t.Fatal(err)
		}
		// The property is immutable (CEL): replace it.
		if err := east.api.Client.Delete(ctx, p); err != nil {
			t.Fatal(err)
		}
		wrong := mcs.ClusterProperties("east", "another-set")[1]
		if err := east.api.Client.Create(ctx, wrong); err != nil {
			t.Fatal(err)
		}
		servicesCondition := func(reason string) {
			t.Helper()
			eventually(t, "MultiClusterServices "+reason, func() (bool, string) {
				ms := &meshv1.ClusterSetMembership{}
				_ = east.api.Client.Get(ctx, client.ObjectKey{Name: framework.MembershipName}, ms)
				c := meta.FindStatusCondition(ms.Status.Conditions, meshv1.MembershipServices)
				return c != nil && c.Reason == reason, fmt.Sprintf("%+v", c)
			})
		}
		servicesCondition(controlplane.ReasonClusterPropertyMismatch)
		ms := &meshv1.ClusterSetMembership{}
		_ = east.api.Client.Get(ctx, client.ObjectKey{Name: framework.MembershipName}, ms)
		if c := meta.FindStatusCondition(ms.Status.Conditions, meshv1.MembershipServices); c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, "another-set") {
			t.Errorf("condition %+v, want False naming the property's value", c)
		}
		if err := east.api.Client.Delete(ctx, wrong); err != nil {
			t.Fatal(err)
		}
		if err := east.api.Client.Create(ctx, mcs.ClusterProperties("east", "svc")[1]); err != nil {
			t.Fatal(err)
		}
		servicesCondition(controlplane.ReasonServicesRunning)
		importIn(t, east, "imports after the fix", func(si *mcsv1beta1.ServiceImport, sl map[string][]string) string {
			if !slices.Equal(exporters(si), []string{"east", "west"}) || len(sl) != 2 {
				return fmt.Sprintf("import %+v slices %v", si.Status, sl)
			}
			return ""
		})
	})

	t.Run("a member that leaves is withdrawn and drops its imports", func(t *testing.T) {
		if err := hc.Delete(ctx, &meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "west"}}); err != nil {
			t.Fatal(err)
		}
		importIn(t, east, "west gone", func(si *mcsv1beta1.ServiceImport, sl map[string][]string) string {
			if !slices.Equal(exporters(si), []string{"east"}) || fmt.Sprint(sl) != "map[east:[10.112.1.5 10.112.1.6 http:8080]]" {
				return fmt.Sprintf("exporters %v slices %v", exporters(si), sl)
			}
			return ""
		})
		if si, _, _ := imported(east.api.Client); si == nil || string(si.UID) != uids["east"] {
			t.Error("east's ServiceImport was recreated")
		}
		eventually(t, "east's export without conflict", func() (bool, string) {
			c := exportCondition(east.api.Client, "Conflict")
			return c != nil && c.Reason == "NoConflicts", fmt.Sprintf("%+v", c)
		})
		// West's side of leaving: the membership goes, its agent removes
		// the imports it made.
		if err := west.api.Client.Delete(ctx, &meshv1.ClusterSetMembership{ObjectMeta: metav1.ObjectMeta{Name: framework.MembershipName}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "west's imports removed", func() (bool, string) {
			var sis mcsv1beta1.ServiceImportList
			var eps discoveryv1.EndpointSliceList
			var svcs corev1.ServiceList
			_ = west.api.Client.List(ctx, &sis)
			_ = west.api.Client.List(ctx, &eps, client.MatchingLabels{discoveryv1.LabelManagedBy: mcs.EndpointSliceManager})
			_ = west.api.Client.List(ctx, &svcs, client.MatchingLabels{mcs.LabelManagedBy: mcs.ManagedByValue})
			return len(sis.Items)+len(eps.Items)+len(svcs.Items) == 0, fmt.Sprintf("%d imports, %d slices, %d services", len(sis.Items), len(eps.Items), len(svcs.Items))
		})
		var own discoveryv1.EndpointSliceList
		if err := west.api.Client.List(ctx, &own, client.InNamespace("shop")); err != nil || len(own.Items) != 1 {
			t.Errorf("west's own slices: %d (%v), want its Service's one left alone", len(own.Items), err)
		}
	})

	// East unexports: nobody exports, the import goes.
	if err := east.api.Client.Delete(ctx, &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "api"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "import gone in east", func() (bool, string) {
		_, _, err := imported(east.api.Client)
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	eventually(t, "east's record gone from the hub", func() (bool, string) {
		var l meshv1.ExportedServiceList
		if err := hc.List(ctx, &l, client.InNamespace(meshv1.ClusterSetNamespace("svc"))); err != nil {
			return false, err.Error()
		}
		return len(l.Items) == 0, fmt.Sprintf("%d records", len(l.Items))
	})
}

// memberClient talks to the hub with a member's token.
func memberClient(t *testing.T, token string) client.Client {
	t.Helper()
	cfg := rest.AnonymousClientConfig(hub.Config)
	cfg.BearerToken = token
	c, err := client.New(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
