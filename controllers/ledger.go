package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/ipam"
)

// BlockLedger assigns member pod ranges. Per ClusterSet it keeps an
// ipam.Allocator that mirrors the CIDRClaim objects of that set.
//
// The claims are the record; the allocator is only a fast index over them. A
// block counts as taken once its claim exists, so a hub that dies between
// choosing a block and writing it leaves either no claim (the block is still
// free) or a claim naming the member (the next pass finds and reuses it).
type BlockLedger struct {
	// Client writes claims.
	Client client.Client
	// Reader reads claims and members straight from the API server when a
	// set is (re)built, so a cache that has not caught up cannot hide a claim.
	Reader client.Reader
	// Now is the clock (quarantine); nil means time.Now.
	Now func() time.Time

	mu   sync.Mutex
	sets map[string]*setLedger
}

type setLedger struct {
	blockSize  meshv1.BlockSize
	quarantine time.Duration
	pools      []netip.Prefix
	alloc      *ipam.Allocator
}

// Assignment is the outcome of BlockLedger.Assign.
type Assignment struct {
	// PodCIDRs holds one block per family of the set, in family order; empty
	// unless every family succeeded.
	PodCIDRs []string
	// Reason is a CIDRAllocated condition reason.
	Reason string
	// Message explains Reason to a user.
	Message string
	// Adopted is true when a requested range was honoured.
	Adopted bool
	// Unchanged is true when every block came from the member's status:
	// nothing was assigned in this pass.
	Unchanged bool
}

// Assigned reports whether every family got a block.
func (a Assignment) Assigned() bool { return len(a.PodCIDRs) > 0 }

func (l *BlockLedger) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Forget drops what the ledger knows of a set; the next use rebuilds it.
func (l *BlockLedger) Forget(set string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.sets, set)
}

// setFor returns the ledger of cs, built or rebuilt as its spec requires.
// Callers hold l.mu.
func (l *BlockLedger) setFor(ctx context.Context, cs *meshv1.ClusterSet) (*setLedger, error) {
	pools, err := parsePools(cs.Spec.PodCIDRPools)
	if err != nil {
		return nil, err
	}
	quarantine := cs.Spec.Quarantine()
	if s, ok := l.sets[cs.Name]; ok && s.blockSize == cs.Spec.BlockSize && s.quarantine == quarantine {
		if !slices.Equal(s.pools, pools) {
			if err := s.alloc.SetPools(pools); err != nil {
				return nil, fmt.Errorf("clusterset %s: set pools: %w", cs.Name, err)
			}
			s.pools = pools
		}
		return s, nil
	}
	s, err := l.rebuild(ctx, cs, pools, quarantine)
	if err != nil {
		return nil, err
	}
	if l.sets == nil {
		l.sets = map[string]*setLedger{}
	}
	l.sets[cs.Name] = s
	return s, nil
}

// rebuild loads every claim of the set and every member's assigned ranges.
// A range that a member's status holds without a claim (a claim deleted by
// hand) is counted as taken too and its claim is written again.
func (l *BlockLedger) rebuild(ctx context.Context, cs *meshv1.ClusterSet, pools []netip.Prefix, quarantine time.Duration) (*setLedger, error) {
	log := logf.FromContext(ctx)
	alloc, err := ipam.New(ipam.Config{
		Pools:        pools,
		IPv4BlockLen: int(cs.Spec.BlockSize.IPv4),
		IPv6BlockLen: int(cs.Spec.BlockSize.IPv6),
		Quarantine:   quarantine,
		Now:          l.now,
	})
	if err != nil {
		return nil, fmt.Errorf("clusterset %s: %w", cs.Name, err)
	}
	var claims meshv1.CIDRClaimList
	if err := l.Reader.List(ctx, &claims, client.MatchingLabels{meshv1.LabelClusterSet: cs.Name}); err != nil {
		return nil, fmt.Errorf("list claims of clusterset %s: %w", cs.Name, err)
	}
	var members meshv1.MemberClusterList
	if err := l.Reader.List(ctx, &members); err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	var allocs []ipam.Allocation
	claimed := map[netip.Prefix]bool{}
	for i := range claims.Items {
		c := &claims.Items[i]
		p, err := netip.ParsePrefix(string(c.Spec.CIDR))
		if err != nil {
			log.Error(err, "Skipping unparsable claim", "claim", c.Name)
			continue
		}
		a := ipam.Allocation{Owner: c.Spec.Member, Prefix: p}
		if c.Spec.ReleasedAt != nil {
			a.QuarantinedUntil = c.Spec.ReleasedAt.Add(quarantine)
		}
		claimed[p] = true
		allocs = append(allocs, a)
	}
	var unclaimed []ipam.Allocation
	for i := range members.Items {
		m := &members.Items[i]
		if m.Spec.ClusterSet != cs.Name {
			continue
		}
		for _, s := range m.Status.PodCIDRs {
			p, err := netip.ParsePrefix(s)
			if err != nil || claimed[p] {
				continue
			}
			a := ipam.Allocation{Owner: m.Name, Prefix: p}
			allocs = append(allocs, a)
			unclaimed = append(unclaimed, a)
		}
	}
	for _, c := range alloc.Rebuild(allocs) {
		log.Error(c.Err, "Allocation refused while rebuilding the ledger", "clusterset", cs.Name,
			"member", c.Allocation.Owner, "cidr", c.Allocation.Prefix)
	}
	for _, a := range unclaimed {
		if owner, ok := alloc.Owner(a.Prefix); ok && owner == a.Owner {
			if err := l.createClaim(ctx, cs.Name, a.Owner, a.Prefix); err != nil && !errors.Is(err, errTakenByOther) {
				return nil, err
			}
		}
	}
	log.Info("Rebuilt block ledger", "clusterset", cs.Name, "claims", len(claims.Items), "allocations", len(alloc.Allocations()))
	return &setLedger{blockSize: cs.Spec.BlockSize, quarantine: quarantine, pools: pools, alloc: alloc}, nil
}

