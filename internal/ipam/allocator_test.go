package ipam

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; empty means valid
	}{
		{name: "dual stack", cfg: Config{Pools: pfxs("10.0.0.0/8", "fd00::/48"), IPv4BlockLen: 16, IPv6BlockLen: 64}},
		{name: "no pools", cfg: Config{}},
		{name: "block length without pool", cfg: Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 16, IPv6BlockLen: 64}},
		{name: "block equals pool", cfg: Config{Pools: pfxs("10.0.0.0/16"), IPv4BlockLen: 16}},
		{name: "2^64 blocks", cfg: Config{Pools: pfxs("fd00::/64"), IPv6BlockLen: 128}},
		{name: "host bits", cfg: Config{Pools: pfxs("10.0.0.1/8"), IPv4BlockLen: 16}, wantErr: "host bits"},
		{name: "IPv4-mapped", cfg: Config{Pools: pfxs("::ffff:10.0.0.0/104"), IPv6BlockLen: 112}, wantErr: "IPv4-mapped"},
		{name: "invalid prefix", cfg: Config{Pools: []netip.Prefix{{}}, IPv4BlockLen: 16}, wantErr: "invalid prefix"},
		{name: "overlap nested", cfg: Config{Pools: pfxs("10.1.0.0/16", "10.0.0.0/8"), IPv4BlockLen: 24}, wantErr: "overlap"},
		{name: "overlap duplicate", cfg: Config{Pools: pfxs("10.0.0.0/8", "10.0.0.0/8"), IPv4BlockLen: 24}, wantErr: "overlap"},
		{name: "overlap not adjacent in input", cfg: Config{Pools: pfxs("10.0.0.0/8", "192.168.0.0/16", "10.200.0.0/16"), IPv4BlockLen: 24}, wantErr: "overlap"},
		{name: "missing IPv4 block length", cfg: Config{Pools: pfxs("10.0.0.0/8"), IPv6BlockLen: 64}, wantErr: "needs an IPv4 block length"},
		{name: "missing IPv6 block length", cfg: Config{Pools: pfxs("10.0.0.0/8", "fd00::/48"), IPv4BlockLen: 16}, wantErr: "needs an IPv6 block length"},
		{name: "block larger than pool", cfg: Config{Pools: pfxs("10.0.0.0/16"), IPv4BlockLen: 8}, wantErr: "larger than pool"},
		{name: "block length too long", cfg: Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 33}, wantErr: "between"},
		{name: "block length negative", cfg: Config{IPv6BlockLen: -1}, wantErr: "between"},
		{name: "more than 2^64 blocks", cfg: Config{Pools: pfxs("fd00::/48"), IPv6BlockLen: 128}, wantErr: "more than 2^64"},
		{name: "negative quarantine", cfg: Config{Quarantine: -time.Second}, wantErr: "negative quarantine"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil || a == nil {
					t.Fatalf("New() = %v, %v; want success", a, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New() error = %v; want ErrInvalidConfig containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestAllocateOrder(t *testing.T) {
	// Pools given out of order; allocation must follow pool address order, per family.
	a := mustNew(t, Config{
		Pools:        pfxs("fd00:1::/63", "10.1.0.0/23", "fd00::/64", "10.0.0.0/23"),
		IPv4BlockLen: 24,
		IPv6BlockLen: 64,
	})
	steps := []struct {
		owner string
		fam   Family
		want  string
	}{
		{"a", IPv4, "10.0.0.0/24"},
		{"a", IPv6, "fd00::/64"},
		{"b", IPv4, "10.0.1.0/24"},
		{"c", IPv4, "10.1.0.0/24"},
		{"b", IPv6, "fd00:1::/64"},
		{"c", IPv6, "fd00:1:0:1::/64"},
		{"d", IPv4, "10.1.1.0/24"},
	}
	for _, s := range steps {
		mustAllocate(t, a, s.owner, s.fam, s.want)
	}
	if _, err := a.Allocate("e", IPv4); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("Allocate after 4 IPv4 blocks: err = %v, want ErrPoolExhausted", err)
	}
	if _, err := a.Allocate("e", IPv6); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("Allocate after 3 IPv6 blocks: err = %v, want ErrPoolExhausted", err)
	}
}

func TestAllocateIdempotent(t *testing.T) {
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/8", "fd00::/48"), IPv4BlockLen: 16, IPv6BlockLen: 64})
	mustAllocate(t, a, "a", IPv4, "10.0.0.0/16")
	mustAllocate(t, a, "b", IPv4, "10.1.0.0/16")
	mustAllocate(t, a, "a", IPv4, "10.0.0.0/16")
	mustAllocate(t, a, "a", IPv6, "fd00::/64")
	mustAllocate(t, a, "a", IPv6, "fd00::/64")
	if n := len(a.Allocations()); n != 3 {
		t.Fatalf("len(Allocations()) = %d, want 3", n)
	}
	// A reserved prefix counts as the owner's block of that family, even if not block-sized.
	mustReserve(t, a, "c", "10.6.0.0/15")
	mustAllocate(t, a, "c", IPv4, "10.6.0.0/15")
	// With several prefixes of one family, the lowest is returned.
	mustReserve(t, a, "d", "10.20.0.0/16")
	mustReserve(t, a, "d", "10.5.0.0/16")
	mustAllocate(t, a, "d", IPv4, "10.5.0.0/16")
}

func TestAllocateErrors(t *testing.T) {
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 16})
	if _, err := a.Allocate("a", IPv6); !errors.Is(err, ErrNoPool) {
		t.Errorf("Allocate IPv6 without IPv6 pool: err = %v, want ErrNoPool", err)
	}
	if _, err := a.Allocate("", IPv4); !errors.Is(err, ErrInvalidOwner) {
		t.Errorf("Allocate with empty owner: err = %v, want ErrInvalidOwner", err)
	}
	if _, err := a.Allocate("a", Family(0)); err == nil {
		t.Error("Allocate with Family(0) succeeded")
	}
	if n := len(a.Allocations()); n != 0 {
		t.Errorf("failed calls left %d allocations", n)
	}
}

