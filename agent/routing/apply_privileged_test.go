//go:build privileged

package routing_test

import (
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/archipelago-mesh/archipelago/agent/routing"
	"github.com/archipelago-mesh/archipelago/internal/netnstest"
)

// namespaces are these tests': arch-rt-<pid>-<name>. They start no
// processes.
var namespaces = netnstest.Set{Prefix: "arch-rt-"}

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		namespaces.RemoveLeftovers()
	}
	os.Exit(m.Run())
}

// newNS makes a throwaway namespace arch-rt-<pid>-<name>.
func newNS(t *testing.T, name string) (string, netns.NsHandle) {
	t.Helper()
	netnstest.RequireRoot(t, "creates network namespaces", "ip")
	return namespaces.New(t, name)
}

func TestApplyInNamespace(t *testing.T) {
	ns, h := newNS(t, "apply")
	ipn := func(args ...string) string { return netnstest.Run(t, append([]string{"ip", "-n", ns}, args...)...) }
	// No DAD: link-local addresses (and their routes) appear at once instead
	// of about a second later, in the middle of the comparisons below.
	netnstest.Run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	ipn("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	ipn("link", "add", "wg0", "type", "veth", "peer", "name", "wg0p")
	for _, l := range []string{"lo", "eth0", "eth1", "wg0", "wg0p"} {
		ipn("link", "set", l, "up")
	}
	ipn("addr", "add", "192.168.77.1/24", "dev", "eth0")
	ipn("addr", "add", "fd00:77::1/64", "dev", "eth0", "nodad")
	// Foreign state: main table, another table, and a route of another
	// protocol inside the agent's own table.
	ipn("route", "add", "10.99.0.0/16", "via", "192.168.77.3")
	ipn("route", "add", "10.98.0.0/16", "via", "192.168.77.3", "table", "100")
	ipn("route", "add", "10.97.0.0/16", "via", "192.168.77.3", "table", strconv.Itoa(routing.DefaultTable), "proto", "static")
	ipn("-6", "route", "add", "fd00:98::/48", "via", "fd00:77::3", "table", "100")
	ipn("-6", "route", "add", "fd00:97::/48", "via", "fd00:77::3", "table", strconv.Itoa(routing.DefaultTable), "proto", "static")
	ipn("rule", "add", "pref", "100", "lookup", "100")
	foreign := func() string {
		// The tables the test can reason about; "table all" would also show
		// the kernel's local and multicast routes, which change on their own.
		var out string
		for _, tb := range []string{"main", "100", strconv.Itoa(routing.DefaultTable)} {
			out += ipn("-4", "route", "show", "table", tb) + ipn("-6", "route", "show", "table", tb)
		}
		return out + ipn("rule") + ipn("-6", "rule")
	}
	strip := func(s string) string { // the agent's own lines
		var keep []string
		for _, l := range strings.Split(s, "\n") {
			if !strings.Contains(l, "proto 167") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	before := foreign()

	nl, err := routing.NewAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	plan := routing.RoutePlan{Routes: []routing.Route{
		{Dst: netip.MustParsePrefix("10.245.0.0/16"), Via: netip.MustParseAddr("192.168.77.2")},
		{Dst: netip.MustParsePrefix("10.246.0.0/16"), Dev: "wg0", MTU: 1380},
		{Dst: netip.MustParsePrefix("fd00:b::/48"), Via: netip.MustParseAddr("fd00:77::2"), Dev: "eth0"},
	}}
	ch, err := routing.Apply(nl, plan)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Added) != 3 || ch.RulesAdded != 2 {
		t.Fatalf("first Apply: %+v", ch)
	}
	table := strconv.Itoa(routing.DefaultTable)
	got := ipn("route", "show", "table", table, "proto", "167") + ipn("-6", "route", "show", "table", table, "proto", "167")
	t.Logf("Table %s:\n%s", table, got)
	for _, want := range []string{"10.245.0.0/16 via 192.168.77.2 dev eth0", "10.246.0.0/16 dev wg0 scope link mtu 1380", "fd00:b::/48 via fd00:77::2 dev eth0"} {
		if !strings.Contains(got, want) {
			t.Errorf("table %s lacks %q", table, want)
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		if r := ipn(fam, "rule"); !strings.Contains(r, table+":\tfrom all lookup "+table+" proto 167") {
			t.Errorf("ip %s rule lacks the agent's rule:\n%s", fam, r)
		}
	}
	if r := ipn("route", "get", "10.245.1.1"); !strings.Contains(r, "via 192.168.77.2") {
		t.Errorf("lookup of a remote pod does not use the agent's table: %s", r)
	}
	if r := ipn("route", "get", "10.99.1.1"); !strings.Contains(r, "via 192.168.77.3") {
		t.Errorf("lookup of a foreign range changed: %s", r)
	}

	if ch, err := routing.Apply(nl, plan); err != nil || !ch.Empty() {
		t.Fatalf("no-change Apply: %+v, %v", ch, err)
	}

	ipn("route", "del", "10.245.0.0/16", "table", table)
	ch, err = routing.Apply(nl, plan)
	if err != nil || !slices.Equal(ch.Added, []netip.Prefix{netip.MustParsePrefix("10.245.0.0/16")}) || len(ch.Updated)+len(ch.Deleted)+ch.RulesAdded != 0 {
		t.Fatalf("repair of a route deleted by hand: %+v, %v", ch, err)
	}

	plan.Routes[1].MTU = 1400
	plan.Routes = plan.Routes[:2]
	ch, err = routing.Apply(nl, plan)
	if err != nil || len(ch.Updated) != 1 || len(ch.Deleted) != 1 || ch.RulesDeleted != 1 {
		t.Fatalf("update and removal: %+v, %v", ch, err)
	}
	if after := strip(foreign()); after != strip(before) {
		t.Fatalf("foreign routes or rules changed:\n%s\nwant\n%s", after, before)
	}

	if err := routing.Cleanup(nl, routing.DefaultTable, routing.DefaultRulePriority); err != nil {
		t.Fatal(err)
	}
	if after := foreign(); after != before {
		t.Fatalf("after Cleanup:\n%s\nwant exactly the state before the agent:\n%s", after, before)
	}
}

func TestEnsureHostSettingsInNamespace(t *testing.T) {
	ns, h := newNS(t, "sysctl")
	netnstest.Run(t, "ip", "-n", ns, "link", "add", "wg0", "type", "veth", "peer", "name", "wg0p")
	netnstest.Run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.wg0.rp_filter=1", "net.ipv4.ip_forward=0")

	// /proc/sys/net belongs to the namespace of the thread that opens it.
	var changed, again []string
	var err1, err2 error
	netnstest.In(t, h, func() error {
		want := routing.HostSettings{IPv4: true, IPv6: true, TunnelInterface: "wg0"}
		changed, err1 = routing.EnsureHostSettings(routing.ProcSys{}, want)
		again, err2 = routing.EnsureHostSettings(routing.ProcSys{}, want)
		return nil
	})
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	t.Logf("Changed: %q", changed)
	if !slices.Contains(changed, "net.ipv4.ip_forward=1") || !slices.Contains(changed, "net.ipv4.conf.wg0.rp_filter=2") || len(again) != 0 {
		t.Fatalf("changed %q, second pass %q", changed, again)
	}
	out := netnstest.Run(t, "ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.wg0.rp_filter")
	if strings.Fields(out)[0] != "1" || strings.Fields(out)[1] != "1" || strings.Fields(out)[2] != "2" || strings.Fields(out)[3] != "2" {
		t.Fatalf("sysctls in the namespace: %q", out)
	}
}

// TestFailClosedInNamespace: with a default route in main (to a sink), a
// remote range whose tunnel device disappears, or whose forwarding route
// the plan withdraws, is unreachable: the lookup never falls through to the
// default route. The unreachable routes and the rule stay until Cleanup.
func TestFailClosedInNamespace(t *testing.T) {
	ns, h := newNS(t, "closed")
	ipn := func(args ...string) string { return netnstest.Run(t, append([]string{"ip", "-n", ns}, args...)...) }
	netnstest.Run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	ipn("link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	ipn("link", "add", "wg0", "type", "veth", "peer", "name", "wg0p")
	for _, l := range []string{"lo", "eth0", "eth1", "wg0", "wg0p"} {
		ipn("link", "set", l, "up")
	}
	ipn("addr", "add", "192.168.78.1/24", "dev", "eth0")
	ipn("addr", "add", "fd00:78::1/64", "dev", "eth0", "nodad")
	ipn("route", "add", "default", "via", "192.168.78.254")
	ipn("-6", "route", "add", "default", "via", "fd00:78::fe")

	nl, err := routing.NewAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	remote := []netip.Prefix{netip.MustParsePrefix("10.245.0.0/16"), netip.MustParsePrefix("fd00:245::/48")}
	up := routing.RoutePlan{Unreachable: remote, Routes: []routing.Route{{Dst: remote[0], Dev: "wg0"}, {Dst: remote[1], Dev: "wg0"}}}
	if _, err := routing.Apply(nl, up); err != nil {
		t.Fatal(err)
	}
	table := strconv.Itoa(routing.DefaultTable)
	t.Logf("Table %s:\n%s%s", table, ipn("route", "show", "table", table), ipn("-6", "route", "show", "table", table))
	for _, dst := range []string{"10.245.1.1", "fd00:245::1"} {
		if r := ipn("route", "get", dst); !strings.Contains(r, "dev wg0") {
			t.Fatalf("%s with the tunnel up: %s, want dev wg0", dst, r)
		}
	}
	if ch, err := routing.Apply(nl, up); err != nil || !ch.Empty() {
		t.Fatalf("no-change Apply: %+v, %v", ch, err)
	}
	unreachable := func(when string) {
		t.Helper()
		for _, dst := range []string{"10.245.1.1", "fd00:245::1"} {
			out, err := netnstest.RunErr("ip", "-n", ns, "route", "get", dst)
			if err == nil || strings.Contains(out, "via") {
				t.Errorf("%s: route get %s = %q (err %v), want unreachable, not the default route", when, dst, out, err)
			}
		}
		for _, fam := range []string{"-4", "-6"} {
			if r := ipn(fam, "rule"); !strings.Contains(r, "lookup "+table) {
				t.Errorf("%s: ip %s rule lost the agent's rule:\n%s", when, fam, r)
			}
		}
	}
	// The device goes away (its process died): the kernel flushes its routes.
	ipn("link", "del", "wg0")
	unreachable("device deleted")
	// The next pass plans the gateway unusable: no forwarding routes.
	down := routing.RoutePlan{Unreachable: remote}
	if _, err := routing.Apply(nl, down); err != nil {
		t.Fatalf("Apply without forwarding routes: %v", err)
	}
	unreachable("gateway unusable")
	if ch, err := routing.Apply(nl, down); err != nil || !ch.Empty() {
		t.Fatalf("no-change Apply while closed: %+v, %v", ch, err)
	}
	// The device comes back: traffic returns to it.
	ipn("link", "add", "wg0", "type", "veth", "peer", "name", "wg0p")
	ipn("link", "set", "wg0", "up")
	ipn("link", "set", "wg0p", "up")
	if ch, err := routing.Apply(nl, up); err != nil || len(ch.Added) != 2 {
		t.Fatalf("tunnel back: %+v, %v", ch, err)
	}
	for _, dst := range []string{"10.245.1.1", "fd00:245::1"} {
		if r := ipn("route", "get", dst); !strings.Contains(r, "dev wg0") {
			t.Errorf("%s with the tunnel back: %s, want dev wg0", dst, r)
		}
	}
	if err := routing.Cleanup(nl, routing.DefaultTable, routing.DefaultRulePriority); err != nil {
		t.Fatal(err)
	}
	if r := ipn("route", "get", "10.245.1.1"); !strings.Contains(r, "via 192.168.78.254") {
		t.Errorf("after Cleanup the range should follow main again: %s", r)
	}
	if r := ipn("route", "show", "table", table) + ipn("-6", "route", "show", "table", table); strings.TrimSpace(r) != "" {
		t.Errorf("Cleanup left routes:\n%s", r)
	}
}
