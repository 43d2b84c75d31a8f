// Package prefix canonicalises and compares address prefixes the way the
// kernel and WireGuard store them: masked, and an IPv4-mapped IPv6 prefix
// (::ffff:10.1.0.0/112) as the IPv4 prefix it is (10.1.0.0/16). The agent's
// planner and its appliers (routes, packet filter, WireGuard) use it, so
// that what one calls equal the others do too.
//
// It is pure: no I/O, no kernel, no Kubernetes.
package prefix

import (
	"cmp"
	"net/netip"
	"slices"
)

// Canonical returns p masked, and as IPv4 when it is an IPv4-mapped prefix
// of at least 96 bits. (Unmapping the address alone would give an invalid
// IPv4 prefix longer than 32 bits.) An invalid p is returned as it is.
func Canonical(p netip.Prefix) netip.Prefix {
	if !p.IsValid() {
		return p
	}
	a, bits := p.Addr(), p.Bits()
	if a.Is4In6() && bits >= 96 {
		a, bits = a.Unmap(), bits-96
	}
	return netip.PrefixFrom(a, bits).Masked()
}

// Compare orders prefixes by address, then by length: IPv4 before IPv6,
// and a prefix before the longer prefixes it contains.
func Compare(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// AppendCanonical appends the valid prefixes of in to out, canonical,
// sorted by Compare and without duplicates among themselves.
func AppendCanonical(out, in []netip.Prefix) []netip.Prefix {
	start := len(out)
	for _, p := range in {
		if p.IsValid() {
			out = append(out, Canonical(p))
		}
	}
	if len(out)-start > 1 {
		mine := out[start:]
		slices.SortFunc(mine, Compare)
		out = out[:start+len(slices.Compact(mine))]
	}
	return out
}

// Set returns the valid prefixes of in, canonical, sorted and unique: two
// lists with equal Sets mean the same ranges to the kernel.
func Set(in []netip.Prefix) []netip.Prefix {
	return AppendCanonical(make([]netip.Prefix, 0, len(in)), in)
}

// Sort sorts ps by Compare.
func Sort(ps []netip.Prefix) { slices.SortFunc(ps, Compare) }
