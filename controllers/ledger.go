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
	"k8s.io/apimachinery/pkg/types"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/ipam"
)

// BlockLedger assigns member pod ranges. Per ClusterSet it keeps an
// ipam.Allocator that mirrors the CIDRClaim objects of that set.
//
// The claims are the record; the allocator is only a fast index over them.
// Claims follow the set's block grid: one claim per block, named by set and
// block, whatever range a member holds (a range wider than a block has one
// claim per block it covers, a narrower one the claim of the block that
// contains it). So the API server, which refuses a second object of a name,
// is what keeps two members out of one block; an index that is behind the
// claims (rebuilt while a pass was writing, or another hub's) can only cost
// a retry. A block counts as taken once its claim exists, so a hub that
// dies between choosing a block and writing it leaves either no claim (the
// block is still free) or claims naming the member (its next pass finds and
// completes them, or rolls them back).
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
	// inflight holds, per set and member, the ranges that passes have chosen
	// and are writing claims for: a rebuild keeps them taken.
	inflight map[string]map[string][]netip.Prefix
}

type setLedger struct {
	blockSize  meshv1.BlockSize
	quarantine time.Duration
	pools      []netip.Prefix
	alloc      *ipam.Allocator
	// uids maps a member name to the UID of the member whose ranges the index
	// holds under that name. Claims of a member that is gone, or of an
	// earlier member of the same name, are held under orphanKey instead, so
	// a member never inherits another's blocks.
	uids map[string]types.UID
}

// maxAdoptedBlocks bounds how many blocks one adopted range may cover: each
// is a claim.
const maxAdoptedBlocks = 256

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

// orphanKey is the index owner of claims whose member is gone or was
// created again (another UID). Member names hold no "/", so it is never a
// member's name.
func orphanKey(member string, uid types.UID) string { return member + "/" + string(uid) }

// ownerName is the member name of an index owner.
func ownerName(owner string) string {
	name, _, _ := strings.Cut(owner, "/")
	return name
}

// claimRange is the member's range a claim serves.
func claimRange(c *meshv1.CIDRClaim) (netip.Prefix, error) {
	if c.Spec.PodCIDR != "" {
		return netip.ParsePrefix(string(c.Spec.PodCIDR))
	}
	return netip.ParsePrefix(string(c.Spec.CIDR))
}

// ownedBy reports whether claim c belongs to member m (a claim written
// before claims carried the UID belongs to whoever has the name).
func ownedBy(c *meshv1.CIDRClaim, m *meshv1.MemberCluster) bool {
	return c.Spec.Member == m.Name && (c.Spec.MemberUID == "" || c.Spec.MemberUID == m.UID)
}

func blockLen(bs meshv1.BlockSize, p netip.Prefix) int {
	if p.Addr().Is4() {
		return int(bs.IPv4)
	}
	return int(bs.IPv6)
}

// blockCount is how many grid blocks of length bl range p occupies,
// saturated.
func blockCount(p netip.Prefix, bl int) uint64 {
	if p.Bits() >= bl {
		return 1
	}
	if bl-p.Bits() >= 64 {
		return ^uint64(0)
	}
	return 1 << uint(bl-p.Bits())
}

