package hub

import (
	"context"
	"net/netip"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// These tests drive the block ledger directly against the API server, with
// no hub running, so that each one can set up exactly the interleaving it
// is about: a second hub whose index is behind, a clock at the end of a
// quarantine, a rebuild between a release and a finalizer.

// ledgerOn returns a ledger that reads and writes straight to the API
// server, as a hub does when it rebuilds.
func ledgerOn(now func() time.Time) *controllers.BlockLedger {
	return &controllers.BlockLedger{Client: api.Client, Reader: api.Client, Now: now}
}

// ledgerSet creates a ClusterSet and removes it, its members and its claims
// when the test ends.
func ledgerSet(t *testing.T, name string, pools []string, opts ...framework.ClusterSetOption) *meshv1.ClusterSet {
	t.Helper()
	c := needAPI(t)
	cs := framework.NewClusterSet(name, pools, opts...)
	create(t, c, cs)
	t.Cleanup(func() {
		ctx := context.Background()
		var members meshv1.MemberClusterList
		if err := c.List(ctx, &members); err == nil {
			for i := range members.Items {
				m := &members.Items[i]
				if m.Spec.ClusterSet != name {
					continue
				}
				if len(m.Finalizers) > 0 {
					patch := client.MergeFrom(m.DeepCopy())
					m.Finalizers = nil
					_ = c.Patch(ctx, m, patch)
				}
				_ = c.Delete(ctx, m)
			}
		}
		_ = c.DeleteAllOf(ctx, &meshv1.CIDRClaim{}, client.MatchingLabels{meshv1.LabelClusterSet: name})
		_ = c.Delete(ctx, cs)
	})
	return cs
}

// ledgerMember creates a member and returns it as the API server has it.
func ledgerMember(t *testing.T, name, set string, opts ...framework.MemberOption) *meshv1.MemberCluster {
	t.Helper()
	m := framework.NewMember(name, set, opts...)
	create(t, needAPI(t), m)
	return m
}

// setStatus writes the ranges an assignment gave m into its status, as the
// member reconciler does after Assign.
func setStatus(t *testing.T, m *meshv1.MemberCluster, a controllers.Assignment) {
	t.Helper()
	m.Status.PodCIDRs = a.PodCIDRs
	if err := api.Client.Status().Update(context.Background(), m); err != nil {
		t.Fatalf("write status of %s: %v", m.Name, err)
	}
}

func mustAssign(t *testing.T, l *controllers.BlockLedger, cs *meshv1.ClusterSet, m *meshv1.MemberCluster) controllers.Assignment {
	t.Helper()
	a, err := l.Assign(context.Background(), cs, m)
	if err != nil {
		t.Fatalf("assign %s: %v", m.Name, err)
	}
	return a
}

// A hub whose index was built before another hub adopted a range (a leader
// election gone wrong, or an index rebuilt while a claim was being written)
// cannot hand out a block inside that range: claims are named by grid block,
// so the API server refuses the second claim whatever the index says.
func TestLedgerStaleIndexCannotDoubleAssign(t *testing.T) {
	needAPI(t)
	ctx := context.Background()
	cs := ledgerSet(t, "grid", []string{"10.244.0.0/14"}, framework.WithBlockSize(20, 0))

	// Three ledgers build their index now, while the set is empty.
	staleAdopt, staleAlloc, staleSmall := ledgerOn(nil), ledgerOn(nil), ledgerOn(nil)
	for _, l := range []*controllers.BlockLedger{staleAdopt, staleAlloc, staleSmall} {
		if _, err := l.Usage(ctx, cs); err != nil {
			t.Fatal(err)
		}
	}
	current := ledgerOn(nil)
	a := ledgerMember(t, "grid-a", "grid", framework.WithPodCIDRs("10.244.0.0/16"))
	if got := mustAssign(t, current, cs, a); got.Reason != meshv1.ReasonAdopted || len(got.PodCIDRs) != 1 || got.PodCIDRs[0] != "10.244.0.0/16" {
		t.Fatalf("grid-a: %+v, want 10.244.0.0/16 adopted", got)
	}
	small := ledgerMember(t, "grid-s", "grid", framework.WithPodCIDRs("10.245.0.0/22"))
	if got := mustAssign(t, current, cs, small); got.Reason != meshv1.ReasonAdopted {
		t.Fatalf("grid-s: %+v, want 10.245.0.0/22 adopted", got)
	}

	// A /20 inside the adopted /16, asked of a stale index.
	b := ledgerMember(t, "grid-b", "grid", framework.WithPodCIDRs("10.244.16.0/20"))
	if got := mustAssign(t, staleAdopt, cs, b); got.Assigned() || got.Reason != meshv1.ReasonConflict || !containsAll(got.Message, "grid-a") {
		t.Errorf("grid-b asked a stale index for a block of grid-a's /16: %+v, want Conflict naming grid-a", got)
	}
	// Another /22 of the block that holds grid-s's /22.
	d := ledgerMember(t, "grid-d", "grid", framework.WithPodCIDRs("10.245.8.0/22"))
	if got := mustAssign(t, staleSmall, cs, d); got.Assigned() || got.Reason != meshv1.ReasonConflict || !containsAll(got.Message, "grid-s") {
		t.Errorf("grid-d asked a stale index for the block of grid-s: %+v, want Conflict naming grid-s", got)
	}
	// The lowest free block of a stale index is grid-a's first block: the
	// member gets another block, not a Conflict (it asked for nothing).
	e := ledgerMember(t, "grid-e", "grid")
	got := mustAssign(t, staleAlloc, cs, e)
	if !got.Assigned() || got.Reason != meshv1.ReasonAllocated {
		t.Fatalf("grid-e: %+v, want a free block", got)
	}
	owners := map[string][]netip.Prefix{
		"grid-a": {netip.MustParsePrefix("10.244.0.0/16")},
		"grid-s": {netip.MustParsePrefix("10.245.0.0/22")},
		"grid-e": {netip.MustParsePrefix(got.PodCIDRs[0])},
	}
	assertNoOverlap(t, owners, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/14")})

	// The claims follow the grid: one per /20 of the adopted /16, and the
	// enclosing /20 of the /22; refused members hold none.
	byName := map[string]meshv1.CIDRClaim{}
	for _, cl := range claimsOf(t, api.Client, "grid") {
		byName[cl.Name] = cl
		if cl.Spec.Member == "grid-b" || cl.Spec.Member == "grid-d" {
			t.Errorf("refused member %s holds claim %s", cl.Spec.Member, cl.Name)
		}
	}
	for i := range 16 {
		block := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(16 * i), 0}), 20)
		if cl, ok := byName[controllers.ClaimName("grid", block)]; !ok || cl.Spec.Member != "grid-a" {
			t.Errorf("block %s of grid-a's /16: claim %+v", block, cl.Spec)
		}
	}
	if cl, ok := byName[controllers.ClaimName("grid", netip.MustParsePrefix("10.245.0.0/20"))]; !ok || cl.Spec.Member != "grid-s" {
		t.Errorf("enclosing block of grid-s's /22: claim %+v", cl.Spec)
	}
	if len(byName) != 18 {
		t.Errorf("%d claims, want 16 + 1 + 1", len(byName))
	}
}

