package plan_test

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/archipelago-mesh/archipelago/agent/desired"
	"github.com/archipelago-mesh/archipelago/agent/plan"
)

// TestNextHopPerFamily: a worker routes each remote range via the active
// gateway's address of the range's family, and says which ranges it cannot
// route (the gateway has no address of that family) or its pods cannot
// reach (this cluster has no pod range of that family).
func TestNextHopPerFamily(t *testing.T) {
	b := plan.Peer{Cluster: "b", PodCIDRs: pfx("10.2.0.0/16", "fd00:2::/48"), Gateway: "b-gw", PublicKey: key(t).PublicKey(),
		Endpoint: netip.MustParseAddrPort("192.0.2.2:51820")}
	six := plan.Peer{Cluster: "six", PodCIDRs: pfx("fd00:6::/48"), Gateway: "six-gw", PublicKey: key(t).PublicKey(),
		Endpoint: netip.MustParseAddrPort("[2001:db8::6]:51820")}
	gw4, gw6 := netip.MustParseAddr("172.18.0.2"), netip.MustParseAddr("fd00:ffff::2")
	tun := plan.Tunnel{Interface: "wg0", Port: 51820, Keepalive: 25 * time.Second}
	dual := pfx("10.1.0.0/16", "fd00:1::/48")
	for _, tc := range []struct {
		name       string
		local      []netip.Prefix
		hops       []netip.Addr
		wantRoutes []desired.Route
		wantHops   []netip.Addr
		wantCannot []string // "range: reason fragment"
	}{{
		name: "dual-stack gateway: both families routed", local: dual, hops: []netip.Addr{gw6, gw4},
		wantRoutes: []desired.Route{{Dst: pfx("10.2.0.0/16")[0], Via: gw4}, {Dst: pfx("fd00:2::/48")[0], Via: gw6}, {Dst: pfx("fd00:6::/48")[0], Via: gw6}},
		wantHops:   []netip.Addr{gw4, gw6},
	}, {
		name: "IPv4-only gateway address: IPv6 ranges not routed, and said so", local: dual, hops: []netip.Addr{gw4},
		wantRoutes: []desired.Route{{Dst: pfx("10.2.0.0/16")[0], Via: gw4}},
		wantHops:   []netip.Addr{gw4},
		wantCannot: []string{"fd00:2::/48: the active gateway has no IPv6 InternalIP", "fd00:6::/48: the active gateway has no IPv6 InternalIP"},
	}, {
		name: "IPv6-only member and gateway", local: pfx("fd00:1::/48"), hops: []netip.Addr{gw6},
		wantRoutes: []desired.Route{{Dst: pfx("fd00:2::/48")[0], Via: gw6}, {Dst: pfx("fd00:6::/48")[0], Via: gw6}},
		wantHops:   []netip.Addr{gw6},
		wantCannot: []string{"10.2.0.0/16: this cluster has no IPv4 pod range", "10.2.0.0/16: the active gateway has no IPv4 InternalIP"},
	}, {
		name: "IPv4-only member: IPv6 ranges routed but unreachable for its pods", local: pfx("10.1.0.0/16"), hops: []netip.Addr{gw4, gw6},
		wantRoutes: []desired.Route{{Dst: pfx("10.2.0.0/16")[0], Via: gw4}, {Dst: pfx("fd00:2::/48")[0], Via: gw6}, {Dst: pfx("fd00:6::/48")[0], Via: gw6}},
		wantHops:   []netip.Addr{gw4, gw6},
		wantCannot: []string{"fd00:2::/48: this cluster has no IPv6 pod range", "fd00:6::/48: this cluster has no IPv6 pod range"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			in := plan.Inputs{Node: "w1", Role: plan.RoleWorker, LocalPodCIDRs: tc.local, Peers: []plan.Peer{b, six}, ActiveGatewayIPs: tc.hops, Tunnel: tun}
			p := plan.Compute(in)
			if !reflect.DeepEqual(p.Routes.Routes, tc.wantRoutes) {
				t.Errorf("routes %+v\nwant %+v", p.Routes.Routes, tc.wantRoutes)
			}
			if !reflect.DeepEqual(p.NextHops, tc.wantHops) || p.NextHop != tc.wantHops[0] {
				t.Errorf("next hops %v (%v), want %v", p.NextHops, p.NextHop, tc.wantHops)
			}
			if len(p.Routes.Unreachable) != 3 {
				t.Errorf("unreachable %v: every remote range stays fail-closed", p.Routes.Unreachable)
			}
			var got []string
			for _, u := range p.CannotRoute {
				got = append(got, u.Prefix.String()+": "+u.Reason)
			}
			if len(got) != len(tc.wantCannot) {
				t.Fatalf("cannot route %q, want %q", got, tc.wantCannot)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.wantCannot[i]) {
					t.Errorf("cannot route[%d] = %q, want %q…", i, got[i], tc.wantCannot[i])
				}
			}
		})
	}

	// The gateway says what its workers cannot route via its addresses.
	in := plan.Inputs{Node: "gw", Role: plan.RoleGateway, LocalPodCIDRs: dual, Peers: []plan.Peer{b, six}, ActiveGatewayIPs: []netip.Addr{gw4}, Tunnel: tun, PrivateKey: key(t)}
	p := plan.Compute(in)
	if len(p.Routes.Routes) != 3 || len(p.CannotRoute) != 0 {
		t.Errorf("gateway: routes %+v cannot %+v, want every range into the tunnel", p.Routes.Routes, p.CannotRoute)
	}
	if len(p.WorkersCannotRoute) != 2 || p.WorkersCannotRoute[0].Prefix.String() != "fd00:2::/48" || p.WorkersCannotRoute[1].Cluster != "six" ||
		!strings.Contains(p.WorkersCannotRoute[0].Reason, "gw has no IPv6 InternalIP") {
		t.Errorf("gateway: workers cannot route %+v, want b's and six's IPv6 ranges", p.WorkersCannotRoute)
	}
	in.ActiveGatewayIPs = []netip.Addr{gw4, gw6}
	if p := plan.Compute(in); len(p.WorkersCannotRoute) != 0 {
		t.Errorf("dual-stack gateway: workers cannot route %+v", p.WorkersCannotRoute)
	}
}

