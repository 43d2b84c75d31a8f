package ipam

import (
	"cmp"
	"container/heap"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Config configures an Allocator.
type Config struct {
	// Pools are the supernets blocks are carved from, IPv4 and/or IPv6. They must be
	// canonical (no host bits) and must not overlap each other. Order does not matter:
	// blocks are handed out from the lowest pool address up.
	Pools []netip.Prefix
	// IPv4BlockLen is the prefix length of an IPv4 block, e.g. 16. Required if there is an
	// IPv4 pool; may be set without one so that SetPools can add IPv4 pools later.
	IPv4BlockLen int
	// IPv6BlockLen is the prefix length of an IPv6 block, e.g. 64.
	IPv6BlockLen int
	// Quarantine is how long a released block stays unavailable, so that peers drop their
	// routes to the old owner before a new owner gets it. Zero frees blocks at once.
	Quarantine time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Allocation is a prefix held by an owner, or released by it and still quarantined.
type Allocation struct {
	Owner  string
	Prefix netip.Prefix
	// QuarantinedUntil is zero while Owner holds Prefix. Otherwise Owner released it and
	// nobody may take it before this time.
	QuarantinedUntil time.Time
}

// Conflict is an allocation that Rebuild could not accept.
type Conflict struct {
	Allocation Allocation
	// Err says why: a *ConflictError (errors.Is ErrConflict) naming the earlier claimant
	// that won, or an error wrapping ErrNotCanonical, ErrInvalidOwner or ErrNoPool.
	Err error
}

// PoolStats counts the blocks of one pool.
//
// IPv6 pools can have 2^64 blocks, one more than a uint64 holds: Total and Free saturate
// at math.MaxUint64 (so Free is then a lower bound, off by at most one), and Bits gives the
// exact size, Total = 2^Bits.
type PoolStats struct {
	Family   Family
	Pool     netip.Prefix
	BlockLen int
	// Bits is the block length minus the pool length.
	Bits        int
	Total       uint64
	Allocated   uint64
	Quarantined uint64
	Free        uint64
}

// Allocator hands out non-overlapping blocks from a set of pools. It is safe for
// concurrent use.
type Allocator struct {
	mu         sync.Mutex
	now        func() time.Time
	quarantine time.Duration
	blockLen   [2]int
	occ        [2]*occupancy // nil for a family without a block length
	pools      []*pool       // sorted by address, so IPv4 first
	byOwner    map[string][]*record
	held       quarantineHeap
}

// New returns an empty Allocator for cfg. Fill it with Rebuild to resume after a restart.
func New(cfg Config) (*Allocator, error) {
	if cfg.Quarantine < 0 {
		return nil, fmt.Errorf("%w: negative quarantine %s", ErrInvalidConfig, cfg.Quarantine)
	}
	a := &Allocator{
		now:        cfg.Now,
		quarantine: cfg.Quarantine,
		blockLen:   [2]int{cfg.IPv4BlockLen, cfg.IPv6BlockLen},
		byOwner:    make(map[string][]*record),
	}
	if a.now == nil {
		a.now = time.Now
	}
	for _, f := range []Family{IPv4, IPv6} {
		bl := a.blockLen[f.index()]
		if bl == 0 {
			continue
		}
		if bl < 1 || bl > f.addrBits() {
			return nil, fmt.Errorf("%w: %s block length /%d must be between /1 and /%d",
				ErrInvalidConfig, f, bl, f.addrBits())
		}
		a.occ[f.index()] = newOccupancy(f, bl)
	}
	pools, err := a.makePools(cfg.Pools)
	if err != nil {
		return nil, err
	}
	a.pools = pools
	return a, nil
}

func (a *Allocator) makePools(prefixes []netip.Prefix) ([]*pool, error) {
	sorted := slices.Clone(prefixes)
	slices.SortFunc(sorted, comparePrefix)
	pools := make([]*pool, 0, len(sorted))
	for i, p := range sorted {
		if err := checkCanonical(p); err != nil {
			return nil, fmt.Errorf("%w: pool %s: %w", ErrInvalidConfig, p, err)
		}
		// Sorted by address then length, a pool overlapping any later one also overlaps
		// its successor.
		if i > 0 && sorted[i-1].Overlaps(p) {
			return nil, fmt.Errorf("%w: pools %s and %s overlap", ErrInvalidConfig, sorted[i-1], p)
		}
		f := FamilyOf(p.Addr())
		bl := a.blockLen[f.index()]
		switch {
		case bl == 0:
			return nil, fmt.Errorf("%w: pool %s needs an %s block length", ErrInvalidConfig, p, f)
		case bl < p.Bits():
			return nil, fmt.Errorf("%w: %s block length /%d is larger than pool %s; use a block length of at least /%d",
				ErrInvalidConfig, f, bl, p, p.Bits())
		case bl-p.Bits() > 64:
			// Block indices are uint64; nobody needs more than 2^64 blocks.
			return nil, fmt.Errorf("%w: pool %s has 2^%d blocks of /%d, more than 2^64; use a longer pool prefix",
				ErrInvalidConfig, p, bl-p.Bits(), bl)
		}
		pools = append(pools, newPool(p, bl))
	}
	return pools, nil
}

// SetPools replaces the pools, keeping the block lengths, every allocation and every
// quarantine. Allocations that no longer lie inside a pool stay valid: they keep their
// blocks and are listed by Orphaned until released. To change a block length, build a new
// Allocator and Rebuild it from Allocations; Rebuild reports what no longer fits. On error
// nothing changes.
func (a *Allocator) SetPools(prefixes []netip.Prefix) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	pools, err := a.makePools(prefixes)
	if err != nil {
		return err
	}
	// The cursors of the new pools start at block 0 and skip taken blocks once.
	a.pools = pools
	return nil
}

// Allocate returns the lowest free block of family fam over all pools, taken and
// quarantined blocks skipped, and records it as held by owner. If owner already holds a
// prefix of that family (allocated or reserved, even outside the current pools), Allocate
// returns the lowest such prefix and changes nothing.
func (a *Allocator) Allocate(owner string, fam Family) (netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if owner == "" {
		return netip.Prefix{}, fmt.Errorf("allocate %s block: %w", fam, ErrInvalidOwner)
	}
	if !fam.valid() {
		return netip.Prefix{}, fmt.Errorf("allocate block for %q: invalid family %s", owner, fam)
	}
	a.expire(a.now())
	if r := a.heldBy(owner, fam); r != nil {
		return r.prefix, nil
	}
	o := a.occ[fam.index()]
	found := false
	for _, p := range a.pools {
		if p.fam != fam {
			continue
		}
		found = true
		if addr, ok := p.take(o); ok {
			r := &record{owner: owner, prefix: netip.PrefixFrom(addr, p.blockLen), qidx: -1}
			a.add(r)
			return r.prefix, nil
		}
	}
	if !found {
		return netip.Prefix{}, fmt.Errorf("allocate %s block for %q: %w; add an %s pool to the ClusterSet",
			fam, owner, ErrNoPool, fam)
	}
	return netip.Prefix{}, fmt.Errorf("allocate %s block for %q: %w: %s", fam, owner, ErrPoolExhausted, a.exhaustion(fam))
}

// exhaustion describes the pools of fam for an error message.
func (a *Allocator) exhaustion(fam Family) string {
	var b strings.Builder
	for _, s := range a.stats() {
		if s.Family != fam {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s has %d /%d blocks, %d allocated, %d quarantined", s.Pool, s.Total, s.BlockLen, s.Allocated, s.Quarantined)
	}
	if r := a.earliest(fam); r != nil {
		fmt.Fprintf(&b, "; the next quarantined block frees at %s", r.until.UTC().Format(time.RFC3339))
	}
	b.WriteString("; add a pool or remove members")
	return b.String()
}

func (a *Allocator) earliest(fam Family) *record {
	var first *record
	for _, r := range a.held {
		if FamilyOf(r.prefix.Addr()) == fam && (first == nil || r.until.Before(first.until)) {
			first = r
		}
	}
	return first
}

// Reserve records prefix p as held by owner, to adopt a range an existing cluster already
// uses.
//
// p must be canonical and lie inside one pool (so it is no shorter than that pool). Since
// pools are aligned to the block length, p is then aligned to the block grid. A p shorter
// than a block occupies every block it covers; a p longer than a block occupies the whole
// block that contains it, because the block is the unit of ownership: nobody else can get
// the rest of that block. Allocations keep p as given, since that is what the cluster
// uses.
//
// Reserving a prefix inside one that owner already holds is a no-op. Anything else that
// shares a block with an allocated or quarantined prefix, including a second prefix of the
// same owner in one block, fails with a *ConflictError.
func (a *Allocator) Reserve(owner string, p netip.Prefix) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if owner == "" {
		return fmt.Errorf("reserve %s: %w", p, ErrInvalidOwner)
	}
	if err := checkCanonical(p); err != nil {
		return fmt.Errorf("reserve %s for %q: %w", p, owner, err)
	}
	fam := FamilyOf(p.Addr())
	if !slices.ContainsFunc(a.pools, func(pl *pool) bool { return contains(pl.prefix, p) }) {
		return fmt.Errorf("reserve %s for %q: %w", p, owner, a.outside(p, fam))
	}
	a.expire(a.now())
	for _, r := range a.byOwner[owner] {
		if contains(r.prefix, p) {
			return nil
		}
	}
	if r := a.occ[fam.index()].firstOverlap(p); r != nil {
		return fmt.Errorf("reserve %s for %q: %w", p, owner, conflictWith(p, r))
	}
	a.add(&record{owner: owner, prefix: p, qidx: -1})
	return nil
}

func (a *Allocator) outside(p netip.Prefix, fam Family) error {
	var names []string
	for _, pl := range a.pools {
		if pl.fam == fam {
			names = append(names, pl.prefix.String())
		}
	}
	if len(names) == 0 {
		return fmt.Errorf("%w: %w", ErrOutsidePool, ErrNoPool)
	}
	return fmt.Errorf("%w: the %s pools are %s", ErrOutsidePool, fam, strings.Join(names, ", "))
}

// Release gives back prefix p held by owner. p must be exactly a prefix that Allocate or
// Reserve recorded for owner. Its blocks stay quarantined for the configured duration:
// Allocate skips them and Reserve reports a conflict until then. On error nothing changes.
func (a *Allocator) Release(owner string, p netip.Prefix) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := checkCanonical(p); err != nil {
		return fmt.Errorf("release %s for %q: %w", p, owner, err)
	}
	now := a.now()
	a.expire(now)
	o := a.occ[FamilyOf(p.Addr()).index()]
	var r *record
	if o != nil {
		r = o.at(o.blockOf(p.Addr()))
	}
	switch {
	case r == nil || r.prefix != p:
		return fmt.Errorf("release %s for %q: %w: nobody holds it", p, owner, ErrNotHeld)
	case !r.live():
		return fmt.Errorf("release %s for %q: %w: already released by %q, quarantined until %s",
			p, owner, ErrNotHeld, r.owner, r.until.UTC().Format(time.RFC3339))
	case r.owner != owner:
		return fmt.Errorf("release %s for %q: %w: it is held by %q", p, owner, ErrNotHeld, r.owner)
	}
	a.dropOwner(r)
	if a.quarantine <= 0 {
		a.free(r)
		return nil
	}
	r.until = now.Add(a.quarantine)
	heap.Push(&a.held, r)
	return nil
}

