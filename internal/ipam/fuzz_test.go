package ipam

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// The fuzz target runs random operations against the Allocator and against model, a
// brute-force reference that scans every block of every (tiny) pool, and compares them
// after every step, besides checking invariants that hold whatever the model says.

const (
	fuzzBlock4 = 30 // 10.0.0.0/28 has 4 blocks, 10.0.1.0/29 has 2
	fuzzBlock6 = 64
)

// fuzzPoolSets are the pool sets SetPools switches between: the initial one, one with
// pools removed, and one whose pools contain the initial ones.
var fuzzPoolSets = [][]netip.Prefix{
	pfxs("10.0.1.0/29", "10.0.0.0/28", "fd00::/62", "fd00:0:0:8::/63"),
	pfxs("10.0.0.0/28"),
	pfxs("10.0.0.0/23", "fd00::/60"),
}

var fuzzOwners = []string{"a", "b", "c", "d", "e"}

type modelRec struct {
	owner  string
	prefix netip.Prefix
	until  time.Time
}

type model struct {
	pools []netip.Prefix
	recs  []modelRec
	q     time.Duration
	clk   *fakeClock
}

func blockLenOf(fam Family) int {
	if fam == IPv4 {
		return fuzzBlock4
	}
	return fuzzBlock6
}

// widen returns the block-aligned area p occupies.
func widen(p netip.Prefix) netip.Prefix {
	if bl := blockLenOf(FamilyOf(p.Addr())); p.Bits() > bl {
		w, _ := p.Addr().Prefix(bl)
		return w
	}
	return p
}

func (m *model) expire() {
	m.recs = slices.DeleteFunc(m.recs, func(r modelRec) bool {
		return !r.until.IsZero() && !r.until.After(m.clk.Now())
	})
}

func (m *model) overlapping(p netip.Prefix) *modelRec {
	for i := range m.recs {
		if widen(m.recs[i].prefix).Overlaps(widen(p)) {
			return &m.recs[i]
		}
	}
	return nil
}

func (m *model) allocate(owner string, fam Family) (netip.Prefix, error) {
	m.expire()
	var best *modelRec
	for i, r := range m.recs {
		if r.owner == owner && r.until.IsZero() && FamilyOf(r.prefix.Addr()) == fam &&
			(best == nil || comparePrefix(r.prefix, best.prefix) < 0) {
			best = &m.recs[i]
		}
	}
	if best != nil {
		return best.prefix, nil
	}
	pools := slices.Clone(m.pools)
	slices.SortFunc(pools, comparePrefix)
	found := false
	for _, pool := range pools {
		if FamilyOf(pool.Addr()) != fam {
			continue
		}
		found = true
		bl := blockLenOf(fam)
		step := shl(1, uint(fam.addrBits()-bl))
		a := fromAddr(pool.Addr())
		for range 1 << (bl - pool.Bits()) {
			b := netip.PrefixFrom(a.addr(fam), bl)
			if m.overlapping(b) == nil {
				m.recs = append(m.recs, modelRec{owner: owner, prefix: b})
				return b, nil
			}
			a = a.add(step)
		}
	}
	if !found {
		return netip.Prefix{}, ErrNoPool
	}
	return netip.Prefix{}, ErrPoolExhausted
}

func (m *model) reserve(owner string, p netip.Prefix) error {
	if checkCanonical(p) != nil {
		return ErrNotCanonical
	}
	if !slices.ContainsFunc(m.pools, func(pool netip.Prefix) bool { return contains(pool, p) }) {
		return ErrOutsidePool
	}
	m.expire()
	for _, r := range m.recs {
		if r.owner == owner && r.until.IsZero() && contains(r.prefix, p) {
			return nil
		}
	}
	if m.overlapping(p) != nil {
		return ErrConflict
	}
	m.recs = append(m.recs, modelRec{owner: owner, prefix: p})
	return nil
}

