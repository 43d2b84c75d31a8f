package mcs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
	"github.com/archipelago-mesh/archipelago/internal/mcs/imports"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

func startImporter(t *testing.T) (*imports.Reconciler, func()) {
	r := &imports.Reconciler{}
	stop := startManager(t, func(mgr ctrl.Manager) error {
		r.Client = mgr.GetClient()
		return r.SetupWithManager(mgr)
	})
	return r, stop
}

// set is a ClusterSet's exports of one service as records, merged the way
// every member merges them.
type set struct {
	exports []meshv1.ExportedServiceSpec
}

func (s *set) export(ns, name, cluster string, minute int, ports []meshv1.ExportedServicePort, typ meshv1.ExportedServiceType, addrs ...string) {
	e := meshv1.ExportedServiceSpec{
		Cluster: cluster, Namespace: ns, Name: name, Type: typ, Ports: ports, IPFamilies: []string{"IPv4"},
		ExportCreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, minute, 0, 0, time.UTC)),
	}
	g := meshv1.ExportedEndpointGroup{AddressType: "IPv4"}
	for _, p := range ports {
		g.Ports = append(g.Ports, meshv1.ExportedEndpointPort{Name: p.Name, Protocol: p.Protocol, Port: p.Port + 8000})
	}
	for _, a := range addrs {
		g.Endpoints = append(g.Endpoints, meshv1.ExportedEndpoint{Address: a, Hostname: fmt.Sprintf("%s-%d", name, len(g.Endpoints))})
	}
	e.EndpointGroups = []meshv1.ExportedEndpointGroup{g}
	s.exports = slices.DeleteFunc(s.exports, func(x meshv1.ExportedServiceSpec) bool {
		return x.Cluster == cluster && x.Namespace == ns && x.Name == name
	})
	s.exports = append(s.exports, e)
}

func (s *set) unexport(ns, name, cluster string) {
	s.exports = slices.DeleteFunc(s.exports, func(x meshv1.ExportedServiceSpec) bool {
		return x.Cluster == cluster && x.Namespace == ns && x.Name == name
	})
}

var members = func() []mcs.Member {
	var ms []mcs.Member
	for i, n := range []string{"east", "west", "north"} {
		ms = append(ms, mcs.Member{Name: n, LastSeen: time.Now().Add(time.Hour), PodCIDRs: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", i+1))}})
	}
	return ms
}()

func (s *set) merge() mcs.Result {
	return mcs.Merge(s.exports, members, mcs.Options{Now: time.Now(), LocalCluster: "east"})
}

// deletions watches ServiceImports and EndpointSlices of a namespace and
// records every DELETED event.
type deletions struct {
	mu     sync.Mutex
	events []string
}

func watchDeletions(t *testing.T, ns string) *deletions {
	t.Helper()
	wc, err := client.NewWithWatch(api.Config, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	d := &deletions{}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, list := range []client.ObjectList{&mcsv1beta1.ServiceImportList{}, &discoveryv1.EndpointSliceList{}} {
		w, err := wc.Watch(ctx, list, client.InNamespace(ns))
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			defer w.Stop()
			for ev := range w.ResultChan() {
				if ev.Type == watch.Deleted {
					o := ev.Object.(client.Object)
					d.mu.Lock()
					d.events = append(d.events, fmt.Sprintf("%T %s", o, o.GetName()))
					d.mu.Unlock()
				}
			}
		}()
	}
	return d
}

func (d *deletions) get() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.events)
}

func getImport(c client.Client, ns, name string) (*mcsv1beta1.ServiceImport, error) {
	si := &mcsv1beta1.ServiceImport{}
	return si, c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, si)
}

func importSlices(c client.Client, ns, name string) (map[string][]string, error) {
	var l discoveryv1.EndpointSliceList
	if err := c.List(context.Background(), &l, client.InNamespace(ns), client.MatchingLabels{mcsv1beta1.LabelServiceName: name}); err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, s := range l.Items {
		cluster := s.Labels[mcsv1beta1.LabelSourceCluster]
		if s.Labels[discoveryv1.LabelManagedBy] != mcs.EndpointSliceManager || s.Labels[discoveryv1.LabelServiceName] != mcs.DerivedServiceName(mcs.Key{Namespace: ns, Name: name}) {
			return nil, fmt.Errorf("slice %s has labels %v", s.Name, s.Labels)
		}
		if _, dup := out[cluster]; dup {
			return nil, fmt.Errorf("two slices of cluster %s", cluster)
		}
		for _, e := range s.Endpoints {
			out[cluster] = append(out[cluster], e.Addresses[0])
		}
		for _, p := range s.Ports {
			out[cluster] = append(out[cluster], fmt.Sprintf("%s:%d", *p.Name, *p.Port))
		}
	}
	return out, nil
}

func clustersOf(si *mcsv1beta1.ServiceImport) []string {
	var out []string
	for _, c := range si.Status.Clusters {
		out = append(out, c.Cluster)
	}
	return out
}