func TestExhaustion(t *testing.T) {
	tests := []struct {
		name     string
		pool     string
		blockLen int
		want     []string
	}{
		{"IPv4 /22 of /24", "10.0.0.0/22", 24, []string{"10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"}},
		{"IPv4 /30 of /31", "10.0.0.0/30", 31, []string{"10.0.0.0/31", "10.0.0.2/31"}},
		{"IPv4 /32 of /32", "10.0.0.7/32", 32, []string{"10.0.0.7/32"}},
		{"IPv6 /126 of /128", "fd00::/126", 128, []string{"fd00::/128", "fd00::1/128", "fd00::2/128", "fd00::3/128"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pfx(tt.pool)
			fam := FamilyOf(p.Addr())
			cfg := Config{Pools: []netip.Prefix{p}, Quarantine: time.Hour, Now: newFakeClock().Now}
			if fam == IPv4 {
				cfg.IPv4BlockLen = tt.blockLen
			} else {
				cfg.IPv6BlockLen = tt.blockLen
			}
			a := mustNew(t, cfg)
			for i, w := range tt.want {
				mustAllocate(t, a, fmt.Sprint("m", i), fam, w)
			}
			_, err := a.Allocate("late", fam)
			if !errors.Is(err, ErrPoolExhausted) || !strings.Contains(err.Error(), tt.pool) {
				t.Fatalf("Allocate on full pool: err = %v, want ErrPoolExhausted naming %s", err, tt.pool)
			}
			// Exhaustion persists while the released block is quarantined, and the error says when it frees.
			mustRelease(t, a, "m0", tt.want[0])
			_, err = a.Allocate("late", fam)
			if !errors.Is(err, ErrPoolExhausted) || !strings.Contains(err.Error(), "2025-01-01T01:00:00Z") {
				t.Fatalf("Allocate with only a quarantined block: err = %v, want ErrPoolExhausted naming the expiry", err)
			}
		})
	}
}