// A block whose quarantine has ended is handed out even though the claim
// that quarantined it is still there (the set's expiry has not run yet):
// the joining member gets it, not a Conflict naming the departed member.
func TestLedgerQuarantineEndNoSpuriousConflict(t *testing.T) {
	needAPI(t)
	ctx := context.Background()
	cs := ledgerSet(t, "qend", []string{"10.250.0.0/20"}, framework.WithBlockSize(20, 0), framework.WithQuarantine(60))
	now := time.Now().Truncate(time.Second)
	l := ledgerOn(func() time.Time { return now })

	gone := ledgerMember(t, "qend-gone", "qend")
	if got := mustAssign(t, l, cs, gone); got.PodCIDRs[0] != "10.250.0.0/20" {
		t.Fatalf("qend-gone: %+v", got)
	}
	if err := l.Release(ctx, "qend", cs, gone); err != nil {
		t.Fatal(err)
	}
	joiner := ledgerMember(t, "qend-new", "qend")
	if got := mustAssign(t, l, cs, joiner); got.Assigned() || got.Reason != meshv1.ReasonPoolExhausted {
		t.Fatalf("qend-new during the quarantine: %+v, want PoolExhausted", got)
	}

	now = now.Add(61 * time.Second)
	got := mustAssign(t, l, cs, joiner)
	if !got.Assigned() || got.PodCIDRs[0] != "10.250.0.0/20" || got.Reason != meshv1.ReasonAllocated {
		t.Fatalf("qend-new after the quarantine: %+v, want 10.250.0.0/20 allocated", got)
	}
	claims := claimsOf(t, api.Client, "qend")
	if len(claims) != 1 || claims[0].Spec.Member != "qend-new" || claims[0].Spec.ReleasedAt != nil {
		t.Errorf("claims %+v, want one live claim of qend-new", claims)
	}
}

