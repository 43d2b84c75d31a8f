package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

func i32(v int32) *int32 { return &v }

func newFakeHub(t *testing.T, objs ...client.Object) (client.Client, *MemberClusterReconciler, *time.Time) {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	if err := meshv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	c := fake.NewClientBuilder().WithScheme(s).
		WithStatusSubresource(&meshv1.MemberCluster{}, &meshv1.ClusterSet{}, &meshv1.TunnelGateway{}).
		WithIndex(&meshv1.MemberCluster{}, IndexClusterSet, func(o client.Object) []string {
			return []string{o.(*meshv1.MemberCluster).Spec.ClusterSet}
		}).
		WithIndex(&meshv1.TunnelGateway{}, IndexPublicKey, indexPublicKey).
		WithIndex(&meshv1.MemberCluster{}, IndexPublishedKey, indexPublishedKey).
		WithObjects(objs...).Build()
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	ledger := &BlockLedger{Client: c, Reader: c, Now: func() time.Time { return now }}
	r := &MemberClusterReconciler{Client: c, Ledger: ledger, Recorder: events.NewFakeRecorder(100), PeerDrainTimeout: time.Minute,
		HeartbeatStaleAfter: DefaultHeartbeatStaleAfter, Now: func() time.Time { return now }}
	return c, r, &now
}

func reconcileMember(t *testing.T, r *MemberClusterReconciler, name string) ctrl.Result {
	t.Helper()
	res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Name: name}})
	if err != nil {
		t.Fatalf("reconcile %s: %v", name, err)
	}
	return res
}

func getMemberFake(t *testing.T, c client.Client, name string) *meshv1.MemberCluster {
	t.Helper()
	m := &meshv1.MemberCluster{}
	if err := c.Get(context.Background(), client.ObjectKey{Name: name}, m); err != nil {
		t.Fatalf("get %s: %v", name, err)
	}
	return m
}

func prodSet() *meshv1.ClusterSet {
	return &meshv1.ClusterSet{
		ObjectMeta: metav1.ObjectMeta{Name: "prod"},
		Spec: meshv1.ClusterSetSpec{
			PodCIDRPools:      []meshv1.CIDR{"10.64.0.0/14"},
			BlockSize:         meshv1.BlockSize{IPv4: 16, IPv6: 64},
			QuarantineSeconds: i32(60),
		},
	}
}