// gridBlocks returns the blocks of length bl that range p occupies: every
// block it covers, or the one that contains it. Callers bound blockCount.
func gridBlocks(p netip.Prefix, bl int) []netip.Prefix {
	first, _ := p.Addr().Prefix(bl)
	n := blockCount(p, bl)
	out := make([]netip.Prefix, 0, n)
	b := first.Addr().AsSlice()
	for range n {
		a, _ := netip.AddrFromSlice(b)
		out = append(out, netip.PrefixFrom(a, bl))
		// Add one at bit bl-1, the lowest bit of the block number.
		for i, carry := (bl-1)/8, byte(1)<<(7-uint(bl-1)%8); i >= 0 && carry != 0; i-- {
			sum := uint16(b[i]) + uint16(carry)
			b[i], carry = byte(sum), byte(sum>>8)
		}
	}
	return out
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
// A range that a member's status holds without its claims (a claim deleted
// by hand) is counted as taken too and its claims are written again, except
// for a member being deleted: its claims are gone because it released them.
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
	uids := make(map[string]types.UID, len(members.Items))
	for i := range members.Items {
		uids[members.Items[i].Name] = members.Items[i].UID
	}
	ownerOf := func(c *meshv1.CIDRClaim) string {
		if uid, ok := uids[c.Spec.Member]; ok && (c.Spec.MemberUID == "" || c.Spec.MemberUID == uid) {
			return c.Spec.Member
		}
		return orphanKey(c.Spec.Member, c.Spec.MemberUID)
	}

	var allocs []ipam.Allocation
	claimedBy := make(map[string]string, len(claims.Items))
	for i := range claims.Items {
		c := &claims.Items[i]
		p, err := claimRange(c)
		if err != nil {
			log.Error(err, "Skipping unparsable claim", "claim", c.Name)
			continue
		}
		a := ipam.Allocation{Owner: ownerOf(c), Prefix: p}
		if c.Spec.ReleasedAt != nil {
			a.QuarantinedUntil = c.Spec.ReleasedAt.Add(quarantine)
		} else {
			claimedBy[c.Name] = a.Owner
		}
		allocs = append(allocs, a)
	}
	var live []*meshv1.MemberCluster
	for i := range members.Items {
		m := &members.Items[i]
		if m.Spec.ClusterSet != cs.Name || !m.DeletionTimestamp.IsZero() {
			continue
		}
		live = append(live, m)
		for _, s := range m.Status.PodCIDRs {
			if p, err := netip.ParsePrefix(s); err == nil {
				allocs = append(allocs, ipam.Allocation{Owner: m.Name, Prefix: p})
			}
		}
	}
	for owner, ps := range l.inflight[cs.Name] {
		for _, p := range ps {
			allocs = append(allocs, ipam.Allocation{Owner: owner, Prefix: p})
		}
	}
	for _, c := range alloc.Rebuild(allocs) {
		log.Error(c.Err, "Allocation refused while rebuilding the ledger", "clusterset", cs.Name,
			"member", c.Allocation.Owner, "cidr", c.Allocation.Prefix)
	}
	for _, m := range live {
		for _, s := range m.Status.PodCIDRs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				continue
			}
			if owner, ok := alloc.Owner(p); !ok || owner != m.Name {
				continue
			}
			bl := blockLen(cs.Spec.BlockSize, p)
			if blockCount(p, bl) > maxAdoptedBlocks {
				log.Error(nil, "Assigned range covers too many blocks to claim each", "member", m.Name, "cidr", p)
				continue
			}
			for _, b := range gridBlocks(p, bl) {
				if claimedBy[ClaimName(cs.Name, b)] == m.Name {
					continue
				}
				if err := l.createClaim(ctx, cs.Name, quarantine, m, b, p); err != nil && !errors.Is(err, errTakenByOther) {
					return nil, err
				}
			}
		}
	}
	log.Info("Rebuilt block ledger", "clusterset", cs.Name, "claims", len(claims.Items), "allocations", len(alloc.Allocations()))
	return &setLedger{blockSize: cs.Spec.BlockSize, quarantine: quarantine, pools: pools, alloc: alloc, uids: uids}, nil
}

var errTakenByOther = errors.New("claim held by another member")

