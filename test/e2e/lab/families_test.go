//go:build e2e

package lab_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/test/lab"
)

// waitCondition waits until get's condition typ has reason, and returns its
// message.
func waitCondition(t *testing.T, what string, typ, reason string, get func() ([]metav1.Condition, error)) string {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	var last string
	for {
		conds, err := get()
		if err == nil {
			if c := meta.FindStatusCondition(conds, typ); c != nil {
				if c.Reason == reason {
					return c.Message
				}
				last = c.Reason + ": " + c.Message
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: condition %s not %s after 45s (last: %q, err %v)", what, typ, reason, last, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// An IPv6-only member joins the dual-stack set: it gets an IPv6 range
// only, its pods and every other member's reach each other over IPv6 with
// source addresses kept, and status says which pairs cannot talk over
// IPv4 and why: the member's own membership names every remote IPv4 range
// it cannot reach, and the hub's FamiliesShared conditions (on both sides
// and on the set) say the families differ. When it leaves, they are shared
// again.
func TestIPv6OnlyMemberInDualSet(t *testing.T) {
	l := need(t)
	if l.IPFamily != lab.Dual {
		t.Skip("the lab is not dual-stack")
	}
	ctx := context.Background()
	// The lab never reuses a member's name (or its addresses), and later
	// tests join "delta", "echo", …: take the last name.
	name := lab.MemberNames[len(lab.MemberNames)-1]
	m, err := l.PrepareMember(ctx, lab.MemberSpec{Name: name, IPFamily: lab.IPv6})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.JoinMember(ctx, m); err != nil {
		t.Fatal(err)
	}
	left := false
	defer func() {
		if !left {
			_, _ = l.RemoveMember(ctx, m)
		}
	}()
	if len(m.PodCIDRs) != 1 || !netip.MustParsePrefix(m.PodCIDRs[0]).Addr().Is6() {
		t.Fatalf("%s asked for IPv6 only and holds %v", name, m.PodCIDRs)
	}
	t.Logf("%s joined with --ip-family ipv6: ranges %v", name, m.PodCIDRs)

	// Every pair of a family both have: IPv6, both ways.
	for _, p := range m.Pods() {
		if p.Addr(lab.Family4).IsValid() {
			t.Fatalf("%s has an IPv4 address", p.Name)
		}
		for _, q := range l.Pods() {
			if q.Node.Member == m {
				continue
			}
			for _, pr := range [][2]*lab.Pod{{p, q.As(lab.Family6)}, {q.As(lab.Family6), p}} {
				if _, err := lab.WaitTCP(ctx, pr[0], pr[1], 60*time.Second); err != nil {
					t.Error(err)
				}
			}
		}
	}

	// The member's own status names each remote IPv4 range and why.
	var others []*lab.Member
	for _, o := range l.Members() {
		if o != m {
			others = append(others, o)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ms meshv1.ClusterSetMembership
		err := m.Cluster.Client.Get(ctx, client.ObjectKey{Name: "membership"}, &ms)
		named := map[string]string{}
		for _, u := range ms.Status.CannotRoute {
			named[u.CIDR] += u.Cluster + ": " + u.Reason + "; "
		}
		var missing []string
		for _, o := range others {
			for _, c := range o.PodCIDRs {
				if netip.MustParsePrefix(c).Addr().Is4() && !strings.Contains(named[c], "this cluster has no IPv4 pod range") {
					missing = append(missing, o.Name+" "+c)
				}
			}
		}
		if err == nil && len(missing) == 0 {
			t.Logf("%s status.cannotRoute: %v", name, named)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s status.cannotRoute %v (err %v) does not name %v with the missing family", name, named, err, missing)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// The hub says which pairs cannot talk: on the new member, on a
	// dual-stack one and on the set.
	memberConds := func(n string) func() ([]metav1.Condition, error) {
		return func() ([]metav1.Condition, error) {
			var mc meshv1.MemberCluster
			err := l.Hub.Client.Get(ctx, types.NamespacedName{Name: n}, &mc)
			return mc.Status.Conditions, err
		}
	}
	setConds := func() ([]metav1.Condition, error) {
		var cs meshv1.ClusterSet
		err := l.Hub.Client.Get(ctx, types.NamespacedName{Name: lab.ClusterSetName}, &cs)
		return cs.Status.Conditions, err
	}
	msg := waitCondition(t, "MemberCluster "+name, meshv1.MemberFamiliesShared, meshv1.ReasonPartialFamilies, memberConds(name))
	t.Logf("MemberCluster %s FamiliesShared=False PartialFamilies: %s", name, msg)
	msg = waitCondition(t, "MemberCluster alpha", meshv1.MemberFamiliesShared, meshv1.ReasonPartialFamilies, memberConds("alpha"))
	t.Logf("MemberCluster alpha FamiliesShared=False PartialFamilies: %s", msg)
	msg = waitCondition(t, "ClusterSet", meshv1.ClusterSetFamiliesShared, meshv1.ReasonPartialFamilies, setConds)
	t.Logf("ClusterSet FamiliesShared=False PartialFamilies: %s", msg)

	if _, err := l.RemoveMember(ctx, m); err != nil {
		t.Fatal(err)
	}
	left = true
	waitCondition(t, "MemberCluster alpha after the leave", meshv1.MemberFamiliesShared, meshv1.ReasonAllFamiliesShared, memberConds("alpha"))
	waitCondition(t, "ClusterSet after the leave", meshv1.ClusterSetFamiliesShared, meshv1.ReasonAllFamiliesShared, setConds)
}
