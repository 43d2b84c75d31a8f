package hub

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// familiesOf lists the families of ranges, IPv4 first.
func familiesOf(ps []netip.Prefix) []meshv1.IPFamily {
	var out []meshv1.IPFamily
	for _, p := range ps {
		if p.Addr().Is4() {
			out = append(out, meshv1.IPv4)
		}
	}
	for _, p := range ps {
		if p.Addr().Is6() {
			out = append(out, meshv1.IPv6)
		}
	}
	return out
}

// waitFamiliesShared waits until member name's FamiliesShared condition has
// status and reason, and returns its message.
func waitFamiliesShared(t *testing.T, c client.Client, name string, status metav1.ConditionStatus, reason string) string {
	t.Helper()
	m := waitCondition(t, c, name, meshv1.MemberFamiliesShared, status, reason)
	return meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberFamiliesShared).Message
}

// waitFamiliesMessage waits until member name's FamiliesShared condition has
// status and reason and a message with every one of parts: the condition
// follows the set's groups, which catch up with the members one by one.
func waitFamiliesMessage(t *testing.T, c client.Client, name string, status metav1.ConditionStatus, reason string, parts ...string) {
	t.Helper()
	eventually(t, 20*time.Second, fmt.Sprintf("member %s has FamiliesShared=%s (%s) saying %q", name, status, reason, parts), func() error {
		m := &meshv1.MemberCluster{}
		if err := c.Get(context.Background(), client.ObjectKey{Name: name}, m); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberFamiliesShared)
		if cond == nil || cond.Status != status || cond.Reason != reason || !containsAll(cond.Message, parts...) {
			return fmt.Errorf("condition is %+v", cond)
		}
		return nil
	})
}

// In a dual-stack set, a member gets blocks of the families it lists only;
// one that lists none gets both. The peer directory carries exactly those,
// and the FamiliesShared conditions of the members and the set say who
// cannot reach whom, and why.
func TestMixedFamiliesInOneSet(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	framework.StartHub(t, api.Config, controllers.Options{})
	create(t, c, framework.NewClusterSet("mix", []string{"10.160.0.0/12", "fd20:160::/48"}, framework.WithQuarantine(0)))

	create(t, c, framework.NewMember("mix-dual", "mix"))
	create(t, c, framework.NewMember("mix-six", "mix", framework.WithIPFamilies(meshv1.IPv6)))
	create(t, c, framework.NewMember("mix-four", "mix", framework.WithIPFamilies(meshv1.IPv4)))
	create(t, c, framework.NewMember("mix-both", "mix", framework.WithIPFamilies(meshv1.IPv6, meshv1.IPv4)))

	want := map[string][]meshv1.IPFamily{
		"mix-dual": {meshv1.IPv4, meshv1.IPv6}, "mix-six": {meshv1.IPv6},
		"mix-four": {meshv1.IPv4}, "mix-both": {meshv1.IPv4, meshv1.IPv6},
	}
	owners := map[string][]netip.Prefix{}
	for name, fams := range want {
		ps := waitAssigned(t, c, name, 30*time.Second)
		if got := familiesOf(ps); !slices.Equal(got, fams) {
			t.Errorf("member %s holds %v (%v), want blocks of %v only", name, ps, got, fams)
		}
		owners[name] = ps
	}
	assertNoOverlap(t, owners, []netip.Prefix{netip.MustParsePrefix("10.160.0.0/12"), netip.MustParsePrefix("fd20:160::/48")})
	for _, cl := range claimsOf(t, c, "mix") {
		if cl.Spec.Member == "mix-six" && netip.MustParsePrefix(string(cl.Spec.CIDR)).Addr().Is4() {
			t.Errorf("IPv6-only member holds IPv4 claim %s", cl.Name)
		}
	}
	// Peers route to the IPv6-only member its IPv6 range alone.
	eventually(t, 20*time.Second, "mix-six's ClusterSetPeer", func() error {
		p := &meshv1.ClusterSetPeer{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: controllers.SetNamespace("mix"), Name: "mix-six"}, p); err != nil {
			return err
		}
		if len(p.Spec.PodCIDRs) != 1 || p.Spec.PodCIDRs[0] != owners["mix-six"][0].String() {
			return fmt.Errorf("peer ranges %v, want %v", p.Spec.PodCIDRs, owners["mix-six"])
		}
		return nil
	})

	waitFamiliesMessage(t, c, "mix-six", metav1.ConditionFalse, meshv1.ReasonNoCommonFamily,
		"no common IP family with the members with IPv4 only", "this member has IPv6 only",
		"the members with IPv4 and IPv6 reach this member over IPv6 alone", "no IPv4 range")
	waitFamiliesMessage(t, c, "mix-four", metav1.ConditionFalse, meshv1.ReasonNoCommonFamily,
		"no common IP family with the members with IPv6 only", "this member has IPv4 only")
	waitFamiliesMessage(t, c, "mix-dual", metav1.ConditionFalse, meshv1.ReasonPartialFamilies,
		"this member's IPv6 pods cannot reach the members with IPv4 only", "this member's IPv4 pods cannot reach the members with IPv6 only")
	// Being Ready does not depend on it.
	if m := getMember(t, c, "mix-six"); !meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.MemberCIDRAllocated) {
		t.Errorf("mix-six CIDRAllocated: %+v", meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated))
	}

	// The set names the members of each group.
	eventually(t, 20*time.Second, "the set's FamiliesShared", func() error {
		cs := &meshv1.ClusterSet{}
		if err := c.Get(ctx, client.ObjectKey{Name: "mix"}, cs); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(cs.Status.Conditions, meshv1.ClusterSetFamiliesShared)
		if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != meshv1.ReasonNoCommonFamily ||
			!containsAll(cond.Message, "IPv4 only (mix-four)", "IPv6 only (mix-six)", "IPv4 and IPv6 (mix-both, mix-dual)", "share no IP family") {
			return fmt.Errorf("condition %+v", cond)
		}
		got := fmt.Sprint(cs.Status.MemberFamilies)
		if got != "[{[IPv4] 1} {[IPv6] 1} {[IPv4 IPv6] 2}]" {
			return fmt.Errorf("memberFamilies %s", got)
		}
		return nil
	})

	// The IPv4-only member leaves: what remains shares IPv6 at least.
	deleteMember(t, c, "mix-four")
	msg := waitFamiliesShared(t, c, "mix-six", metav1.ConditionFalse, meshv1.ReasonPartialFamilies)
	if strings.Contains(msg, "no common") {
		t.Errorf("mix-six after mix-four left: %q", msg)
	}
	waitFamiliesShared(t, c, "mix-dual", metav1.ConditionFalse, meshv1.ReasonPartialFamilies)
	// And when the IPv6-only member leaves, every member has both.
	deleteMember(t, c, "mix-six")
	waitFamiliesShared(t, c, "mix-dual", metav1.ConditionTrue, meshv1.ReasonAllFamiliesShared)
	waitFamiliesShared(t, c, "mix-both", metav1.ConditionTrue, meshv1.ReasonAllFamiliesShared)
}

