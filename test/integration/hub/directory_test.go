package hub

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// waitNamespace waits until the hub gave member its namespace.
func waitNamespace(t testing.TB, c client.Client, member string) {
	t.Helper()
	eventually(t, 20*time.Second, "namespace of "+member, func() error {
		if getMember(t, c, member).Status.Namespace == "" {
			return fmt.Errorf("no namespace in status")
		}
		return nil
	})
}

func getPeer(c client.Client, set, name string) (*meshv1.ClusterSetPeer, error) {
	p := &meshv1.ClusterSetPeer{}
	err := c.Get(context.Background(), client.ObjectKey{Namespace: controllers.SetNamespace(set), Name: name}, p)
	return p, err
}

// A member reads its own MemberCluster and ClusterSet and its own set's
// peer directory; not other members, not other sets, not another set's
// directory (tenants of one hub do not see each other).
func TestPeerDirectoryIsolation(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	ctx := context.Background()
	create(t, c, framework.NewClusterSet("iso-a", []string{"10.160.0.0/13"}))
	create(t, c, framework.NewClusterSet("iso-b", []string{"10.168.0.0/13"}))
	for _, m := range [][2]string{{"iso-a1", "iso-a"}, {"iso-a2", "iso-a"}, {"iso-b1", "iso-b"}} {
		create(t, c, framework.NewMember(m[0], m[1]))
		waitAssigned(t, c, m[0], 20*time.Second)
		waitNamespace(t, c, m[0])
	}
	for _, m := range [][2]string{{"iso-a1", "iso-a"}, {"iso-a2", "iso-a"}, {"iso-b1", "iso-b"}} {
		eventually(t, 20*time.Second, "directory entry of "+m[0], func() error {
			_, err := getPeer(c, m[1], m[0])
			return err
		})
	}
	a1 := asMember(t, "iso-a1")
	setA, setB := controllers.SetNamespace("iso-a"), controllers.SetNamespace("iso-b")

	// RBAC objects are created asynchronously; wait until a1 may read its directory.
	eventually(t, 20*time.Second, "iso-a1 lists its set's directory", func() error {
		var l meshv1.ClusterSetPeerList
		if err := a1.List(ctx, &l, client.InNamespace(setA)); err != nil {
			return err
		}
		if len(l.Items) != 2 {
			return fmt.Errorf("%d peers, want 2", len(l.Items))
		}
		return nil
	})
	byName := func(name string) client.ListOption {
		return client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", name)}
	}
	allowed := []struct {
		name string
		do   func() error
	}{
		{"get its own MemberCluster", func() error { return a1.Get(ctx, client.ObjectKey{Name: "iso-a1"}, &meshv1.MemberCluster{}) }},
		{"list its own MemberCluster by name", func() error { return a1.List(ctx, &meshv1.MemberClusterList{}, byName("iso-a1")) }},
		{"get its own ClusterSet", func() error { return a1.Get(ctx, client.ObjectKey{Name: "iso-a"}, &meshv1.ClusterSet{}) }},
		{"list its own ClusterSet by name", func() error { return a1.List(ctx, &meshv1.ClusterSetList{}, byName("iso-a")) }},
		{"get a peer of its set", func() error {
			return a1.Get(ctx, client.ObjectKey{Namespace: setA, Name: "iso-a2"}, &meshv1.ClusterSetPeer{})
		}},
	}
	for _, f := range allowed {
		t.Run("allowed: "+f.name, func(t *testing.T) {
			if err := f.do(); err != nil {
				t.Errorf("refused: %v", err)
			}
		})
	}
	forbidden := []struct {
		name string
		do   func() error
	}{
		{"list all MemberClusters", func() error { return a1.List(ctx, &meshv1.MemberClusterList{}) }},
		{"get a peer's MemberCluster", func() error { return a1.Get(ctx, client.ObjectKey{Name: "iso-a2"}, &meshv1.MemberCluster{}) }},
		{"get another set's member", func() error { return a1.Get(ctx, client.ObjectKey{Name: "iso-b1"}, &meshv1.MemberCluster{}) }},
		{"list another member by name", func() error { return a1.List(ctx, &meshv1.MemberClusterList{}, byName("iso-b1")) }},
		{"list all ClusterSets", func() error { return a1.List(ctx, &meshv1.ClusterSetList{}) }},
		{"get another ClusterSet", func() error { return a1.Get(ctx, client.ObjectKey{Name: "iso-b"}, &meshv1.ClusterSet{}) }},
		{"list another set's directory", func() error { return a1.List(ctx, &meshv1.ClusterSetPeerList{}, client.InNamespace(setB)) }},
		{"get another set's peer", func() error {
			return a1.Get(ctx, client.ObjectKey{Namespace: setB, Name: "iso-b1"}, &meshv1.ClusterSetPeer{})
		}},
		{"list every set's directory", func() error { return a1.List(ctx, &meshv1.ClusterSetPeerList{}) }},
		{"write its own directory entry", func() error {
			p, err := getPeer(c, "iso-a", "iso-a1")
			if err != nil {
				return err
			}
			p.Spec.PodCIDRs = []string{"10.168.0.0/16"}
			return a1.Update(ctx, p)
		}},
		{"create a directory entry", func() error {
			return a1.Create(ctx, &meshv1.ClusterSetPeer{ObjectMeta: metav1.ObjectMeta{Name: "evil", Namespace: setA},
				Spec: meshv1.ClusterSetPeerSpec{PodCIDRs: []string{"10.168.0.0/16"}}})
		}},
		{"delete a peer's directory entry", func() error {
			return a1.Delete(ctx, &meshv1.ClusterSetPeer{ObjectMeta: metav1.ObjectMeta{Name: "iso-a2", Namespace: setA}})
		}},
	}
	for _, f := range forbidden {
		t.Run("forbidden: "+f.name, func(t *testing.T) {
			if err := f.do(); !apierrors.IsForbidden(err) {
				t.Errorf("got %v, want Forbidden", err)
			}
		})
	}

	// Watches: the same rules hold (an agent holds watches, not lists).
	w := watcher(t, "iso-a1")
	for _, tc := range []struct {
		name    string
		list    client.ObjectList
		opts    []client.ListOption
		allowed bool
	}{
		{"its set's directory", &meshv1.ClusterSetPeerList{}, []client.ListOption{client.InNamespace(setA)}, true},
		{"its own MemberCluster by name", &meshv1.MemberClusterList{}, []client.ListOption{byName("iso-a1")}, true},
		{"its own ClusterSet by name", &meshv1.ClusterSetList{}, []client.ListOption{byName("iso-a")}, true},
		{"another set's directory", &meshv1.ClusterSetPeerList{}, []client.ListOption{client.InNamespace(setB)}, false},
		{"all MemberClusters", &meshv1.MemberClusterList{}, nil, false},
		{"another set's member by name", &meshv1.MemberClusterList{}, []client.ListOption{byName("iso-b1")}, false},
	} {
		t.Run("watch "+tc.name, func(t *testing.T) {
			wi, err := w.Watch(ctx, tc.list, tc.opts...)
			if tc.allowed {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				wi.Stop()
				return
			}
			if err == nil {
				wi.Stop()
			}
			if !apierrors.IsForbidden(err) {
				t.Errorf("got %v, want Forbidden", err)
			}
		})
	}
}

