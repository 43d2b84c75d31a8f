package hub

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
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

// memberWithToken returns a client that uses member's own hub credentials:
// a token of its ServiceAccount, as join hands it to the member's agent.
func memberWithToken(t *testing.T, member string) client.Client {
	t.Helper()
	cfg := rest.AnonymousClientConfig(api.Config)
	cfg.BearerToken = framework.MemberHubToken(t, api.Config, member)
	c, err := client.New(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// joinMembers creates set and members and waits until each has its range and
// its hub namespace.
func joinMembers(t *testing.T, c client.Client, set, pool string, members ...string) {
	t.Helper()
	create(t, c, framework.NewClusterSet(set, []string{pool}))
	for _, n := range members {
		create(t, c, framework.NewMember(n, set))
		// Leave no member behind: its gateways would hold their keys.
		t.Cleanup(func() { deleteMember(t, c, n) })
	}
	for _, n := range members {
		waitAssigned(t, c, n, 20*time.Second)
		eventually(t, 20*time.Second, "namespace of "+n, func() error {
			if getMember(t, c, n).Status.Namespace == "" {
				return fmt.Errorf("no namespace in status")
			}
			return nil
		})
	}
}

func gatewayValid(t *testing.T, c client.Client, member, name string) *metav1.Condition {
	t.Helper()
	gw := &meshv1.TunnelGateway{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: controllers.MemberNamespace(member), Name: name}, gw); err != nil {
		t.Fatalf("get gateway %s of %s: %v", name, member, err)
	}
	return meta.FindStatusCondition(gw.Status.Conditions, meshv1.TunnelGatewayValid)
}

func publishesKey(m *meshv1.MemberCluster, key string) bool {
	return slices.ContainsFunc(m.Status.Gateways, func(g meshv1.MemberGateway) bool { return g.PublicKey == key })
}

// A member that publishes another member's public key in a gateway of its
// own (agents keep one peer per key, so peers would replace the victim's
// tunnel with the attacker's endpoint) is refused: the older holder keeps
// the key, the copy is marked and never given to peers. The attacker acts
// as an attacker would: its own agent is not running, it uses its hub
// token directly and re-publishes the victim's key every second.
func TestMemberCannotPublishAnotherMembersKey(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	ctx := context.Background()
	joinMembers(t, c, "steal", "10.144.0.0/12", "steal-victim", "steal-attacker")
	victimKey := randomKey(t)
	victim := memberWithToken(t, "steal-victim")
	attacker := memberWithToken(t, "steal-attacker")

	eventually(t, 20*time.Second, "the victim publishes its gateway", func() error {
		return victim.Create(ctx, gateway("steal-victim", "gw-1", "node-v1", victimKey, "192.0.2.1:51820"))
	})
	eventually(t, 20*time.Second, "the victim's gateway is given to peers", func() error {
		if m := getMember(t, c, "steal-victim"); !publishesKey(m, victimKey) {
			return fmt.Errorf("gateways %+v", m.Status.Gateways)
		}
		return nil
	})

	// While the attack runs, watch what peers are given.
	var stop atomic.Bool
	var violations []string
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for !stop.Load() {
			v, a := &meshv1.MemberCluster{}, &meshv1.MemberCluster{}
			if c.Get(ctx, client.ObjectKey{Name: "steal-victim"}, v) == nil && !publishesKey(v, victimKey) {
				violations = append(violations, fmt.Sprintf("the victim's key left its status.gateways at %s: %+v (resourceVersion %s, conditions %+v)", time.Now().Format("15:04:05.000"), v.Status.Gateways, v.ResourceVersion, v.Status.Conditions))
			}
			if c.Get(ctx, client.ObjectKey{Name: "steal-attacker"}, a) == nil && publishesKey(a, victimKey) {
				violations = append(violations, fmt.Sprintf("the attacker's status.gateways holds the victim's key: %+v", a.Status.Gateways))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	// Re-publish every second: updates, and a delete and re-create halfway.
	for i := range 6 {
		hijack := gateway("steal-attacker", "hijack", "node-a1", victimKey, fmt.Sprintf("198.51.100.66:%d", 51820+i))
		cur := &meshv1.TunnelGateway{}
		err := attacker.Get(ctx, client.ObjectKeyFromObject(hijack), cur)
		switch {
		case apierrors.IsNotFound(err):
			err = attacker.Create(ctx, hijack)
		case err == nil && i == 3:
			if err = attacker.Delete(ctx, cur); err == nil {
				err = attacker.Create(ctx, hijack)
			}
		case err == nil:
			cur.Spec = hijack.Spec
			err = attacker.Update(ctx, cur)
		}
		if err != nil {
			t.Fatalf("the attacker's own namespace refused its gateway (RBAC, not the hub's check): %v", err)
		}
		time.Sleep(time.Second)
	}
	stop.Store(true)
	<-watched
	if len(violations) > 0 {
		t.Errorf("%d times during the attack peers were given the wrong gateway; first: %s", len(violations), violations[0])
	}

	eventually(t, 20*time.Second, "the attacker's copy is refused, naming the victim", func() error {
		cond := gatewayValid(t, c, "steal-attacker", "hijack")
		if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != meshv1.ReasonDuplicatePublicKey || !strings.Contains(cond.Message, `"steal-victim"`) {
			return fmt.Errorf("Valid %+v", cond)
		}
		m := getMember(t, c, "steal-attacker")
		gv := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberGatewaysValid)
		if gv == nil || gv.Status != metav1.ConditionFalse || !containsAll(gv.Message, "hijack", "steal-victim") {
			return fmt.Errorf("attacker's GatewaysValid %+v", gv)
		}
		t.Logf("refused gateway: Valid=%s %s: %s", cond.Status, cond.Reason, cond.Message)
		t.Logf("attacker member: GatewaysValid=%s %s: %s", gv.Status, gv.Reason, gv.Message)
		return nil
	})
	if cond := gatewayValid(t, c, "steal-victim", "gw-1"); cond == nil || cond.Status != metav1.ConditionTrue {
		t.Errorf("victim's gateway: Valid %+v, want True", cond)
	}
	v := getMember(t, c, "steal-victim")
	if !meta.IsStatusConditionTrue(v.Status.Conditions, meshv1.MemberGatewaysValid) || v.Status.ActiveGateway != "node-v1" {
		t.Errorf("victim disturbed: active %q, conditions %+v", v.Status.ActiveGateway, v.Status.Conditions)
	}

	// When the holder gives the key up, the next holder has it.
	if err := victim.Delete(ctx, &meshv1.TunnelGateway{ObjectMeta: metav1.ObjectMeta{Namespace: controllers.MemberNamespace("steal-victim"), Name: "gw-1"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the key passes to the next holder", func() error {
		if cond := gatewayValid(t, c, "steal-attacker", "hijack"); cond == nil || cond.Status != metav1.ConditionTrue {
			return fmt.Errorf("Valid %+v", cond)
		}
		if m := getMember(t, c, "steal-attacker"); !publishesKey(m, victimKey) {
			return fmt.Errorf("gateways %+v", m.Status.Gateways)
		}
		return nil
	})
}

// A member's TunnelGateways are bounded by a ResourceQuota in its hub
// namespace, which the member cannot change.
func TestMemberGatewayQuota(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	framework.StartQuotaController(t, api)
	ctx := context.Background()
	joinMembers(t, c, "quota", "10.112.0.0/12", "quota-a")
	member := memberWithToken(t, "quota-a")
	ns := controllers.MemberNamespace("quota-a")

	var quota string
	eventually(t, 20*time.Second, "the quota of quota-a is in force", func() error {
		var l corev1.ResourceQuotaList
		if err := c.List(ctx, &l, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, q := range l.Items {
			if _, ok := q.Status.Hard[controllers.GatewayQuotaResource]; ok {
				quota = q.Name
				return nil
			}
		}
		return fmt.Errorf("no quota on %s with a status yet: %+v", controllers.GatewayQuotaResource, l.Items)
	})
	for i := range controllers.MaxGatewaysPerMember {
		gw := gateway("quota-a", fmt.Sprintf("gw-%02d", i), fmt.Sprintf("node-%02d", i), randomKey(t), "192.0.2.1:51820")
		gw.Spec.Active = i == 0
		eventually(t, 20*time.Second, "gateway "+gw.Name+" within the quota", func() error { return member.Create(ctx, gw) })
	}
	err := member.Create(ctx, gateway("quota-a", "one-too-many", "node-x", randomKey(t), "192.0.2.1:51820"))
	if !apierrors.IsForbidden(err) || !containsAll(err.Error(), "exceeded quota: "+quota, string(controllers.GatewayQuotaResource)) {
		t.Fatalf("gateway %d: got %v, want Forbidden by quota %s", controllers.MaxGatewaysPerMember+1, err, quota)
	}
	t.Logf("refused: %v", err)

	// The member cannot lift its quota.
	q := &corev1.ResourceQuota{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: quota}, q); err != nil {
		t.Fatal(err)
	}
	if err := member.Delete(ctx, q); !apierrors.IsForbidden(err) {
		t.Errorf("member deletes its quota: got %v, want Forbidden", err)
	}
}

func randomKey(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}