func TestReserve(t *testing.T) {
	type step struct {
		owner   string
		prefix  string
		wantErr error
	}
	tests := []struct {
		name string
		// setup runs on an allocator with pools 10.0.0.0/8 (/16 blocks) and fd00::/48 (/64 blocks),
		// where "x" holds 10.0.0.0/16 and "q" released 10.1.0.0/16 (quarantined).
		steps []step
		// nextAlloc is what Allocate("new", IPv4) returns afterwards, to check which blocks the reservations occupy.
		nextAlloc string
	}{
		{name: "exact block", steps: []step{{"a", "10.5.0.0/16", nil}}, nextAlloc: "10.2.0.0/16"},
		{name: "next free block", steps: []step{{"a", "10.2.0.0/16", nil}}, nextAlloc: "10.3.0.0/16"},
		{name: "larger than block occupies every block", steps: []step{{"a", "10.2.0.0/15", nil}}, nextAlloc: "10.4.0.0/16"},
		{name: "smaller than block occupies its block", steps: []step{{"a", "10.2.5.0/24", nil}}, nextAlloc: "10.3.0.0/16"},
		{name: "whole pool", steps: []step{{"a", "10.0.0.0/8", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "same owner widening its block", steps: []step{{"x", "10.0.0.0/15", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "rest of the pool", steps: []step{
			{"a", "10.2.0.0/15", nil}, {"a", "10.4.0.0/14", nil}, {"a", "10.8.0.0/13", nil},
			{"a", "10.16.0.0/12", nil}, {"a", "10.32.0.0/11", nil}, {"a", "10.64.0.0/10", nil}, {"a", "10.128.0.0/9", nil},
		}, nextAlloc: ""},
		{name: "IPv6 block", steps: []step{{"a", "fd00:0:0:9::/64", nil}}, nextAlloc: "10.2.0.0/16"},
		{name: "IPv6 larger than block", steps: []step{{"a", "fd00::/56", nil}, {"b", "fd00:0:0:ff::/64", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "same owner same prefix is a no-op", steps: []step{{"x", "10.0.0.0/16", nil}}, nextAlloc: "10.2.0.0/16"},
		{name: "same owner inside its block is a no-op", steps: []step{{"x", "10.0.3.0/24", nil}}, nextAlloc: "10.2.0.0/16"},
		{name: "same owner second range in one block", steps: []step{{"a", "10.2.1.0/24", nil}, {"a", "10.2.2.0/24", ErrConflict}}, nextAlloc: "10.3.0.0/16"},
		{name: "other owner in a sub-block's block", steps: []step{{"a", "10.2.1.0/24", nil}, {"b", "10.2.2.0/24", ErrConflict}}, nextAlloc: "10.3.0.0/16"},
		{name: "held block", steps: []step{{"a", "10.0.0.0/16", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "inside held block", steps: []step{{"a", "10.0.9.0/24", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "covering held block", steps: []step{{"a", "10.0.0.0/15", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "quarantined block", steps: []step{{"a", "10.1.0.0/16", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "releasing owner cannot skip its quarantine", steps: []step{{"q", "10.1.0.0/16", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "span over span", steps: []step{{"a", "10.4.0.0/14", nil}, {"b", "10.6.0.0/15", ErrConflict}, {"b", "10.0.0.0/13", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "span over later span", steps: []step{{"a", "10.6.0.0/15", nil}, {"b", "10.4.0.0/14", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "span over later block", steps: []step{{"a", "10.9.0.0/16", nil}, {"b", "10.8.0.0/14", ErrConflict}}, nextAlloc: "10.2.0.0/16"},
		{name: "outside pool", steps: []step{{"a", "192.168.0.0/16", ErrOutsidePool}}, nextAlloc: "10.2.0.0/16"},
		{name: "shorter than pool", steps: []step{{"a", "10.0.0.0/7", ErrOutsidePool}}, nextAlloc: "10.2.0.0/16"},
		{name: "outside IPv6 pool", steps: []step{{"a", "fd01::/64", ErrOutsidePool}}, nextAlloc: "10.2.0.0/16"},
		{name: "host bits", steps: []step{{"a", "10.2.0.1/16", ErrNotCanonical}}, nextAlloc: "10.2.0.0/16"},
		{name: "IPv4-mapped", steps: []step{{"a", "::ffff:10.2.0.0/112", ErrNotCanonical}}, nextAlloc: "10.2.0.0/16"},
		{name: "empty owner", steps: []step{{"", "10.2.0.0/16", ErrInvalidOwner}}, nextAlloc: "10.2.0.0/16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := mustNew(t, Config{
				Pools: pfxs("10.0.0.0/8", "fd00::/48"), IPv4BlockLen: 16, IPv6BlockLen: 64,
				Quarantine: time.Hour, Now: newFakeClock().Now,
			})
			mustAllocate(t, a, "x", IPv4, "10.0.0.0/16")
			mustAllocate(t, a, "q", IPv4, "10.1.0.0/16")
			mustRelease(t, a, "q", "10.1.0.0/16")
			for _, s := range tt.steps {
				before := a.Allocations()
				err := a.Reserve(s.owner, pfx(s.prefix))
				if !errors.Is(err, s.wantErr) || (s.wantErr == nil) != (err == nil) {
					t.Fatalf("Reserve(%q, %s) = %v, want %v", s.owner, s.prefix, err, s.wantErr)
				}
				if err != nil && !equalAllocations(before, a.Allocations()) {
					t.Fatalf("failed Reserve(%q, %s) changed the state", s.owner, s.prefix)
				}
				if err == nil {
					if got, ok := a.Owner(pfx(s.prefix)); !ok || got != s.owner {
						t.Fatalf("Owner(%s) = %q, %v after Reserve; want %q", s.prefix, got, ok, s.owner)
					}
				}
			}
			got, err := a.Allocate("new", IPv4)
			if tt.nextAlloc == "" {
				if !errors.Is(err, ErrPoolExhausted) {
					t.Fatalf("Allocate = %s, %v; want ErrPoolExhausted", got, err)
				}
				return
			}
			if err != nil || got != pfx(tt.nextAlloc) {
				t.Fatalf("Allocate = %s, %v; want %s", got, err, tt.nextAlloc)
			}
		})
	}
}

func TestReserveConflictDetails(t *testing.T) {
	clk := newFakeClock()
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 16, Quarantine: time.Hour, Now: clk.Now})
	mustReserve(t, a, "old", "10.3.0.0/16")
	mustReserve(t, a, "gone", "10.4.0.0/16")
	mustRelease(t, a, "gone", "10.4.0.0/16")

	err := a.Reserve("new", pfx("10.2.0.0/15"))
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Holder != "old" || ce.Held != pfx("10.3.0.0/16") || ce.Prefix != pfx("10.2.0.0/15") || !ce.QuarantinedUntil.IsZero() {
		t.Fatalf("Reserve over held block: err = %#v, want ConflictError naming old and 10.3.0.0/16", err)
	}
	err = a.Reserve("new", pfx("10.4.128.0/17"))
	if !errors.As(err, &ce) || ce.Holder != "gone" || !ce.QuarantinedUntil.Equal(clk.Now().Add(time.Hour)) ||
		!strings.Contains(err.Error(), "quarantined until 2025-01-01T01:00:00Z") {
		t.Fatalf("Reserve over quarantined block: err = %v, want ConflictError with the quarantine end", err)
	}
	clk.Advance(time.Hour)
	mustReserve(t, a, "new", "10.4.128.0/17")
}

func TestReleaseQuarantine(t *testing.T) {
	clk := newFakeClock()
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 16, Quarantine: 10 * time.Minute, Now: clk.Now})
	mustAllocate(t, a, "a", IPv4, "10.0.0.0/16")
	mustAllocate(t, a, "b", IPv4, "10.1.0.0/16")
	mustRelease(t, a, "a", "10.0.0.0/16")

	if _, ok := a.Owner(pfx("10.0.0.0/16")); ok {
		t.Error("released block still has an owner")
	}
	want := []Allocation{
		{Owner: "a", Prefix: pfx("10.0.0.0/16"), QuarantinedUntil: clk.Now().Add(10 * time.Minute)},
		{Owner: "b", Prefix: pfx("10.1.0.0/16")},
	}
	if got := a.Allocations(); !equalAllocations(got, want) {
		t.Errorf("Allocations() = %v, want %v", got, want)
	}
	mustAllocate(t, a, "c", IPv4, "10.2.0.0/16")
	clk.Advance(10*time.Minute - time.Nanosecond)
	mustAllocate(t, a, "d", IPv4, "10.3.0.0/16")
	// An owner that released its block gets a new one rather than its quarantined one.
	mustAllocate(t, a, "a", IPv4, "10.4.0.0/16")
	clk.Advance(time.Nanosecond)
	mustAllocate(t, a, "e", IPv4, "10.0.0.0/16")
	mustAllocate(t, a, "f", IPv4, "10.5.0.0/16")
}

func TestReleaseErrors(t *testing.T) {
	clk := newFakeClock()
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 16, Quarantine: time.Minute, Now: clk.Now})
	mustAllocate(t, a, "a", IPv4, "10.0.0.0/16")
	mustReserve(t, a, "b", "10.4.0.0/15")
	mustAllocate(t, a, "c", IPv4, "10.1.0.0/16")
	mustRelease(t, a, "c", "10.1.0.0/16")
	tests := []struct {
		name, owner, prefix string
		want                error
		wantMsg             string
	}{
		{"other owner", "b", "10.0.0.0/16", ErrNotHeld, `held by "a"`},
		{"nobody", "a", "10.9.0.0/16", ErrNotHeld, "nobody"},
		{"part of a larger reservation", "b", "10.5.0.0/16", ErrNotHeld, "nobody"},
		{"larger than the reservation", "b", "10.4.0.0/14", ErrNotHeld, "nobody"},
		{"inside a block", "a", "10.0.1.0/24", ErrNotHeld, "nobody"},
		{"already released", "c", "10.1.0.0/16", ErrNotHeld, "already released"},
		{"no such family", "a", "fd00::/64", ErrNotHeld, "nobody"},
		{"host bits", "a", "10.0.0.1/16", ErrNotCanonical, "host bits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := a.Allocations()
			err := a.Release(tt.owner, pfx(tt.prefix))
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Release(%q, %s) = %v, want %v containing %q", tt.owner, tt.prefix, err, tt.want, tt.wantMsg)
			}
			if after := a.Allocations(); !equalAllocations(before, after) {
				t.Fatalf("failed Release changed the state: %v -> %v", before, after)
			}
		})
	}
}

func TestReleaseWithoutQuarantineReusesLowestFirst(t *testing.T) {
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 16})
	for i := range 10 {
		mustAllocate(t, a, fmt.Sprint("m", i), IPv4, fmt.Sprintf("10.%d.0.0/16", i))
	}
	for _, i := range []int{7, 3, 5} {
		mustRelease(t, a, fmt.Sprint("m", i), fmt.Sprintf("10.%d.0.0/16", i))
	}
	// Someone reserves a freed block directly; the allocator must skip it.
	mustReserve(t, a, "r", "10.5.0.0/16")
	mustAllocate(t, a, "n1", IPv4, "10.3.0.0/16")
	mustAllocate(t, a, "n2", IPv4, "10.7.0.0/16")
	mustAllocate(t, a, "n3", IPv4, "10.10.0.0/16")
}

func TestReleaseLargeReservation(t *testing.T) {
	clk := newFakeClock()
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 16, Quarantine: time.Minute, Now: clk.Now})
	mustReserve(t, a, "big", "10.0.0.0/14")
	mustAllocate(t, a, "a", IPv4, "10.4.0.0/16")
	mustRelease(t, a, "big", "10.0.0.0/14")
	if s := a.Stats()[0]; s.Quarantined != 4 || s.Allocated != 1 {
		t.Fatalf("Stats after releasing a /14 = %+v, want 4 quarantined, 1 allocated", s)
	}
	mustAllocate(t, a, "b", IPv4, "10.5.0.0/16")
	clk.Advance(time.Minute)
	for i := range 4 {
		mustAllocate(t, a, fmt.Sprint("n", i), IPv4, fmt.Sprintf("10.%d.0.0/16", i))
	}
	mustAllocate(t, a, "n4", IPv4, "10.6.0.0/16")
}

func TestRebuild(t *testing.T) {
	clk := newFakeClock()
	now := clk.Now()
	cfg := Config{Pools: pfxs("10.0.0.0/8", "fd00::/48"), IPv4BlockLen: 16, IPv6BlockLen: 64, Quarantine: time.Hour, Now: clk.Now}
	input := []Allocation{
		{Owner: "b", Prefix: pfx("10.0.0.0/16")},
		{Owner: "a", Prefix: pfx("10.0.0.0/16")}, // a sorts first and wins over b
		{Owner: "c", Prefix: pfx("10.2.0.0/15")}, // span
		{Owner: "d", Prefix: pfx("10.3.0.0/16")}, // inside c's span: loses
		{Owner: "e", Prefix: pfx("10.8.1.0/24")}, // sub-block
		{Owner: "f", Prefix: pfx("10.8.2.0/24")}, // same block as e: loses
		{Owner: "a", Prefix: pfx("fd00::/64")},   // a second family for a
		{Owner: "z", Prefix: pfx("10.9.0.0/16")}, // held: wins over an earlier-named quarantine
		{Owner: "g", Prefix: pfx("10.9.0.0/16"), QuarantinedUntil: now.Add(time.Minute)},
		{Owner: "h", Prefix: pfx("10.10.0.0/16"), QuarantinedUntil: now.Add(time.Minute)},
		{Owner: "h", Prefix: pfx("10.10.0.0/16"), QuarantinedUntil: now.Add(time.Minute)}, // exact duplicate
		{Owner: "i", Prefix: pfx("10.11.0.0/16"), QuarantinedUntil: now},                  // already expired: dropped
		{Owner: "j", Prefix: pfx("192.168.0.0/16")},                                       // outside the pools: orphan
		{Owner: "k", Prefix: pfx("10.12.0.1/16")},                                         // not canonical
		{Owner: "", Prefix: pfx("10.13.0.0/16")},                                          // no owner
		{Owner: "l", Prefix: pfx("10.0.0.0/8")},                                           // covers everything: loses
	}
	wantAllocs := []Allocation{
		{Owner: "a", Prefix: pfx("10.0.0.0/16")},
		{Owner: "c", Prefix: pfx("10.2.0.0/15")},
		{Owner: "e", Prefix: pfx("10.8.1.0/24")},
		{Owner: "z", Prefix: pfx("10.9.0.0/16")},
		{Owner: "h", Prefix: pfx("10.10.0.0/16"), QuarantinedUntil: now.Add(time.Minute)},
		{Owner: "j", Prefix: pfx("192.168.0.0/16")},
		{Owner: "a", Prefix: pfx("fd00::/64")},
	}
	type lost struct {
		owner, prefix string
		err           error
		holder        string
	}
	wantConflicts := []lost{
		{"", "10.13.0.0/16", ErrInvalidOwner, ""},
		{"b", "10.0.0.0/16", ErrConflict, "a"},
		{"d", "10.3.0.0/16", ErrConflict, "c"},
		{"f", "10.8.2.0/24", ErrConflict, "e"},
		{"k", "10.12.0.1/16", ErrNotCanonical, ""},
		{"l", "10.0.0.0/8", ErrConflict, "a"},
		{"g", "10.9.0.0/16", ErrConflict, "z"},
	}

	var first []Conflict
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		in := slices.Clone(input)
		rng.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
		a := mustNew(t, cfg)
		mustAllocate(t, a, "stale", IPv4, "10.0.0.0/16") // Rebuild must drop prior state
		conflicts := a.Rebuild(in)
		if got := a.Allocations(); !equalAllocations(got, wantAllocs) {
			t.Fatalf("round %d: Allocations() = %v\nwant %v", round, got, wantAllocs)
		}
		if len(conflicts) != len(wantConflicts) {
			t.Fatalf("round %d: %d conflicts %v, want %d", round, len(conflicts), conflicts, len(wantConflicts))
		}
		for i, w := range wantConflicts {
			c := conflicts[i]
			if c.Allocation.Owner != w.owner || c.Allocation.Prefix != pfx(w.prefix) || !errors.Is(c.Err, w.err) {
				t.Fatalf("round %d: conflict %d = %+v, want %s %s %v", round, i, c, w.owner, w.prefix, w.err)
			}
			var ce *ConflictError
			if w.holder != "" && (!errors.As(c.Err, &ce) || ce.Holder != w.holder) {
				t.Fatalf("round %d: conflict %d = %v, want holder %q", round, i, c.Err, w.holder)
			}
		}
		if round == 0 {
			first = conflicts
		} else if fmt.Sprint(first) != fmt.Sprint(conflicts) {
			t.Fatalf("round %d: conflicts differ from round 0:\n%v\n%v", round, conflicts, first)
		}
		// The rebuilt quarantine is enforced, and allocation continues from the rebuilt state.
		mustAllocate(t, a, "new", IPv4, "10.1.0.0/16")
		mustAllocate(t, a, "new2", IPv4, "10.4.0.0/16")
		if orph := a.Orphaned(); len(orph) != 1 || orph[0].Owner != "j" {
			t.Fatalf("round %d: Orphaned() = %v, want j's 192.168.0.0/16", round, orph)
		}
	}
}

func TestRebuildRoundTrip(t *testing.T) {
	clk := newFakeClock()
	cfg := Config{Pools: pfxs("10.0.0.0/16", "fd00::/56"), IPv4BlockLen: 24, IPv6BlockLen: 64, Quarantine: time.Hour, Now: clk.Now}
	a := mustNew(t, cfg)
	for i := range 20 {
		mustAllocate(t, a, fmt.Sprint("m", i), IPv4, "")
		mustAllocate(t, a, fmt.Sprint("m", i), IPv6, "")
	}
	mustReserve(t, a, "big", "10.0.64.0/18")
	mustReserve(t, a, "small", "10.0.200.128/25")
	for _, i := range []int{3, 11, 17} {
		mustRelease(t, a, fmt.Sprint("m", i), fmt.Sprintf("10.0.%d.0/24", i))
	}
	clk.Advance(time.Minute)
	mustRelease(t, a, "m5", "fd00:0:0:5::/64")

	b := mustNew(t, cfg)
	if c := b.Rebuild(a.Allocations()); len(c) != 0 {
		t.Fatalf("Rebuild(Allocations()) conflicts: %v", c)
	}
	if x, y := a.Allocations(), b.Allocations(); !equalAllocations(x, y) {
		t.Fatalf("rebuilt state differs:\n%v\n%v", x, y)
	}
	if x, y := a.Stats(), b.Stats(); !slices.Equal(x, y) {
		t.Fatalf("rebuilt stats differ:\n%v\n%v", x, y)
	}
	// Both must hand out the same blocks from here on, across quarantine expiry.
	for i := range 30 {
		if i == 10 {
			clk.Advance(time.Hour)
		}
		for _, fam := range []Family{IPv4, IPv6} {
			owner := fmt.Sprint("n", i)
			x, errX := a.Allocate(owner, fam)
			y, errY := b.Allocate(owner, fam)
			if x != y || (errX == nil) != (errY == nil) {
				t.Fatalf("Allocate(%s, %s): original %s %v, rebuilt %s %v", owner, fam, x, errX, y, errY)
			}
		}
	}
}

func TestPoolRemovedWhileInUse(t *testing.T) {
	clk := newFakeClock()
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/15", "10.8.0.0/15"), IPv4BlockLen: 16, Quarantine: time.Minute, Now: clk.Now})
	mustAllocate(t, a, "a", IPv4, "10.0.0.0/16")
	mustAllocate(t, a, "b", IPv4, "10.1.0.0/16")
	mustAllocate(t, a, "c", IPv4, "10.8.0.0/16")
	mustAllocate(t, a, "d", IPv4, "10.9.0.0/16")
	mustRelease(t, a, "d", "10.9.0.0/16")

	if err := a.SetPools(pfxs("10.0.0.0/15", "10.0.0.0/16")); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("SetPools with overlapping pools: err = %v, want ErrInvalidConfig", err)
	}
	if err := a.SetPools(pfxs("10.0.0.0/15", "10.4.0.0/16")); err != nil {
		t.Fatal(err)
	}
	// c keeps its block, is reported, and still owns it.
	if got, want := a.Orphaned(), []Allocation{{Owner: "c", Prefix: pfx("10.8.0.0/16")}}; !equalAllocations(got, want) {
		t.Fatalf("Orphaned() = %v, want %v", got, want)
	}
	if o, ok := a.Owner(pfx("10.8.0.0/16")); !ok || o != "c" {
		t.Fatalf("Owner(orphan) = %q, %v", o, ok)
	}
	mustAllocate(t, a, "c", IPv4, "10.8.0.0/16") // idempotent even when orphaned
	mustAllocate(t, a, "e", IPv4, "10.4.0.0/16")
	if _, err := a.Allocate("f", IPv4); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate = %v, want ErrPoolExhausted (the removed pool must not be used)", err)
	}
	if err := a.Reserve("f", pfx("10.8.0.0/16")); !errors.Is(err, ErrOutsidePool) {
		t.Fatalf("Reserve in removed pool: err = %v, want ErrOutsidePool", err)
	}
	stats := a.Stats()
	if len(stats) != 2 || stats[1].Pool != pfx("10.4.0.0/16") || stats[0].Allocated != 2 {
		t.Fatalf("Stats() = %+v", stats)
	}

	// Bringing the pool back: c's block is still taken and d's quarantine still holds.
	if err := a.SetPools(pfxs("10.0.0.0/15", "10.4.0.0/16", "10.8.0.0/15")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Allocate("f", IPv4); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate with re-added pool during quarantine = %v, want ErrPoolExhausted", err)
	}
	clk.Advance(time.Minute)
	mustAllocate(t, a, "f", IPv4, "10.9.0.0/16")

	// A grown pool that now contains the orphan adopts it.
	if err := a.SetPools(pfxs("10.0.0.0/12")); err != nil {
		t.Fatal(err)
	}
	if orph := a.Orphaned(); len(orph) != 0 {
		t.Fatalf("Orphaned() after growing the pool = %v", orph)
	}
	mustAllocate(t, a, "g", IPv4, "10.2.0.0/16")
	mustRelease(t, a, "c", "10.8.0.0/16")
}

func TestStats(t *testing.T) {
	clk := newFakeClock()
	a := mustNew(t, Config{
		Pools:        pfxs("10.0.0.0/8", "fd01::/64", "fd02::/120"),
		IPv4BlockLen: 16, IPv6BlockLen: 128, // fd01::/64 has exactly 2^64 blocks
		Quarantine: time.Minute, Now: clk.Now,
	})
	b := mustNew(t, Config{
		Pools:        pfxs("10.0.0.0/8", "fd00::/32"),
		IPv4BlockLen: 16, IPv6BlockLen: 64,
		Quarantine: time.Minute, Now: clk.Now,
	})
	mustAllocate(t, b, "a", IPv4, "10.0.0.0/16")
	mustReserve(t, b, "b", "10.4.0.0/14")
	mustReserve(t, b, "c", "10.9.9.0/24")
	mustAllocate(t, b, "d", IPv4, "10.1.0.0/16")
	mustRelease(t, b, "d", "10.1.0.0/16")
	mustReserve(t, b, "e", "fd00:0:8000::/33")
	mustAllocate(t, b, "f", IPv6, "fd00::/64")
	want := []PoolStats{
		{Family: IPv4, Pool: pfx("10.0.0.0/8"), BlockLen: 16, Bits: 8, Total: 256, Allocated: 6, Quarantined: 1, Free: 249},
		{Family: IPv6, Pool: pfx("fd00::/32"), BlockLen: 64, Bits: 32, Total: 1 << 32, Allocated: 1<<31 + 1, Quarantined: 0, Free: 1<<31 - 1},
	}
	if got := b.Stats(); !slices.Equal(got, want) {
		t.Fatalf("Stats() =\n%+v\nwant\n%+v", got, want)
	}

	s := a.Stats()
	if s[1].Pool != pfx("fd01::/64") || s[1].Bits != 64 || s[1].Total != math.MaxUint64 || s[1].Free != math.MaxUint64 {
		t.Fatalf("stats of a pool with 2^64 blocks = %+v, want Bits 64 and saturated Total/Free", s[1])
	}
	mustReserve(t, a, "x", "fd01::/64")
	mustAllocate(t, a, "y", IPv6, "fd02::/128")
	if s := a.Stats(); s[1].Allocated != math.MaxUint64 || s[1].Free != 0 || s[2].Allocated != 1 || s[2].Total != 256 {
		t.Fatalf("Stats() after filling the 2^64 pool = %+v", s)
	}
}

func TestHugePool(t *testing.T) {
	// 2^64 blocks: the cursor must work at both ends of the index range.
	a := mustNew(t, Config{Pools: pfxs("fd00::/64"), IPv6BlockLen: 128})
	mustAllocate(t, a, "a", IPv6, "fd00::/128")
	mustReserve(t, a, "end", "fd00::ffff:ffff:ffff:fffe/127")
	mustReserve(t, a, "lowspan", "fd00::4/126")
	mustAllocate(t, a, "b", IPv6, "fd00::1/128")
	mustAllocate(t, a, "c", IPv6, "fd00::2/128")
	mustAllocate(t, a, "d", IPv6, "fd00::3/128")
	mustAllocate(t, a, "e", IPv6, "fd00::8/128")
	mustRelease(t, a, "end", "fd00::ffff:ffff:ffff:fffe/127")
	mustRelease(t, a, "lowspan", "fd00::4/126")
	mustAllocate(t, a, "f", IPv6, "fd00::4/128")

	// A pool fully covered by one reservation is exhausted in O(1), not 2^64 steps.
	b := mustNew(t, Config{Pools: pfxs("2001:db8::/32"), IPv6BlockLen: 96})
	mustReserve(t, b, "all", "2001:db8::/32")
	if _, err := b.Allocate("x", IPv6); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Allocate in fully reserved pool: %v", err)
	}
}

func TestOwner(t *testing.T) {
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 16})
	mustReserve(t, a, "big", "10.4.0.0/14")
	mustReserve(t, a, "small", "10.1.128.0/17")
	tests := []struct {
		prefix string
		want   string
	}{
		{"10.4.0.0/14", "big"},
		{"10.5.0.0/16", "big"},
		{"10.7.255.255/32", "big"},
		{"10.4.0.0/13", ""}, // wider than the allocation
		{"10.1.128.0/17", "small"},
		{"10.1.200.0/24", "small"},
		{"10.1.0.0/24", ""}, // in small's block but not in its range
		{"10.1.0.0/16", ""},
		{"10.9.0.0/16", ""},
		{"fd00::/64", ""},
	}
	for _, tt := range tests {
		got, ok := a.Owner(pfx(tt.prefix))
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("Owner(%s) = %q, %v; want %q", tt.prefix, got, ok, tt.want)
		}
	}
	if _, ok := a.Owner(netip.Prefix{}); ok {
		t.Error("Owner(zero prefix) reported an owner")
	}
}