func watcher(t *testing.T, member string) client.WithWatch {
	t.Helper()
	cfg := rest.CopyConfig(api.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: fmt.Sprintf("system:serviceaccount:%s:%s", controllers.MemberNamespace(member), controllers.MemberServiceAccount),
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + controllers.MemberNamespace(member), "system:authenticated"},
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// writeCounter counts the API writes of one client config, by method and
// path. A write the API server refused (a conflict: the pass read an old
// object and will come back) is not counted, as it stores nothing.
type writeCounter struct {
	mu      sync.Mutex
	writes  []string
	refused int
}

func (w *writeCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		if req.Method != http.MethodGet {
			w.mu.Lock()
			if err == nil && resp.StatusCode < 300 {
				w.writes = append(w.writes, req.Method+" "+req.URL.Path)
			} else {
				w.refused++
			}
			w.mu.Unlock()
		}
		return resp, err
	})
}

// take returns the writes counted since the last take and starts afresh.
func (w *writeCounter) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.writes
	w.writes = nil
	return out
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// countingHub starts the hub with every API request it makes counted.
func countingHub(t testing.TB, opts controllers.Options) *writeCounter {
	t.Helper()
	wc := &writeCounter{}
	cfg := rest.CopyConfig(api.Config)
	cfg.WrapTransport = wc.wrap
	framework.StartHub(t, cfg, opts)
	return wc
}

// quiet waits until the hub has made no write for a second and returns
// what it wrote until then.
func (w *writeCounter) quiet(t testing.TB, timeout time.Duration) []string {
	t.Helper()
	var all []string
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		time.Sleep(time.Second)
		got := w.take()
		all = append(all, got...)
		if len(got) == 0 {
			return all
		}
	}
	t.Fatalf("hub still writing after %s: last writes %v", timeout, all[max(0, len(all)-10):])
	return nil
}

