package hub

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// asMember returns a client that acts as member's agent on the hub.
func asMember(t *testing.T, member string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(api.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: fmt.Sprintf("system:serviceaccount:%s:%s", controllers.MemberNamespace(member), controllers.MemberServiceAccount),
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + controllers.MemberNamespace(member), "system:authenticated"},
	}
	c, err := client.New(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// heartbeat writes a gateway's status as its agent does: lastSeen now, and
// whatever change makes.
func heartbeat(t testing.TB, c client.Client, member, name string, change func(*meshv1.TunnelGatewayStatus)) {
	t.Helper()
	gw := &meshv1.TunnelGateway{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: controllers.MemberNamespace(member), Name: name}, gw); err != nil {
		t.Fatalf("get gateway %s/%s: %v", member, name, err)
	}
	patch := client.MergeFrom(gw.DeepCopy())
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	gw.Status.LastSeen = &now
	if change != nil {
		change(&gw.Status)
	}
	if err := c.Status().Patch(context.Background(), gw, patch); err != nil {
		t.Fatalf("heartbeat of gateway %s/%s: %v", member, name, err)
	}
}

func gateway(member, name, node, key string, endpoints ...string) *meshv1.TunnelGateway {
	return &meshv1.TunnelGateway{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: controllers.MemberNamespace(member)},
		Spec:       meshv1.TunnelGatewaySpec{NodeName: node, PublicKey: key, Endpoints: endpoints, Active: true},
	}
}