// With quarantineSeconds 0 a leaving member's claim is deleted at release;
// a rebuild that runs before the member's finalizer is gone must not write
// it again from the member's status, or the block leaks for good.
func TestLedgerZeroQuarantineReleaseDoesNotLeak(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	cs := ledgerSet(t, "qzero", []string{"10.251.0.0/23"}, framework.WithBlockSize(24, 0), framework.WithQuarantine(0))
	l := ledgerOn(nil)

	m := framework.NewMember("qzero-a", "qzero")
	m.Finalizers = []string{meshv1.Finalizer}
	create(t, c, m)
	setStatus(t, m, mustAssign(t, l, cs, m))
	if err := c.Delete(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx, "qzero", cs, m); err != nil {
		t.Fatal(err)
	}
	// Another pass rebuilds the index before the finalizer is removed.
	l.Forget("qzero")
	if _, err := l.Usage(ctx, cs); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(m), m); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(m.DeepCopy())
	m.Finalizers = nil
	if err := c.Patch(ctx, m, patch); err != nil {
		t.Fatal(err)
	}

	if claims := claimsOf(t, c, "qzero"); len(claims) != 0 {
		t.Errorf("claims left after the member is gone: %+v", claims)
	}
	u, err := ledgerOn(nil).Usage(ctx, cs)
	if err != nil {
		t.Fatal(err)
	}
	if u.Stats[0].Allocated != 0 || u.Stats[0].Free != 2 {
		t.Errorf("a fresh hub counts %+v, want both blocks free", u.Stats[0])
	}
}

// staleList serves claim lists from a snapshot, as a cache that has not
// caught up.
type staleList struct {
	client.Client
	claims meshv1.CIDRClaimList
}

func (s staleList) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if l, ok := list.(*meshv1.CIDRClaimList); ok {
		s.claims.DeepCopyInto(l)
		return nil
	}
	return s.Client.List(ctx, list, opts...)
}

// Expiry deletes what it listed, not whatever now has that name: a claim
// listed as expired that has since been replaced by another member's claim
// of the same block stays.
func TestLedgerExpiryDeletesOnlyWhatItListed(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	cs := ledgerSet(t, "qexp", []string{"10.252.0.0/24"}, framework.WithBlockSize(24, 0), framework.WithQuarantine(60))
	now := time.Now().Truncate(time.Second)
	clock := func() time.Time { return now }
	l := ledgerOn(clock)
	gone := ledgerMember(t, "qexp-gone", "qexp")
	mustAssign(t, l, cs, gone)
	if err := l.Release(ctx, "qexp", cs, gone); err != nil {
		t.Fatal(err)
	}
	var snapshot meshv1.CIDRClaimList
	if err := c.List(ctx, &snapshot, client.MatchingLabels{meshv1.LabelClusterSet: "qexp"}); err != nil {
		t.Fatal(err)
	}

	// The quarantine ends; the block goes to a new member (its claim
	// replaces the expired one) before the stale cache has seen any of it.
	now = now.Add(61 * time.Second)
	if err := c.Delete(ctx, &snapshot.Items[0]); err != nil {
		t.Fatal(err)
	}
	joiner := ledgerMember(t, "qexp-new", "qexp")
	if got := mustAssign(t, ledgerOn(clock), cs, joiner); !got.Assigned() {
		t.Fatalf("qexp-new: %+v", got)
	}

	stale := &controllers.BlockLedger{Client: staleList{Client: c, claims: snapshot}, Reader: c, Now: clock}
	if _, err := stale.Expire(ctx, cs); err != nil {
		t.Fatal(err)
	}
	claims := claimsOf(t, c, "qexp")
	if len(claims) != 1 || claims[0].Spec.Member != "qexp-new" {
		t.Errorf("claims after a stale expiry: %+v, want qexp-new's", claims)
	}
}

// writeClaims writes the claims a pass that died midway left: those of the
// first n blocks of range rng of member m.
func writeClaims(t *testing.T, set string, m *meshv1.MemberCluster, rng string, n int) {
	t.Helper()
	p := netip.MustParsePrefix(rng)
	block := p.Addr()
	for range n {
		b := netip.PrefixFrom(block, 20)
		create(t, api.Client, &meshv1.CIDRClaim{
			ObjectMeta: metav1.ObjectMeta{Name: controllers.ClaimName(set, b), Labels: map[string]string{
				meshv1.LabelClusterSet: set, meshv1.LabelMember: m.Name, "app.kubernetes.io/managed-by": "archipelago-hub",
			}},
			Spec: meshv1.CIDRClaimSpec{ClusterSet: set, CIDR: meshv1.CIDR(b.String()), Member: m.Name, MemberUID: m.UID, PodCIDR: meshv1.CIDR(rng)},
		})
		a := block.As4()
		a[2] += 16
		block = netip.AddrFrom4(a)
	}
}