func TestConcurrentAllocate(t *testing.T) {
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 24})
	const workers, each = 8, 200
	got := make([][]netip.Prefix, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				p, err := a.Allocate(fmt.Sprintf("w%d-%d", w, i), IPv4)
				if err != nil {
					t.Error(err)
					return
				}
				got[w] = append(got[w], p)
			}
		})
	}
	wg.Wait()
	seen := make(map[netip.Prefix]bool)
	for _, ps := range got {
		for _, p := range ps {
			if seen[p] {
				t.Fatalf("%s handed out twice", p)
			}
			seen[p] = true
		}
	}
	if len(seen) != workers*each {
		t.Fatalf("%d distinct blocks, want %d", len(seen), workers*each)
	}
	// Lowest first overall: the blocks form one contiguous run from the pool start.
	for i := range workers * each {
		if p := pfx(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)); !seen[p] {
			t.Fatalf("%s not handed out; the blocks are not the lowest %d", p, workers*each)
		}
	}
}

func TestFamilyString(t *testing.T) {
	for f, want := range map[Family]string{IPv4: "IPv4", IPv6: "IPv6", 0: "Family(0)"} {
		if got := f.String(); got != want {
			t.Errorf("Family(%d).String() = %q, want %q", int(f), got, want)
		}
	}
	if FamilyOf(netip.MustParseAddr("10.0.0.1")) != IPv4 || FamilyOf(netip.MustParseAddr("::1")) != IPv6 {
		t.Error("FamilyOf is wrong")
	}
}

