package routing_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/archipelago-mesh/archipelago/agent/routing"
	"github.com/archipelago-mesh/archipelago/agent/routing/fake"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func ipnet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

// seedForeign installs routes and a rule that belong to others: the agent
// must never change them.
func seedForeign(f *fake.Netlink) {
	f.Seed(netlink.Route{Dst: ipnet("10.245.0.0/16"), Gw: net.ParseIP("192.168.1.1"), Protocol: unix.RTPROT_STATIC})
	f.Seed(netlink.Route{Dst: ipnet("0.0.0.0/0"), Gw: net.ParseIP("192.168.1.254"), Protocol: unix.RTPROT_DHCP})
	f.Seed(netlink.Route{Dst: ipnet("10.99.0.0/16"), Gw: net.ParseIP("192.168.1.2"), Table: 100, Protocol: unix.RTPROT_STATIC})
	// Someone else's route inside the agent's own table, with another protocol.
	f.Seed(netlink.Route{Dst: ipnet("10.98.0.0/16"), Gw: net.ParseIP("192.168.1.3"), Table: routing.DefaultTable, Protocol: unix.RTPROT_BOOT})
	r := netlink.NewRule()
	r.Family, r.Priority, r.Table = netlink.FAMILY_V4, 100, 100
	f.SeedRule(*r)
}