// Drop forgets prefix p held by owner at once, without quarantine: for an allocation that
// was never used, because its owner could not be told about it. p must be exactly a prefix
// that Allocate or Reserve recorded for owner. On error nothing changes.
func (a *Allocator) Drop(owner string, p netip.Prefix) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := checkCanonical(p); err != nil {
		return fmt.Errorf("drop %s for %q: %w", p, owner, err)
	}
	a.expire(a.now())
	o := a.occ[FamilyOf(p.Addr()).index()]
	var r *record
	if o != nil {
		r = o.at(o.blockOf(p.Addr()))
	}
	if r == nil || r.prefix != p || !r.live() || r.owner != owner {
		return fmt.Errorf("drop %s for %q: %w", p, owner, ErrNotHeld)
	}
	a.dropOwner(r)
	a.free(r)
	return nil
}

// Held returns the prefixes owner holds (not those it released), sorted.
func (a *Allocator) Held(owner string) []netip.Prefix {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]netip.Prefix, 0, len(a.byOwner[owner]))
	for _, r := range a.byOwner[owner] {
		out = append(out, r.prefix)
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

// Owner returns the owner of the held allocation that contains p. Quarantined blocks have
// no owner.
func (a *Allocator) Owner(p netip.Prefix) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !p.IsValid() {
		return "", false
	}
	p = p.Masked()
	o := a.occ[FamilyOf(p.Addr()).index()]
	if o == nil {
		return "", false
	}
	a.expire(a.now())
	r := o.at(o.blockOf(p.Addr()))
	if r == nil || !r.live() || !contains(r.prefix, p) {
		return "", false
	}
	return r.owner, true
}