var errTakenByOther = errors.New("claim held by another member")

// createClaim writes the claim for block. It succeeds when the claim exists
// already for the same member (a retried pass) and fails with
// errTakenByOther when another member holds it.
func (l *BlockLedger) createClaim(ctx context.Context, set, member string, block netip.Prefix) error {
	claim := &meshv1.CIDRClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name: ClaimName(set, block),
			Labels: map[string]string{
				meshv1.LabelClusterSet: set,
				meshv1.LabelMember:     member,
				labelManagedBy:         managedByHub,
			},
		},
		Spec: meshv1.CIDRClaimSpec{ClusterSet: set, CIDR: meshv1.CIDR(block.String()), Member: member},
	}
	err := l.Client.Create(ctx, claim)
	if err == nil {
		return nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create claim %s for member %s: %w", claim.Name, member, err)
	}
	var existing meshv1.CIDRClaim
	if err := l.Reader.Get(ctx, client.ObjectKeyFromObject(claim), &existing); err != nil {
		return fmt.Errorf("read claim %s: %w", claim.Name, err)
	}
	if existing.Spec.Member == member && existing.Spec.ReleasedAt == nil {
		return nil
	}
	return fmt.Errorf("%w: claim %s is held by %q", errTakenByOther, claim.Name, existing.Spec.Member)
}

// Assign makes sure member m holds one block per family of cs and returns
// them. Blocks already in m's status are kept as they are; requested ranges
// are adopted when free and inside a pool; otherwise the lowest free block
// is taken. Either every family gets a block or none does.
//
// Blocks are chosen under the ledger's lock, and their claims are written
// outside it, so members of one set are assigned concurrently. Two passes can
// still never take one block: the index hands it to one of them, and the
// claim's name lets the API server refuse a second claim.
func (l *BlockLedger) Assign(ctx context.Context, cs *meshv1.ClusterSet, m *meshv1.MemberCluster) (Assignment, error) {
	requested := map[ipam.Family]netip.Prefix{}
	for _, c := range m.Spec.PodCIDRs {
		p, err := netip.ParsePrefix(string(c))
		if err != nil {
			return Assignment{Reason: meshv1.ReasonInvalidRequest, Message: fmt.Sprintf("spec.podCIDRs: %v", err)}, nil
		}
		requested[ipam.FamilyOf(p.Addr())] = p
	}
	current := map[ipam.Family]netip.Prefix{}
	for _, c := range m.Status.PodCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil {
			current[ipam.FamilyOf(p.Addr())] = p
		}
	}

	a, fresh, err := l.choose(ctx, cs, m.Name, current, requested)
	if err != nil || !a.Assigned() {
		return a, err
	}
	// Write the claims: the new blocks, and those of assigned ranges whose
	// claim the cache does not know (a claim deleted by hand is repaired).
	written := map[netip.Prefix]bool{}
	for _, c := range a.PodCIDRs {
		p := netip.MustParsePrefix(c)
		if !fresh[p] && l.claimCached(ctx, cs.Name, m.Name, p) {
			continue
		}
		if err := l.createClaim(ctx, cs.Name, m.Name, p); err != nil {
			if !fresh[p] && errors.Is(err, errTakenByOther) {
				// An assigned range is never taken away; report it loudly.
				logf.FromContext(ctx).Error(err, "Assigned range is claimed by another member", "member", m.Name, "cidr", p)
				continue
			}
			l.Forget(cs.Name)
			l.deleteClaims(ctx, cs.Name, written)
			if errors.Is(err, errTakenByOther) {
				// The index was behind the claims (another hub wrote one):
				// the next pass rebuilds it from the claims.
				return Assignment{Reason: meshv1.ReasonConflict, Message: err.Error()}, nil
			}
			return Assignment{}, err
		}
		if fresh[p] {
			written[p] = true
		}
	}
	return a, nil
}