// simulatedSet makes a set of n members, each with one active gateway that
// reports every peer up and beats, and waits until the hub settled.
func simulatedSet(t testing.TB, c client.Client, set, pool string, n int) []string {
	t.Helper()
	names := simulatedMembers(t, c, set, pool, n)
	simulatedGateways(t, c, set, names)
	return names
}

// simulatedMembers makes a set of n members and waits for their ranges and namespaces.
func simulatedMembers(t testing.TB, c client.Client, set, pool string, n int) []string {
	t.Helper()
	create(t, c, framework.NewClusterSet(set, []string{pool}, framework.WithBlockSize(24, 0)))
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s-%03d", set, i)
		create(t, c, framework.NewMember(names[i], set))
	}
	for _, name := range names {
		waitAssigned(t, c, name, time.Minute)
		waitNamespace(t, c, name)
	}
	return names
}

// simulatedGateways gives every member one active gateway that reports every
// peer up and beats, as agents do, and waits until the hub settled.
func simulatedGateways(t testing.TB, c client.Client, set string, names []string) {
	t.Helper()
	n := len(names)
	for i, name := range names {
		create(t, c, gateway(name, "gw", "node-1", randomKey(t), fmt.Sprintf("192.0.2.%d:51820", 1+i%250)))
		heartbeat(t, c, name, "gw", func(st *meshv1.TunnelGatewayStatus) { st.PeersUp = int32(n - 1) })
	}
	eventually(t, time.Minute, "every member ready and connected, every gateway in the directory", func() error {
		for _, name := range names {
			m := getMember(t, c, name)
			if !meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.ConditionReady) || !meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.MemberConnected) {
				return fmt.Errorf("%s: %v", name, m.Status.Conditions)
			}
			p, err := getPeer(c, set, name)
			if err != nil || p.Spec.Gateway == nil {
				return fmt.Errorf("%s: directory entry %+v %v", name, p.Spec, err)
			}
		}
		return nil
	})
}

// Heartbeats alone make the hub write nothing; one endpoint change makes it
// write O(1): the gateway's status (its Valid condition's generation), the
// directory entry and the member's status.
func TestHubWritesPerChange(t *testing.T) {
	c := needAPI(t)
	wc := countingHub(t, controllers.Options{})
	const n = 12
	names := simulatedSet(t, c, "writes", "10.150.0.0/16", n)
	settle := wc.quiet(t, time.Minute)
	t.Logf("settling %d members took %d hub writes", n, len(settle))

	// Two rounds of heartbeats of every gateway.
	for range 2 {
		for _, name := range names {
			heartbeat(t, c, name, "gw", nil)
		}
		time.Sleep(1100 * time.Millisecond) // lastSeen has a resolution of 1 s
	}
	if got := wc.quiet(t, 30*time.Second); len(got) != 0 {
		t.Errorf("%d heartbeats made the hub write %d times: %v", 2*n, len(got), got)
	}

	// One endpoint change.
	gw := &meshv1.TunnelGateway{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: controllers.MemberNamespace(names[3]), Name: "gw"}, gw); err != nil {
		t.Fatal(err)
	}
	// A tunnel MTU below IPv6's minimum is refused, naming the field.
	bad := gw.DeepCopy()
	bad.Spec.MTU = 1000
	if err := c.Update(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "spec.mtu") {
		t.Errorf("TunnelGateway with spec.mtu 1000: err %v, want a refusal naming spec.mtu", err)
	}
	// The gateway moves and publishes its tunnel MTU in the same write.
	gw.Spec.Endpoints = []string{"198.51.100.7:51820"}
	gw.Spec.MTU = 1340
	if err := c.Update(context.Background(), gw); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "endpoint change in the directory", func() error {
		p, err := getPeer(c, "writes", names[3])
		if err != nil {
			return err
		}
		if p.Spec.Gateway == nil || !slices.Equal(p.Spec.Gateway.Endpoints, gw.Spec.Endpoints) || p.Spec.Gateway.MTU != 1340 {
			return fmt.Errorf("directory has %+v", p.Spec.Gateway)
		}
		return nil
	})
	got := wc.quiet(t, 30*time.Second)
	t.Logf("one endpoint change: %d hub writes: %v", len(got), got)
	peerWrites := 0
	for _, w := range got {
		if strings.Contains(w, "/clustersetpeers/") {
			peerWrites++
		}
	}
	if len(got) > 3 || peerWrites != 1 {
		t.Errorf("one endpoint change made %d hub writes (%d of the directory), want at most 3 with exactly 1 of the directory: %v", len(got), peerWrites, got)
	}
}