// TestIPv6OnlyMemberGateway: the gateway of a member with IPv6 ranges only
// puts a dual-stack peer's IPv6 range into the tunnel and says that its
// pods cannot reach the peer's IPv4 range (they have no IPv4 address),
// naming the peer and the family.
func TestIPv6OnlyMemberGateway(t *testing.T) {
	b := plan.Peer{Cluster: "bravo", PodCIDRs: pfx("10.2.0.0/16", "fd00:2::/48"), Gateway: "b-gw", PublicKey: key(t).PublicKey(),
		Endpoint: netip.MustParseAddrPort("[2001:db8::2]:51820")}
	in := plan.Inputs{Node: "gw", Role: plan.RoleGateway, LocalPodCIDRs: pfx("fd00:1::/48"), Peers: []plan.Peer{b},
		ActiveGatewayIPs: []netip.Addr{netip.MustParseAddr("fd00:ffff::1")}, PrivateKey: key(t),
		Tunnel: plan.Tunnel{Interface: "wg0", Port: 51820, Keepalive: 25 * time.Second}}
	p := plan.Compute(in)
	var routed []string
	for _, r := range p.Routes.Routes {
		routed = append(routed, r.Dst.String())
	}
	if !slices.Contains(routed, "fd00:2::/48") {
		t.Errorf("routes %v: the peer's IPv6 range must be routed into the tunnel", routed)
	}
	var cannot []string
	for _, u := range p.CannotRoute {
		cannot = append(cannot, u.Prefix.String()+" ("+u.Cluster+"): "+u.Reason)
	}
	if len(cannot) != 1 || !strings.HasPrefix(cannot[0], "10.2.0.0/16 (bravo): this cluster has no IPv4 pod range") {
		t.Errorf("cannot route %q, want bravo's IPv4 range with the reason", cannot)
	}
	if !p.Host.IPv6 {
		t.Errorf("host settings %+v: IPv6 forwarding must be on", p.Host)
	}
}
