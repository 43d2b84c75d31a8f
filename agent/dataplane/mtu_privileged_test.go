//go:build privileged

package dataplane_test

import (
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/archipelago-mesh/archipelago/agent/plan"
	"github.com/archipelago-mesh/archipelago/internal/netnstest"
)

// TestTunnelMTUFollowsUnderlay: a gateway whose link towards its peer's
// endpoint has MTU 1400 finds it through netlink (a route lookup), and its
// WireGuard device and MSS clamp get 1400 - 60 = 1340; when the link goes to
// 9000 they follow (8940), a route MTU on the way to the peer lowers it, a
// ClusterSet MTU overrides the underlay, and without peers the interface
// of the node's own address is used.
func TestTunnelMTUFollowsUnderlay(t *testing.T) {
	l := newLab(t)
	gw := l.addNode("mtu", "192.168.91.2", "10.91.1.2")
	peer := l.addNode("mtup", "192.168.91.3", "10.92.1.2")
	a := cluster{name: "a", cidrs: []netip.Prefix{netip.MustParsePrefix("10.91.0.0/16")}, gw: gw}
	b := cluster{name: "b", cidrs: []netip.Prefix{netip.MustParsePrefix("10.92.0.0/16")}, gw: peer}
	deviceMTU := func() int {
		out := netnstest.Run(t, "ip", "-n", gw.name, "link", "show", gw.iface)
		m := regexp.MustCompile(`mtu (\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no MTU in %q", out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	planFor := func(setting int, endpoints []netip.Addr) plan.NodePlan {
		t.Helper()
		u, err := gw.dp.Underlay(gw.lan, endpoints)
		if err != nil {
			t.Fatal(err)
		}
		in := plan.Inputs{Node: gw.name, Role: plan.RoleGateway, LocalPodCIDRs: a.cidrs, PrivateKey: gw.key,
			Tunnel:   plan.Tunnel{Interface: gw.iface, Port: wgPort, MTU: setting, Keepalive: 25 * time.Second},
			Underlay: u, Peers: []plan.Peer{b.asPeer()}}
		return plan.Compute(in)
	}
	toPeer := []netip.Addr{peer.lan}
	for _, tc := range []struct {
		link, setting, want int
		routeMTU            int // on a host route to the peer
		endpoints           []netip.Addr
		mss                 string
	}{
		{link: 1400, want: 1340, endpoints: toPeer, mss: "maxseg size set 1300"},
		{link: 9000, want: 8940, endpoints: toPeer, mss: "maxseg size set 8900"},
		{link: 9000, routeMTU: 1350, want: 1290, endpoints: toPeer, mss: "maxseg size set 1250"},
		{link: 9000, setting: 1380, want: 1380, endpoints: toPeer, mss: "maxseg size set 1340"},
		{link: 1500, want: 1440, mss: "maxseg size set 1400"},
	} {
		netnstest.Run(t, "ip", "-n", gw.name, "link", "set", "eth0", "mtu", strconv.Itoa(tc.link))
		if tc.routeMTU != 0 {
			netnstest.Run(t, "ip", "-n", gw.name, "route", "replace", peer.lan.String()+"/32", "dev", "eth0", "mtu", strconv.Itoa(tc.routeMTU))
		} else {
			_, _ = netnstest.RunErr("ip", "-n", gw.name, "route", "del", peer.lan.String()+"/32")
		}
		p := planFor(tc.setting, tc.endpoints)
		wantUnder := tc.link
		if tc.routeMTU != 0 {
			wantUnder = tc.routeMTU
		}
		if p.MTU.Underlay.Interface != "eth0" || p.MTU.Underlay.MTU != wantUnder {
			t.Fatalf("underlay %+v, want eth0 with MTU %d", p.MTU.Underlay, wantUnder)
		}
		gw.apply(p)
		if got := deviceMTU(); got != tc.want {
			t.Errorf("link MTU %d, ClusterSet %d: device MTU %d, want %d", tc.link, tc.setting, got, tc.want)
		}
		if nft := netnstest.Run(t, "ip", "netns", "exec", gw.name, "nft", "list", "table", "inet", "archipelago"); !strings.Contains(nft, tc.mss) {
			t.Errorf("link MTU %d: clamp lacks %q:\n%s", tc.link, tc.mss, nft)
		}
		t.Logf("Underlay eth0 MTU %d, ClusterSet %d: tunnel MTU %d (%s)", tc.link, tc.setting, deviceMTU(), p.MTU.Message)
	}
	if err := gw.dp.Cleanup(t.Context()); err != nil {
		t.Fatal(err)
	}
}