func TestReconcileAssignsAndConfines(t *testing.T) {
	c, r, _ := newFakeHub(t, prodSet(),
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "west"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod", PodCIDRs: []meshv1.CIDR{"10.66.0.0/16"}}},
	)
	reconcileMember(t, r, "east")
	reconcileMember(t, r, "west")
	east, west := getMemberFake(t, c, "east"), getMemberFake(t, c, "west")
	if got := east.Status.PodCIDRs; len(got) != 1 || got[0] != "10.64.0.0/16" {
		t.Errorf("east got %v, want the lowest block", got)
	}
	if got := west.Status.PodCIDRs; len(got) != 1 || got[0] != "10.66.0.0/16" {
		t.Errorf("west got %v, want its requested range", got)
	}
	if c := meta.FindStatusCondition(west.Status.Conditions, meshv1.MemberCIDRAllocated); c.Reason != meshv1.ReasonAdopted {
		t.Errorf("west CIDRAllocated %+v", c)
	}
	if len(east.Finalizers) != 1 || east.Status.Namespace != "member-east" || east.Status.ServiceAccount != MemberServiceAccount {
		t.Errorf("east: finalizers %v namespace %q sa %q", east.Finalizers, east.Status.Namespace, east.Status.ServiceAccount)
	}
	// Its namespace and RBAC exist, bound to its ServiceAccount only.
	ctx := context.Background()
	rb := &rbacv1.RoleBinding{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "member-east", Name: memberRoleName}, rb); err != nil {
		t.Fatal(err)
	}
	if len(rb.Subjects) != 1 || rb.Subjects[0].Namespace != "member-east" || rb.Subjects[0].Name != MemberServiceAccount {
		t.Errorf("rolebinding subjects %+v", rb.Subjects)
	}
	role := &rbacv1.Role{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "member-east", Name: memberRoleName}, role); err != nil {
		t.Fatal(err)
	}
	for _, rule := range role.Rules {
		for _, res := range rule.Resources {
			switch res {
			case "tunnelgateways", "tunnelgateways/status", "exportedservices":
			case "serviceaccounts/token":
				// Renewal of its own token only.
				if len(rule.ResourceNames) != 1 || rule.ResourceNames[0] != MemberServiceAccount || len(rule.Verbs) != 1 || rule.Verbs[0] != "create" {
					t.Errorf("member role grants %v on serviceaccounts/token %v, want only create on %s", rule.Verbs, rule.ResourceNames, MemberServiceAccount)
				}
			default:
				t.Errorf("member role grants %s", res)
			}
		}
	}
	// Cluster-wide it reads its own MemberCluster and ClusterSet, by name only.
	cr := &rbacv1.ClusterRole{}
	if err := c.Get(ctx, client.ObjectKey{Name: memberClusterRoleBinding("east")}, cr); err != nil {
		t.Fatal(err)
	}
	for _, rule := range cr.Rules {
		for _, v := range rule.Verbs {
			if v != "get" && v != "list" && v != "watch" {
				t.Errorf("member cluster role grants %s", v)
			}
		}
		want := map[string]string{"memberclusters": "east", "clustersets": "prod"}[rule.Resources[0]]
		if len(rule.Resources) != 1 || len(rule.ResourceNames) != 1 || rule.ResourceNames[0] != want {
			t.Errorf("member cluster role rule %+v, want one resource, named %q", rule, want)
		}
	}
	// In its set's namespace it reads the peer directory.
	srb := &rbacv1.RoleBinding{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: SetNamespace("prod"), Name: memberClusterRoleBinding("east")}, srb); err != nil {
		t.Fatal(err)
	}
	if srb.RoleRef.Name != peerReaderRole || len(srb.Subjects) != 1 || srb.Subjects[0].Namespace != "member-east" {
		t.Errorf("set rolebinding %+v", srb)
	}
	// Its gateways are bounded.
	quota := &corev1.ResourceQuota{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "member-east", Name: memberRoleName}, quota); err != nil {
		t.Fatal(err)
	}
	if n, ok := quota.Spec.Hard[GatewayQuotaResource]; !ok || n.Value() != MaxGatewaysPerMember || quota.Labels[labelManagedBy] != managedByHub {
		t.Errorf("quota %+v", quota)
	}
	if n, ok := quota.Spec.Hard[ExportedServiceQuotaResource]; !ok || n.Value() != MaxExportedServicesPerMember {
		t.Errorf("quota %+v: no bound on exported services", quota)
	}
	// Once both have seen each other, a further pass changes nothing.
	reconcileMember(t, r, "east")
	before := getMemberFake(t, c, "east")
	reconcileMember(t, r, "east")
	if after := getMemberFake(t, c, "east"); after.ResourceVersion != before.ResourceVersion {
		t.Errorf("a no-change pass wrote the member (rv %s -> %s)", before.ResourceVersion, after.ResourceVersion)
	}
}

func TestReconcileRefusalAssignsNothing(t *testing.T) {
	c, r, _ := newFakeHub(t, prodSet(),
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod", PodCIDRs: []meshv1.CIDR{"10.64.0.0/16"}}},
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "west"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod", PodCIDRs: []meshv1.CIDR{"10.64.0.0/16"}}},
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "far"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod", PodCIDRs: []meshv1.CIDR{"172.16.0.0/16"}}},
	)
	for _, n := range []string{"east", "west", "far"} {
		reconcileMember(t, r, n)
	}
	for name, reason := range map[string]string{"west": meshv1.ReasonConflict, "far": meshv1.ReasonOutsidePool} {
		m := getMemberFake(t, c, name)
		cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated)
		if cond.Status != metav1.ConditionFalse || cond.Reason != reason || len(m.Status.PodCIDRs) != 0 {
			t.Errorf("%s: %+v ranges %v, want %s and nothing assigned", name, cond, m.Status.PodCIDRs, reason)
		}
	}
	var claims meshv1.CIDRClaimList
	if err := c.List(context.Background(), &claims); err != nil {
		t.Fatal(err)
	}
	if len(claims.Items) != 1 || claims.Items[0].Spec.Member != "east" {
		t.Errorf("claims %+v, want only east's", claims.Items)
	}
}