// A family the set has no pool of gets no block (and no other family is
// assigned meanwhile), with a condition that names the family and the set;
// adding the pool assigns it. Editing spec.ipFamilies later adds a family,
// and removing one is reported, never applied.
func TestIPFamiliesRefusalsAndEdits(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	framework.StartHub(t, api.Config, controllers.Options{})
	create(t, c, framework.NewClusterSet("fam4", []string{"10.176.0.0/12"}))

	create(t, c, framework.NewMember("fam4-six", "fam4", framework.WithIPFamilies(meshv1.IPv6)))
	create(t, c, framework.NewMember("fam4-dual", "fam4", framework.WithIPFamilies(meshv1.IPv4, meshv1.IPv6)))
	create(t, c, framework.NewMember("fam4-four", "fam4", framework.WithIPFamilies(meshv1.IPv4)))
	for _, name := range []string{"fam4-six", "fam4-dual"} {
		m := waitCondition(t, c, name, meshv1.MemberCIDRAllocated, metav1.ConditionFalse, meshv1.ReasonNoPoolForFamily)
		if len(m.Status.PodCIDRs) != 0 {
			t.Errorf("%s holds %v though a family it asks for has no pool", name, m.Status.PodCIDRs)
		}
		msg := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated).Message
		if !containsAll(msg, "spec.ipFamilies lists IPv6", "ClusterSet fam4 has no IPv6 pool", "spec.podCIDRPools") {
			t.Errorf("%s message %q does not name the family, the set and the fix", name, msg)
		}
		if ready := meta.FindStatusCondition(m.Status.Conditions, meshv1.ConditionReady); ready == nil || ready.Reason != meshv1.ReasonNoPoolForFamily {
			t.Errorf("%s Ready %+v", name, ready)
		}
	}
	four := waitAssigned(t, c, "fam4-four", 20*time.Second)
	for _, cl := range claimsOf(t, c, "fam4") {
		if cl.Spec.Member != "fam4-four" {
			t.Errorf("claim %s held by %s, which was refused", cl.Name, cl.Spec.Member)
		}
	}

	// Adopting a range of a family spec.ipFamilies does not list is refused
	// by the API server, and the member keeps what it had.
	m := getMember(t, c, "fam4-four")
	m.Spec.PodCIDRs = []meshv1.CIDR{"fd20:176::/64"}
	if err := c.Update(ctx, m); err == nil || !strings.Contains(err.Error(), "spec.ipFamilies does not list") {
		t.Errorf("update adopting an IPv6 range with ipFamilies [IPv4]: %v", err)
	}

	// The pool arrives: the waiting members get their blocks.
	cs := &meshv1.ClusterSet{}
	if err := c.Get(ctx, client.ObjectKey{Name: "fam4"}, cs); err != nil {
		t.Fatal(err)
	}
	cs.Spec.PodCIDRPools = append(cs.Spec.PodCIDRPools, "fd20:176::/48")
	if err := c.Update(ctx, cs); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, c, "fam4-six", meshv1.MemberCIDRAllocated, metav1.ConditionTrue, meshv1.ReasonAllocated)
	if got := familiesOf(waitAssigned(t, c, "fam4-six", time.Second)); !slices.Equal(got, []meshv1.IPFamily{meshv1.IPv6}) {
		t.Errorf("fam4-six holds %v, want IPv6 only", got)
	}
	waitCondition(t, c, "fam4-dual", meshv1.MemberCIDRAllocated, metav1.ConditionTrue, meshv1.ReasonAllocated)
	if got := familiesOf(waitAssigned(t, c, "fam4-dual", time.Second)); !slices.Equal(got, []meshv1.IPFamily{meshv1.IPv4, meshv1.IPv6}) {
		t.Errorf("fam4-dual holds %v, want both", got)
	}
	// fam4-four, IPv4 only, still holds its one range.
	if got := waitAssigned(t, c, "fam4-four", time.Second); !slices.Equal(got, four) {
		t.Errorf("fam4-four holds %v, had %v", got, four)
	}

	// Adding a family assigns it, and keeps the range held.
	m = getMember(t, c, "fam4-four")
	m.Spec.IPFamilies = []meshv1.IPFamily{meshv1.IPv4, meshv1.IPv6}
	if err := c.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	var both []netip.Prefix
	eventually(t, 20*time.Second, "fam4-four gets an IPv6 block", func() error {
		both = waitAssigned(t, c, "fam4-four", time.Second)
		if len(both) != 2 || both[0] != four[0] || !both[1].Addr().Is6() {
			return fmt.Errorf("holds %v", both)
		}
		return nil
	})

	// Removing one is reported, not applied: the range stays, in the
	// status, the claims and the peer directory.
	m = getMember(t, c, "fam4-four")
	m.Spec.IPFamilies = []meshv1.IPFamily{meshv1.IPv6}
	if err := c.Update(ctx, m); err != nil {
		t.Fatal(err)
	}
	m = waitCondition(t, c, "fam4-four", meshv1.MemberCIDRAllocated, metav1.ConditionTrue, meshv1.ReasonFamiliesDiffer)
	if msg := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated).Message; !containsAll(msg, four[0].String(), "spec.ipFamilies no longer lists", "never changes") {
		t.Errorf("FamiliesDiffer message %q", msg)
	}
	if got := waitAssigned(t, c, "fam4-four", time.Second); !slices.Equal(got, both) {
		t.Errorf("fam4-four holds %v after removing IPv4 from spec.ipFamilies, want %v kept", got, both)
	}
	held := 0
	for _, cl := range claimsOf(t, c, "fam4") {
		if cl.Spec.Member == "fam4-four" && cl.Spec.ReleasedAt == nil {
			held++
		}
	}
	if held != 2 {
		t.Errorf("fam4-four holds %d live claims, want 2", held)
	}
	p := &meshv1.ClusterSetPeer{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: controllers.SetNamespace("fam4"), Name: "fam4-four"}, p); err != nil || len(p.Spec.PodCIDRs) != 2 {
		t.Errorf("fam4-four's peer entry %v (%v), want both ranges", p.Spec.PodCIDRs, err)
	}
}