// A member's credentials reach its own namespace and the peer directory,
// nothing else.
func TestMemberRBAC(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	ctx := context.Background()
	create(t, c, framework.NewClusterSet("rbac", []string{"10.176.0.0/12"}))
	for _, n := range []string{"rbac-a", "rbac-b"} {
		create(t, c, framework.NewMember(n, "rbac"))
		waitAssigned(t, c, n, 20*time.Second)
		eventually(t, 20*time.Second, "namespace of "+n, func() error {
			if getMember(t, c, n).Status.Namespace == "" {
				return fmt.Errorf("no namespace in status")
			}
			return nil
		})
	}
	a := asMember(t, "rbac-a")
	// Keys of their own: a key another test's member holds would be refused.
	validKeyA := randomKey(t)

	// RBAC objects are created asynchronously; wait until A may write.
	eventually(t, 20*time.Second, "member A creates a Gateway in its own namespace", func() error {
		return a.Create(ctx, gateway("rbac-a", "node-1", "node-1", validKeyA, "192.0.2.10:51820"))
	})

	// What A must not reach: B's gateway, and Secrets in both namespaces.
	b := asMember(t, "rbac-b")
	eventually(t, 20*time.Second, "member B creates a Gateway in its own namespace", func() error {
		return b.Create(ctx, gateway("rbac-b", "node-1", "node-1", randomKey(t), "192.0.2.20:51820"))
	})
	bGateway := func() *meshv1.TunnelGateway {
		gw := &meshv1.TunnelGateway{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: controllers.MemberNamespace("rbac-b"), Name: "node-1"}, gw); err != nil {
			t.Fatal(err)
		}
		return gw
	}
	for _, n := range []string{"rbac-a", "rbac-b"} {
		create(t, c, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "hub-only", Namespace: controllers.MemberNamespace(n)},
			StringData: map[string]string{"token": "not for members"},
		})
	}

	forbidden := []struct {
		name string
		do   func() error
	}{
		{"read a Secret in its own namespace", func() error {
			return a.Get(ctx, client.ObjectKey{Namespace: controllers.MemberNamespace("rbac-a"), Name: "hub-only"}, &corev1.Secret{})
		}},
		{"list Secrets in its own namespace", func() error {
			return a.List(ctx, &corev1.SecretList{}, client.InNamespace(controllers.MemberNamespace("rbac-a")))
		}},
		{"read a Secret in B's namespace", func() error {
			return a.Get(ctx, client.ObjectKey{Namespace: controllers.MemberNamespace("rbac-b"), Name: "hub-only"}, &corev1.Secret{})
		}},
		{"list Secrets of all namespaces", func() error { return a.List(ctx, &corev1.SecretList{}) }},
		{"patch the status of B's Gateway", func() error {
			gw := bGateway()
			patch := client.MergeFrom(gw.DeepCopy())
			gw.Status.PeersUp, gw.Status.DownPeers = 0, []string{"rbac-a"}
			return a.Status().Patch(ctx, gw, patch)
		}},
		{"update B's Gateway", func() error {
			gw := bGateway()
			gw.Spec.Endpoints = []string{"192.0.2.66:51820"}
			return a.Update(ctx, gw)
		}},
		{"delete B's Gateway", func() error { return a.Delete(ctx, bGateway()) }},
		{"delete B's Gateways all at once", func() error {
			return a.DeleteAllOf(ctx, &meshv1.TunnelGateway{}, client.InNamespace(controllers.MemberNamespace("rbac-b")))
		}},
		{"change the quota of its namespace", func() error {
			return a.DeleteAllOf(ctx, &corev1.ResourceQuota{}, client.InNamespace(controllers.MemberNamespace("rbac-a")))
		}},
		{"create a Gateway in B's namespace", func() error {
			return a.Create(ctx, gateway("rbac-b", "evil", "node-1", validKeyA, "192.0.2.66:51820"))
		}},
		{"patch its own MemberCluster status", func() error {
			m := getMember(t, c, "rbac-a")
			patch := client.MergeFrom(m.DeepCopy())
			m.Status.PodCIDRs = []string{"10.190.0.0/16"}
			return a.Status().Patch(ctx, m, patch)
		}},
		{"patch B's MemberCluster status", func() error {
			m := getMember(t, c, "rbac-b")
			patch := client.MergeFrom(m.DeepCopy())
			m.Status.PodCIDRs = []string{"10.176.0.0/16"}
			return a.Status().Patch(ctx, m, patch)
		}},
		{"update its own MemberCluster spec", func() error {
			m := getMember(t, c, "rbac-a")
			m.Spec.PodCIDRs = []meshv1.CIDR{"10.191.0.0/16"}
			return a.Update(ctx, m)
		}},
		{"create a MemberCluster", func() error { return a.Create(ctx, framework.NewMember("rbac-evil", "rbac")) }},
		{"delete a ClusterSet", func() error { return a.Delete(ctx, framework.NewClusterSet("rbac", nil)) }},
		{"write a CIDRClaim", func() error {
			return a.Create(ctx, &meshv1.CIDRClaim{
				ObjectMeta: metav1.ObjectMeta{Name: "rbac.v4-10-177-0-0-16"},
				Spec:       meshv1.CIDRClaimSpec{ClusterSet: "rbac", CIDR: "10.177.0.0/16", Member: "rbac-a"},
			})
		}},
	}
	for _, f := range forbidden {
		t.Run("forbidden: "+f.name, func(t *testing.T) {
			if err := f.do(); !apierrors.IsForbidden(err) {
				t.Errorf("got %v, want Forbidden", err)
			}
		})
	}
	if gw := bGateway(); len(gw.Status.DownPeers) != 0 || !gw.DeletionTimestamp.IsZero() || gw.Spec.Endpoints[0] != "192.0.2.20:51820" {
		t.Errorf("B's gateway changed: %+v", gw)
	}

	// Its own Gateway can be updated, status included.
	gw := &meshv1.TunnelGateway{}
	if err := a.Get(ctx, client.ObjectKey{Namespace: controllers.MemberNamespace("rbac-a"), Name: "node-1"}, gw); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(gw.DeepCopy())
	gw.Status.PeersUp, gw.Status.DownPeers = 0, []string{"rbac-b"}
	if err := a.Status().Patch(ctx, gw, patch); err != nil {
		t.Errorf("member cannot report its gateway's tunnels: %v", err)
	}
}

