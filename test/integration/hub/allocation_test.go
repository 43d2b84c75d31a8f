package hub

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// Fifty members created at once get fifty distinct ranges inside the pool,
// and exactly one claim each.
func TestConcurrentJoinGetsDistinctRanges(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	pool := netip.MustParsePrefix("10.64.0.0/10")
	create(t, c, framework.NewClusterSet("fifty", []string{pool.String()}))

	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Create(context.Background(), framework.NewMember(fmt.Sprintf("fifty-%02d", i), "fifty")); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("create member: %v", err)
	}
	owners := map[string][]netip.Prefix{}
	for i := range n {
		name := fmt.Sprintf("fifty-%02d", i)
		ps := waitAssigned(t, c, name, 60*time.Second)
		if len(ps) != 1 || ps[0].Bits() != 16 {
			t.Errorf("member %s got %v, want one /16", name, ps)
		}
		owners[name] = ps
	}
	assertNoOverlap(t, owners, []netip.Prefix{pool})

	claims := claimsOf(t, c, "fifty")
	if len(claims) != n {
		t.Errorf("got %d claims, want %d", len(claims), n)
	}
	for _, cl := range claims {
		want := owners[cl.Spec.Member]
		if len(want) != 1 || want[0].String() != string(cl.Spec.CIDR) {
			t.Errorf("claim %s says %s holds %s, status says %v", cl.Name, cl.Spec.Member, cl.Spec.CIDR, want)
		}
	}
	// The set's status counts them.
	eventually(t, 20*time.Second, "clusterset counts 50 allocated", func() error {
		cs := &meshv1.ClusterSet{}
		if err := c.Get(context.Background(), client.ObjectKey{Name: "fifty"}, cs); err != nil {
			return err
		}
		if cs.Status.Members != n || len(cs.Status.Families) != 1 || cs.Status.Families[0].Allocated != n ||
			cs.Status.Families[0].Free != 64-n {
			return fmt.Errorf("status %+v", cs.Status)
		}
		return nil
	})
}

// A requested free range is adopted; a taken one is refused with Conflict,
// one outside the pools with OutsidePool, and nothing is assigned to either.
func TestAdoptionAndRefusals(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	create(t, c, framework.NewClusterSet("adopt", []string{"10.128.0.0/12", "fd10:128::/48"}))

	create(t, c, framework.NewMember("adopt-a", "adopt", framework.WithPodCIDRs("10.130.0.0/16")))
	m := waitCondition(t, c, "adopt-a", meshv1.MemberCIDRAllocated, metav1.ConditionTrue, meshv1.ReasonAdopted)
	if got := m.Status.PodCIDRs; len(got) != 2 || got[0] != "10.130.0.0/16" || got[1] != "fd10:128::/64" {
		t.Fatalf("adopt-a got %v, want the requested IPv4 range and the first IPv6 block", got)
	}

	create(t, c, framework.NewMember("adopt-b", "adopt", framework.WithPodCIDRs("10.130.0.0/16")))
	m = waitCondition(t, c, "adopt-b", meshv1.MemberCIDRAllocated, metav1.ConditionFalse, meshv1.ReasonConflict)
	if len(m.Status.PodCIDRs) != 0 {
		t.Errorf("adopt-b was refused but holds %v", m.Status.PodCIDRs)
	}
	if msg := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated).Message; !containsAll(msg, "10.130.0.0/16", "adopt-a") {
		t.Errorf("conflict message %q does not name the range and its holder", msg)
	}

	create(t, c, framework.NewMember("adopt-c", "adopt", framework.WithPodCIDRs("192.168.0.0/16")))
	m = waitCondition(t, c, "adopt-c", meshv1.MemberCIDRAllocated, metav1.ConditionFalse, meshv1.ReasonOutsidePool)
	if len(m.Status.PodCIDRs) != 0 {
		t.Errorf("adopt-c was refused but holds %v", m.Status.PodCIDRs)
	}
	// Ready says why too.
	if ready := meta.FindStatusCondition(m.Status.Conditions, meshv1.ConditionReady); ready == nil || ready.Status != metav1.ConditionFalse || ready.Reason != meshv1.ReasonOutsidePool {
		t.Errorf("Ready of a refused member: %+v", ready)
	}

	// Refused members hold no claim: the failed pass rolled back its IPv6 block.
	for _, cl := range claimsOf(t, c, "adopt") {
		if cl.Spec.Member != "adopt-a" {
			t.Errorf("claim %s held by refused member %s", cl.Name, cl.Spec.Member)
		}
	}

	// Fixing the request lets the member in.
	m = getMember(t, c, "adopt-b")
	patch := client.MergeFrom(m.DeepCopy())
	m.Spec.PodCIDRs = []meshv1.CIDR{"10.131.0.0/16"}
	if err := c.Patch(context.Background(), m, patch); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, c, "adopt-b", meshv1.MemberCIDRAllocated, metav1.ConditionTrue, meshv1.ReasonAdopted)
}

