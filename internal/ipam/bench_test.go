package ipam

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

const benchMembers = 10_000

func ownerNames(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("member-%05d", from+i)
	}
	return out
}

// benchAllocate measures Allocate with benchMembers members holding blocks. Every
// benchMembers iterations the extra members are released (timer stopped), so the member
// count stays between 10k and 20k; rounds after the first take blocks from the holes the
// releases left, so both cursor paths are measured.
func benchAllocate(b *testing.B, cfg Config, fam Family) {
	a := mustNew(b, cfg)
	for _, o := range ownerNames(0, benchMembers) {
		if _, err := a.Allocate(o, fam); err != nil {
			b.Fatal(err)
		}
	}
	extra := ownerNames(benchMembers, benchMembers)
	got := make([]netip.Prefix, len(extra))
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		if i == len(extra) {
			b.StopTimer()
			for j, o := range extra {
				if err := a.Release(o, got[j]); err != nil {
					b.Fatal(err)
				}
			}
			i = 0
			b.StartTimer()
		}
		p, err := a.Allocate(extra[i], fam)
		if err != nil {
			b.Fatal(err)
		}
		got[i] = p
		i++
	}
}

func BenchmarkAllocate10k(b *testing.B) {
	// 10.0.0.0/8 of /24 blocks: 65536 blocks.
	benchAllocate(b, Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 24}, IPv4)
}

func BenchmarkAllocate10kHugeIPv6(b *testing.B) {
	// fd00::/32 of /64 blocks: 2^32 blocks, far too many for a bitmap.
	benchAllocate(b, Config{Pools: pfxs("fd00::/32"), IPv6BlockLen: 64}, IPv6)
}

// BenchmarkChurn10k releases one member and allocates a new one per iteration, with the
// quarantine expiring as the clock advances, at 10k members: the steady state of a hub.
func BenchmarkChurn10k(b *testing.B) {
	clk := newFakeClock()
	a := mustNew(b, Config{Pools: pfxs("10.0.0.0/8"), IPv4BlockLen: 24, Quarantine: time.Minute, Now: clk.Now})
	owners := ownerNames(0, benchMembers)
	held := make([]netip.Prefix, benchMembers)
	for i, o := range owners {
		p, err := a.Allocate(o, IPv4)
		if err != nil {
			b.Fatal(err)
		}
		held[i] = p
	}
	rng := rand.New(rand.NewPCG(1, 2))
	names := ownerNames(benchMembers, benchMembers)
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		i := rng.IntN(benchMembers)
		if err := a.Release(owners[i], held[i]); err != nil {
			b.Fatal(err)
		}
		clk.Advance(time.Second) // about 60 blocks in quarantine at any time
		owners[i] = names[n%len(names)] + fmt.Sprint("-", n/len(names))
		n++
		p, err := a.Allocate(owners[i], IPv4)
		if err != nil {
			b.Fatal(err)
		}
		held[i] = p
	}
}

func BenchmarkRebuild10k(b *testing.B) {
	clk := newFakeClock()
	cfg := Config{Pools: pfxs("10.0.0.0/8", "fd00::/32"), IPv4BlockLen: 24, IPv6BlockLen: 64, Quarantine: time.Hour, Now: clk.Now}
	src := mustNew(b, cfg)
	for i, o := range ownerNames(0, benchMembers) {
		fam := IPv4
		if i%2 == 1 {
			fam = IPv6
		}
		if _, err := src.Allocate(o, fam); err != nil {
			b.Fatal(err)
		}
	}
	allocs := src.Allocations()
	rand.New(rand.NewPCG(3, 4)).Shuffle(len(allocs), func(i, j int) { allocs[i], allocs[j] = allocs[j], allocs[i] })
	a := mustNew(b, cfg)
	b.ReportAllocs()
	for b.Loop() {
		if c := a.Rebuild(allocs); len(c) != 0 {
			b.Fatal(c)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(allocs)), "ns/allocation")
}