// createClaim writes the claim of block for range rng of member m. It
// succeeds when the claim exists already for the same member and range (a
// retried pass), ends a quarantine that is over (the set's expiry may not
// have run yet), and fails with errTakenByOther when another member holds
// the block.
func (l *BlockLedger) createClaim(ctx context.Context, set string, quarantine time.Duration, m *meshv1.MemberCluster, block, rng netip.Prefix) error {
	claim := &meshv1.CIDRClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name: ClaimName(set, block),
			Labels: map[string]string{
				meshv1.LabelClusterSet: set,
				meshv1.LabelMember:     m.Name,
				labelManagedBy:         managedByHub,
			},
		},
		Spec: meshv1.CIDRClaimSpec{ClusterSet: set, CIDR: meshv1.CIDR(block.String()), Member: m.Name, MemberUID: m.UID},
	}
	if rng != block {
		claim.Spec.PodCIDR = meshv1.CIDR(rng.String())
	}
	for range 3 {
		err := l.Client.Create(ctx, claim.DeepCopy())
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create claim %s for member %s: %w", claim.Name, m.Name, err)
		}
		var existing meshv1.CIDRClaim
		if err := l.Reader.Get(ctx, client.ObjectKeyFromObject(claim), &existing); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return fmt.Errorf("read claim %s: %w", claim.Name, err)
		}
		if r, err := claimRange(&existing); err == nil && r == rng && ownedBy(&existing, m) && existing.Spec.ReleasedAt == nil {
			return nil
		}
		if rel := existing.Spec.ReleasedAt; rel != nil {
			until := rel.Add(quarantine)
			if !until.After(l.now()) {
				if err := deleteExactly(ctx, l.Client, &existing); err != nil {
					return fmt.Errorf("delete expired claim %s: %w", existing.Name, err)
				}
				continue
			}
			return fmt.Errorf("%w: block %s was released by %q and is quarantined until %s", errTakenByOther, block,
				existing.Spec.Member, until.UTC().Format(time.RFC3339))
		}
		held := existing.Spec.PodCIDR
		if held == "" {
			held = existing.Spec.CIDR
		}
		return fmt.Errorf("%w: block %s is held by %q (range %s)", errTakenByOther, block, existing.Spec.Member, held)
	}
	return fmt.Errorf("create claim %s for member %s: the claim keeps changing; retrying", claim.Name, m.Name)
}

// deleteExactly deletes the claim as it was read: a claim that has changed
// or been replaced since (another UID) stays. Gone or changed is no error.
func deleteExactly(ctx context.Context, c client.Client, claim *meshv1.CIDRClaim) error {
	uid, rv := claim.UID, claim.ResourceVersion
	obj := &meshv1.CIDRClaim{ObjectMeta: metav1.ObjectMeta{Name: claim.Name}}
	err := c.Delete(ctx, obj, client.Preconditions{UID: &uid, ResourceVersion: &rv})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}

// Assign makes sure member m holds one block per family of cs and returns
// them. Blocks already in m's status are kept as they are; requested ranges
// are adopted when free and inside a pool; otherwise the lowest free block
// is taken. Either every family gets a block or none does.
//
// Blocks are chosen under the ledger's lock, and their claims are written
// outside it, so members of one set are assigned concurrently. Two passes can
// still never take one block: the index hands it to one of them, and the
// claim's name lets the API server refuse a second claim. A pass whose
// chosen block turns out to be claimed (the index was behind) rebuilds the
// index and chooses again; only a requested range is refused with Conflict.
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
	for attempt := 1; ; attempt++ {
		a, fresh, err := l.choose(ctx, cs, m, current, requested)
		if err != nil || !a.Assigned() {
			return a, err
		}
		a, retry, err := l.writeClaims(ctx, cs, m, a, fresh, requested)
		if !retry {
			return a, err
		}
		if attempt == 3 {
			return Assignment{}, fmt.Errorf("member %s: %d chosen blocks in a row were claimed already; retrying", m.Name, attempt)
		}
		logf.FromContext(ctx).V(1).Info("Chosen block was claimed already, choosing again", "member", m.Name)
	}
}

