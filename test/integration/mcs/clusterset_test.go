package mcs

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/archipelago-mesh/archipelago/internal/mcs"
	"github.com/archipelago-mesh/archipelago/internal/mcs/export"
	"github.com/archipelago-mesh/archipelago/internal/mcs/imports"
	"github.com/archipelago-mesh/archipelago/internal/mcs/records"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// testMember is one member cluster: its own API server, its export and
// import controllers, and its records on the hub.
type testMember struct {
	name   string
	api    *framework.APIServer
	ranges []netip.Prefix
	exp    *export.Reconciler
	imp    *imports.Reconciler
}

func startMemberAPI(t *testing.T) *framework.APIServer {
	t.Helper()
	a, why, err := framework.StartAPIServer()
	if err != nil {
		t.Fatal(err)
	}
	if a == nil {
		t.Skip("needs kube-apiserver and etcd: " + why)
	}
	t.Cleanup(func() { _ = a.Stop() })
	return a
}

func runControllers(t *testing.T, cfg *rest.Config, m *testMember, pub export.Publisher) {
	t.Helper()
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: framework.Scheme(), Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	m.exp = &export.Reconciler{Client: mgr.GetClient(), Publisher: pub, ClusterName: m.name}
	m.imp = &imports.Reconciler{Client: mgr.GetClient()}
	if err := m.exp.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	if err := m.imp.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// A hub and two member API servers: what the agents' hub sync will do, with
// the merge loop of this test standing in for it: read every member's
// records on the hub, merge, hand the result to each member.
func TestClusterSetExportImport(t *testing.T) {
	hub := needAPI(t)
	ctx := context.Background()
	members := []*testMember{
		{name: "east", ranges: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}},
		{name: "west", ranges: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}},
	}
	clusterOf := map[string]string{}
	for _, m := range members {
		m.api = startMemberAPI(t)
		hubNS := testNamespace(t, hub, "member-"+m.name+"-")
		clusterOf[hubNS] = m.name
		runControllers(t, m.api.Config, m, &records.Publisher{Client: hub, Namespace: hubNS})
	}
	east, west := members[0], members[1]

	// The merge loop: which members are in the set is the test's to change.
	inSet := map[string]bool{"east": true, "west": true}
	var setMu sync.Mutex
	loopCtx, stopLoop := context.WithCancel(ctx)
	t.Cleanup(stopLoop)
	go func() {
		for loopCtx.Err() == nil {
			setMu.Lock()
			var ms []mcs.Member
			for _, m := range members {
				if inSet[m.name] {
					ms = append(ms, mcs.Member{Name: m.name, LastSeen: time.Now(), PodCIDRs: m.ranges})
				}
			}
			setMu.Unlock()
			recs, err := records.Collect(loopCtx, hub, clusterOf)
			if err == nil {
				for _, m := range members {
					res := mcs.Merge(recs, ms, mcs.Options{Now: time.Now(), LocalCluster: m.name})
					m.imp.SetImports(res)
					m.exp.SetConflicts(export.ConflictsOf(res, m.name))
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	// The same namespace in both members; east exports first.
	for _, m := range members {
		c := m.api.Client
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}
		if err := c.Create(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	exportService := func(m *testMember, ports []corev1.ServicePort, affinity corev1.ServiceAffinity, addr string) {
		t.Helper()
		c := m.api.Client
		svc := clusterIPService("shop", "api", ports...)
		svc.Spec.SessionAffinity = affinity
		if err := c.Create(ctx, svc); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, endpointSlice("shop", "api", "api-"+m.name, 8080, map[string]bool{addr: true})); err != nil {
			t.Fatal(err)
		}
		if err := c.Create(ctx, serviceExport("shop", "api")); err != nil {
			t.Fatal(err)
		}
	}
	http := corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}
	exportService(east, []corev1.ServicePort{http}, corev1.ServiceAffinityNone, "10.1.0.5")

	importIn := func(m *testMember, what string, check func(*mcsv1beta1.ServiceImport, map[string][]string) error) {
		t.Helper()
		eventually(t, 20*time.Second, what+" in "+m.name, func() error {
			si, err := getImport(m.api.Client, "shop", "api")
			if err != nil {
				return err
			}
			sl, err := importSlices(m.api.Client, "shop", "api")
			if err != nil {
				return err
			}
			return check(si, sl)
		})
	}
	for _, m := range members {
		importIn(m, "east's export", func(si *mcsv1beta1.ServiceImport, sl map[string][]string) error {
			if si.Spec.Type != mcsv1beta1.ClusterSetIP || len(si.Spec.IPs) != 1 || !slices.Equal(clustersOf(si), []string{"east"}) || fmt.Sprint(sl) != "map[east:[10.1.0.5 http:8080]]" {
				return fmt.Errorf("import %+v %+v slices %v", si.Spec, si.Status, sl)
			}
			return nil
		})
	}
	waitCondition(t, east.api.Client, "shop", "api", "Ready", metav1.ConditionTrue, "Exported")
	waitCondition(t, east.api.Client, "shop", "api", "Conflict", metav1.ConditionFalse, "NoConflicts")
	eastUID := func() map[string]string {
		out := map[string]string{}
		for _, m := range members {
			si, _ := getImport(m.api.Client, "shop", "api")
			out[m.name] = string(si.UID)
		}
		return out
	}()

	// West exports later with one more port and ClientIP affinity: the
	// union of ports, east's affinity (older), Conflict on both exports.
	time.Sleep(1100 * time.Millisecond) // a later creation time, to the second
	exportService(west, []corev1.ServicePort{http, {Name: "metrics", Protocol: corev1.ProtocolTCP, Port: 9090}}, corev1.ServiceAffinityClientIP, "10.2.0.7")
	for _, m := range members {
		importIn(m, "the union", func(si *mcsv1beta1.ServiceImport, sl map[string][]string) error {
			if len(si.Spec.Ports) != 2 || si.Spec.SessionAffinity != corev1.ServiceAffinityNone || !slices.Equal(clustersOf(si), []string{"east", "west"}) || len(sl) != 2 {
				return fmt.Errorf("import %+v %+v slices %v", si.Spec, si.Status, sl)
			}
			return nil
		})
	}
	for _, m := range members {
		eventually(t, 20*time.Second, "Conflict on "+m.name+"'s export", func() error {
			cond, err := condition(t, m.api.Client, "shop", "api", "Conflict")
			if err != nil {
				return err
			}
			if cond == nil || cond.Status != metav1.ConditionTrue || cond.Reason != "PortConflict,SessionAffinityConflict" || !strings.Contains(cond.Message, "ClientIP in west") {
				return fmt.Errorf("condition %+v", cond)
			}
			return nil
		})
	}

	// West leaves the set: its endpoints are withdrawn everywhere.
	setMu.Lock()
	inSet["west"] = false
	setMu.Unlock()
	for _, m := range members {
		importIn(m, "west withdrawn", func(si *mcsv1beta1.ServiceImport, sl map[string][]string) error {
			if !slices.Equal(clustersOf(si), []string{"east"}) || len(sl) != 1 || sl["east"] == nil {
				return fmt.Errorf("clusters %v slices %v", clustersOf(si), sl)
			}
			return nil
		})
		if si, _ := getImport(m.api.Client, "shop", "api"); string(si.UID) != eastUID[m.name] {
			t.Errorf("the ServiceImport in %s was recreated", m.name)
		}
	}

	// East unexports: nobody exports, the imports go.
	if err := east.api.Client.Delete(ctx, serviceExport("shop", "api")); err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		eventually(t, 20*time.Second, "import gone in "+m.name, func() error {
			if _, err := getImport(m.api.Client, "shop", "api"); !apierrors.IsNotFound(err) {
				return fmt.Errorf("ServiceImport: %v", err)
			}
			return nil
		})
	}
}