func TestReconcileDeleteQuarantinesRange(t *testing.T) {
	c, r, _ := newFakeHub(t, prodSet(),
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
	)
	reconcileMember(t, r, "east")
	ctx := context.Background()
	if err := c.Delete(ctx, getMemberFake(t, c, "east")); err != nil {
		t.Fatal(err)
	}
	reconcileMember(t, r, "east")
	if err := c.Get(ctx, client.ObjectKey{Name: "east"}, &meshv1.MemberCluster{}); err == nil {
		t.Errorf("member still there after its finalizer pass")
	}
	claim := &meshv1.CIDRClaim{}
	if err := c.Get(ctx, client.ObjectKey{Name: "prod.v4-10-64-0-0-16"}, claim); err != nil {
		t.Fatalf("the released block's claim is gone at once: %v", err)
	}
	if claim.Spec.ReleasedAt == nil {
		t.Errorf("claim not marked released: %+v", claim.Spec)
	}
	if err := c.Get(ctx, client.ObjectKey{Name: "member-east"}, &corev1.Namespace{}); err == nil {
		t.Errorf("member namespace left behind")
	}
}

func TestReconcileGatewayValidation(t *testing.T) {
	ns := "member-east"
	c, r, _ := newFakeHub(t, prodSet(),
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{meshv1.LabelMember: "east", labelManagedBy: managedByHub}}},
		&meshv1.TunnelGateway{ObjectMeta: metav1.ObjectMeta{Name: "gw-1", Namespace: ns}, Spec: meshv1.TunnelGatewaySpec{NodeName: "n1", PublicKey: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", Endpoints: []string{"192.0.2.1:51820"}, Active: true}},
		&meshv1.TunnelGateway{ObjectMeta: metav1.ObjectMeta{Name: "gw-2", Namespace: ns}, Spec: meshv1.TunnelGatewaySpec{NodeName: "n2", PublicKey: "short"}},
	)
	reconcileMember(t, r, "east")
	m := getMemberFake(t, c, "east")
	if len(m.Status.Gateways) != 1 || m.Status.Gateways[0].Node != "n1" || m.Status.ActiveGateway != "n1" {
		t.Errorf("gateways %+v active %q", m.Status.Gateways, m.Status.ActiveGateway)
	}
	if cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberGatewaysValid); cond.Status != metav1.ConditionFalse {
		t.Errorf("GatewaysValid %+v", cond)
	}
	gw := &meshv1.TunnelGateway{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "gw-2"}, gw); err != nil {
		t.Fatal(err)
	}
	if cond := meta.FindStatusCondition(gw.Status.Conditions, meshv1.TunnelGatewayValid); cond == nil || cond.Status != metav1.ConditionFalse {
		t.Errorf("invalid gateway's condition %+v", cond)
	}
}

const keyEast = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="

// keyOf is a member's WireGuard public key in these tests: keyEast for east,
// one of its own for every other member (the hub refuses a key that
// another member already publishes).
func keyOf(member string) string {
	if member == "east" {
		return keyEast
	}
	sum := sha256.Sum256([]byte(member))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// activeGateway is member's active gateway on node, with its heartbeat at seen.
func activeGateway(member, node string, seen time.Time, dropped ...string) *meshv1.TunnelGateway {
	return &meshv1.TunnelGateway{
		ObjectMeta: metav1.ObjectMeta{Name: node, Namespace: MemberNamespace(member)},
		Spec:       meshv1.TunnelGatewaySpec{NodeName: node, PublicKey: keyOf(member), Endpoints: []string{"192.0.2.1:51820"}, Active: true},
		Status:     meshv1.TunnelGatewayStatus{LastSeen: &metav1.Time{Time: seen}, DroppedPeers: dropped},
	}
}

func memberNS(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MemberNamespace(name), Labels: map[string]string{meshv1.LabelMember: name, labelManagedBy: managedByHub}}}
}