// Allocations returns every held and quarantined allocation, sorted by prefix. Feeding it
// to Rebuild reproduces the state.
func (a *Allocator) Allocations() []Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expire(a.now())
	return a.list(func(*record) bool { return true })
}

// Orphaned returns the held allocations that do not lie inside any current pool, sorted
// by prefix: their pool was removed (SetPools) or they were rebuilt from outside the pools.
// They stay valid until released; the hub should report them.
func (a *Allocator) Orphaned() []Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expire(a.now())
	return a.list(func(r *record) bool {
		return r.live() && !slices.ContainsFunc(a.pools, func(p *pool) bool { return contains(p.prefix, r.prefix) })
	})
}

func (a *Allocator) list(keep func(*record) bool) []Allocation {
	var recs []*record
	for _, o := range a.occ {
		if o != nil {
			recs = o.appendAll(recs)
		}
	}
	out := make([]Allocation, 0, len(recs))
	for _, r := range recs {
		if keep(r) {
			out = append(out, Allocation{Owner: r.owner, Prefix: r.prefix, QuarantinedUntil: r.until})
		}
	}
	slices.SortFunc(out, func(x, y Allocation) int { return comparePrefix(x.Prefix, y.Prefix) })
	return out
}

// Stats counts the blocks of every pool, in pool order. It is O(allocations x pools).
func (a *Allocator) Stats() []PoolStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expire(a.now())
	return a.stats()
}

