package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/agent/controlplane"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// applyConfigAgent creates every object of config/agent in the member
// apiserver and deletes them (but the Namespace) when t ends.
func applyConfigAgent(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, u := range configAgent(t) {
		err := member.Client.Create(ctx, u)
		switch {
		case apierrors.IsAlreadyExists(err):
			continue
		case err != nil:
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
		if u.GetKind() != "Namespace" {
			t.Cleanup(func() { _ = member.Client.Delete(context.Background(), u) })
		}
	}
}

// impersonate is a client that acts as the agent ServiceAccount sa, without
// the extras of a pod-bound token.
func impersonate(t *testing.T, sa string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(member.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + framework.MemberSystemNamespace + ":" + sa,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + framework.MemberSystemNamespace, "system:authenticated"},
	}
	c, err := client.New(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestOnlyTheGatewayWritesTheLease: workers and standbys route via the
// Lease holder, so a worker's agent that could write holderIdentity would
// draw the member's cross-cluster traffic to itself.
func TestOnlyTheGatewayWritesTheLease(t *testing.T) {
	needAPIServers(t)
	applyConfigAgent(t)
	ctx := context.Background()
	ns := framework.MemberSystemNamespace
	worker, gw := impersonate(t, "archipelago-agent"), impersonate(t, "archipelago-gateway")
	holder := func(l *coordinationv1.Lease, who string) *coordinationv1.Lease {
		l.Spec.HolderIdentity = ptr.To(who)
		return l
	}
	newLease := func(name string) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	}
	cleanup := func(name string) {
		t.Cleanup(func() { _ = member.Client.Delete(context.Background(), newLease(name)) })
	}
	// Agents of earlier tests (run as administrator) may have left one.
	if err := member.Client.Delete(ctx, newLease(controlplane.DefaultLeaseName)); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	cleanup(controlplane.DefaultLeaseName)

	if err := worker.Create(ctx, holder(newLease(controlplane.DefaultLeaseName), "w1")); !apierrors.IsForbidden(err) {
		t.Fatalf("a worker's agent creates the gateway Lease: got %v, want Forbidden", err)
	}
	l := holder(newLease(controlplane.DefaultLeaseName), "g1")
	if err := gw.Create(ctx, l); err != nil {
		t.Fatalf("a gateway candidate's agent cannot create the gateway Lease: %v", err)
	}
	// Workers follow the Lease: get, list, watch.
	key := client.ObjectKeyFromObject(l)
	if err := worker.Get(ctx, key, &coordinationv1.Lease{}); err != nil {
		t.Errorf("a worker's agent cannot read the gateway Lease: %v", err)
	}
	if err := worker.List(ctx, &coordinationv1.LeaseList{}, client.InNamespace(ns)); err != nil {
		t.Errorf("a worker's agent cannot list Leases: %v", err)
	}
	wcs := kubernetes.NewForConfigOrDie(func() *rest.Config {
		cfg := rest.CopyConfig(member.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":archipelago-agent",
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}}
		return cfg
	}())
	if w, err := wcs.CoordinationV1().Leases(ns).Watch(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("a worker's agent cannot watch Leases: %v", err)
	} else {
		w.Stop()
	}
	// But never write it.
	taken := &coordinationv1.Lease{}
	if err := worker.Get(ctx, key, taken); err != nil {
		t.Fatal(err)
	}
	if err := worker.Update(ctx, holder(taken, "w1")); !apierrors.IsForbidden(err) {
		t.Errorf("a worker's agent updates the gateway Lease: got %v, want Forbidden", err)
	}
	if err := worker.Patch(ctx, newLease(controlplane.DefaultLeaseName),
		client.RawPatch(types.MergePatchType, []byte(`{"spec":{"holderIdentity":"w1"}}`))); !apierrors.IsForbidden(err) {
		t.Errorf("a worker's agent patches the gateway Lease: got %v, want Forbidden", err)
	}
	if err := worker.Delete(ctx, newLease(controlplane.DefaultLeaseName)); !apierrors.IsForbidden(err) {
		t.Errorf("a worker's agent deletes the gateway Lease: got %v, want Forbidden", err)
	}
	// The candidates renew and take it (update), and release it.
	cur := &coordinationv1.Lease{}
	if err := gw.Get(ctx, key, cur); err != nil {
		t.Fatal(err)
	}
	if err := gw.Update(ctx, holder(cur, "g2")); err != nil {
		t.Errorf("a gateway candidate's agent cannot update the gateway Lease: %v", err)
	}
	// Only that Lease: create cannot be limited to a name, update can.
	other := holder(newLease("someone-elses-lease"), "x")
	if err := member.Client.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	cleanup(other.Name)
	if err := gw.Update(ctx, holder(other, "g1")); !apierrors.IsForbidden(err) {
		t.Errorf("a gateway candidate's agent updates another Lease: got %v, want Forbidden", err)
	}
}

