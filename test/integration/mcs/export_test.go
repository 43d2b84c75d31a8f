package mcs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
	"github.com/archipelago-mesh/archipelago/internal/mcs/export"
)

// fakePublisher is the hub as the export side sees it: the records it holds,
// and how many writes reached it.
type fakePublisher struct {
	mu        sync.Mutex
	records   map[mcs.Key]*meshv1.ExportedServiceSpec
	publishes int
	withdraws int
	touched   []mcs.Key // every key published or withdrawn
	fail      error
}

func newFakePublisher() *fakePublisher {
	return &fakePublisher{records: map[mcs.Key]*meshv1.ExportedServiceSpec{}}
}

func (p *fakePublisher) Publish(_ context.Context, spec *meshv1.ExportedServiceSpec) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return p.fail
	}
	p.publishes++
	p.touched = append(p.touched, mcs.Key{Namespace: spec.Namespace, Name: spec.Name})
	p.records[mcs.Key{Namespace: spec.Namespace, Name: spec.Name}] = spec.DeepCopy()
	return nil
}

func (p *fakePublisher) Withdraw(_ context.Context, k mcs.Key) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return p.fail
	}
	p.withdraws++
	p.touched = append(p.touched, k)
	delete(p.records, k)
	return nil
}

func (p *fakePublisher) Published(context.Context) ([]mcs.Key, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return nil, p.fail
	}
	var ks []mcs.Key
	for k := range p.records {
		ks = append(ks, k)
	}
	return ks, nil
}

func (p *fakePublisher) record(k mcs.Key) *meshv1.ExportedServiceSpec {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.records[k].DeepCopy()
}

func (p *fakePublisher) count() (int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.publishes, p.withdraws
}

func (p *fakePublisher) setFail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail = err
}

func startExporter(t *testing.T, pub export.Publisher) *export.Reconciler {
	r := &export.Reconciler{Client: nil, Publisher: pub, ClusterName: "east"}
	startManager(t, func(mgr ctrl.Manager) error {
		r.Client = mgr.GetClient()
		return r.SetupWithManager(mgr)
	})
	return r
}

func condition(t testing.TB, c client.Client, ns, name, typ string) (*metav1.Condition, error) {
	t.Helper()
	se := &mcsv1beta1.ServiceExport{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, se); err != nil {
		return nil, err
	}
	return meta.FindStatusCondition(se.Status.Conditions, typ), nil
}

func waitCondition(t *testing.T, c client.Client, ns, name, typ string, status metav1.ConditionStatus, reason string) {
	t.Helper()
	eventually(t, 10*time.Second, fmt.Sprintf("%s/%s %s=%s %s", ns, name, typ, status, reason), func() error {
		cond, err := condition(t, c, ns, name, typ)
		if err != nil {
			return err
		}
		if cond == nil || cond.Status != status || cond.Reason != reason {
			return fmt.Errorf("condition is %+v", cond)
		}
		return nil
	})
}

func serviceExport(ns, name string) *mcsv1beta1.ServiceExport {
	return &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

func clusterIPService(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Ports: ports, Selector: map[string]string{"app": name}},
	}
}

func endpointSlice(ns, svc, name string, port int32, ready map[string]bool) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(port)}},
	}
	for _, ip := range slices.Sorted(func(yield func(string) bool) {
		for ip := range ready {
			if !yield(ip) {
				return
			}
		}
	}) {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready[ip])}, Zone: ptr.To("z1")})
	}
	return s
}

func addresses(spec *meshv1.ExportedServiceSpec) []string {
	var out []string
	for _, g := range spec.EndpointGroups {
		for _, e := range g.Endpoints {
			out = append(out, e.Address)
		}
	}
	return out
}