func TestImportLifecycle(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	ns := testNamespace(t, c, "shop-")
	dels := watchDeletions(t, ns)
	r, stop := startImporter(t)

	var s set
	http := meshv1.ExportedServicePort{Name: "http", Protocol: "TCP", Port: 80}
	metrics := meshv1.ExportedServicePort{Name: "metrics", Protocol: "TCP", Port: 9090}
	s.export(ns, "api", "east", 0, []meshv1.ExportedServicePort{http}, meshv1.ExportedClusterSetIP, "10.1.0.5")
	s.export(ns, "api", "west", 1, []meshv1.ExportedServicePort{http}, meshv1.ExportedClusterSetIP, "10.2.0.5", "10.2.0.6")
	r.SetImports(s.merge())

	derived := mcs.DerivedServiceName(mcs.Key{Namespace: ns, Name: "api"})
	var si *mcsv1beta1.ServiceImport
	eventually(t, 10*time.Second, "ServiceImport with IPs and both clusters", func() error {
		var err error
		if si, err = getImport(c, ns, "api"); err != nil {
			return err
		}
		if len(si.Spec.IPs) != 1 || !slices.Equal(clustersOf(si), []string{"east", "west"}) {
			return fmt.Errorf("spec %+v status %+v", si.Spec, si.Status)
		}
		return nil
	})
	uid := si.UID
	if si.Spec.Type != mcsv1beta1.ClusterSetIP || len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 80 || !slices.Equal(si.Spec.IPFamilies, []corev1.IPFamily{corev1.IPv4Protocol}) {
		t.Errorf("ServiceImport spec = %+v", si.Spec)
	}
	svc := &corev1.Service{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: derived}, svc); err != nil {
		t.Fatalf("derived Service: %v", err)
	}
	if svc.Spec.Selector != nil || !slices.Equal(svc.Spec.ClusterIPs, si.Spec.IPs) || !metav1.IsControlledBy(svc, si) {
		t.Errorf("derived Service: selector %v, IPs %v (import %v), owners %v", svc.Spec.Selector, svc.Spec.ClusterIPs, si.Spec.IPs, svc.OwnerReferences)
	}
	eventually(t, 10*time.Second, "one slice per cluster, local endpoints included", func() error {
		got, err := importSlices(c, ns, "api")
		if err != nil {
			return err
		}
		if want := map[string][]string{"east": {"10.1.0.5", "http:8080"}, "west": {"10.2.0.5", "10.2.0.6", "http:8080"}}; fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("slices %v, want %v", got, want)
		}
		return nil
	})

	// Updates: a third exporter with another port (the union), west's
	// endpoints change. Everything is updated in place.
	s.export(ns, "api", "north", 2, []meshv1.ExportedServicePort{http, metrics}, meshv1.ExportedClusterSetIP, "10.3.0.7")
	s.export(ns, "api", "west", 1, []meshv1.ExportedServicePort{http}, meshv1.ExportedClusterSetIP, "10.2.0.6", "10.2.0.9")
	r.SetImports(s.merge())
	eventually(t, 10*time.Second, "the union of ports and north's slice", func() error {
		si, err := getImport(c, ns, "api")
		if err != nil {
			return err
		}
		got, err := importSlices(c, ns, "api")
		if err != nil {
			return err
		}
		want := map[string][]string{"east": {"10.1.0.5", "http:8080"}, "north": {"10.3.0.7", "http:8080", "metrics:17090"}, "west": {"10.2.0.6", "10.2.0.9", "http:8080"}}
		if len(si.Spec.Ports) != 2 || len(si.Status.Clusters) != 3 || fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("ports %v clusters %v slices %v", si.Spec.Ports, si.Status.Clusters, got)
		}
		return nil
	})
	eventually(t, 10*time.Second, "derived Service has the union", func() error {
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: derived}, svc); err != nil {
			return err
		}
		if len(svc.Spec.Ports) != 2 {
			return fmt.Errorf("ports %v", svc.Spec.Ports)
		}
		return nil
	})

	// A restart: nothing is deleted, before or after the first merge.
	stop()
	time.Sleep(200 * time.Millisecond)
	r, _ = startImporter(t)
	time.Sleep(time.Second) // the new controller sees every object before any merge arrives
	r.SetImports(s.merge())
	time.Sleep(time.Second)
	if d := dels.get(); len(d) != 0 {
		t.Fatalf("DELETED events across updates and a restart: %v", d)
	}
	if si, err := getImport(c, ns, "api"); err != nil || si.UID != uid {
		t.Fatalf("ServiceImport after restart: %v (uid %v, was %v)", err, si.UID, uid)
	}

	// West unexports: its slice goes, the import stays.
	s.unexport(ns, "api", "west")
	r.SetImports(s.merge())
	eventually(t, 10*time.Second, "west's slice removed", func() error {
		got, err := importSlices(c, ns, "api")
		if err != nil {
			return err
		}
		if _, ok := got["west"]; ok || len(got) != 2 {
			return fmt.Errorf("slices %v", got)
		}
		return nil
	})
	for _, d := range dels.get() {
		if d == "*v1beta1.ServiceImport api" {
			t.Fatalf("the ServiceImport was deleted while two clusters export")
		}
	}

	// Nobody exports: the import, its Service and slices go.
	s.unexport(ns, "api", "east")
	s.unexport(ns, "api", "north")
	r.SetImports(s.merge())
	eventually(t, 10*time.Second, "import removed", func() error {
		if _, err := getImport(c, ns, "api"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("ServiceImport: %v", err)
		}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: derived}, &corev1.Service{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("derived Service: %v", err)
		}
		if got, err := importSlices(c, ns, "api"); err != nil || len(got) != 0 {
			return fmt.Errorf("slices %v %v", got, err)
		}
		return nil
	})
}

