package ipam

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
)

// Family is an IP address family.
type Family int

// The address families. The zero Family is invalid so that a forgotten field is caught.
const (
	IPv4 Family = iota + 1
	IPv6
)

// String returns "IPv4" or "IPv6".
func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	default:
		return fmt.Sprintf("Family(%d)", int(f))
	}
}

func (f Family) valid() bool { return f == IPv4 || f == IPv6 }

// index maps a valid family to 0 or 1 for per-family arrays.
func (f Family) index() int { return int(f) - 1 }

// addrBits is the address length of the family in bits.
func (f Family) addrBits() int {
	if f == IPv4 {
		return 32
	}
	return 128
}

// FamilyOf returns the family of a. IPv4-mapped IPv6 addresses are IPv6; the allocator
// rejects them as not canonical.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// uint128 is an address as an unsigned integer, so that block indices can be turned into
// addresses without math/big: the allocator works on an index inside a pool (at most 64
// bits wide) and only needs add, subtract and shifts.
type uint128 struct{ hi, lo uint64 }

func fromAddr(a netip.Addr) uint128 {
	if a.Is4() {
		b := a.As4()
		return uint128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return uint128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (u uint128) addr(f Family) netip.Addr {
	if f == IPv4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(u.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

func (u uint128) add(v uint128) uint128 {
	lo, c := bits.Add64(u.lo, v.lo, 0)
	hi, _ := bits.Add64(u.hi, v.hi, c)
	return uint128{hi: hi, lo: lo}
}

func (u uint128) sub(v uint128) uint128 {
	lo, b := bits.Sub64(u.lo, v.lo, 0)
	hi, _ := bits.Sub64(u.hi, v.hi, b)
	return uint128{hi: hi, lo: lo}
}

// shl returns x << n as a 128-bit value.
func shl(x uint64, n uint) uint128 {
	switch {
	case n >= 128:
		return uint128{}
	case n >= 64:
		return uint128{hi: x << (n - 64)}
	case n == 0:
		return uint128{lo: x}
	default:
		return uint128{hi: x >> (64 - n), lo: x << n}
	}
}

// shr returns the low 64 bits of u >> n.
func (u uint128) shr(n uint) uint64 {
	switch {
	case n >= 128:
		return 0
	case n >= 64:
		return u.hi >> (n - 64)
	case n == 0:
		return u.lo
	default:
		return u.lo>>n | u.hi<<(64-n)
	}
}

// pow2 returns 2^n, saturated at the largest uint64 for n >= 64.
func pow2(n int) uint64 {
	if n >= 64 {
		return ^uint64(0)
	}
	return 1 << uint(n)
}

// satAdd adds without wrapping around.
func satAdd(a, b uint64) uint64 {
	s, c := bits.Add64(a, b, 0)
	if c != 0 {
		return ^uint64(0)
	}
	return s
}

// satSub subtracts without wrapping around.
func satSub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}
