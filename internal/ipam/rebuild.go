package ipam

import (
	"fmt"
	"slices"
	"strings"
)

// Rebuild replaces the whole state with allocs, typically what the hub reads back from
// the status of every member after a restart, plus the quarantines it persisted.
//
// Allocations outside the current pools are accepted (see Orphaned); quarantines that have
// already ended are dropped. The result does not depend on the order of allocs: they are
// sorted, held ones before quarantined ones (a running member must keep its range; a
// quarantine only delays reuse), then by owner, prefix and quarantine end, and the first
// claimant of a block wins. Every other allocation is returned as a Conflict, in that
// order, and is not recorded; exact duplicates count once.
func (a *Allocator) Rebuild(allocs []Allocation) []Conflict {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()

	sorted := slices.Clone(allocs)
	slices.SortFunc(sorted, rebuildOrder)

	for i, o := range a.occ {
		if o != nil {
			a.occ[i] = newOccupancy(o.fam, o.blockLen)
		}
	}
	a.byOwner = make(map[string][]*record, len(sorted))
	a.held = nil
	for _, p := range a.pools {
		p.reset()
	}

	var conflicts []Conflict
	for i, al := range sorted {
		if i > 0 && sameAllocation(sorted[i-1], al) {
			continue
		}
		quarantined := !al.QuarantinedUntil.IsZero()
		if quarantined && !al.QuarantinedUntil.After(now) {
			continue
		}
		if err := a.admit(al); err != nil {
			conflicts = append(conflicts, Conflict{Allocation: al, Err: err})
			continue
		}
		a.add(&record{owner: al.Owner, prefix: al.Prefix, until: al.QuarantinedUntil, qidx: -1})
	}
	return conflicts
}

// admit returns why al cannot be recorded in the state being rebuilt, or nil.
func (a *Allocator) admit(al Allocation) error {
	if al.Owner == "" {
		return fmt.Errorf("rebuild %s: %w", al.Prefix, ErrInvalidOwner)
	}
	if err := checkCanonical(al.Prefix); err != nil {
		return fmt.Errorf("rebuild %s of %q: %w", al.Prefix, al.Owner, err)
	}
	fam := FamilyOf(al.Prefix.Addr())
	o := a.occ[fam.index()]
	if o == nil {
		return fmt.Errorf("rebuild %s of %q: %w: no %s block length configured", al.Prefix, al.Owner, ErrNoPool, fam)
	}
	if r := o.firstOverlap(al.Prefix); r != nil {
		return fmt.Errorf("rebuild %s of %q: %w", al.Prefix, al.Owner, conflictWith(al.Prefix, r))
	}
	return nil
}

func rebuildOrder(x, y Allocation) int {
	xq, yq := !x.QuarantinedUntil.IsZero(), !y.QuarantinedUntil.IsZero()
	if xq != yq {
		if xq {
			return 1
		}
		return -1
	}
	if c := strings.Compare(x.Owner, y.Owner); c != 0 {
		return c
	}
	if c := comparePrefix(x.Prefix, y.Prefix); c != 0 {
		return c
	}
	return x.QuarantinedUntil.Compare(y.QuarantinedUntil)
}

func sameAllocation(x, y Allocation) bool {
	return x.Owner == y.Owner && x.Prefix == y.Prefix && x.QuarantinedUntil.Equal(y.QuarantinedUntil)
}