func (m *model) release(owner string, p netip.Prefix) error {
	if checkCanonical(p) != nil {
		return ErrNotCanonical
	}
	m.expire()
	for i, r := range m.recs {
		if r.prefix == p && r.owner == owner && r.until.IsZero() {
			if m.q == 0 {
				m.recs = slices.Delete(m.recs, i, i+1)
			} else {
				m.recs[i].until = m.clk.Now().Add(m.q)
			}
			return nil
		}
	}
	return ErrNotHeld
}

func (m *model) allocations() []Allocation {
	m.expire()
	out := make([]Allocation, len(m.recs))
	for i, r := range m.recs {
		out[i] = Allocation{Owner: r.owner, Prefix: r.prefix, QuarantinedUntil: r.until}
	}
	slices.SortFunc(out, func(x, y Allocation) int { return comparePrefix(x.Prefix, y.Prefix) })
	return out
}

// fuzzPrefix decodes a prefix in or near the fuzz pools: wider than a block, a block or
// narrower, aligned (so that overlaps are likely), and sometimes with a host bit set.
func fuzzPrefix(x, y byte) netip.Prefix {
	fam, base, regionBits, minLen, lens := IPv4, "10.0.0.0", 27, 27, 6 // 10.0.0.0/27, or 10.0.1.0/27 below
	if y&0x40 != 0 {
		fam, base, regionBits, minLen, lens = IPv6, "fd00::", 60, 60, 7 // fd00::/60
	}
	bits := minLen + int(y>>1&0x1f)%lens
	a := fromAddr(netip.MustParseAddr(base))
	if fam == IPv4 && x&0x80 != 0 {
		a = a.add(uint128{lo: 256})
	}
	positions := 1 << (bits - regionBits)
	a = a.add(shl(uint64(int(x&0x7f)%positions), uint(fam.addrBits()-bits)))
	if y&0x80 != 0 && bits < fam.addrBits() {
		a = a.add(uint128{lo: 1})
	}
	return netip.PrefixFrom(a.addr(fam), bits)
}

func sameErr(got, want error) bool {
	if want == nil {
		return got == nil
	}
	return errors.Is(got, want)
}

func FuzzAllocator(f *testing.F) {
	// Each operation is 4 bytes: kind, owner, x, y. The first byte picks the quarantine.
	f.Add([]byte{1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 2, 0, 0, 3, 0, 0})
	f.Add([]byte{0,
		0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0, 0, 1, // fill IPv4
		7, 0, 0, 1, 3, 0, 1, 0, 0, 0, 0, 0, 4, 0, 0, 0})
	f.Add([]byte{1,
		1, 0, 8, 4, 1, 1, 16, 6, 0, 2, 0, 0, 5, 0, 1, 0, 0, 3, 0, 0, 2, 0, 0, 1, 3, 0, 3, 0, 0, 4, 0, 1,
		5, 0, 0, 0, 6, 0, 9, 0, 1, 2, 3, 0x44, 1, 3, 7, 0x46, 0, 0, 0, 1, 0, 1, 0, 1, 7, 0, 1, 1})
	f.Add([]byte{1, 1, 0, 0, 2, 1, 1, 0, 10, 5, 0, 1, 0, 0, 2, 0, 1, 0, 3, 0, 0, 5, 0, 2, 0, 0, 4, 0, 1, 2, 0, 0, 0})
	f.Add([]byte{1, 1, 2, 3, 0x42, 7, 1, 0, 0, 2, 2, 0, 1, 3, 0, 3, 0, 6, 0, 5, 0, 0, 3, 0, 0})

	f.Fuzz(runOps)
}