func getPeer(t *testing.T, c client.Client, set, name string) *meshv1.ClusterSetPeer {
	t.Helper()
	p := &meshv1.ClusterSetPeer{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: SetNamespace(set), Name: name}, p); err != nil {
		t.Fatalf("get peer %s: %v", name, err)
	}
	return p
}

// The directory entry carries the persisted ranges and the active gateway,
// and is written only when they change: not by a pass that changes
// nothing, not by a heartbeat.
func TestReconcileWritesPeerDirectory(t *testing.T) {
	c, r, now := newFakeHub(t, prodSet(),
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		memberNS("east"), activeGateway("east", "n1", time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)),
	)
	reconcileMember(t, r, "east")
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: SetNamespace("prod"), Name: "east"}, &meshv1.ClusterSetPeer{}); err == nil {
		t.Error("the directory announced a range before the member's status held it")
	}
	reconcileMember(t, r, "east")
	p := getPeer(t, c, "prod", "east")
	if len(p.Spec.PodCIDRs) != 1 || p.Spec.PodCIDRs[0] != "10.64.0.0/16" || p.Spec.Gateway == nil ||
		p.Spec.Gateway.Node != "n1" || p.Spec.Gateway.PublicKey != keyEast || p.Spec.Gateway.Endpoints[0] != "192.0.2.1:51820" || p.Spec.Withdrawn {
		t.Fatalf("peer %+v", p.Spec)
	}
	// A heartbeat 30 s later and another pass: nothing is written.
	*now = now.Add(30 * time.Second)
	gw := &meshv1.TunnelGateway{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "member-east", Name: "n1"}, gw); err != nil {
		t.Fatal(err)
	}
	gw.Status.LastSeen = &metav1.Time{Time: *now}
	if err := c.Status().Update(context.Background(), gw); err != nil {
		t.Fatal(err)
	}
	m := getMemberFake(t, c, "east")
	reconcileMember(t, r, "east")
	if got := getPeer(t, c, "prod", "east"); got.ResourceVersion != p.ResourceVersion {
		t.Errorf("peer rewritten without a change (rv %s -> %s)", p.ResourceVersion, got.ResourceVersion)
	}
	if got := getMemberFake(t, c, "east"); got.ResourceVersion != m.ResourceVersion {
		t.Errorf("member status rewritten by a heartbeat (rv %s -> %s)", m.ResourceVersion, got.ResourceVersion)
	}
	// An endpoint change reaches the directory.
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "member-east", Name: "n1"}, gw); err != nil {
		t.Fatal(err)
	}
	gw.Spec.Endpoints = []string{"192.0.2.99:51820"}
	if err := c.Update(context.Background(), gw); err != nil {
		t.Fatal(err)
	}
	reconcileMember(t, r, "east")
	if got := getPeer(t, c, "prod", "east"); got.Spec.Gateway == nil || got.Spec.Gateway.Endpoints[0] != "192.0.2.99:51820" {
		t.Errorf("endpoint change not in the directory: %+v", got.Spec.Gateway)
	}
}