// A member created without spec.ipFamilies (every member of a hub before
// the field existed) keeps its blocks of every family across a hub restart,
// and its CIDRAllocated condition is unchanged.
func TestMemberWithoutIPFamiliesKeepsItsBlocks(t *testing.T) {
	c := needAPI(t)
	hub := framework.StartHub(t, api.Config, controllers.Options{})
	create(t, c, framework.NewClusterSet("old", []string{"10.192.0.0/12", "fd20:192::/48"}))
	create(t, c, framework.NewMember("old-a", "old"))
	before := waitAssigned(t, c, "old-a", 20*time.Second)
	if len(before) != 2 {
		t.Fatalf("old-a holds %v, want a block of each family", before)
	}
	cond := meta.FindStatusCondition(waitCondition(t, c, "old-a", meshv1.MemberCIDRAllocated, metav1.ConditionTrue, meshv1.ReasonAllocated).Status.Conditions, meshv1.MemberCIDRAllocated)
	hub.Stop()
	framework.StartHub(t, api.Config, controllers.Options{})
	waitFamiliesShared(t, c, "old-a", metav1.ConditionTrue, meshv1.ReasonAllFamiliesShared)
	m := getMember(t, c, "old-a")
	if got := waitAssigned(t, c, "old-a", time.Second); !slices.Equal(got, before) {
		t.Errorf("old-a holds %v after a restart, had %v", got, before)
	}
	if after := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated); after.Message != cond.Message || after.Reason != cond.Reason {
		t.Errorf("CIDRAllocated changed: %+v, was %+v", after, cond)
	}
}
