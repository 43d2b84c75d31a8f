package netfilter

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
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
		"chain tunnel-guard type filter hook 0 priority -300",
		"chain tunnel-input type filter hook 1 priority -10",
		`"archipelago:tunnel-guard-v4:`, `"archipelago:tunnel-guard-v6:`, `"archipelago:tunnel-input:`,
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
	// No tunnel: neither clamp nor guard. Clamping off: no clamp chain.
	for _, c := range []struct {
		plan FilterPlan
		want []string
	}{
		{FilterPlan{MSSClamp: true}, []string{ChainNoSNAT, ChainForward}},
		{FilterPlan{TunnelInterface: "wg0"}, []string{ChainNoSNAT, ChainForward, ChainTunnelGuard, ChainTunnelInput}},
		// The ICMP source rewrite needs a local range to take the address
		// from (of either family).
		{FilterPlan{TunnelInterface: "wg0", LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:a::/48")}}, []string{ChainNoSNAT, ChainForward, ChainTunnelGuard, ChainTunnelInput, ChainTunnelICMP}},
		{FilterPlan{TunnelInterface: "wg0", LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("fd00:a::/48"), netip.MustParsePrefix("10.244.0.0/16")}},
			[]string{ChainNoSNAT, ChainForward, ChainTunnelGuard, ChainTunnelInput, ChainTunnelICMP}},
	} {
		rs, _ := Render(c.plan)
		var names []string
		for _, ch := range rs.Chains {
			names = append(names, ch.Name)
		}
		if !slices.Equal(names, c.want) {
			t.Errorf("plan %+v: chains %q, want %q", c.plan, names, c.want)
		}
	}
	// With the tunnel's MTU: a rule per direction and family with it (it
	// is part of them), and out of the tunnel one more with the route's
	// MTU (a peer's path MTU may be lower than the tunnel's).
	withMTU := plan
	withMTU.MTU = 1340
	rsMTU, err := Render(withMTU)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"archipelago:mss-out-v4:`, `"archipelago:mss-out-v6:`, `"archipelago:mss-out-route:`, `"archipelago:mss-in-v4:`, `"archipelago:mss-in-v6:`} {
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

// The tunnel guard drops, from the tunnel interface only, IPv4 and IPv6
// packets whose destination is not in the local pod set, and everything for
// the node itself.
func TestRenderTunnelGuard(t *testing.T) {
	rs, err := Render(FilterPlan{TunnelInterface: "wg0"})
	if err != nil {
		t.Fatal(err)
	}
	chains := map[string]Chain{}
	for _, c := range rs.Chains {
		chains[c.Name] = c
	}
	guard, input := chains[ChainTunnelGuard], chains[ChainTunnelInput]
	if guard.Hook != *nftables.ChainHookPrerouting || guard.Priority != PriorityTunnelGuard || guard.Type != nftables.ChainTypeFilter {
		t.Errorf("guard chain %+v, want filter prerouting priority %d", guard, PriorityTunnelGuard)
	}
	if input.Hook != *nftables.ChainHookInput || input.Type != nftables.ChainTypeFilter {
		t.Errorf("input chain %+v, want filter input", input)
	}
	if len(guard.Rules) != 2 || len(input.Rules) != 1 {
		t.Fatalf("guard %d rules, input %d, want 2 and 1", len(guard.Rules), len(input.Rules))
	}
	for i, want := range []struct {
		proto byte
		set   string
	}{{unix.NFPROTO_IPV4, SetLocal4}, {unix.NFPROTO_IPV6, SetLocal6}} {
		r := guard.Rules[i]
		if !matchesIIF(r, "wg0") {
			t.Errorf("rule %s does not start with iifname wg0", r.ID)
		}
		var proto, lookup, drop bool
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Cmp:
				proto = proto || slices.Equal(e.Data, []byte{want.proto})
			case *expr.Lookup:
				lookup = e.SetName == want.set && e.Invert
			case *expr.Verdict:
				drop = e.Kind == expr.VerdictDrop
			}
		}
		if !proto || !lookup || !drop {
			t.Errorf("rule %s: nfproto %d %v, daddr != @%s %v, drop %v", r.ID, want.proto, proto, want.set, lookup, drop)
		}
	}
	r := input.Rules[0]
	if !matchesIIF(r, "wg0") {
		t.Errorf("rule %s does not start with iifname wg0", r.ID)
	}
	if v, ok := r.Exprs[len(r.Exprs)-1].(*expr.Verdict); !ok || v.Kind != expr.VerdictDrop {
		t.Errorf("rule %s does not end in drop: %#v", r.ID, r.Exprs[len(r.Exprs)-1])
	}
	for _, c := range rs.Chains {
		if c.Name == ChainTunnelGuard || c.Name == ChainTunnelInput {
			continue
		}
		for _, r := range c.Rules {
			for _, e := range r.Exprs {
				if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictDrop {
					t.Errorf("rule %s of chain %s drops", r.ID, c.Name)
				}
			}
		}
	}
}