// A deleted member is withdrawn first; its ranges are released once every
// live peer dropped it. A peer whose heartbeat is stale is not waited for.
func TestReconcileDeleteWaitsForLivePeers(t *testing.T) {
	start := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	c, r, now := newFakeHub(t, prodSet(),
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "west"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "dead"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		memberNS("east"), memberNS("west"), memberNS("dead"),
		activeGateway("east", "e1", start), activeGateway("west", "w1", start),
		activeGateway("dead", "d1", start.Add(-time.Hour)),
	)
	r.PeerDrainTimeout = time.Hour
	for range 2 {
		for _, n := range []string{"east", "west", "dead"} {
			reconcileMember(t, r, n)
		}
	}
	ctx := context.Background()
	if err := c.Delete(ctx, getMemberFake(t, c, "east")); err != nil {
		t.Fatal(err)
	}
	// The fake API server stamps deletion with the wall clock.
	*now = getMemberFake(t, c, "east").DeletionTimestamp.Time
	for _, gw := range []string{"w1", "e1"} {
		g := &meshv1.TunnelGateway{}
		ns := map[string]string{"w1": "member-west", "e1": "member-east"}[gw]
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: gw}, g); err != nil {
			t.Fatal(err)
		}
		g.Status.LastSeen = &metav1.Time{Time: *now}
		if err := c.Status().Update(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	res := reconcileMember(t, r, "east")
	if res.RequeueAfter == 0 {
		t.Error("no requeue while a live peer has not dropped the member")
	}
	if !getPeer(t, c, "prod", "east").Spec.Withdrawn {
		t.Fatal("member not withdrawn from the directory")
	}
	if m := getMemberFake(t, c, "east"); len(m.Finalizers) == 0 {
		t.Fatal("ranges released before the live peer west dropped the member")
	}
	// west acknowledges; dead never does, and is not waited for.
	g := &meshv1.TunnelGateway{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "member-west", Name: "w1"}, g); err != nil {
		t.Fatal(err)
	}
	g.Status.DroppedPeers = []string{"east"}
	if err := c.Status().Update(ctx, g); err != nil {
		t.Fatal(err)
	}
	reconcileMember(t, r, "east")
	if err := c.Get(ctx, client.ObjectKey{Name: "east"}, &meshv1.MemberCluster{}); err == nil {
		t.Error("member still there after every live peer dropped it")
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: SetNamespace("prod"), Name: "east"}, &meshv1.ClusterSetPeer{}); err == nil {
		t.Error("directory entry of the removed member left behind")
	}
	claim := &meshv1.CIDRClaim{}
	if err := c.Get(ctx, client.ObjectKey{Name: "prod.v4-10-64-0-0-16"}, claim); err != nil || claim.Spec.ReleasedAt == nil {
		t.Errorf("east's block not released into quarantine: %+v %v", claim.Spec, err)
	}
}

// The drain timeout bounds the wait for a live peer that never acknowledges.
func TestReconcileDeleteDrainTimeout(t *testing.T) {
	start := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	c, r, now := newFakeHub(t, prodSet(),
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "west"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		memberNS("east"), memberNS("west"), activeGateway("east", "e1", start), activeGateway("west", "w1", start),
	)
	for range 2 {
		for _, n := range []string{"east", "west"} {
			reconcileMember(t, r, n)
		}
	}
	ctx := context.Background()
	if err := c.Delete(ctx, getMemberFake(t, c, "east")); err != nil {
		t.Fatal(err)
	}
	del := getMemberFake(t, c, "east").DeletionTimestamp.Time
	g := &meshv1.TunnelGateway{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "member-west", Name: "w1"}, g); err != nil {
		t.Fatal(err)
	}
	*now = del.Add(r.PeerDrainTimeout + time.Second)
	g.Status.LastSeen = &metav1.Time{Time: *now}
	if err := c.Status().Update(ctx, g); err != nil {
		t.Fatal(err)
	}
	reconcileMember(t, r, "east")
	if err := c.Get(ctx, client.ObjectKey{Name: "east"}, &meshv1.MemberCluster{}); err == nil {
		t.Error("member still there after the drain timeout")
	}
}

