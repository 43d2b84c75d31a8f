package ipam

import (
	"net/netip"
	"testing"
	"time"
)

// fakeClock is a settable clock for quarantine tests.
type fakeClock struct{ t time.Time }

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func pfxs(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = pfx(s)
	}
	return out
}

func mustNew(t testing.TB, cfg Config) *Allocator {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return a
}

func mustAllocate(t testing.TB, a *Allocator, owner string, fam Family, want string) {
	t.Helper()
	got, err := a.Allocate(owner, fam)
	if err != nil {
		t.Fatalf("Allocate(%q, %s): %v", owner, fam, err)
	}
	if want != "" && got != pfx(want) {
		t.Fatalf("Allocate(%q, %s) = %s, want %s", owner, fam, got, want)
	}
}

func mustReserve(t testing.TB, a *Allocator, owner, p string) {
	t.Helper()
	if err := a.Reserve(owner, pfx(p)); err != nil {
		t.Fatalf("Reserve(%q, %s): %v", owner, p, err)
	}
}

func mustRelease(t testing.TB, a *Allocator, owner, p string) {
	t.Helper()
	if err := a.Release(owner, pfx(p)); err != nil {
		t.Fatalf("Release(%q, %s): %v", owner, p, err)
	}
}

func equalAllocations(x, y []Allocation) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if !sameAllocation(x[i], y[i]) {
			return false
		}
	}
	return true
}