func (a *Allocator) stats() []PoolStats {
	out := make([]PoolStats, len(a.pools))
	for i, p := range a.pools {
		out[i] = PoolStats{Family: p.fam, Pool: p.prefix, BlockLen: p.blockLen, Bits: p.bits, Total: p.total()}
	}
	for _, o := range a.occ {
		if o == nil {
			continue
		}
		for _, r := range o.appendAll(nil) {
			for i, p := range a.pools {
				n := p.blocksIn(r.prefix)
				if r.live() {
					out[i].Allocated = satAdd(out[i].Allocated, n)
				} else {
					out[i].Quarantined = satAdd(out[i].Quarantined, n)
				}
			}
		}
	}
	for i := range out {
		out[i].Free = satSub(out[i].Total, satAdd(out[i].Allocated, out[i].Quarantined))
	}
	return out
}

// add records r, which overlaps nothing.
func (a *Allocator) add(r *record) {
	a.occ[FamilyOf(r.prefix.Addr()).index()].insert(r)
	if r.live() {
		a.byOwner[r.owner] = append(a.byOwner[r.owner], r)
	} else {
		heap.Push(&a.held, r)
	}
}

func (a *Allocator) dropOwner(r *record) {
	rs := slices.DeleteFunc(a.byOwner[r.owner], func(x *record) bool { return x == r })
	if len(rs) == 0 {
		delete(a.byOwner, r.owner)
		return
	}
	a.byOwner[r.owner] = rs
}

// free removes r and hands its blocks back to the pool cursors.
func (a *Allocator) free(r *record) {
	a.occ[FamilyOf(r.prefix.Addr()).index()].remove(r)
	for _, p := range a.pools {
		p.freed(r.prefix)
	}
}

// expire frees every quarantined record whose quarantine has ended by now.
func (a *Allocator) expire(now time.Time) {
	for len(a.held) > 0 && !a.held[0].until.After(now) {
		a.free(heap.Pop(&a.held).(*record))
	}
}

// heldBy returns the lowest prefix of family fam that owner holds, or nil.
func (a *Allocator) heldBy(owner string, fam Family) *record {
	var best *record
	for _, r := range a.byOwner[owner] {
		if FamilyOf(r.prefix.Addr()) == fam && (best == nil || comparePrefix(r.prefix, best.prefix) < 0) {
			best = r
		}
	}
	return best
}

func checkCanonical(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("%w: invalid prefix %q", ErrNotCanonical, p)
	case p.Addr().Is4In6():
		return fmt.Errorf("%w: %s is IPv4-mapped IPv6; use the IPv4 form", ErrNotCanonical, p)
	case p.Masked() != p:
		return fmt.Errorf("%w: %s has host bits set; did you mean %s?", ErrNotCanonical, p, p.Masked())
	}
	return nil
}

// contains reports whether outer contains all of inner.
func contains(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

func comparePrefix(x, y netip.Prefix) int {
	if c := x.Addr().Compare(y.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(x.Bits(), y.Bits())
}