func TestExportLifecycle(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	ns := testNamespace(t, c, "shop-")
	pub := newFakePublisher()
	r := startExporter(t, pub)
	key := mcs.Key{Namespace: ns, Name: "api"}

	// An export of a Service that does not exist.
	se := serviceExport(ns, "api")
	se.Spec.ExportedLabels = map[string]string{"tier": "backend"}
	if err := c.Create(ctx, se); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, c, ns, "api", "Valid", metav1.ConditionFalse, "NoService")
	waitCondition(t, c, ns, "api", "Ready", metav1.ConditionFalse, "Pending")
	if pub.record(key) != nil {
		t.Fatalf("an export without a Service was published")
	}

	// The Service appears, with ready and unready endpoints.
	svc := clusterIPService(ns, "api", corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, AppProtocol: ptr.To("http")})
	svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	if err := c.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	slice := endpointSlice(ns, "api", "api-1", 8080, map[string]bool{"10.244.1.5": true, "10.244.1.6": false, "10.244.1.4": true})
	if err := c.Create(ctx, slice); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, c, ns, "api", "Valid", metav1.ConditionTrue, "Valid")
	waitCondition(t, c, ns, "api", "Ready", metav1.ConditionTrue, "Exported")
	eventually(t, 10*time.Second, "both ready endpoints published", func() error {
		rec := pub.record(key)
		if rec == nil || !slices.Equal(addresses(rec), []string{"10.244.1.4", "10.244.1.5"}) {
			return fmt.Errorf("record %+v", rec)
		}
		return nil
	})
	rec := pub.record(key)
	if err := c.Get(ctx, client.ObjectKeyFromObject(se), se); err != nil {
		t.Fatal(err)
	}
	if rec.Cluster != "east" || rec.Type != meshv1.ExportedClusterSetIP || rec.SessionAffinity != "ClientIP" ||
		rec.SessionAffinityConfig == nil || *rec.SessionAffinityConfig.ClientIP.TimeoutSeconds != 10800 ||
		!slices.Equal(rec.IPFamilies, []string{"IPv4"}) || rec.ExportedLabels["tier"] != "backend" ||
		!rec.ExportCreationTimestamp.Equal(&se.CreationTimestamp) || *rec.InternalTrafficPolicy != "Cluster" {
		t.Errorf("record = %+v", rec)
	}
	if len(rec.Ports) != 1 || rec.Ports[0] != (meshv1.ExportedServicePort{Name: "http", Protocol: "TCP", Port: 80, AppProtocol: rec.Ports[0].AppProtocol}) || *rec.Ports[0].AppProtocol != "http" {
		t.Errorf("ports = %+v", rec.Ports)
	}
	if g := rec.EndpointGroups[0]; g.AddressType != "IPv4" || g.Ports[0].Port != 8080 || g.Endpoints[0].Zone != "z1" {
		t.Errorf("endpoint group = %+v", g)
	}
	// No Conflict condition before the merge has seen the export.
	if cond, _ := condition(t, c, ns, "api", "Conflict"); cond != nil {
		t.Errorf("Conflict = %+v before any merge verdict", cond)
	}

	// A change that does not touch the record publishes nothing.
	time.Sleep(500 * time.Millisecond) // let the reconciles of the creations settle
	before, _ := pub.count()
	svc.Annotations = map[string]string{"unrelated": "yes"}
	if err := c.Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	slice.Labels["unrelated"] = "yes"
	if err := c.Update(ctx, slice); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if after, _ := pub.count(); after != before {
		t.Errorf("%d publishes for changes that leave the record as it was", after-before)
	}

	// An endpoint turns ready: published.
	slice.Endpoints[2].Conditions.Ready = ptr.To(true)
	if err := c.Update(ctx, slice); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the third endpoint published", func() error {
		if a := addresses(pub.record(key)); len(a) != 3 {
			return fmt.Errorf("addresses %v", a)
		}
		return nil
	})

	// The merge reports a conflict, then none.
	r.SetConflicts(map[mcs.Key]export.Conflict{key: {Reason: "PortConflict", Message: "port http: TCP/80 in east (oldest export), TCP/8080 in west"}})
	waitCondition(t, c, ns, "api", "Conflict", metav1.ConditionTrue, "PortConflict")
	r.SetConflicts(map[mcs.Key]export.Conflict{key: {Reason: "NoConflicts", Message: "the exports of every cluster agree"}})
	waitCondition(t, c, ns, "api", "Conflict", metav1.ConditionFalse, "NoConflicts")

	// The hub is unreachable: Ready=False Pending, then Exported once it answers.
	pub.setFail(errors.New("hub unreachable"))
	svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "metrics", Protocol: corev1.ProtocolTCP, Port: 9090})
	if err := c.Update(ctx, svc); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, c, ns, "api", "Ready", metav1.ConditionFalse, "Pending")
	pub.setFail(nil)
	waitCondition(t, c, ns, "api", "Ready", metav1.ConditionTrue, "Exported")
	if p := pub.record(key).Ports; len(p) != 2 {
		t.Errorf("ports after the retry = %+v", p)
	}

	// ExternalName cannot be exported: withdrawn.
	if err := c.Delete(ctx, svc); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, c, ns, "api", "Valid", metav1.ConditionFalse, "NoService")
	ext := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "api"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "api.example"}}
	if err := c.Create(ctx, ext); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, c, ns, "api", "Valid", metav1.ConditionFalse, "InvalidServiceType")
	if pub.record(key) != nil {
		t.Errorf("an ExternalName export is still published")
	}
	if cond, _ := condition(t, c, ns, "api", "Conflict"); cond != nil {
		t.Errorf("an invalid export has Conflict %+v", cond)
	}
}