// A member whose agent stops beating turns AgentConnected=False
// (HeartbeatStale) once its newest heartbeat is older than the bound, and
// True again when the agent comes back.
func TestHeartbeatStale(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{HeartbeatStaleAfter: 3 * time.Second})
	create(t, c, framework.NewClusterSet("stale", []string{"10.151.0.0/16"}, framework.WithBlockSize(24, 0)))
	create(t, c, framework.NewMember("stale-a", "stale"))
	waitAssigned(t, c, "stale-a", 20*time.Second)
	waitNamespace(t, c, "stale-a")
	create(t, c, gateway("stale-a", "gw", "node-1", randomKey(t), "192.0.2.1:51820"))
	heartbeat(t, c, "stale-a", "gw", nil)
	waitCondition(t, c, "stale-a", meshv1.MemberAgentConnected, metav1.ConditionTrue, meshv1.ReasonGatewayPublished)

	// No more heartbeats: no event reaches the hub, its timer does.
	m := waitCondition(t, c, "stale-a", meshv1.MemberAgentConnected, metav1.ConditionFalse, meshv1.ReasonHeartbeatStale)
	cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberAgentConnected)
	if !strings.Contains(cond.Message, "last seen ") {
		t.Errorf("message %q does not say when the agent was last seen", cond.Message)
	}
	if meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.ConditionReady) {
		t.Error("a member with a stale agent is Ready")
	}
	// The data path keeps its last state: the directory entry stays.
	if p, err := getPeer(c, "stale", "stale-a"); err != nil || p.Spec.Gateway == nil || p.Spec.Withdrawn {
		t.Errorf("directory entry of a stale member: %+v %v", p.Spec, err)
	}
	heartbeat(t, c, "stale-a", "gw", nil)
	waitCondition(t, c, "stale-a", meshv1.MemberAgentConnected, metav1.ConditionTrue, meshv1.ReasonGatewayPublished)
}

// A deleted member's ranges wait for the live peer that has not
// acknowledged the drop, and not for a peer whose heartbeat is stale.
func TestDrainWaitsForLivePeersOnly(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{HeartbeatStaleAfter: time.Minute, PeerDrainTimeout: 5 * time.Minute})
	create(t, c, framework.NewClusterSet("drain", []string{"10.152.0.0/16"}, framework.WithBlockSize(24, 0)))
	for i, name := range []string{"drain-leaver", "drain-live", "drain-dead"} {
		create(t, c, framework.NewMember(name, "drain"))
		waitAssigned(t, c, name, 20*time.Second)
		waitNamespace(t, c, name)
		create(t, c, gateway(name, "gw", "node-1", randomKey(t), fmt.Sprintf("192.0.2.%d:51820", 10+i)))
		heartbeat(t, c, name, "gw", func(st *meshv1.TunnelGatewayStatus) {
			if name == "drain-dead" {
				st.LastSeen = &metav1.Time{Time: time.Now().Add(-time.Hour).Truncate(time.Second)}
			}
		})
		eventually(t, 20*time.Second, "directory entry of "+name, func() error {
			p, err := getPeer(c, "drain", name)
			if err == nil && p.Spec.Gateway == nil {
				err = fmt.Errorf("no gateway yet")
			}
			return err
		})
	}
	if err := c.Delete(context.Background(), getMember(t, c, "drain-leaver")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "leaver withdrawn from the directory", func() error {
		p, err := getPeer(c, "drain", "drain-leaver")
		if err == nil && !p.Spec.Withdrawn {
			err = fmt.Errorf("not withdrawn: %+v", p.Spec)
		}
		return err
	})
	time.Sleep(3 * time.Second)
	m := getMember(t, c, "drain-leaver")
	if len(m.Finalizers) == 0 {
		t.Fatal("finalizer gone before the live peer dropped the leaver")
	}
	if claims := claimsOf(t, c, "drain"); len(claims) != 3 {
		t.Fatalf("%d claims, want 3: the leaver's range was released while a live peer may still route it", len(claims))
	}

	// The live peer acknowledges; the dead one never will.
	heartbeat(t, c, "drain-live", "gw", func(st *meshv1.TunnelGatewayStatus) { st.DroppedPeers = []string{"drain-leaver"} })
	eventually(t, 20*time.Second, "leaver gone once the live peer dropped it", func() error {
		err := c.Get(context.Background(), client.ObjectKey{Name: "drain-leaver"}, &meshv1.MemberCluster{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	if _, err := getPeer(c, "drain", "drain-leaver"); !apierrors.IsNotFound(err) {
		t.Errorf("directory entry of the removed member: %v", err)
	}
	for _, cl := range claimsOf(t, c, "drain") {
		if cl.Spec.Member == "drain-leaver" && cl.Spec.ReleasedAt == nil {
			t.Errorf("leaver's claim %s not released", cl.Name)
		}
	}
}