func runOps(t *testing.T, data []byte) {
	if len(data) == 0 {
		return
	}
	clk := newFakeClock()
	q := time.Duration(0)
	if data[0]&1 == 1 {
		q = 10 * time.Minute
	}
	data = data[1:]
	cfg := Config{Pools: fuzzPoolSets[0], IPv4BlockLen: fuzzBlock4, IPv6BlockLen: fuzzBlock6, Quarantine: q, Now: clk.Now}
	a := mustNew(t, cfg)
	m := &model{pools: cfg.Pools, q: q, clk: clk}

	for step := 0; len(data) >= 4 && step < 200; step++ {
		kind, owner, x, y := data[0]%8, fuzzOwners[int(data[1])%len(fuzzOwners)], data[2], data[3]
		data = data[4:]
		var op string
		switch kind {
		case 0: // allocate
			fam := IPv4
			if x&1 == 1 {
				fam = IPv6
			}
			op = fmt.Sprintf("Allocate(%q, %s)", owner, fam)
			quarantined := m.allocations()
			got, err := a.Allocate(owner, fam)
			want, wantErr := m.allocate(owner, fam)
			if got != want || !sameErr(err, wantErr) {
				t.Fatalf("step %d %s = %s, %v; model says %s, %v", step, op, got, err, want, wantErr)
			}
			for _, r := range quarantined {
				if err == nil && !r.QuarantinedUntil.IsZero() && widen(r.Prefix).Overlaps(got) {
					t.Fatalf("step %d %s handed out %s, quarantined until %s", step, op, got, r.QuarantinedUntil)
				}
			}
		case 1: // reserve
			p := fuzzPrefix(x, y)
			op = fmt.Sprintf("Reserve(%q, %s)", owner, p)
			err := a.Reserve(owner, p)
			if want := m.reserve(owner, p); !sameErr(err, want) {
				t.Fatalf("step %d %s = %v; model says %v", step, op, err, want)
			}
		case 2: // release something that exists, by its owner or by someone else
			all := a.Allocations()
			p := fuzzPrefix(x, y)
			if len(all) > 0 && y&0x20 == 0 {
				al := all[int(x)%len(all)]
				p = al.Prefix
				if y&1 == 0 {
					owner = al.Owner
				}
			}
			op = fmt.Sprintf("Release(%q, %s)", owner, p)
			err := a.Release(owner, p)
			if want := m.release(owner, p); !sameErr(err, want) {
				t.Fatalf("step %d %s = %v; model says %v", step, op, err, want)
			}
		case 3: // advance the clock by 0, q/2, q or 3q/2, to hit the exact expiry
			d := time.Duration(x%4) * 5 * time.Minute
			op = fmt.Sprintf("Advance(%s)", d)
			clk.Advance(d)
		case 4: // rebuild in place from the current state
			op = "Rebuild(Allocations())"
			if c := a.Rebuild(a.Allocations()); len(c) != 0 {
				t.Fatalf("step %d %s conflicts: %v", step, op, c)
			}
		case 5: // change pools
			pools := fuzzPoolSets[int(x)%len(fuzzPoolSets)]
			op = fmt.Sprintf("SetPools(%v)", pools)
			if err := a.SetPools(pools); err != nil {
				t.Fatalf("step %d %s: %v", step, op, err)
			}
			m.pools = pools
			cfg.Pools = pools
		case 6: // rebuild in place from shuffled, duplicated input
			op = "Rebuild(shuffled)"
			in := a.Allocations()
			in = append(in, in...)
			rand.New(rand.NewPCG(uint64(x), uint64(y))).Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
			if c := a.Rebuild(in); len(c) != 0 {
				t.Fatalf("step %d %s conflicts: %v", step, op, c)
			}
		case 7: // release a held block, then another owner tries to take it
			var held []Allocation
			for _, al := range a.Allocations() {
				if al.QuarantinedUntil.IsZero() {
					held = append(held, al)
				}
			}
			if len(held) == 0 {
				continue
			}
			al := held[int(x)%len(held)]
			other := fuzzOwners[(slices.Index(fuzzOwners, al.Owner)+1)%len(fuzzOwners)]
			op = fmt.Sprintf("Release(%q, %s) then Reserve(%q)", al.Owner, al.Prefix, other)
			if err := a.Release(al.Owner, al.Prefix); err != nil {
				t.Fatalf("step %d %s: %v", step, op, err)
			}
			if err := m.release(al.Owner, al.Prefix); err != nil {
				t.Fatalf("step %d %s: model: %v", step, op, err)
			}
			err := a.Reserve(other, al.Prefix)
			want := m.reserve(other, al.Prefix)
			if !sameErr(err, want) {
				t.Fatalf("step %d %s = %v; model says %v", step, op, err, want)
			}
			var ce *ConflictError
			switch inPool := slices.ContainsFunc(m.pools, func(p netip.Prefix) bool { return contains(p, al.Prefix) }); {
			case !inPool:
				if !errors.Is(err, ErrOutsidePool) {
					t.Fatalf("step %d %s = %v, want ErrOutsidePool for an orphan", step, op, err)
				}
			case q > 0:
				if !errors.As(err, &ce) || ce.Holder != al.Owner || ce.QuarantinedUntil.IsZero() {
					t.Fatalf("step %d %s = %v, want a quarantine conflict with %q", step, op, err, al.Owner)
				}
			default:
				if err != nil {
					t.Fatalf("step %d %s = %v, want success without quarantine", step, op, err)
				}
			}
		}
		checkInvariants(t, fmt.Sprintf("step %d after %s", step, op), a, m, cfg)
	}
}