// The hub validates Gateways: a valid one is copied into the member's
// status; an invalid one is marked, kept away from peers, and disturbs
// neither the member's other gateways nor any other member.
func TestGatewayValidation(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	ctx := context.Background()
	create(t, c, framework.NewClusterSet("gw", []string{"10.208.0.0/12"}))
	for _, n := range []string{"gw-a", "gw-b"} {
		create(t, c, framework.NewMember(n, "gw"))
		waitAssigned(t, c, n, 20*time.Second)
	}
	eventually(t, 20*time.Second, "namespaces exist", func() error {
		for _, n := range []string{"gw-a", "gw-b"} {
			if getMember(t, c, n).Status.Namespace == "" {
				return fmt.Errorf("%s has no namespace yet", n)
			}
		}
		return nil
	})

	validKeyA, validKeyB := randomKey(t), randomKey(t)
	create(t, c, gateway("gw-a", "good", "node-a1", validKeyA, "192.0.2.1:51820"))
	bad := gateway("gw-a", "bad-key", "node-a2", "not-a-key")
	bad.Spec.Active = false
	create(t, c, bad)
	badEndpoint := gateway("gw-a", "bad-endpoint", "node-a3", validKeyB, "192.0.2.3")
	badEndpoint.Spec.Active = false
	create(t, c, badEndpoint)
	create(t, c, gateway("gw-b", "good", "node-b1", validKeyB, "gw-b.example:51820"))
	heartbeat(t, c, "gw-a", "good", nil)

	eventually(t, 20*time.Second, "gw-a reports its invalid gateways", func() error {
		m := getMember(t, c, "gw-a")
		cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberGatewaysValid)
		if cond == nil || cond.Status != metav1.ConditionFalse || !strings.Contains(cond.Message, "bad-key") || !strings.Contains(cond.Message, "bad-endpoint") {
			return fmt.Errorf("GatewaysValid %+v", cond)
		}
		if len(m.Status.Gateways) != 1 || m.Status.Gateways[0].Name != "good" || !m.Status.Gateways[0].Active || m.Status.ActiveGateway != "node-a1" {
			return fmt.Errorf("gateways %+v active %q", m.Status.Gateways, m.Status.ActiveGateway)
		}
		if !meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.MemberAgentConnected) || !meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.ConditionReady) {
			return fmt.Errorf("an invalid extra gateway made the member not ready: %+v", m.Status.Conditions)
		}
		return nil
	})
	for name, want := range map[string]string{"bad-key": "spec.publicKey", "bad-endpoint": "spec.endpoints[0]"} {
		gw := &meshv1.TunnelGateway{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: controllers.MemberNamespace("gw-a"), Name: name}, gw); err != nil {
			t.Fatal(err)
		}
		cond := meta.FindStatusCondition(gw.Status.Conditions, meshv1.TunnelGatewayValid)
		if cond == nil || cond.Status != metav1.ConditionFalse || !strings.Contains(cond.Message, want) {
			t.Errorf("gateway %s: Valid condition %+v, want False naming %s", name, cond, want)
		}
	}
	eventually(t, 20*time.Second, "gw-b unaffected", func() error {
		m := getMember(t, c, "gw-b")
		if !meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.MemberGatewaysValid) || len(m.Status.Gateways) != 1 || m.Status.Gateways[0].PublicKey != validKeyB {
			return fmt.Errorf("gw-b status %+v", m.Status)
		}
		return nil
	})

	// Connected counts what the active gateway reports.
	heartbeat(t, c, "gw-a", "good", func(st *meshv1.TunnelGatewayStatus) { st.PeersUp = 1 })
	eventually(t, 20*time.Second, "gw-a connected 1/1", func() error {
		m := getMember(t, c, "gw-a")
		if m.Status.ConnectedPeers != 1 || m.Status.TotalPeers != 1 || !meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.MemberConnected) {
			return fmt.Errorf("connected %d/%d %+v", m.Status.ConnectedPeers, m.Status.TotalPeers, meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberConnected))
		}
		return nil
	})
}
