package controllers

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/archipelago-mesh/archipelago/internal/ipam"
)

func TestGridBlocks(t *testing.T) {
	for _, tc := range []struct {
		rng  string
		bl   int
		want []string
	}{
		{"10.244.0.0/20", 20, []string{"10.244.0.0/20"}},
		{"10.244.8.0/22", 20, []string{"10.244.0.0/20"}},
		{"10.244.0.0/18", 20, []string{"10.244.0.0/20", "10.244.16.0/20", "10.244.32.0/20", "10.244.48.0/20"}},
		{"10.255.128.0/17", 18, []string{"10.255.128.0/18", "10.255.192.0/18"}},
		{"10.0.255.0/23", 24, []string{"10.0.254.0/24", "10.0.255.0/24"}},
		{"fd00:0:0:fffe::/63", 64, []string{"fd00:0:0:fffe::/64", "fd00:0:0:ffff::/64"}},
		{"fd00:0:1:ffff:8000::/65", 64, []string{"fd00:0:1:ffff::/64"}},
		{"fd00::/62", 64, []string{"fd00::/64", "fd00:0:0:1::/64", "fd00:0:0:2::/64", "fd00:0:0:3::/64"}},
	} {
		p := netip.MustParsePrefix(tc.rng)
		var got []string
		for _, b := range gridBlocks(p.Masked(), tc.bl) {
			got = append(got, b.String())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("gridBlocks(%s, /%d) = %v, want %v", tc.rng, tc.bl, got, tc.want)
		}
		if n := blockCount(p, tc.bl); n != uint64(len(tc.want)) {
			t.Errorf("blockCount(%s, /%d) = %d, want %d", tc.rng, tc.bl, n, len(tc.want))
		}
	}
	if n := blockCount(netip.MustParsePrefix("fd00::/32"), 128); n != ^uint64(0) {
		t.Errorf("blockCount of 2^96 blocks = %d, want it saturated", n)
	}
}

func TestStaleRanges(t *testing.T) {
	p := netip.MustParsePrefix
	v4, v6 := ipam.IPv4, ipam.IPv6
	for _, tc := range []struct {
		name               string
		held               []string
		current, requested map[ipam.Family]netip.Prefix
		stale              []string
		wanted             []ipam.Family // nil: both
	}{
		{"nothing held", nil, nil, nil, nil, nil},
		{"assigned range kept", []string{"10.0.0.0/16"}, map[ipam.Family]netip.Prefix{v4: p("10.0.0.0/16")}, nil, nil, nil},
		{"unfinished pass reused", []string{"10.0.0.0/16"}, nil, nil, nil, nil},
		{"unfinished adoption still asked for", []string{"10.1.0.0/16"}, nil, map[ipam.Family]netip.Prefix{v4: p("10.1.0.0/16")}, nil, nil},
		{"request changed", []string{"10.1.0.0/16"}, nil, map[ipam.Family]netip.Prefix{v4: p("10.2.0.0/16")}, []string{"10.1.0.0/16"}, nil},
		{"beside the assigned range", []string{"10.0.0.0/16", "10.1.0.0/16", "fd00::/64"}, map[ipam.Family]netip.Prefix{v4: p("10.1.0.0/16")}, nil, []string{"10.0.0.0/16"}, nil},
		{"two of a family, no request", []string{"10.0.0.0/16", "10.3.0.0/16"}, nil, nil, []string{"10.3.0.0/16"}, nil},
		{"other family assigned", []string{"fd00::/64"}, map[ipam.Family]netip.Prefix{v6: p("fd00:0:0:1::/64")}, nil, []string{"fd00::/64"}, nil},
		{"unfinished pass of a family no longer wanted", []string{"10.0.0.0/16", "fd00::/64"}, nil, nil, []string{"10.0.0.0/16"}, []ipam.Family{v6}},
		{"assigned range of a family no longer wanted stays", []string{"10.0.0.0/16"}, map[ipam.Family]netip.Prefix{v4: p("10.0.0.0/16")}, nil, nil, []ipam.Family{v6}},
	} {
		if tc.wanted == nil {
			tc.wanted = []ipam.Family{v4, v6}
		}
		var held []netip.Prefix
		for _, s := range tc.held {
			held = append(held, p(s))
		}
		kept := map[netip.Prefix]bool{}
		var got []string
		for _, s := range staleRanges(held, tc.current, tc.requested, tc.wanted, kept) {
			got = append(got, s.String())
		}
		if !slices.Equal(got, tc.stale) {
			t.Errorf("%s: stale %v, want %v", tc.name, got, tc.stale)
		}
		if len(kept)+len(got) != len(held) {
			t.Errorf("%s: kept %v and stale %v do not add up to held %v", tc.name, kept, got, held)
		}
	}
}