// A small pool runs out: the next member gets PoolExhausted and nothing;
// when a member leaves, its block comes back only after the quarantine.
func TestExhaustionAndRecovery(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{PeerDrainTimeout: time.Second})
	const quarantine = 3
	create(t, c, framework.NewClusterSet("small", []string{"10.200.0.0/22"}, framework.WithBlockSize(24, 0), framework.WithQuarantine(quarantine)))
	for i := range 4 {
		create(t, c, framework.NewMember(fmt.Sprintf("small-%d", i), "small"))
		waitAssigned(t, c, fmt.Sprintf("small-%d", i), 20*time.Second)
	}
	create(t, c, framework.NewMember("small-late", "small"))
	m := waitCondition(t, c, "small-late", meshv1.MemberCIDRAllocated, metav1.ConditionFalse, meshv1.ReasonPoolExhausted)
	if len(m.Status.PodCIDRs) != 0 {
		t.Fatalf("exhausted member holds %v", m.Status.PodCIDRs)
	}
	eventually(t, 10*time.Second, "clusterset says PoolExhausted", func() error {
		cs := &meshv1.ClusterSet{}
		if err := c.Get(context.Background(), client.ObjectKey{Name: "small"}, cs); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(cs.Status.Conditions, meshv1.ClusterSetPoolExhausted) {
			return fmt.Errorf("conditions %+v", cs.Status.Conditions)
		}
		return nil
	})

	freed := getMember(t, c, "small-1").Status.PodCIDRs[0]
	deleteMember(t, c, "small-1")
	var released *meshv1.CIDRClaim
	for _, cl := range claimsOf(t, c, "small") {
		if cl.Spec.Member == "small-1" {
			released = cl.DeepCopy()
		}
	}
	if released == nil || released.Spec.ReleasedAt == nil {
		t.Fatalf("the deleted member's claim is not in quarantine: %+v", released)
	}

	got := waitAssigned(t, c, "small-late", 30*time.Second)
	if got[0].String() != freed {
		t.Errorf("late member got %s, want the freed block %s", got[0], freed)
	}
	// It was handed out only after the quarantine had passed.
	m = getMember(t, c, "small-late")
	assignedAt := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated).LastTransitionTime
	notBefore := released.Spec.ReleasedAt.Add(quarantine * time.Second).Truncate(time.Second)
	if assignedAt.Time.Before(notBefore) {
		t.Errorf("freed block reassigned at %s, before its quarantine ended at %s", assignedAt.Time, notBefore)
	}
}