// Drop frees a block at once even with a quarantine configured (the block
// was never used), only for its owner, and Held follows it.
func TestDropAndHeld(t *testing.T) {
	clk := newFakeClock()
	a := mustNew(t, Config{Pools: pfxs("10.0.0.0/14"), IPv4BlockLen: 16, Quarantine: time.Hour, Now: clk.Now})
	mustAllocate(t, a, "a", IPv4, "10.0.0.0/16")
	mustReserve(t, a, "a", "10.2.0.0/15")
	mustAllocate(t, a, "b", IPv4, "10.1.0.0/16")
	if got := a.Held("a"); len(got) != 2 || got[0] != pfx("10.0.0.0/16") || got[1] != pfx("10.2.0.0/15") {
		t.Fatalf("Held(a) = %v", got)
	}
	for _, bad := range []struct{ owner, p string }{{"b", "10.0.0.0/16"}, {"a", "10.2.0.0/16"}, {"a", "10.9.0.0/16"}} {
		if err := a.Drop(bad.owner, pfx(bad.p)); !errors.Is(err, ErrNotHeld) {
			t.Errorf("Drop(%s, %s) = %v, want ErrNotHeld", bad.owner, bad.p, err)
		}
	}
	if err := a.Drop("a", pfx("10.2.0.0/15")); err != nil {
		t.Fatal(err)
	}
	if got := a.Held("a"); len(got) != 1 || got[0] != pfx("10.0.0.0/16") {
		t.Errorf("Held(a) after Drop = %v", got)
	}
	// No quarantine: both blocks of the dropped /15 are free now.
	mustAllocate(t, a, "c", IPv4, "10.2.0.0/16")
	mustAllocate(t, a, "d", IPv4, "10.3.0.0/16")
	mustRelease(t, a, "a", "10.0.0.0/16")
	if got := a.Held("a"); len(got) != 0 {
		t.Errorf("Held(a) after Release = %v", got)
	}
	if err := a.Drop("a", pfx("10.0.0.0/16")); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Drop of a quarantined block = %v, want ErrNotHeld", err)
	}
}
