package dataplane_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"

	"github.com/archipelago-mesh/archipelago/agent/dataplane/fake"
	"github.com/archipelago-mesh/archipelago/agent/plan"
)

// TestUnderlay: of the paths to the peers' endpoints, the one that leaves
// the smallest tunnel MTU wins (an IPv6 path loses 20 bytes more); without
// endpoints, the interface of the node's address.
func TestUnderlay(t *testing.T) {
	k := fake.NewKernel()
	k.Netlink.AddAddr("eth0", netip.MustParsePrefix("192.168.1.5/24"), 1500)
	k.Netlink.AddAddr("wan4", netip.MustParsePrefix("203.0.113.9/24"), 1400)
	k.Netlink.AddAddr("wan6", netip.MustParsePrefix("2001:db8::9/64"), 1410)
	for name, dst := range map[string]string{"wan4": "198.51.100.0/24", "wan6": "2001:db8:1::/48"} {
		l, _ := k.Netlink.LinkByName(name)
		_, n, _ := net.ParseCIDR(dst)
		k.Netlink.Seed(netlink.Route{LinkIndex: l.Attrs().Index, Dst: n})
	}
	dp := k.Dataplane("arch0", logr.Discard())
	node := netip.MustParseAddr("192.168.1.5")
	for _, tc := range []struct {
		name      string
		endpoints []string
		want      plan.Underlay
	}{
		{"no endpoints: the node address's interface", nil, plan.Underlay{Interface: "eth0", MTU: 1500}},
		{"one IPv4 peer", []string{"198.51.100.7"}, plan.Underlay{Interface: "wan4", MTU: 1400}},
		{"IPv6 path leaves less room", []string{"198.51.100.7", "2001:db8:1::7"}, plan.Underlay{Interface: "wan6", MTU: 1410, IPv6: true}},
		{"an endpoint without a route is left out", []string{"10.99.0.1", "198.51.100.7"}, plan.Underlay{Interface: "wan4", MTU: 1400}},
		{"no endpoint has a route: the node address", []string{"10.99.0.1"}, plan.Underlay{Interface: "eth0", MTU: 1500}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var eps []netip.Addr
			for _, e := range tc.endpoints {
				eps = append(eps, netip.MustParseAddr(e))
			}
			got, err := dp.Underlay(node, eps)
			if err != nil || got != tc.want {
				t.Errorf("Underlay = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if _, err := dp.Underlay(netip.MustParseAddr("192.168.1.6"), nil); err == nil {
		t.Error("an address no interface holds: want an error")
	}
}