// A hub stopped and started again keeps every assignment and gives the next
// member a block nobody holds.
func TestHubRestartKeepsAssignments(t *testing.T) {
	c := needAPI(t)
	hub := framework.StartHub(t, api.Config, controllers.Options{})
	create(t, c, framework.NewClusterSet("restart", []string{"10.96.0.0/13"}))
	before := map[string][]netip.Prefix{}
	for i := range 5 {
		name := fmt.Sprintf("restart-%d", i)
		create(t, c, framework.NewMember(name, "restart"))
		before[name] = waitAssigned(t, c, name, 20*time.Second)
	}
	hub.Stop()

	framework.StartHub(t, api.Config, controllers.Options{})
	create(t, c, framework.NewMember("restart-new", "restart"))
	newRange := waitAssigned(t, c, "restart-new", 20*time.Second)
	after := map[string][]netip.Prefix{"restart-new": newRange}
	for name, want := range before {
		got := getMember(t, c, name).Status.PodCIDRs
		if len(got) != 1 || got[0] != want[0].String() {
			t.Errorf("member %s had %v before the restart, %v after", name, want, got)
		}
		after[name] = want
	}
	assertNoOverlap(t, after, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/13")})
	// The lowest free block follows the five taken ones.
	if newRange[0].String() != "10.101.0.0/16" {
		t.Errorf("new member after restart got %s, want 10.101.0.0/16", newRange[0])
	}
}

// Removing a pool whose blocks are in use keeps them assigned and says so.
func TestRemovedPoolStaysInUse(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	cs := framework.NewClusterSet("shrink", []string{"10.32.0.0/16", "10.48.0.0/16"}, framework.WithBlockSize(20, 0))
	create(t, c, cs)
	create(t, c, framework.NewMember("shrink-a", "shrink"))
	got := waitAssigned(t, c, "shrink-a", 20*time.Second)
	if got[0].String() != "10.32.0.0/20" {
		t.Fatalf("shrink-a got %v, want the lowest block 10.32.0.0/20", got)
	}
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(cs), cs); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(cs.DeepCopy())
	cs.Spec.PodCIDRPools = []meshv1.CIDR{"10.48.0.0/16"}
	if err := c.Patch(context.Background(), cs, patch); err != nil {
		t.Fatalf("remove pool: %v", err)
	}
	eventually(t, 20*time.Second, "RemovedPoolsInUse reported", func() error {
		if err := c.Get(context.Background(), client.ObjectKeyFromObject(cs), cs); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(cs.Status.Conditions, meshv1.ClusterSetRemovedPoolsInUse)
		if cond == nil || cond.Status != metav1.ConditionTrue || !containsAll(cond.Message, "10.32.0.0/20", "shrink-a") {
			return fmt.Errorf("condition %+v", cond)
		}
		return nil
	})
	if got := getMember(t, c, "shrink-a").Status.PodCIDRs; len(got) != 1 || got[0] != "10.32.0.0/20" {
		t.Errorf("shrink-a lost its range when its pool was removed: %v", got)
	}
	create(t, c, framework.NewMember("shrink-b", "shrink"))
	if got := waitAssigned(t, c, "shrink-b", 20*time.Second); got[0].String() != "10.48.0.0/20" {
		t.Errorf("shrink-b got %v, want 10.48.0.0/20 from the remaining pool", got)
	}
}

// A member of a ClusterSet that does not exist is not accepted and gets
// nothing; once the set appears it is assigned.
func TestMemberWaitsForClusterSet(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	create(t, c, framework.NewMember("early-a", "later"))
	waitCondition(t, c, "early-a", meshv1.MemberAccepted, metav1.ConditionFalse, meshv1.ReasonClusterSetNotFound)
	create(t, c, framework.NewClusterSet("later", []string{"10.160.0.0/16"}, framework.WithBlockSize(24, 0)))
	waitAssigned(t, c, "early-a", 20*time.Second)
	waitCondition(t, c, "early-a", meshv1.MemberAccepted, metav1.ConditionTrue, meshv1.ReasonAccepted)
}