func matchesIIF(r Rule, name string) bool {
	if len(r.Exprs) < 2 {
		return false
	}
	m, ok1 := r.Exprs[0].(*expr.Meta)
	c, ok2 := r.Exprs[1].(*expr.Cmp)
	return ok1 && ok2 && m.Key == expr.MetaKeyIIFNAME && c.Op == expr.CmpOpEq && slices.Equal(c.Data, ifname(name))
}

// The VXLAN port of a gateway with a receiving device accepts only the
// cluster's nodes: a chain at input that drops UDP to the port from any
// other source, per family; a change of nodes is an element update.
func TestRenderOverlayInput(t *testing.T) {
	base := FilterPlan{TunnelInterface: "wg0"}
	rs, err := Render(base)
	if err != nil {
		t.Fatal(err)
	}
	if s := rs.Shape(); strings.Contains(s, ChainOverlayInput) || strings.Contains(s, SetOverlay4) {
		t.Errorf("no overlay port, yet:\n%s", s)
	}
	plan := base
	plan.OverlayPort = 4790
	plan.OverlaySenders = []netip.Prefix{netip.MustParsePrefix("192.168.10.2/32"), netip.MustParsePrefix("fd00:10::2/128")}
	rs, err = Render(plan)
	if err != nil {
		t.Fatal(err)
	}
	var c Chain
	for _, ch := range rs.Chains {
		if ch.Name == ChainOverlayInput {
			c = ch
		}
	}
	if c.Hook != *nftables.ChainHookInput || c.Type != nftables.ChainTypeFilter || len(c.Rules) != 2 {
		t.Fatalf("overlay chain %+v, want filter input with 2 rules", c)
	}
	for i, want := range []struct {
		proto byte
		set   string
	}{{unix.NFPROTO_IPV4, SetOverlay4}, {unix.NFPROTO_IPV6, SetOverlay6}} {
		var proto, udp, port, lookup, drop bool
		for _, e := range c.Rules[i].Exprs {
			switch e := e.(type) {
			case *expr.Cmp:
				proto = proto || slices.Equal(e.Data, []byte{want.proto})
				udp = udp || slices.Equal(e.Data, []byte{unix.IPPROTO_UDP})
				port = port || slices.Equal(e.Data, []byte{0x12, 0xb6})
			case *expr.Lookup:
				lookup = e.SetName == want.set && e.Invert
			case *expr.Verdict:
				drop = e.Kind == expr.VerdictDrop
			}
		}
		if !proto || !udp || !port || !lookup || !drop {
			t.Errorf("rule %s: nfproto %v udp %v dport 4790 %v saddr != @%s %v drop %v", c.Rules[i].ID, proto, udp, port, want.set, lookup, drop)
		}
	}
	var o4, o6 []Range
	for _, s := range rs.Sets {
		switch s.Name {
		case SetOverlay4:
			o4 = s.Ranges
		case SetOverlay6:
			o6 = s.Ranges
		}
	}
	if len(o4) != 1 || len(o6) != 1 {
		t.Errorf("overlay sets %v %v, want one address each", o4, o6)
	}
	more := plan
	more.OverlaySenders = append(slices.Clone(plan.OverlaySenders), netip.MustParsePrefix("192.168.10.3/32"))
	rs2, _ := Render(more)
	if rs2.Shape() != rs.Shape() {
		t.Error("a new node changed the ruleset shape")
	}
	if _, err := Render(FilterPlan{OverlayPort: 70000}); err == nil {
		t.Error("overlay port 70000 accepted")
	}
}