func foreign(f *fake.Netlink) string {
	var out []string
	for _, r := range f.AllRoutes() {
		if r.Protocol == routing.RouteProtocol {
			continue
		}
		out = append(out, fmt.Sprintf("%d %s %s %d", r.Table, r.Dst, r.Gw, r.Protocol))
	}
	for _, r := range f.Rules() {
		if r.Table == routing.DefaultTable {
			continue
		}
		out = append(out, fmt.Sprintf("rule %d %d %d", r.Family, r.Priority, r.Table))
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// state is the agent-owned part of the fake, in a form comparable with a plan.
func state(f *fake.Netlink, table, prio int) []string {
	var out []string
	for _, r := range f.Routes(table) {
		if r.Protocol != routing.RouteProtocol {
			continue
		}
		if r.Type == unix.RTN_UNREACHABLE {
			out = append(out, fmt.Sprintf("unreachable %s metric=%d", r.Dst, r.Priority))
			continue
		}
		out = append(out, fmt.Sprintf("%s gw=%s src=%s mtu=%d", r.Dst, ipOrDash(r.Gw), ipOrDash(r.Src), r.MTU))
	}
	for _, r := range f.Rules() {
		if r.Table == table && r.Priority == prio {
			out = append(out, fmt.Sprintf("rule family=%d", r.Family))
		}
	}
	sort.Strings(out)
	return out
}

func expected(p routing.RoutePlan) []string {
	var out []string
	fams := map[int]bool{}
	for _, r := range p.Routes {
		gw, src := "-", "-"
		if r.Via.IsValid() {
			gw = r.Via.String()
		}
		if r.Src.IsValid() {
			src = r.Src.String()
		}
		out = append(out, fmt.Sprintf("%s gw=%s src=%s mtu=%d", r.Dst.Masked(), gw, src, r.MTU))
		if r.Dst.Addr().Is4() {
			fams[netlink.FAMILY_V4] = true
		} else {
			fams[netlink.FAMILY_V6] = true
		}
	}
	for _, u := range p.Unreachable {
		out = append(out, fmt.Sprintf("unreachable %s metric=%d", u.Masked(), routing.UnreachableMetric))
		if u.Addr().Is4() {
			fams[netlink.FAMILY_V4] = true
		} else {
			fams[netlink.FAMILY_V6] = true
		}
	}
	for fam := range fams {
		out = append(out, fmt.Sprintf("rule family=%d", fam))
	}
	sort.Strings(out)
	return out
}

func ipOrDash(ip net.IP) string {
	if len(ip) == 0 {
		return "-"
	}
	return ip.String()
}

func TestApplyWritesOnlyDifferences(t *testing.T) {
	f := fake.NewNetlink()
	f.AddLink("wg0")
	seedForeign(f)
	before := foreign(f)

	plan := routing.RoutePlan{Routes: []routing.Route{
		{Dst: pfx("10.245.0.0/16"), Via: addr("172.18.0.3")},
		{Dst: pfx("10.246.0.0/16"), Dev: "wg0", MTU: 1420, Src: addr("10.244.0.1")},
		{Dst: pfx("fd00:245::/48"), Dev: "wg0"},
	}}
	ch, err := routing.Apply(f, plan)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(ch.Added) != 3 || ch.RulesAdded != 2 || len(ch.Updated)+len(ch.Deleted)+ch.RulesDeleted != 0 {
		t.Fatalf("first Apply changes = %+v, want 3 routes and 2 rules added", ch)
	}
	f.AwaitRoutes(t, routing.DefaultTable, "10.245.0.0/16", "10.246.0.0/16", "fd00:245::/48")
	if got, want := state(f, routing.DefaultTable, routing.DefaultRulePriority), expected(plan); !reflect.DeepEqual(got, want) {
		t.Fatalf("state = %q, want %q", got, want)
	}

	f.ResetWrites()
	ch, err = routing.Apply(f, plan)
	if err != nil || !ch.Empty() || f.Writes() != 0 {
		t.Fatalf("no-change Apply: changes %+v, err %v, writes %d; want nothing", ch, err, f.Writes())
	}

	// One route changes its next hop: exactly one write.
	plan.Routes[0].Via = addr("172.18.0.4")
	f.ResetWrites()
	ch, err = routing.Apply(f, plan)
	if err != nil || !slices.Equal(ch.Updated, []netip.Prefix{pfx("10.245.0.0/16")}) || f.Writes() != 1 {
		t.Fatalf("changed next hop: changes %+v, err %v, writes %d; want one update", ch, err, f.Writes())
	}

	// The last IPv6 route goes: route and IPv6 rule are deleted, nothing else.
	plan.Routes = plan.Routes[:2]
	f.ResetWrites()
	ch, err = routing.Apply(f, plan)
	if err != nil || !slices.Equal(ch.Deleted, []netip.Prefix{pfx("fd00:245::/48")}) || ch.RulesDeleted != 1 || f.Writes() != 2 {
		t.Fatalf("removed IPv6 route: changes %+v, err %v, writes %d", ch, err, f.Writes())
	}
	if got, want := state(f, routing.DefaultTable, routing.DefaultRulePriority), expected(plan); !reflect.DeepEqual(got, want) {
		t.Fatalf("state = %q, want %q", got, want)
	}
	if after := foreign(f); after != before {
		t.Fatalf("foreign routes or rules changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestApplyRestoresDeletedRoute(t *testing.T) {
	f := fake.NewNetlink()
	plan := routing.RoutePlan{Routes: []routing.Route{
		{Dst: pfx("10.245.0.0/16"), Via: addr("172.18.0.3")},
		{Dst: pfx("10.246.0.0/16"), Via: addr("172.18.0.3")},
	}}
	if _, err := routing.Apply(f, plan); err != nil {
		t.Fatal(err)
	}
	// Drift: someone deletes a route by hand.
	if err := f.RouteDel(&netlink.Route{Dst: ipnet("10.246.0.0/16"), Table: routing.DefaultTable}); err != nil {
		t.Fatal(err)
	}
	f.ResetWrites()
	ch, err := routing.Apply(f, plan)
	if err != nil || !slices.Equal(ch.Added, []netip.Prefix{pfx("10.246.0.0/16")}) || f.Writes() != 1 {
		t.Fatalf("repair: changes %+v, err %v, writes %d; want one add", ch, err, f.Writes())
	}
}

func TestApplyMissingDeviceKeepsOthers(t *testing.T) {
	f := fake.NewNetlink()
	f.AddLink("wg0")
	plan := routing.RoutePlan{Routes: []routing.Route{
		{Dst: pfx("10.245.0.0/16"), Dev: "wg0"},
		{Dst: pfx("10.246.0.0/16"), Via: addr("172.18.0.3")},
	}}
	if _, err := routing.Apply(f, plan); err != nil {
		t.Fatal(err)
	}
	plan.Routes[0].Dev = "wg1" // does not exist (yet)
	plan.Routes = append(plan.Routes, routing.Route{Dst: pfx("10.247.0.0/16"), Via: addr("172.18.0.3")})
	ch, err := routing.Apply(f, plan)
	if err == nil || !strings.Contains(err.Error(), `"wg1"`) {
		t.Fatalf("want an error naming the missing device, got %v", err)
	}
	if !slices.Equal(ch.Added, []netip.Prefix{pfx("10.247.0.0/16")}) || len(ch.Deleted) != 0 {
		t.Fatalf("changes %+v: want the other route added and the route with the missing device kept", ch)
	}
	f.AwaitRoutes(t, routing.DefaultTable, "10.245.0.0/16", "10.246.0.0/16", "10.247.0.0/16")
}

func TestApplyReportsWriteErrors(t *testing.T) {
	f := fake.NewNetlink()
	f.FailNext("RouteReplace", unix.EPERM)
	_, err := routing.Apply(f, routing.RoutePlan{Routes: []routing.Route{{Dst: pfx("10.245.0.0/16"), Via: addr("172.18.0.3")}}})
	if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "10.245.0.0/16") {
		t.Fatalf("err = %v, want EPERM naming the route", err)
	}
}

func TestApplyRejectsBadPlans(t *testing.T) {
	for name, p := range map[string]routing.RoutePlan{
		"main table":          {Table: 254},
		"late priority":       {RulePriority: 32766},
		"no next hop":         {Routes: []routing.Route{{Dst: pfx("10.0.0.0/8")}}},
		"family mix":          {Routes: []routing.Route{{Dst: pfx("10.0.0.0/8"), Via: addr("fd00::1")}}},
		"duplicate":           {Routes: []routing.Route{{Dst: pfx("10.0.0.0/8"), Dev: "x"}, {Dst: pfx("10.0.0.1/8"), Dev: "x"}}},
		"unreachable twice":   {Unreachable: []netip.Prefix{pfx("10.0.0.0/8"), pfx("10.0.0.1/8")}},
		"unreachable invalid": {Unreachable: []netip.Prefix{{}}},
	} {
		f := fake.NewNetlink()
		if _, err := routing.Apply(f, p); err == nil || f.Writes() != 0 {
			t.Errorf("%s: err %v, writes %d; want an error and no writes", name, err, f.Writes())
		}
	}
}

func TestCleanup(t *testing.T) {
	f := fake.NewNetlink()
	f.AddLink("wg0")
	seedForeign(f)
	before := foreign(f)
	plan := routing.RoutePlan{Table: 300, RulePriority: 300, Routes: []routing.Route{
		{Dst: pfx("10.245.0.0/16"), Dev: "wg0"},
		{Dst: pfx("fd00:245::/48"), Dev: "wg0"},
	}}
	if _, err := routing.Apply(f, plan); err != nil {
		t.Fatal(err)
	}
	if err := routing.Cleanup(f, 300, 300); err != nil {
		t.Fatal(err)
	}
	if s := state(f, 300, 300); len(s) != 0 {
		t.Fatalf("after Cleanup: %q", s)
	}
	if after := foreign(f); after != before {
		t.Fatalf("Cleanup touched foreign state:\n%s\nvs\n%s", before, after)
	}
	// Idempotent.
	f.ResetWrites()
	if err := routing.Cleanup(f, 300, 300); err != nil || f.Writes() != 0 {
		t.Fatalf("second Cleanup: err %v, writes %d", err, f.Writes())
	}
}

// TestRouterStates applies a random sequence of plans: after each Apply the
// agent's table and rules must be exactly the last plan, foreign state must
// be untouched, and applying the same plan again must write nothing.
func TestRouterStates(t *testing.T) {
	rng := rand.New(rand.NewPCG(20260601, 7))
	dsts := []netip.Prefix{
		pfx("10.245.0.0/16"), pfx("10.246.0.0/16"), pfx("10.247.0.0/24"), pfx("10.248.0.0/15"),
		pfx("fd00:245::/48"), pfx("fd00:246::/48"), pfx("fd00:247::/56"),
	}
	via4 := []netip.Addr{addr("172.18.0.3"), addr("172.18.0.4")}
	via6 := []netip.Addr{addr("fd00:18::3"), addr("fd00:18::4")}

	f := fake.NewNetlink()
	f.AddLink("wg0")
	f.AddLink("wg1")
	seedForeign(f)
	before := foreign(f)

	for step := range 300 {
		var plan routing.RoutePlan
		for _, d := range dsts {
			if rng.IntN(2) == 0 {
				continue
			}
			r := routing.Route{Dst: d}
			switch rng.IntN(3) {
			case 0:
				r.Dev = []string{"wg0", "wg1"}[rng.IntN(2)]
			case 1:
				if d.Addr().Is4() {
					r.Via = via4[rng.IntN(2)]
				} else {
					r.Via = via6[rng.IntN(2)]
				}
			case 2:
				r.Dev = "wg0"
				r.MTU = []int{0, 1420}[rng.IntN(2)]
			}
			plan.Routes = append(plan.Routes, r)
		}
		for _, d := range dsts {
			// Fail closed: a range is unreachable with or without its
			// forwarding route.
			if rng.IntN(3) > 0 {
				plan.Unreachable = append(plan.Unreachable, d)
			}
		}
		rng.Shuffle(len(plan.Routes), func(i, j int) { plan.Routes[i], plan.Routes[j] = plan.Routes[j], plan.Routes[i] })
		if _, err := routing.Apply(f, plan); err != nil {
			t.Fatalf("step %d: Apply: %v", step, err)
		}
		if got, want := state(f, routing.DefaultTable, routing.DefaultRulePriority), expected(plan); !slices.Equal(got, want) {
			t.Fatalf("step %d: state\n%q\nwant\n%q", step, got, want)
		}
		f.ResetWrites()
		if ch, err := routing.Apply(f, plan); err != nil || !ch.Empty() || f.Writes() != 0 {
			t.Fatalf("step %d: re-Apply wrote %d times (%+v, %v)", step, f.Writes(), ch, err)
		}
		if after := foreign(f); after != before {
			t.Fatalf("step %d: foreign state changed", step)
		}
	}
}

// TestUnreachableKeepsRangesInTable: a range that loses its forwarding
// route keeps its unreachable route and the policy rule, so its traffic is
// dropped in the agent's table instead of following the main table's
// default route; only a plan without the range removes both.
func TestUnreachableKeepsRangesInTable(t *testing.T) {
	f := fake.NewNetlink()
	f.AddLink("wg0")
	seedForeign(f)
	before := foreign(f)
	remote := []netip.Prefix{pfx("10.245.0.0/16"), pfx("fd00:245::/48")}
	up := routing.RoutePlan{Unreachable: remote, Routes: []routing.Route{
		{Dst: remote[0], Dev: "wg0"}, {Dst: remote[1], Dev: "wg0"},
	}}
	if _, err := routing.Apply(f, up); err != nil {
		t.Fatal(err)
	}
	if got, want := state(f, routing.DefaultTable, routing.DefaultRulePriority), expected(up); !slices.Equal(got, want) {
		t.Fatalf("state\n%q\nwant\n%q", got, want)
	}
	down := routing.RoutePlan{Unreachable: remote}
	f.ResetWrites()
	ch, err := routing.Apply(f, down)
	if err != nil || !slices.Equal(ch.Deleted, remote) || ch.RulesDeleted != 0 || f.Writes() != 2 {
		t.Fatalf("gateway unusable: changes %+v, err %v, writes %d; want the two forwarding routes deleted, nothing else", ch, err, f.Writes())
	}
	if got, want := state(f, routing.DefaultTable, routing.DefaultRulePriority), expected(down); !slices.Equal(got, want) {
		t.Fatalf("state\n%q\nwant\n%q", got, want)
	}
	// Back: the forwarding routes are added over the unreachable ones.
	f.ResetWrites()
	if ch, err := routing.Apply(f, up); err != nil || !slices.Equal(ch.Added, remote) || f.Writes() != 2 {
		t.Fatalf("gateway usable again: changes %+v, err %v, writes %d", ch, err, f.Writes())
	}
	// The kernel flushes the device's routes when the device goes away:
	// the unreachable routes and the rule are still there.
	for _, r := range f.Routes(routing.DefaultTable) {
		if r.Type == unix.RTN_UNICAST && r.Protocol == routing.RouteProtocol {
			if err := f.RouteDel(&r); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got, want := state(f, routing.DefaultTable, routing.DefaultRulePriority), expected(down); !slices.Equal(got, want) {
		t.Fatalf("after the device's routes were flushed: state\n%q\nwant\n%q", got, want)
	}
	// An unreachable route with another metric is moved, not duplicated.
	f.Seed(netlink.Route{Dst: ipnet("10.246.0.0/16"), Table: routing.DefaultTable, Protocol: routing.RouteProtocol, Type: unix.RTN_UNREACHABLE, Priority: 7})
	moved := routing.RoutePlan{Unreachable: append(slices.Clone(remote), pfx("10.246.0.0/16"))}
	if _, err := routing.Apply(f, moved); err != nil {
		t.Fatal(err)
	}
	if got, want := state(f, routing.DefaultTable, routing.DefaultRulePriority), expected(moved); !slices.Equal(got, want) {
		t.Fatalf("metric repaired: state\n%q\nwant\n%q", got, want)
	}
	if _, err := routing.Apply(f, routing.RoutePlan{}); err != nil {
		t.Fatal(err)
	}
	if s := state(f, routing.DefaultTable, routing.DefaultRulePriority); len(s) != 0 {
		t.Fatalf("empty plan left %q", s)
	}
	if after := foreign(f); after != before {
		t.Fatalf("foreign state changed:\n%s\nvs\n%s", before, after)
	}
}

func TestEnsureHostSettings(t *testing.T) {
	s := fake.NewSysctl(map[string]string{
		"net.ipv4.ip_forward":             "0",
		"net.ipv6.conf.all.forwarding":    "1",
		"net.ipv4.conf.all.rp_filter":     "1",
		"net.ipv4.conf.wg0.rp_filter":     "0",
		"net.ipv4.conf.default.rp_filter": "1",
	})
	changed, err := routing.EnsureHostSettings(s, routing.HostSettings{IPv4: true, IPv6: true, TunnelInterface: "wg0"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=2"}
	if !slices.Equal(changed, want) || !slices.Equal(s.Writes(), want) {
		t.Fatalf("changed %q, writes %q; want %q", changed, s.Writes(), want)
	}
	if v, _ := s.Value("net.ipv4.conf.wg0.rp_filter"); v != "0" {
		t.Fatalf("rp_filter off must stay off, got %s", v)
	}
	// Second pass: nothing to write.
	if changed, err := routing.EnsureHostSettings(s, routing.HostSettings{IPv4: true, IPv6: true, TunnelInterface: "wg0"}); err != nil || len(changed) != 0 {
		t.Fatalf("second pass changed %q, err %v", changed, err)
	}

	// IPv6 missing on the host is an error only when asked for.
	s = fake.NewSysctl(map[string]string{"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0"})
	if _, err := routing.EnsureHostSettings(s, routing.HostSettings{IPv4: true}); err != nil {
		t.Fatalf("IPv4 only: %v", err)
	}
	if _, err := routing.EnsureHostSettings(s, routing.HostSettings{IPv4: true, IPv6: true}); err == nil {
		t.Fatal("IPv6 requested on a host without it: want an error")
	}
	if _, err := routing.EnsureHostSettings(s, routing.HostSettings{IPv4: true, TunnelInterface: "wg9"}); err == nil || !strings.Contains(err.Error(), "wg9") {
		t.Fatalf("missing tunnel interface: err %v", err)
	}
}