// Removing the last pool of a family keeps the members' ranges of that
// family assigned (their claims stay) and reports them, like any removed
// pool: a later pass of the member must not drop the range from its status.
func TestRemovedLastPoolOfFamilyStaysAssigned(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	cs := framework.NewClusterSet("onefam", []string{"10.36.0.0/16", "fd36::/48"}, framework.WithBlockSize(20, 64))
	create(t, c, cs)
	create(t, c, framework.NewMember("onefam-a", "onefam"))
	got := waitAssigned(t, c, "onefam-a", 20*time.Second)
	if len(got) != 2 || got[1].String() != "fd36::/64" {
		t.Fatalf("onefam-a got %v, want an IPv4 block and fd36::/64", got)
	}
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(cs), cs); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(cs.DeepCopy())
	cs.Spec.PodCIDRPools = []meshv1.CIDR{"10.36.0.0/16"}
	if err := c.Patch(context.Background(), cs, patch); err != nil {
		t.Fatalf("remove the IPv6 pool: %v", err)
	}
	eventually(t, 20*time.Second, "RemovedPoolsInUse names the IPv6 block", func() error {
		if err := c.Get(context.Background(), client.ObjectKeyFromObject(cs), cs); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(cs.Status.Conditions, meshv1.ClusterSetRemovedPoolsInUse)
		if cond == nil || cond.Status != metav1.ConditionTrue || !containsAll(cond.Message, "fd36::/64", "onefam-a") {
			return fmt.Errorf("condition %+v", cond)
		}
		return nil
	})
	// A gateway makes the member go through a full pass after the change.
	eventually(t, 20*time.Second, "namespace of onefam-a", func() error {
		if getMember(t, c, "onefam-a").Status.Namespace == "" {
			return fmt.Errorf("no namespace in status")
		}
		return nil
	})
	create(t, c, gateway("onefam-a", "gw", "node-1", "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "192.0.2.36:51820"))
	eventually(t, 20*time.Second, "the member's pass after the pool change", func() error {
		if len(getMember(t, c, "onefam-a").Status.Gateways) != 1 {
			return fmt.Errorf("gateway not in status yet")
		}
		return nil
	})
	m := getMember(t, c, "onefam-a")
	if len(m.Status.PodCIDRs) != 2 || m.Status.PodCIDRs[1] != "fd36::/64" {
		t.Errorf("onefam-a holds %v after its IPv6 pool was removed, want %v kept", m.Status.PodCIDRs, got)
	}
	if cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated); cond == nil || cond.Status != metav1.ConditionTrue {
		t.Errorf("CIDRAllocated %+v", cond)
	}
	var v6 int
	for _, cl := range claimsOf(t, c, "onefam") {
		if netip.MustParsePrefix(string(cl.Spec.CIDR)).Addr().Is6() && cl.Spec.ReleasedAt == nil {
			v6++
		}
	}
	if v6 != 1 {
		t.Errorf("%d live IPv6 claims, want the member's one", v6)
	}
}

// A member deleted without its finalizer (someone removed it by hand)
// never releases its claim: the hub collects the claim of a member that is
// gone, through the quarantine, and the block goes to the next member.
func TestClaimOfForcedDeletionIsCollected(t *testing.T) {
	c := needAPI(t)
	framework.StartHub(t, api.Config, controllers.Options{})
	create(t, c, framework.NewClusterSet("forced", []string{"10.201.0.0/24"}, framework.WithBlockSize(24, 0), framework.WithQuarantine(1)))
	create(t, c, framework.NewMember("forced-a", "forced"))
	got := waitAssigned(t, c, "forced-a", 20*time.Second)
	eventually(t, 20*time.Second, "forced-a has its finalizer", func() error {
		if len(getMember(t, c, "forced-a").Finalizers) == 0 {
			return fmt.Errorf("no finalizer yet")
		}
		return nil
	})
	m := getMember(t, c, "forced-a")
	patch := client.MergeFrom(m.DeepCopy())
	m.Finalizers = nil
	if err := c.Patch(context.Background(), m, patch); err != nil {
		t.Fatal(err)
	}
	deleteMember(t, c, "forced-a")

	create(t, c, framework.NewMember("forced-b", "forced"))
	if b := waitAssigned(t, c, "forced-b", 30*time.Second); b[0] != got[0] {
		t.Errorf("forced-b got %v, want the collected block %v", b, got)
	}
	claims := claimsOf(t, c, "forced")
	if len(claims) != 1 || claims[0].Spec.Member != "forced-b" {
		t.Errorf("claims %+v, want forced-b's only", claims)
	}
}