// claimsByMember counts the live claims of set per member, and per member
// and range.
func claimsByMember(t *testing.T, set string) (map[string]int, map[string]int) {
	t.Helper()
	members, ranges := map[string]int{}, map[string]int{}
	for _, cl := range claimsOf(t, api.Client, set) {
		if cl.Spec.ReleasedAt != nil {
			continue
		}
		members[cl.Spec.Member]++
		ranges[cl.Spec.Member+" "+string(cl.Spec.PodCIDR)]++
	}
	return members, ranges
}

// A hub that died while writing the 16 claims of an adopted /16 left some
// of them. The member's next pass completes the adoption if the member
// still asks for that range, and rolls it back if it asks for another; the
// claims of a member that is gone are collected, and a new member of the
// same name does not inherit them.
func TestLedgerUnfinishedAdoption(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	cs := ledgerSet(t, "partial", []string{"10.64.0.0/14"}, framework.WithBlockSize(20, 0), framework.WithQuarantine(0))

	same := ledgerMember(t, "partial-same", "partial", framework.WithPodCIDRs("10.64.0.0/16"))
	writeClaims(t, "partial", same, "10.64.0.0/16", 5)
	moved := ledgerMember(t, "partial-moved", "partial", framework.WithPodCIDRs("10.65.0.0/16"))
	writeClaims(t, "partial", moved, "10.65.0.0/16", 7)
	gone := ledgerMember(t, "partial-gone", "partial", framework.WithPodCIDRs("10.66.0.0/16"))
	writeClaims(t, "partial", gone, "10.66.0.0/16", 3)
	if err := c.Delete(ctx, gone); err != nil {
		t.Fatal(err)
	}
	// moved now asks for another range.
	patch := client.MergeFrom(moved.DeepCopy())
	moved.Spec.PodCIDRs = []meshv1.CIDR{"10.67.0.0/16"}
	if err := c.Patch(ctx, moved, patch); err != nil {
		t.Fatal(err)
	}

	l := ledgerOn(nil) // the restarted hub
	if got := mustAssign(t, l, cs, same); got.Reason != meshv1.ReasonAdopted || got.PodCIDRs[0] != "10.64.0.0/16" {
		t.Errorf("partial-same: %+v, want its /16 adopted", got)
	}
	if got := mustAssign(t, l, cs, moved); got.Reason != meshv1.ReasonAdopted || got.PodCIDRs[0] != "10.67.0.0/16" {
		t.Errorf("partial-moved: %+v, want its new /16 adopted", got)
	}
	_, ranges := claimsByMember(t, "partial")
	if ranges["partial-same 10.64.0.0/16"] != 16 || ranges["partial-moved 10.67.0.0/16"] != 16 || ranges["partial-moved 10.65.0.0/16"] != 0 {
		t.Errorf("claims per member and range: %v, want 16 of each adopted /16 and none of the abandoned one", ranges)
	}
	// The abandoned range is free again.
	taker := ledgerMember(t, "partial-taker", "partial", framework.WithPodCIDRs("10.65.16.0/20"))
	if got := mustAssign(t, l, cs, taker); got.Reason != meshv1.ReasonAdopted {
		t.Errorf("partial-taker asks for a block of the abandoned range: %+v", got)
	}

	// A member created again under the departed member's name gets a block
	// of its own, not the claims of the one before.
	again := ledgerMember(t, "partial-gone", "partial")
	got := mustAssign(t, l, cs, again)
	if !got.Assigned() || netip.MustParsePrefix("10.66.0.0/16").Overlaps(netip.MustParsePrefix(got.PodCIDRs[0])) {
		t.Errorf("partial-gone created again: %+v, want a block outside the old one's 10.66.0.0/16", got)
	}
	if _, err := l.Expire(ctx, cs); err != nil {
		t.Fatal(err)
	}
	members, ranges := claimsByMember(t, "partial")
	if members["partial-gone"] != 1 || ranges["partial-gone 10.66.0.0/16"] != 0 {
		t.Errorf("after collection: claims per member and range %v, want only the new partial-gone's one block", ranges)
	}
	for _, cl := range claimsOf(t, c, "partial") {
		if cl.Spec.Member == "partial-gone" && cl.Spec.MemberUID != again.UID {
			t.Errorf("claim %s of the departed partial-gone survived the collection", cl.Name)
		}
	}
	if members["partial-taker"] != 1 {
		t.Errorf("partial-taker holds %d claims, want 1", members["partial-taker"])
	}
}