// choose picks one block per family under the lock and records them in the
// index. fresh holds the blocks taken in this pass.
func (l *BlockLedger) choose(ctx context.Context, cs *meshv1.ClusterSet, member string, current, requested map[ipam.Family]netip.Prefix) (Assignment, map[netip.Prefix]bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.setFor(ctx, cs)
	if err != nil {
		return Assignment{}, nil, err
	}
	var (
		out     []string
		fresh   = map[netip.Prefix]bool{}
		adopted bool
	)
	fail := func(reason, msg string) (Assignment, map[netip.Prefix]bool, error) {
		if len(fresh) > 0 {
			// Blocks of this pass were never written anywhere: drop the
			// index so the next use rebuilds it from the claims, without
			// putting them in quarantine.
			delete(l.sets, cs.Name)
		}
		return Assignment{Reason: reason, Message: msg}, nil, nil
	}
	for _, fam := range families(s.pools) {
		if p, ok := current[fam]; ok {
			// Assigned ranges never change; keep the index in step.
			if owner, held := s.alloc.Owner(p); !held || owner != member {
				if err := s.alloc.Reserve(member, p); err != nil {
					logf.FromContext(ctx).Error(err, "Assigned range conflicts with the ledger", "member", member, "cidr", p)
				}
			}
			out = append(out, p.String())
			continue
		}
		var p netip.Prefix
		if req, ok := requested[fam]; ok {
			err = s.alloc.Reserve(member, req)
			p = req
			adopted = true
		} else {
			p, err = s.alloc.Allocate(member, fam)
		}
		switch {
		case errors.Is(err, ipam.ErrOutsidePool):
			return fail(meshv1.ReasonOutsidePool, fmt.Sprintf("requested range %s lies outside every pool of ClusterSet %s (%s)", p, cs.Name, joinPrefixes(s.pools)))
		case errors.Is(err, ipam.ErrConflict):
			return fail(meshv1.ReasonConflict, fmt.Sprintf("requested range %v", err))
		case errors.Is(err, ipam.ErrNoPool):
			return fail(meshv1.ReasonOutsidePool, fmt.Sprintf("ClusterSet %s has no %s pool for requested range %s", cs.Name, fam, p))
		case errors.Is(err, ipam.ErrPoolExhausted):
			return fail(meshv1.ReasonPoolExhausted, fmt.Sprintf("no free %s block in ClusterSet %s: %v", fam, cs.Name, err))
		case err != nil:
			return fail(meshv1.ReasonInvalidRequest, err.Error())
		}
		fresh[p] = true
		out = append(out, p.String())
	}
	if len(out) == 0 {
		return Assignment{Reason: meshv1.ReasonPoolExhausted, Message: "ClusterSet has no pools"}, nil, nil
	}
	reason, msg := meshv1.ReasonAllocated, "assigned "+strings.Join(out, ", ")
	if adopted {
		reason, msg = meshv1.ReasonAdopted, "adopted "+strings.Join(out, ", ")
	}
	return Assignment{PodCIDRs: out, Reason: reason, Message: msg, Adopted: adopted, Unchanged: len(fresh) == 0}, fresh, nil
}

// claimCached reports whether the cache holds member's live claim for p.
func (l *BlockLedger) claimCached(ctx context.Context, set, member string, p netip.Prefix) bool {
	var c meshv1.CIDRClaim
	if err := l.Client.Get(ctx, client.ObjectKey{Name: ClaimName(set, p)}, &c); err != nil {
		return false
	}
	return c.Spec.Member == member && c.Spec.ReleasedAt == nil
}

