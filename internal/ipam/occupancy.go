package ipam

import (
	"net/netip"
	"slices"
	"time"
)

// record is one allocation: a prefix held by an owner, or quarantined after its release.
type record struct {
	owner  string
	prefix netip.Prefix
	until  time.Time // zero while held; else the end of the quarantine
	qidx   int       // position in the quarantine heap, -1 when not in it
}

func (r *record) live() bool { return r.until.IsZero() }

// occupancy maps the blocks of one family to the records that occupy them. Blocks form a
// grid aligned to the block length that does not depend on the pools (pools are aligned to
// it too), so occupancy survives pool changes and also covers allocations outside every
// pool.
//
// A record at most one block wide (the common case) is keyed by its block in a map, so the
// hot path is one map lookup. A record wider than a block (an adopted existing range) would
// need one entry per block, which is unbounded for IPv6 (a /32 of /64 blocks is 2^32
// blocks), so such records are kept as spans in a sorted slice instead; they are rare.
type occupancy struct {
	fam      Family
	blockLen int
	blocks   map[netip.Addr]*record
	spans    []*record // disjoint, sorted by address
}

func newOccupancy(fam Family, blockLen int) *occupancy {
	return &occupancy{fam: fam, blockLen: blockLen, blocks: make(map[netip.Addr]*record)}
}

// blockOf returns the first address of the block that contains a.
func (o *occupancy) blockOf(a netip.Addr) netip.Addr {
	p, _ := a.Prefix(o.blockLen)
	return p.Addr()
}

// spanIndex returns the index of the first span that starts after a.
func (o *occupancy) spanIndex(a netip.Addr) int {
	i, _ := slices.BinarySearchFunc(o.spans, a, func(r *record, a netip.Addr) int {
		if r.prefix.Addr().Compare(a) <= 0 {
			return -1
		}
		return 1
	})
	return i
}

// at returns the record occupying the block that starts at block, or nil.
func (o *occupancy) at(block netip.Addr) *record {
	if r := o.blocks[block]; r != nil {
		return r
	}
	if len(o.spans) == 0 {
		return nil
	}
	if i := o.spanIndex(block); i > 0 && o.spans[i-1].prefix.Contains(block) {
		return o.spans[i-1]
	}
	return nil
}

// firstOverlap returns the lowest record that shares a block with the canonical prefix p,
// or nil.
func (o *occupancy) firstOverlap(p netip.Prefix) *record {
	if p.Bits() >= o.blockLen {
		return o.at(o.blockOf(p.Addr()))
	}
	var best *record
	consider := func(r *record) {
		if best == nil || r.prefix.Addr().Less(best.prefix.Addr()) {
			best = r
		}
	}
	i := o.spanIndex(p.Addr())
	if i > 0 && o.spans[i-1].prefix.Overlaps(p) {
		consider(o.spans[i-1])
	}
	if i < len(o.spans) && p.Contains(o.spans[i].prefix.Addr()) {
		consider(o.spans[i])
	}
	// Single-block records inside p: walk p's blocks or the whole map, whichever is shorter.
	n := p.Bits() - o.blockLen
	if width := -n; width < 63 && 1<<uint(width) <= len(o.blocks) {
		step := shl(1, uint(o.fam.addrBits()-o.blockLen))
		a := fromAddr(p.Addr())
		for range 1 << uint(width) {
			if r := o.blocks[a.addr(o.fam)]; r != nil {
				consider(r)
				break // blocks are walked in address order
			}
			a = a.add(step)
		}
		return best
	}
	for b, r := range o.blocks {
		if p.Contains(b) {
			consider(r)
		}
	}
	return best
}

// insert adds r; the caller has checked that it overlaps nothing.
func (o *occupancy) insert(r *record) {
	if r.prefix.Bits() >= o.blockLen {
		o.blocks[o.blockOf(r.prefix.Addr())] = r
		return
	}
	o.spans = slices.Insert(o.spans, o.spanIndex(r.prefix.Addr()), r)
}

func (o *occupancy) remove(r *record) {
	if r.prefix.Bits() >= o.blockLen {
		delete(o.blocks, o.blockOf(r.prefix.Addr()))
		return
	}
	if i := o.spanIndex(r.prefix.Addr()); i > 0 && o.spans[i-1] == r {
		o.spans = slices.Delete(o.spans, i-1, i)
	}
}

func (o *occupancy) appendAll(dst []*record) []*record {
	for _, r := range o.blocks {
		dst = append(dst, r)
	}
	return append(dst, o.spans...)
}