// writeClaims writes the claims of every block of a. When a block of a
// fresh range is claimed by another member, it rolls back the claims of the
// fresh ranges, drops the index (it was behind), and says whether to choose
// again (an allocated block) or refuses (a requested range).
func (l *BlockLedger) writeClaims(ctx context.Context, cs *meshv1.ClusterSet, m *meshv1.MemberCluster, a Assignment, fresh map[netip.Prefix]bool, requested map[ipam.Family]netip.Prefix) (Assignment, bool, error) {
	quarantine := cs.Spec.Quarantine()
	var failed error
	var failedRange netip.Prefix
write:
	for _, c := range a.PodCIDRs {
		p := netip.MustParsePrefix(c)
		for _, b := range gridBlocks(p, blockLen(cs.Spec.BlockSize, p)) {
			if !fresh[p] && l.claimCached(ctx, cs.Name, m, b, p) {
				continue
			}
			err := l.createClaim(ctx, cs.Name, quarantine, m, b, p)
			if err == nil {
				continue
			}
			if !fresh[p] && errors.Is(err, errTakenByOther) {
				// An assigned range is never taken away; report it loudly.
				logf.FromContext(ctx).Error(err, "Assigned range is claimed by another member", "member", m.Name, "cidr", p, "block", b)
				continue
			}
			failed, failedRange = err, p
			break write
		}
	}
	var undo []netip.Prefix
	if failed != nil {
		for p := range fresh {
			undo = append(undo, p)
		}
	}
	dropped, rbErr := l.rollBackRanges(ctx, cs.Name, m, undo)

	l.mu.Lock()
	defer l.mu.Unlock()
	l.settle(cs.Name, m.Name)
	if failed == nil {
		return a, false, nil
	}
	if s := l.sets[cs.Name]; s != nil {
		for _, p := range dropped {
			_ = s.alloc.Drop(m.Name, p)
		}
	}
	if rbErr != nil {
		delete(l.sets, cs.Name)
		return Assignment{}, false, kerrors.NewAggregate([]error{failed, rbErr})
	}
	if !errors.Is(failed, errTakenByOther) {
		return Assignment{}, false, failed
	}
	// The index was behind the claims (another hub wrote one, or it was
	// rebuilt while a pass was writing): the next choice rebuilds it.
	delete(l.sets, cs.Name)
	if requested[ipam.FamilyOf(failedRange.Addr())] == failedRange {
		return Assignment{Reason: meshv1.ReasonConflict, Message: fmt.Sprintf("requested range %s: %s", failedRange, strings.TrimPrefix(failed.Error(), errTakenByOther.Error()+": "))}, false, nil
	}
	return Assignment{}, true, nil
}

// settle ends the in-flight record of member's pass. Callers hold l.mu.
func (l *BlockLedger) settle(set, member string) {
	delete(l.inflight[set], member)
	if len(l.inflight[set]) == 0 {
		delete(l.inflight, set)
	}
}

