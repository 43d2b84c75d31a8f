package netfilter

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestRangesMergeOverlapsAndNeighbours(t *testing.T) {
	v4, v6, err := ranges([]netip.Prefix{
		netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.0.0/16"), // contained
		netip.MustParsePrefix("10.246.0.0/16"), netip.MustParsePrefix("10.247.0.0/16"), // adjacent
		netip.MustParsePrefix("10.250.0.7/24"), // not masked
		netip.MustParsePrefix("::ffff:10.251.0.0/112"),
		netip.MustParsePrefix("fd00:b::/48"),
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range v4 {
		got = append(got, r.String())
	}
	want := []string{"10.244.0.0/16", "10.246.0.0/15", "10.250.0.0/24", "10.251.0.0/16"}
	if !slices.Equal(got, want) {
		t.Fatalf("v4 ranges %q, want %q", got, want)
	}
	if len(v6) != 1 || v6[0].String() != "fd00:b::/48" {
		t.Fatalf("v6 ranges %v", v6)
	}
}

func TestElementsRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		ipv6 bool
	}{
		{[]string{"10.244.0.0/16", "10.250.0.0/24"}, false},
		{[]string{"255.255.255.0/24", "0.0.0.0/8"}, false}, // top of the space: no end element
		{[]string{"0.0.0.0/0"}, false},
		{[]string{"fd00:a::/48", "ffff::/16"}, true},
	} {
		var ps []netip.Prefix
		for _, s := range tc.in {
			ps = append(ps, netip.MustParsePrefix(s))
		}
		v4, v6, _ := ranges(ps)
		rs := v4
		if tc.ipv6 {
			rs = v6
		}
		els := elements(rs)
		slices.Reverse(els) // the kernel dumps in its own order
		back, ok := rangesOf(els, tc.ipv6)
		if !ok || !slices.Equal(back, rs) {
			t.Errorf("%v: round trip %v (ok %v), want %v", tc.in, back, ok, rs)
		}
	}
}

func TestRender(t *testing.T) {
	plan := FilterPlan{
		LocalPodCIDRs:   []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		RemotePodCIDRs:  []netip.Prefix{netip.MustParsePrefix("10.245.0.0/16")},
		TunnelInterface: "wg0",
		MSSClamp:        true,
	}
	rs, err := Render(plan)
	if err != nil {
		t.Fatal(err)
	}
	shape := rs.Shape()
	for _, want := range []string{
		"set local4 ipv6=false", "set remote6 ipv6=true",
		"chain postrouting type nat hook 4 priority 90",
		"chain forward type filter hook 2 priority -10",
		"chain mss-clamp type filter hook 2 priority -150",
		`"archipelago:no-snat-v4:`, `"archipelago:mss-in:`,
	} {
		if !strings.Contains(shape, want) {
			t.Errorf("shape lacks %q:\n%s", want, shape)
		}
	}

	// Ranges do not change the shape: a range change is an element update.
	other := plan
	other.RemotePodCIDRs = append(other.RemotePodCIDRs, netip.MustParsePrefix("fd00:b::/48"))
	rs2, _ := Render(other)
	if rs2.Shape() != shape {
		t.Error("a range change changed the ruleset shape")
	}
	// The tunnel interface is part of the rules (their hash changes).
	other = plan
	other.TunnelInterface = "wg1"
	if rs3, _ := Render(other); rs3.Shape() == shape {
		t.Error("another tunnel interface did not change the shape")
	}
	// No tunnel, or clamping off: no clamp chain.
	for _, p := range []FilterPlan{{MSSClamp: true}, {TunnelInterface: "wg0"}} {
		rs, _ := Render(p)
		if len(rs.Chains) != 2 {
			t.Errorf("plan %+v: %d chains, want 2", p, len(rs.Chains))
		}
	}
	// With the tunnel's MTU: a rule per direction and family, and the MTU
	// is part of them.
	withMTU := plan
	withMTU.MTU = 1340
	rsMTU, err := Render(withMTU)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"archipelago:mss-out-v4:`, `"archipelago:mss-out-v6:`, `"archipelago:mss-in-v4:`, `"archipelago:mss-in-v6:`} {
		if !strings.Contains(rsMTU.Shape(), want) {
			t.Errorf("shape with MTU lacks %q:\n%s", want, rsMTU.Shape())
		}
	}
	withMTU.MTU = 1420
	if rs, _ := Render(withMTU); rs.Shape() == rsMTU.Shape() {
		t.Error("another tunnel MTU did not change the clamp rules")
	}
	for _, bad := range []int{1279, 70000} {
		withMTU.MTU = bad
		if _, err := Render(withMTU); err == nil || !strings.Contains(err.Error(), "MTU") {
			t.Errorf("MTU %d: err %v, want an error naming the MTU", bad, err)
		}
	}
	if _, err := Render(FilterPlan{TunnelInterface: strings.Repeat("x", 16)}); err == nil {
		t.Error("a 16-byte interface name must be rejected")
	}
}