func TestExportHeadlessAndUnexport(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	ns := testNamespace(t, c, "db-")
	pub := newFakePublisher()
	startExporter(t, pub)
	key := mcs.Key{Namespace: ns, Name: "db"}

	svc := clusterIPService(ns, "db", corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 5432})
	svc.Spec.ClusterIP = corev1.ClusterIPNone
	if err := c.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	s := endpointSlice(ns, "db", "db-1", 5432, map[string]bool{"10.244.2.1": true})
	s.Endpoints[0].Hostname = ptr.To("db-0")
	if err := c.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	// A slice the import side wrote is never exported back.
	mine := endpointSlice(ns, "db", "imported-1", 5432, map[string]bool{"10.99.0.1": true})
	mine.Labels[discoveryv1.LabelManagedBy] = mcs.EndpointSliceManager
	if err := c.Create(ctx, mine); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, serviceExport(ns, "db")); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, c, ns, "db", "Ready", metav1.ConditionTrue, "Exported")
	rec := pub.record(key)
	if rec.Type != meshv1.ExportedHeadless || !slices.Equal(addresses(rec), []string{"10.244.2.1"}) || rec.EndpointGroups[0].Endpoints[0].Hostname != "db-0" {
		t.Errorf("record = %+v", rec)
	}

	if err := c.Delete(ctx, serviceExport(ns, "db")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "withdrawn after unexport", func() error {
		if pub.record(key) != nil {
			return errors.New("still published")
		}
		return nil
	})
}

// A record whose ServiceExport was deleted while no controller ran is
// withdrawn at start.
func TestExportSweepsStaleRecordsAtStart(t *testing.T) {
	c := needAPI(t)
	ns := testNamespace(t, c, "gone-")
	pub := newFakePublisher()
	stale := mcs.Key{Namespace: ns, Name: "gone"}
	pub.records[stale] = &meshv1.ExportedServiceSpec{Namespace: ns, Name: "gone"}
	pub.setFail(errors.New("hub unreachable")) // the sweep retries until the hub answers
	startExporter(t, pub)
	time.Sleep(500 * time.Millisecond)
	pub.setFail(nil)
	eventually(t, 10*time.Second, "stale record withdrawn", func() error {
		if pub.record(stale) != nil {
			return errors.New("still published")
		}
		return nil
	})
}

// Services nobody exports cost the hub nothing.
func TestExportIgnoresServicesWithoutExport(t *testing.T) {
	c := needAPI(t)
	ns := testNamespace(t, c, "plain-")
	pub := newFakePublisher()
	startExporter(t, pub)
	for i := range 5 {
		if err := c.Create(context.Background(), clusterIPService(ns, fmt.Sprintf("svc-%d", i), corev1.ServicePort{Port: 80})); err != nil {
			t.Fatal(err)
		}
	}
	// A barrier: an export created after those Services is Exported only
	// once the controller has seen the Service events before its own.
	if err := c.Create(context.Background(), clusterIPService(ns, "real", corev1.ServicePort{Port: 80})); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(context.Background(), serviceExport(ns, "real")); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, c, ns, "real", "Ready", metav1.ConditionTrue, "Exported")
	time.Sleep(500 * time.Millisecond)
	// The manager sees every namespace, other tests' exports included:
	// count only this namespace's.
	pub.mu.Lock()
	defer pub.mu.Unlock()
	for _, k := range pub.touched {
		if k.Namespace == ns && k.Name != "real" {
			t.Errorf("hub write for %s, a Service without a ServiceExport", k)
		}
	}
}

// A record the hub refuses is Failed, not Pending forever.
func TestExportRefusedByTheHub(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	ns := testNamespace(t, c, "refused-")
	pub := newFakePublisher()
	pub.setFail(apierrors.NewInvalid(schema.GroupKind{Group: "mesh.archipelago.dev", Kind: "ExportedService"}, "x", field.ErrorList{field.Invalid(field.NewPath("spec", "cluster"), "East", "must be a DNS label")}))
	startExporter(t, pub)
	if err := c.Create(ctx, clusterIPService(ns, "api", corev1.ServicePort{Port: 80})); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, serviceExport(ns, "api")); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, c, ns, "api", "Ready", metav1.ConditionFalse, "Failed")
	if cond, _ := condition(t, c, ns, "api", "Ready"); !strings.Contains(cond.Message, "spec.cluster") {
		t.Errorf("message %q does not name the field", cond.Message)
	}
}