// deleteClaims removes the claims a failed pass wrote: their blocks were
// never published in any status, so they need no quarantine.
func (l *BlockLedger) deleteClaims(ctx context.Context, set string, blocks map[netip.Prefix]bool) {
	for p := range blocks {
		claim := &meshv1.CIDRClaim{ObjectMeta: metav1.ObjectMeta{Name: ClaimName(set, p)}}
		if err := l.Client.Delete(ctx, claim); err != nil && !apierrors.IsNotFound(err) {
			logf.FromContext(ctx).Error(err, "Roll back claim", "claim", claim.Name)
		}
	}
}

// Release puts every block of member into quarantine. With cs nil (the set
// is gone) the claims are deleted outright.
func (l *BlockLedger) Release(ctx context.Context, set string, cs *meshv1.ClusterSet, member string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var claims meshv1.CIDRClaimList
	if err := l.Reader.List(ctx, &claims, client.MatchingLabels{meshv1.LabelClusterSet: set, meshv1.LabelMember: member}); err != nil {
		return fmt.Errorf("list claims of member %s: %w", member, err)
	}
	now := metav1.NewTime(l.now())
	for i := range claims.Items {
		c := &claims.Items[i]
		if cs == nil || cs.Spec.Quarantine() == 0 {
			if err := l.Client.Delete(ctx, c); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete claim %s: %w", c.Name, err)
			}
			continue
		}
		if c.Spec.ReleasedAt != nil {
			continue
		}
		patch := client.MergeFrom(c.DeepCopy())
		c.Spec.ReleasedAt = &now
		if err := l.Client.Patch(ctx, c, patch); err != nil {
			return fmt.Errorf("release claim %s: %w", c.Name, err)
		}
	}
	// The index follows the claims on its next use.
	delete(l.sets, set)
	return nil
}

// Expire deletes the claims of cs whose quarantine has passed and returns how
// long until the next one does (zero when none is waiting).
func (l *BlockLedger) Expire(ctx context.Context, cs *meshv1.ClusterSet) (time.Duration, error) {
	// The cache is enough here: a claim it has not seen yet is not released,
	// and deleting one that is gone already is harmless.
	var claims meshv1.CIDRClaimList
	if err := l.Client.List(ctx, &claims, client.MatchingLabels{meshv1.LabelClusterSet: cs.Name}, readOnly); err != nil {
		return 0, fmt.Errorf("list claims of clusterset %s: %w", cs.Name, err)
	}
	quarantine := cs.Spec.Quarantine()
	now := l.now()
	var next time.Duration
	for i := range claims.Items {
		c := &claims.Items[i]
		if c.Spec.ReleasedAt == nil {
			continue
		}
		if left := c.Spec.ReleasedAt.Add(quarantine).Sub(now); left > 0 {
			if next == 0 || left < next {
				next = left
			}
			continue
		}
		if err := l.Client.Delete(ctx, c); err != nil && !apierrors.IsNotFound(err) {
			return 0, fmt.Errorf("delete expired claim %s: %w", c.Name, err)
		}
	}
	return next, nil
}

// DeleteClaims removes every claim of a set (the set itself is being deleted).
func (l *BlockLedger) DeleteClaims(ctx context.Context, set string) error {
	l.Forget(set)
	return l.Client.DeleteAllOf(ctx, &meshv1.CIDRClaim{}, client.MatchingLabels{meshv1.LabelClusterSet: set})
}

// Usage is what the ledger counts of a set, for ClusterSet.status.
type Usage struct {
	Stats   []ipam.PoolStats
	Orphans []ipam.Allocation
}

// Usage returns the block counts of cs.
func (l *BlockLedger) Usage(ctx context.Context, cs *meshv1.ClusterSet) (Usage, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.setFor(ctx, cs)
	if err != nil {
		return Usage{}, err
	}
	return Usage{Stats: s.alloc.Stats(), Orphans: s.alloc.Orphaned()}, nil
}

func parsePools(cidrs []meshv1.CIDR) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(string(c))
		if err != nil {
			return nil, fmt.Errorf("spec.podCIDRPools: %w", err)
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out, nil
}

// families lists the IP families of pools, IPv4 first.
func families(pools []netip.Prefix) []ipam.Family {
	var out []ipam.Family
	for _, f := range []ipam.Family{ipam.IPv4, ipam.IPv6} {
		for _, p := range pools {
			if ipam.FamilyOf(p.Addr()) == f {
				out = append(out, f)
				break
			}
		}
	}
	return out
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