func checkInvariants(t *testing.T, where string, a *Allocator, m *model, cfg Config) {
	t.Helper()
	got := a.Allocations()
	if want := m.allocations(); !equalAllocations(got, want) {
		t.Fatalf("%s: Allocations() =\n%v\nmodel:\n%v", where, got, want)
	}
	// No two allocations share a block, held or quarantined.
	for i := range got {
		for j := i + 1; j < len(got); j++ {
			if widen(got[i].Prefix).Overlaps(widen(got[j].Prefix)) {
				t.Fatalf("%s: %v and %v overlap", where, got[i], got[j])
			}
		}
	}
	// Every held allocation is inside a pool or listed as orphaned, and Owner agrees.
	var orphans []Allocation
	for _, al := range got {
		if !al.QuarantinedUntil.IsZero() {
			if _, ok := a.Owner(al.Prefix); ok {
				t.Fatalf("%s: quarantined %v has an owner", where, al)
			}
			continue
		}
		if o, ok := a.Owner(al.Prefix); !ok || o != al.Owner {
			t.Fatalf("%s: Owner(%s) = %q, %v; want %q", where, al.Prefix, o, ok, al.Owner)
		}
		if !slices.ContainsFunc(m.pools, func(p netip.Prefix) bool { return contains(p, al.Prefix) }) {
			orphans = append(orphans, al)
		}
	}
	if o := a.Orphaned(); !equalAllocations(o, orphans) {
		t.Fatalf("%s: Orphaned() = %v, want %v", where, o, orphans)
	}
	// Stats add up and match the allocations.
	for _, s := range a.Stats() {
		var held, quarantined uint64
		for _, al := range got {
			if s.Pool.Overlaps(al.Prefix) {
				n := uint64(1)
				if w := widen(al.Prefix); w.Bits() < s.BlockLen {
					n = 1 << uint(s.BlockLen-max(w.Bits(), s.Pool.Bits()))
				}
				if al.QuarantinedUntil.IsZero() {
					held += n
				} else {
					quarantined += n
				}
			}
		}
		if s.Allocated != held || s.Quarantined != quarantined || s.Allocated+s.Quarantined+s.Free != s.Total {
			t.Fatalf("%s: %+v, want %d allocated and %d quarantined", where, s, held, quarantined)
		}
	}
	// A fresh allocator rebuilt from the state, in any order, is the same state.
	b := mustNew(t, cfg)
	in := slices.Clone(got)
	rand.New(rand.NewPCG(uint64(len(in)), 7)).Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
	if c := b.Rebuild(in); len(c) != 0 {
		t.Fatalf("%s: Rebuild(Allocations()) conflicts: %v", where, c)
	}
	if rebuilt := b.Allocations(); !equalAllocations(rebuilt, got) {
		t.Fatalf("%s: rebuilt Allocations() =\n%v\nwant\n%v", where, rebuilt, got)
	}
}
