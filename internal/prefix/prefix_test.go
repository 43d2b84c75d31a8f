package prefix_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/archipelago-mesh/archipelago/internal/prefix"
)

func TestCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3/16":         "10.1.0.0/16",
		"::ffff:10.1.0.0/112": "10.1.0.0/16",
		"::ffff:10.1.2.3/128": "10.1.2.3/32",
		"::ffff:0.0.0.0/96":   "0.0.0.0/0",
		"::ffff:0:0/80":       "::/80", // shorter than the mapped space: stays IPv6
		"fd00:1::5/48":        "fd00:1::/48",
	} {
		if got := prefix.Canonical(netip.MustParsePrefix(in)); got.String() != want {
			t.Errorf("Canonical(%s) = %s, want %s", in, got, want)
		}
	}
	if prefix.Canonical(netip.Prefix{}).IsValid() {
		t.Error("invalid prefix made valid")
	}
}

func TestSet(t *testing.T) {
	in := []netip.Prefix{netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("10.2.0.0/16"), {},
		netip.MustParsePrefix("::ffff:10.1.0.0/112"), netip.MustParsePrefix("10.1.9.9/16"), netip.MustParsePrefix("10.1.0.0/24")}
	got := prefix.Set(in)
	want := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.1.0.0/24"),
		netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix("fd00::/64")}
	if !slices.Equal(got, want) {
		t.Errorf("Set = %v, want %v", got, want)
	}
	// Appending keeps what is there and sorts only the new part.
	out := prefix.AppendCanonical([]netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}, in[:2])
	if len(out) != 3 || out[0].String() != "192.0.2.0/24" || out[1].String() != "10.2.0.0/16" {
		t.Errorf("AppendCanonical = %v", out)
	}
}