// A quota the quota controller took in before it watched TunnelGateways
// (status.hard without status.used) refuses every gateway create until the
// controller's next full resync. Once it is older than quotaUncountedAfter
// the hub lowers its limit by one (a spec change makes the controller
// recount) and the next pass restores it; the quota is never deleted, so it
// is enforced throughout. Counted and young quotas are left alone, and
// nudges are spaced by quotaUncountedAfter.
func TestReconcileNudgesUncountedQuota(t *testing.T) {
	c, r, now := newFakeHub(t, prodSet(),
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}})
	ctx := context.Background()
	reconcileMember(t, r, "east")
	key := client.ObjectKey{Namespace: "member-east", Name: memberRoleName}
	get := func() *corev1.ResourceQuota {
		q := &corev1.ResourceQuota{}
		if err := c.Get(ctx, key, q); err != nil {
			t.Fatal(err)
		}
		return q
	}
	limitOf := func(q *corev1.ResourceQuota) int64 {
		n := q.Spec.Hard[GatewayQuotaResource]
		return n.Value()
	}
	limit := *resource.NewQuantity(MaxGatewaysPerMember, resource.DecimalSI)
	setStatus := func(used bool) {
		q := get()
		q.CreationTimestamp = metav1.NewTime(*now)
		q.Status = corev1.ResourceQuotaStatus{Hard: corev1.ResourceList{GatewayQuotaResource: limit}}
		if used {
			q.Status.Used = corev1.ResourceList{GatewayQuotaResource: *resource.NewQuantity(1, resource.DecimalSI)}
		}
		if err := c.Update(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// watchLimits records every limit the quota had, pass by pass.
	var limits []int64
	pass := func() {
		reconcileMember(t, r, "east")
		limits = append(limits, limitOf(get()))
	}

	// No status at all (no quota controller): left alone.
	*now = now.Add(time.Hour)
	pass()
	// Counted: left alone however old.
	setStatus(true)
	*now = now.Add(time.Hour)
	pass()
	// Taken in but not counted, and young: a pass comes back for it.
	setStatus(false)
	if res := reconcileMember(t, r, "east"); res.RequeueAfter <= 0 || res.RequeueAfter > quotaUncountedAfter+time.Second {
		t.Errorf("young uncounted quota: requeue after %v, want within %v", res.RequeueAfter, quotaUncountedAfter+time.Second)
	}
	limits = append(limits, limitOf(get()))
	if !slices.Equal(limits, []int64{MaxGatewaysPerMember, MaxGatewaysPerMember, MaxGatewaysPerMember}) {
		t.Fatalf("limits %v before the quota was old enough, want %d each time", limits, MaxGatewaysPerMember)
	}
	// Older than quotaUncountedAfter: lowered by one, then restored; a
	// further pass within quotaUncountedAfter does not nudge again.
	*now = now.Add(quotaUncountedAfter + time.Second)
	limits = nil
	pass()
	pass()
	pass()
	if want := []int64{MaxGatewaysPerMember - 1, MaxGatewaysPerMember, MaxGatewaysPerMember}; !slices.Equal(limits, want) {
		t.Errorf("limits pass by pass %v, want %v", limits, want)
	}
	// Still uncounted a while later: nudged again.
	*now = now.Add(quotaUncountedAfter + time.Second)
	limits = nil
	pass()
	pass()
	if want := []int64{MaxGatewaysPerMember - 1, MaxGatewaysPerMember}; !slices.Equal(limits, want) {
		t.Errorf("second nudge: limits %v, want %v", limits, want)
	}
}

// A gateway's droppedPeers are written by its member: the hub follows only
// the names of members being deleted in the gateway's own ClusterSet, so a
// member listing every name it can guess makes the hub reconcile no one else.
func TestDrainAcknowledgementsOnlyForOwnSetWithdrawals(t *testing.T) {
	deleting := func(name, set string) *meshv1.MemberCluster {
		return &meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: name, Finalizers: []string{"test"}, DeletionTimestamp: &metav1.Time{Time: time.Now()}},
			Spec: meshv1.MemberClusterSpec{ClusterSet: set}}
	}
	other := &meshv1.ClusterSet{ObjectMeta: metav1.ObjectMeta{Name: "other"}}
	_, r, _ := newFakeHub(t, prodSet(), other,
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "north"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		deleting("leaving", "prod"),
		deleting("elsewhere", "other"),
	)
	reconcileMember(t, r, "east") // its namespace, labelled with its name
	gw := &meshv1.TunnelGateway{ObjectMeta: metav1.ObjectMeta{Name: "gw", Namespace: MemberNamespace("east")}}
	got := r.drainsAcknowledged(context.Background(), gw, []string{"leaving", "north", "elsewhere", "nobody", "east"})
	if !slices.Equal(got, []string{"leaving"}) {
		t.Errorf("drains followed: %v, want only [leaving] (being deleted, same set)", got)
	}
	// A gateway outside any member's namespace is followed for no one.
	if got := r.drainsAcknowledged(context.Background(), &meshv1.TunnelGateway{ObjectMeta: metav1.ObjectMeta{Name: "gw", Namespace: "default"}}, []string{"leaving"}); len(got) != 0 {
		t.Errorf("gateway outside member namespaces: %v", got)
	}
}