func TestImportHeadlessAndLaterNamespace(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	r, _ := startImporter(t)

	// The namespace does not exist yet in this member.
	ns := fmt.Sprintf("later-%d", time.Now().UnixNano()%1000000)
	var s set
	s.export(ns, "db", "west", 0, []meshv1.ExportedServicePort{{Name: "pg", Protocol: "TCP", Port: 5432}}, meshv1.ExportedHeadless, "10.2.0.8")
	s.export(ns, "peers", "west", 0, nil, meshv1.ExportedHeadless, "10.2.0.9") // headless without ports
	r.SetImports(s.merge())
	time.Sleep(500 * time.Millisecond)
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}
	if err := c.Create(ctx, nsObj); err != nil {
		t.Fatal(err)
	}
	cleanup(t, c, nsObj)
	eventually(t, 10*time.Second, "headless import in the new namespace", func() error {
		si, err := getImport(c, ns, "db")
		if err != nil {
			return err
		}
		if si.Spec.Type != mcsv1beta1.Headless || len(si.Spec.IPs) != 0 || len(si.Spec.IPFamilies) != 1 || !slices.Equal(clustersOf(si), []string{"west"}) {
			return fmt.Errorf("spec %+v status %+v", si.Spec, si.Status)
		}
		got, err := importSlices(c, ns, "db")
		if err != nil {
			return err
		}
		if len(got["west"]) == 0 {
			return errors.New("no slice of west")
		}
		return nil
	})
	eventually(t, 10*time.Second, "headless import without ports", func() error {
		si, err := getImport(c, ns, "peers")
		if err != nil {
			return err
		}
		if len(si.Spec.Ports) != 0 || si.Spec.Type != mcsv1beta1.Headless {
			return fmt.Errorf("spec %+v", si.Spec)
		}
		return nil
	})
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: mcs.DerivedServiceName(mcs.Key{Namespace: ns, Name: "db"})}, &corev1.Service{}); !apierrors.IsNotFound(err) {
		t.Errorf("a headless import has a derived Service: %v", err)
	}
}

// An import the project did not create is left alone.
func TestImportLeavesForeignServiceImports(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	ns := testNamespace(t, c, "foreign-")
	foreign := &mcsv1beta1.ServiceImport{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "api"},
		Spec:       mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.Headless, Ports: []mcsv1beta1.ServicePort{{Port: 1}}},
	}
	if err := c.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	r, _ := startImporter(t)
	var s set
	s.export(ns, "api", "west", 0, []meshv1.ExportedServicePort{{Name: "http", Protocol: "TCP", Port: 80}}, meshv1.ExportedClusterSetIP, "10.2.0.5")
	// A barrier: another import of the same merge, in the same namespace.
	s.export(ns, "other", "west", 0, []meshv1.ExportedServicePort{{Name: "http", Protocol: "TCP", Port: 80}}, meshv1.ExportedClusterSetIP, "10.2.0.6")
	r.SetImports(s.merge())
	eventually(t, 10*time.Second, "the other import", func() error { _, err := getImport(c, ns, "other"); return err })
	time.Sleep(500 * time.Millisecond)
	si, err := getImport(c, ns, "api")
	if err != nil || si.UID != foreign.UID || si.Spec.Type != mcsv1beta1.Headless || len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 1 {
		t.Errorf("the foreign ServiceImport changed: %+v %v", si, err)
	}
}

// An import whose exporters left while no controller ran is removed once the
// first merge after the start arrives, and not before.
func TestImportRemovesStaleImportsAfterRestart(t *testing.T) {
	c := needAPI(t)
	ns := testNamespace(t, c, "stale-")
	r, stop := startImporter(t)
	var s set
	s.export(ns, "old", "west", 0, []meshv1.ExportedServicePort{{Name: "http", Protocol: "TCP", Port: 80}}, meshv1.ExportedClusterSetIP, "10.2.0.5")
	r.SetImports(s.merge())
	eventually(t, 10*time.Second, "import created", func() error { _, err := getImport(c, ns, "old"); return err })
	stop()

	s.unexport(ns, "old", "west")
	r, _ = startImporter(t)
	time.Sleep(3 * time.Second) // longer than the wait for the first merge
	if _, err := getImport(c, ns, "old"); err != nil {
		t.Fatalf("the import went before any merge arrived: %v", err)
	}
	r.SetImports(s.merge())
	eventually(t, 10*time.Second, "stale import removed", func() error {
		if _, err := getImport(c, ns, "old"); !apierrors.IsNotFound(err) {
			return fmt.Errorf("ServiceImport: %v", err)
		}
		return nil
	})
}
