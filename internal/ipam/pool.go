package ipam

import (
	"container/heap"
	"net/netip"
)

// pool is one configured pool and the allocation cursor over its blocks, which are
// numbered 0..2^bits-1 from the pool's first address.
//
// Allocate must find the lowest free block in O(1) amortized time without a bitmap (an IPv6
// /32 of /64 blocks has 2^32 of them). The cursor keeps the invariant: every free block
// below next lies in some range of holes. The frontier next only moves up, so a run of
// taken blocks is walked once; blocks freed below it are pushed to holes, a min-heap of
// index ranges that is validated lazily (a hole may have been reserved since it was
// pushed). A single low-water hint would instead re-walk every taken block above a freed
// one after each release, which is O(members) per allocation under churn.
type pool struct {
	prefix   netip.Prefix
	fam      Family
	blockLen int
	bits     int // blockLen - prefix length, at most 64
	base     uint128
	shift    uint // address bits - blockLen

	next    uint64
	scanned bool // the frontier has passed the last block
	holes   holeHeap
}

func newPool(p netip.Prefix, blockLen int) *pool {
	fam := FamilyOf(p.Addr())
	return &pool{
		prefix:   p,
		fam:      fam,
		blockLen: blockLen,
		bits:     blockLen - p.Bits(),
		base:     fromAddr(p.Addr()),
		shift:    uint(fam.addrBits() - blockLen),
	}
}

func (p *pool) last() uint64 {
	if p.bits >= 64 {
		return ^uint64(0)
	}
	return 1<<uint(p.bits) - 1
}

func (p *pool) blockAt(i uint64) netip.Addr { return p.base.add(shl(i, p.shift)).addr(p.fam) }

// indexOf returns the index of the block containing a, which must lie in p.
func (p *pool) indexOf(a netip.Addr) uint64 { return fromAddr(a).sub(p.base).shr(p.shift) }

// total returns the number of blocks, saturated at the largest uint64.
func (p *pool) total() uint64 { return pow2(p.bits) }

// span returns the range of block indices of p that r covers; ok is false if none.
func (p *pool) span(r netip.Prefix) (lo, hi uint64, ok bool) {
	switch {
	case !p.prefix.Overlaps(r):
		return 0, 0, false
	case r.Bits() <= p.prefix.Bits():
		return 0, p.last(), true
	case r.Bits() >= p.blockLen:
		i := p.indexOf(r.Addr())
		return i, i, true
	default:
		lo = p.indexOf(r.Addr())
		return lo, lo + (1<<uint(p.blockLen-r.Bits()) - 1), true
	}
}

// blocksIn returns how many blocks of p the prefix r covers, saturated.
func (p *pool) blocksIn(r netip.Prefix) uint64 {
	switch {
	case !p.prefix.Overlaps(r):
		return 0
	case r.Bits() <= p.prefix.Bits():
		return p.total()
	case r.Bits() >= p.blockLen:
		return 1
	default:
		return pow2(p.blockLen - r.Bits())
	}
}

func (p *pool) reset() {
	p.next, p.scanned, p.holes = 0, false, nil
}

// take returns the lowest free block of p and moves the cursor past it; the caller must
// occupy the block before the next call.
func (p *pool) take(o *occupancy) (netip.Addr, bool) {
	for len(p.holes) > 0 {
		h := &p.holes[0]
		a := p.blockAt(h.lo)
		end := h.lo
		r := o.at(a)
		if r != nil {
			_, end, _ = p.span(r.prefix)
		}
		if end >= h.hi {
			heap.Pop(&p.holes)
		} else {
			h.lo = end + 1
			heap.Fix(&p.holes, 0)
		}
		if r == nil {
			return a, true
		}
	}
	for !p.scanned {
		i := p.next
		a := p.blockAt(i)
		end := i
		r := o.at(a)
		if r != nil {
			_, end, _ = p.span(r.prefix)
		}
		if end >= p.last() {
			p.scanned = true
		} else {
			p.next = end + 1
		}
		if r == nil {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// freed tells the cursor that the blocks of r became free again.
func (p *pool) freed(r netip.Prefix) {
	lo, hi, ok := p.span(r)
	if !ok {
		return
	}
	if !p.scanned {
		if lo >= p.next {
			return // the frontier will find them
		}
		hi = min(hi, p.next-1)
	}
	heap.Push(&p.holes, hole{lo: lo, hi: hi})
}

// hole is an inclusive range of block indices that were free when it was pushed.
type hole struct{ lo, hi uint64 }

type holeHeap []hole

func (h holeHeap) Len() int           { return len(h) }
func (h holeHeap) Less(i, j int) bool { return h[i].lo < h[j].lo }
func (h holeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *holeHeap) Push(x any)        { *h = append(*h, x.(hole)) }
func (h *holeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// quarantineHeap is a min-heap of released records by the end of their quarantine, so that
// expired ones are purged lazily at the start of each call.
type quarantineHeap []*record

func (q quarantineHeap) Len() int { return len(q) }
func (q quarantineHeap) Less(i, j int) bool {
	if c := q[i].until.Compare(q[j].until); c != 0 {
		return c < 0
	}
	return comparePrefix(q[i].prefix, q[j].prefix) < 0
}
func (q quarantineHeap) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].qidx, q[j].qidx = i, j
}
func (q *quarantineHeap) Push(x any) {
	r := x.(*record)
	r.qidx = len(*q)
	*q = append(*q, r)
}
func (q *quarantineHeap) Pop() any {
	old := *q
	r := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	r.qidx = -1
	return r
}