// choose picks one block per family under the lock and records them in the
// index. fresh holds the ranges taken in this pass.
func (l *BlockLedger) choose(ctx context.Context, cs *meshv1.ClusterSet, m *meshv1.MemberCluster, current, requested map[ipam.Family]netip.Prefix) (Assignment, map[netip.Prefix]bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.setFor(ctx, cs)
	if err != nil {
		return Assignment{}, nil, err
	}
	if uid, ok := s.uids[m.Name]; ok && uid != m.UID {
		// The index holds ranges of an earlier member of this name.
		delete(l.sets, cs.Name)
		if s, err = l.setFor(ctx, cs); err != nil {
			return Assignment{}, nil, err
		}
		if uid, ok := s.uids[m.Name]; ok && uid != m.UID {
			return Assignment{}, nil, fmt.Errorf("member %s (uid %s) has been replaced by uid %s", m.Name, m.UID, uid)
		}
	}
	s.uids[m.Name] = m.UID
	member := m.Name

	// Ranges the index holds for the member that this pass will not keep
	// were left by a pass that died or failed (claims without the status):
	// roll them back before choosing.
	kept := map[netip.Prefix]bool{}
	fams, missing := memberFamilies(m, s.pools, current)
	if stale := staleRanges(s.alloc.Held(member), current, requested, fams, kept); len(stale) > 0 {
		logf.FromContext(ctx).Info("Rolling back ranges an unfinished pass left", "member", member, "ranges", stale)
		dropped, err := l.rollBackRanges(ctx, cs.Name, m, stale)
		for _, p := range dropped {
			_ = s.alloc.Drop(member, p)
		}
		if err != nil {
			return Assignment{}, nil, err
		}
	}

	var (
		out     []string
		fresh   = map[netip.Prefix]bool{}
		adopted bool
	)
	fail := func(reason, msg string) (Assignment, map[netip.Prefix]bool, error) {
		// Undo this pass: blocks new to the index were never written; a
		// range an unfinished pass left is rolled back with its claims.
		var undo []netip.Prefix
		for p := range fresh {
			if kept[p] {
				undo = append(undo, p)
			} else {
				_ = s.alloc.Drop(member, p)
			}
		}
		dropped, err := l.rollBackRanges(ctx, cs.Name, m, undo)
		for _, p := range dropped {
			_ = s.alloc.Drop(member, p)
		}
		return Assignment{Reason: reason, Message: msg}, nil, err
	}
	if len(missing) > 0 {
		return fail(meshv1.ReasonNoPoolForFamily, noPoolMessage(cs.Name, missing, s.pools))
	}
	for fam, req := range requested {
		// The API server refuses this too; a member stored before the
		// field's rule existed is refused here.
		if len(m.Spec.IPFamilies) > 0 && !slices.Contains(m.Spec.IPFamilies, apiFamily(fam)) {
			return fail(meshv1.ReasonInvalidRequest, fmt.Sprintf("spec.podCIDRs adopts %s, but spec.ipFamilies does not list %s: add %s to spec.ipFamilies or remove the range", req, fam, fam))
		}
	}
	for _, fam := range fams {
		if p, ok := current[fam]; ok {
			// Assigned ranges never change, even when their pool is gone;
			// keep the index in step.
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
			p = req
			adopted = true
			if bl := blockLen(cs.Spec.BlockSize, req); blockCount(req, bl) > maxAdoptedBlocks {
				return fail(meshv1.ReasonInvalidRequest, fmt.Sprintf("spec.podCIDRs: %s covers more than %d blocks of /%d; adopt a smaller range", req, maxAdoptedBlocks, bl))
			}
			err = s.alloc.Reserve(member, req)
		} else {
			p, err = s.alloc.Allocate(member, fam)
		}
		var conflict *ipam.ConflictError
		switch {
		case errors.Is(err, ipam.ErrOutsidePool):
			return fail(meshv1.ReasonOutsidePool, fmt.Sprintf("requested range %s lies outside every pool of ClusterSet %s (%s)", p, cs.Name, joinPrefixes(s.pools)))
		case errors.As(err, &conflict):
			return fail(meshv1.ReasonConflict, conflictMessage(conflict))
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
	if len(fresh) > 0 {
		if l.inflight == nil {
			l.inflight = map[string]map[string][]netip.Prefix{}
		}
		if l.inflight[cs.Name] == nil {
			l.inflight[cs.Name] = map[string][]netip.Prefix{}
		}
		for p := range fresh {
			l.inflight[cs.Name][member] = append(l.inflight[cs.Name][member], p)
		}
	}
	reason, msg := meshv1.ReasonAllocated, "assigned "+strings.Join(out, ", ")
	if adopted {
		reason, msg = meshv1.ReasonAdopted, "adopted "+strings.Join(out, ", ")
	}
	return Assignment{PodCIDRs: out, Reason: reason, Message: msg, Adopted: adopted, Unchanged: len(fresh) == 0}, fresh, nil
}

// staleRanges returns the ranges of held that a pass with these assigned and
// requested ranges does not keep: per family, the assigned range, else the
// requested one, else the lowest held one (what Allocate returns) is kept
// and recorded in kept.
func staleRanges(held []netip.Prefix, current, requested map[ipam.Family]netip.Prefix, wanted []ipam.Family, kept map[netip.Prefix]bool) []netip.Prefix {
	var stale []netip.Prefix
	seen := map[ipam.Family]bool{}
	for _, p := range held { // sorted, so the lowest of a family comes first
		fam := ipam.FamilyOf(p.Addr())
		keep := false
		if c, ok := current[fam]; ok {
			keep = p == c
		} else if r, ok := requested[fam]; ok {
			keep = p == r
		} else {
			// A block an unfinished pass left is reused only for a family
			// the member still wants: spec.ipFamilies may have dropped it
			// since (that pass's status write then conflicted).
			keep = !seen[fam] && slices.Contains(wanted, fam)
		}
		seen[fam] = true
		if keep {
			kept[p] = true
		} else {
			stale = append(stale, p)
		}
	}
	return stale
}

func conflictMessage(c *ipam.ConflictError) string {
	if !c.QuarantinedUntil.IsZero() {
		return fmt.Sprintf("requested range %s conflicts with %s, released by %q and quarantined until %s",
			c.Prefix, c.Held, ownerName(c.Holder), c.QuarantinedUntil.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("requested range %s conflicts with %s held by %q", c.Prefix, c.Held, ownerName(c.Holder))
}

// rollBackRanges deletes member m's claims of ranges, except those its
// status (read from the API server) holds, and returns the ranges it rolled
// back. A member that is gone is left to Release and the set's collection.
func (l *BlockLedger) rollBackRanges(ctx context.Context, set string, m *meshv1.MemberCluster, ranges []netip.Prefix) ([]netip.Prefix, error) {
	if len(ranges) == 0 {
		return nil, nil
	}
	live := &meshv1.MemberCluster{}
	if err := l.Reader.Get(ctx, client.ObjectKeyFromObject(m), live); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read member %s: %w", m.Name, err)
	}
	if live.UID != m.UID {
		return nil, nil
	}
	var todo []netip.Prefix
	for _, p := range ranges {
		if !slices.Contains(live.Status.PodCIDRs, p.String()) {
			todo = append(todo, p)
		}
	}
	if len(todo) == 0 {
		return nil, nil
	}
	var claims meshv1.CIDRClaimList
	if err := l.Reader.List(ctx, &claims, client.MatchingLabels{meshv1.LabelClusterSet: set, meshv1.LabelMember: m.Name}); err != nil {
		return nil, fmt.Errorf("list claims of member %s: %w", m.Name, err)
	}
	for i := range claims.Items {
		c := &claims.Items[i]
		r, err := claimRange(c)
		if err != nil || c.Spec.ReleasedAt != nil || !ownedBy(c, m) || !slices.Contains(todo, r) {
			continue
		}
		if err := deleteExactly(ctx, l.Client, c); err != nil {
			return nil, fmt.Errorf("roll back claim %s: %w", c.Name, err)
		}
	}
	return todo, nil
}

// claimCached reports whether the cache holds member m's live claim of
// block for range rng.
func (l *BlockLedger) claimCached(ctx context.Context, set string, m *meshv1.MemberCluster, block, rng netip.Prefix) bool {
	var c meshv1.CIDRClaim
	if err := l.Client.Get(ctx, client.ObjectKey{Name: ClaimName(set, block)}, &c); err != nil {
		return false
	}
	r, err := claimRange(&c)
	return err == nil && r == rng && ownedBy(&c, m) && c.Spec.ReleasedAt == nil
}

// Release puts every block of member m into quarantine. With cs nil (the
// set is gone) or no quarantine, the claims are deleted outright.
func (l *BlockLedger) Release(ctx context.Context, set string, cs *meshv1.ClusterSet, m *meshv1.MemberCluster) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var claims meshv1.CIDRClaimList
	if err := l.Reader.List(ctx, &claims, client.MatchingLabels{meshv1.LabelClusterSet: set, meshv1.LabelMember: m.Name}); err != nil {
		return fmt.Errorf("list claims of member %s: %w", m.Name, err)
	}
	now := metav1.NewTime(l.now())
	for i := range claims.Items {
		c := &claims.Items[i]
		if cs == nil || cs.Spec.Quarantine() == 0 {
			uid, rv := c.UID, c.ResourceVersion
			if err := l.Client.Delete(ctx, c, client.Preconditions{UID: &uid, ResourceVersion: &rv}); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete claim %s: %w", c.Name, err)
			}
			continue
		}
		if c.Spec.ReleasedAt != nil {
			continue
		}
		patch := client.MergeFromWithOptions(c.DeepCopy(), client.MergeFromWithOptimisticLock{})
		c.Spec.ReleasedAt = &now
		if err := l.Client.Patch(ctx, c, patch); err != nil {
			return fmt.Errorf("release claim %s: %w", c.Name, err)
		}
	}
	// The index follows the claims on its next use: its quarantines then end
	// when the claims' (whole seconds) do, which is when the set wakes up.
	delete(l.sets, set)
	return nil
}

// Expire deletes the claims of cs whose quarantine has passed, releases the
// claims whose member is gone (deleted without its finalizer, or created
// again under the same name), and returns how long until the next
// quarantine ends (zero when none is waiting).
func (l *BlockLedger) Expire(ctx context.Context, cs *meshv1.ClusterSet) (time.Duration, error) {
	// The cache is enough to find candidates: deletes carry the UID and
	// resourceVersion that were listed, so a claim that changed or was
	// replaced since stays, and an orphan is checked against the API server.
	var claims meshv1.CIDRClaimList
	if err := l.Client.List(ctx, &claims, client.MatchingLabels{meshv1.LabelClusterSet: cs.Name}, readOnly); err != nil {
		return 0, fmt.Errorf("list claims of clusterset %s: %w", cs.Name, err)
	}
	var members meshv1.MemberClusterList
	if err := l.Client.List(ctx, &members, readOnly); err != nil {
		return 0, fmt.Errorf("list members: %w", err)
	}
	uids := make(map[string]types.UID, len(members.Items))
	for i := range members.Items {
		uids[members.Items[i].Name] = members.Items[i].UID
	}
	quarantine := cs.Spec.Quarantine()
	now := l.now()
	var (
		next    time.Duration
		orphans []*meshv1.CIDRClaim
	)
	for i := range claims.Items {
		c := &claims.Items[i]
		if c.Spec.ReleasedAt == nil {
			if uid, ok := uids[c.Spec.Member]; !ok || c.Spec.MemberUID != "" && c.Spec.MemberUID != uid {
				orphans = append(orphans, c)
			}
			continue
		}
		if left := c.Spec.ReleasedAt.Add(quarantine).Sub(now); left > 0 {
			if next == 0 || left < next {
				next = left
			}
			continue
		}
		if err := deleteExactly(ctx, l.Client, c); err != nil {
			return 0, fmt.Errorf("delete expired claim %s: %w", c.Name, err)
		}
	}
	if len(orphans) > 0 {
		released, err := l.releaseOrphans(ctx, cs, orphans)
		if err != nil {
			return 0, err
		}
		if released && quarantine > 0 && (next == 0 || quarantine < next) {
			next = quarantine
		}
	}
	return next, nil
}

// releaseOrphans releases (into quarantine: their member's range may still
// be routed somewhere) the claims whose member the API server confirms gone.
func (l *BlockLedger) releaseOrphans(ctx context.Context, cs *meshv1.ClusterSet, orphans []*meshv1.CIDRClaim) (bool, error) {
	log := logf.FromContext(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	released := false
	for _, c := range orphans {
		m := &meshv1.MemberCluster{}
		err := l.Reader.Get(ctx, client.ObjectKey{Name: c.Spec.Member}, m)
		switch {
		case err == nil && ownedBy(c, m):
			continue
		case err != nil && !apierrors.IsNotFound(err):
			return false, fmt.Errorf("read member %s: %w", c.Spec.Member, err)
		}
		log.Info("Releasing the claim of a member that is gone", "claim", c.Name, "member", c.Spec.Member, "memberUID", c.Spec.MemberUID)
		released = true
		if cs.Spec.Quarantine() == 0 {
			if err := deleteExactly(ctx, l.Client, c); err != nil {
				return false, fmt.Errorf("delete orphaned claim %s: %w", c.Name, err)
			}
			continue
		}
		now := metav1.NewTime(l.now())
		rel := c.DeepCopy()
		patch := client.MergeFromWithOptions(c.DeepCopy(), client.MergeFromWithOptimisticLock{})
		rel.Spec.ReleasedAt = &now
		if err := l.Client.Patch(ctx, rel, patch); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return false, fmt.Errorf("release orphaned claim %s: %w", c.Name, err)
		}
	}
	if released {
		delete(l.sets, cs.Name)
	}
	return released, nil
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
	// Families maps every member that holds a block to the families it
	// holds blocks of.
	Families map[string]FamilySet
}

// FamilySet is a set of IP families: none, IPv4, IPv6 or both.
type FamilySet uint8

// The members of a FamilySet.
const (
	HasIPv4 FamilySet = 1 << iota
	HasIPv6
)

// FamiliesOf is the set of families of ranges (unparsable ones are skipped).
func FamiliesOf(ranges []string) FamilySet {
	var f FamilySet
	for _, r := range ranges {
		if p, err := netip.ParsePrefix(r); err == nil {
			f |= familyBit(ipam.FamilyOf(p.Addr()))
		}
	}
	return f
}

func familyBit(f ipam.Family) FamilySet {
	if f == ipam.IPv6 {
		return HasIPv6
	}
	return HasIPv4
}

// Families lists the members of f, IPv4 first.
func (f FamilySet) Families() []meshv1.IPFamily {
	var out []meshv1.IPFamily
	if f&HasIPv4 != 0 {
		out = append(out, meshv1.IPv4)
	}
	if f&HasIPv6 != 0 {
		out = append(out, meshv1.IPv6)
	}
	return out
}

// String is "IPv4", "IPv6", "IPv4 and IPv6" or "no family".
func (f FamilySet) String() string {
	fams := f.Families()
	if len(fams) == 0 {
		return "no family"
	}
	out := make([]string, len(fams))
	for i, x := range fams {
		out[i] = string(x)
	}
	return strings.Join(out, " and ")
}

// FamilySetOf is the set of the families listed.
func FamilySetOf(fams []meshv1.IPFamily) FamilySet {
	var f FamilySet
	for _, x := range fams {
		switch x {
		case meshv1.IPv4:
			f |= HasIPv4
		case meshv1.IPv6:
			f |= HasIPv6
		}
	}
	return f
}

// Usage returns the block counts of cs.
func (l *BlockLedger) Usage(ctx context.Context, cs *meshv1.ClusterSet) (Usage, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.setFor(ctx, cs)
	if err != nil {
		return Usage{}, err
	}
	fams := map[string]FamilySet{}
	for _, a := range s.alloc.Allocations() {
		if a.QuarantinedUntil.IsZero() && !strings.Contains(a.Owner, "/") {
			fams[a.Owner] |= familyBit(ipam.FamilyOf(a.Prefix.Addr()))
		}
	}
	return Usage{Stats: s.alloc.Stats(), Orphans: s.alloc.Orphaned(), Families: fams}, nil
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

// memberFamilies lists, IPv4 first, the IP families member m holds or gets
// a block of: those of its assigned ranges (kept whatever spec says, and
// even when the last pool of the family is gone), and those it asks for
// (spec.ipFamilies; empty: every family of pools). missing are the families
// it asks for and holds no range of that pools have none of.
func memberFamilies(m *meshv1.MemberCluster, pools []netip.Prefix, assigned map[ipam.Family]netip.Prefix) (fams, missing []ipam.Family) {
	for _, f := range []ipam.Family{ipam.IPv4, ipam.IPv6} {
		_, has := assigned[f]
		pooled := slices.ContainsFunc(pools, func(p netip.Prefix) bool { return ipam.FamilyOf(p.Addr()) == f })
		wanted := len(m.Spec.IPFamilies) == 0 && pooled || slices.Contains(m.Spec.IPFamilies, apiFamily(f))
		switch {
		case has || wanted && pooled:
			fams = append(fams, f)
		case wanted:
			missing = append(missing, f)
		}
	}
	return fams, missing
}

func noPoolMessage(set string, missing []ipam.Family, pools []netip.Prefix) string {
	names := make([]string, len(missing))
	for i, f := range missing {
		names[i] = f.String()
	}
	fams := strings.Join(names, " and ")
	return fmt.Sprintf("spec.ipFamilies lists %s, but ClusterSet %s has no %s pool (pools: %s): add one to the set's spec.podCIDRPools or remove %s from spec.ipFamilies; no new range is assigned until then",
		fams, set, fams, joinPrefixes(pools), fams)
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