// podToken returns a client that authenticates as ServiceAccount sa with a
// token bound to a Pod on nodeName, as a DaemonSet pod's projected token
// is; the apiserver then adds the node's name to the user's extras.
func podToken(t *testing.T, sa, nodeName string) client.Client {
	t.Helper()
	ctx := context.Background()
	ns := framework.MemberSystemNamespace
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: sa + "-"},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa, NodeName: nodeName,
			AutomountServiceAccountToken: ptr.To(false),
			Containers:                   []corev1.Container{{Name: "agent", Image: "archipelago-agent:test"}},
		},
	}
	if err := member.Client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = member.Client.Delete(context.Background(), pod, client.GracePeriodSeconds(0))
	})
	cs := kubernetes.NewForConfigOrDie(member.Config)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: ptr.To[int64](3600),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of %s bound to pod %s: %v", sa, pod.Name, err)
	}
	cfg := rest.AnonymousClientConfig(member.Config)
	cfg.BearerToken = tr.Status.Token
	// The apiserver must see this token as pod-bound on nodeName, or the
	// policy under test has nothing to go by.
	review, err := kubernetes.NewForConfigOrDie(cfg).AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := review.Status.UserInfo.Extra["authentication.kubernetes.io/node-name"]; len(got) != 1 || got[0] != nodeName {
		t.Fatalf("a token bound to a pod on %s authenticates with node-name extra %v (user %+v)", nodeName, got, review.Status.UserInfo)
	}
	c, err := client.New(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAgentsPatchOnlyTheirOwnNode: RBAC lets the agents patch every Node
// (they annotate their own); the admission policy in config/agent keeps
// each to its own node's archipelago.dev/* annotations, so that a worker
// cannot label itself a gateway candidate (and be given the WireGuard key
// and the hub token) or rewrite a candidate's key or endpoint.
func TestAgentsPatchOnlyTheirOwnNode(t *testing.T) {
	needAPIServers(t)
	ctx := context.Background()
	n1, n2 := node("rbac-n1", "10.9.0.1", "10.240.1.0/24", false), node("rbac-n2", "10.9.0.2", "10.240.2.0/24", true)
	for _, n := range []*corev1.Node{n1, n2} {
		createNode(t, member.Client, n)
		t.Cleanup(func() { _ = member.Client.Delete(context.Background(), n) })
	}
	applyConfigAgent(t)
	worker := podToken(t, "archipelago-agent", n1.Name)
	gw := podToken(t, "archipelago-gateway", n2.Name)

	patch := func(c client.Client, n *corev1.Node, body string, opts ...client.PatchOption) error {
		return c.Patch(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, client.RawPatch(types.MergePatchType, []byte(body)), opts...)
	}
	refused := func(err error, what, want string) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("%s: allowed, want refused", what)
		case !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want):
			t.Errorf("%s: got %v, want Forbidden saying %q", what, err, want)
		}
	}
	// Policies take effect a moment after they are written.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := patch(worker, n2, `{"metadata":{"annotations":{"archipelago.dev/public-key":"probe"}}}`, client.DryRunAll)
		if apierrors.IsForbidden(err) && strings.Contains(err.Error(), "ValidatingAdmissionPolicy") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the node policy of config/agent is not enforced after 30s: a worker's patch of another node got %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// What the agents do: annotate their own node.
	for _, c := range []struct {
		c client.Client
		n *corev1.Node
	}{{worker, n1}, {gw, n2}} {
		if err := patch(c.c, c.n, `{"metadata":{"annotations":{"archipelago.dev/public-key":"k","archipelago.dev/datapath":"{}"}}}`); err != nil {
			t.Errorf("the agent on %s cannot annotate its node: %v", c.n.Name, err)
		}
		if err := patch(c.c, c.n, `{"metadata":{"annotations":{"archipelago.dev/public-key":null}}}`); err != nil {
			t.Errorf("the agent on %s cannot remove its annotation: %v", c.n.Name, err)
		}
	}

	refused(patch(worker, n2, `{"metadata":{"annotations":{"archipelago.dev/public-key":"evil","archipelago.dev/endpoint":"192.0.2.1:51820"}}}`),
		"a worker's agent rewrites a candidate's key and endpoint", "only the Node its pod runs on (rbac-n1), not Node rbac-n2")
	refused(patch(gw, n1, `{"metadata":{"annotations":{"archipelago.dev/public-key":"evil"}}}`),
		"a candidate's agent annotates another node", "only the Node its pod runs on (rbac-n2), not Node rbac-n1")
	refused(patch(worker, n1, `{"metadata":{"labels":{"`+meshv1.LabelGatewayCandidate+`":""}}}`),
		"a worker's agent labels its node a gateway candidate", "may not change the labels")
	refused(patch(gw, n2, `{"metadata":{"labels":{"`+meshv1.LabelGatewayCandidate+`":null}}}`),
		"a candidate's agent removes its label", "may not change the labels")
	refused(patch(worker, n1, `{"metadata":{"annotations":{"node.alpha.kubernetes.io/ttl":"0"}}}`),
		"a worker's agent writes another annotation", "only archipelago.dev/* annotations")
	refused(patch(worker, n1, `{"spec":{"unschedulable":true}}`),
		"a worker's agent cordons its node", "may not change the spec")
	// A token that is not pod-bound names no node: nothing is allowed.
	refused(patch(impersonate(t, "archipelago-agent"), n1, `{"metadata":{"annotations":{"archipelago.dev/public-key":"k"}}}`),
		"an agent token that is not bound to a pod", "not a pod-bound token")

	// The labels and foreign annotations are unchanged; an administrator
	// still labels nodes.
	got := &corev1.Node{}
	if err := member.Client.Get(ctx, client.ObjectKeyFromObject(n1), got); err != nil {
		t.Fatal(err)
	}
	if _, ok := got.Labels[meshv1.LabelGatewayCandidate]; ok || got.Spec.Unschedulable || got.Annotations["node.alpha.kubernetes.io/ttl"] != "" {
		t.Errorf("node %s changed by refused patches: labels %v, annotations %v, unschedulable %v", n1.Name, got.Labels, got.Annotations, got.Spec.Unschedulable)
	}
	if err := patch(member.Client, n1, `{"metadata":{"labels":{"`+meshv1.LabelGatewayCandidate+`":""}}}`); err != nil {
		t.Errorf("an administrator cannot label a node: %v", err)
	}
}
