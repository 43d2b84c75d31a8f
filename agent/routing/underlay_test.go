package routing_test

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/archipelago-mesh/archipelago/agent/routing"
	"github.com/archipelago-mesh/archipelago/agent/routing/fake"
)

func TestUnderlay(t *testing.T) {
	nl := fake.NewNetlink()
	nl.AddAddr("eth0", netip.MustParsePrefix("192.168.1.5/24"), 1500)
	nl.AddAddr("wan", netip.MustParsePrefix("203.0.113.9/24"), 1400)
	nl.AddAddr("wan", netip.MustParsePrefix("2001:db8::9/64"), 1400)
	for _, tc := range []struct {
		ip   string
		name string
		mtu  int
	}{
		{"192.168.1.5", "eth0", 1500},
		{"203.0.113.9", "wan", 1400},
		{"2001:db8::9", "wan", 1400},
		{"::ffff:192.168.1.5", "eth0", 1500},
	} {
		name, mtu, err := routing.Underlay(nl, netip.MustParseAddr(tc.ip))
		if err != nil || name != tc.name || mtu != tc.mtu {
			t.Errorf("Underlay(%s) = %s %d %v, want %s %d", tc.ip, name, mtu, err, tc.name, tc.mtu)
		}
	}
	nl.SetLinkMTU("wan", 1280)
	if _, mtu, _ := routing.Underlay(nl, netip.MustParseAddr("203.0.113.9")); mtu != 1280 {
		t.Errorf("after the MTU change: %d, want 1280", mtu)
	}
	if _, _, err := routing.Underlay(nl, netip.MustParseAddr("192.168.1.6")); !errors.Is(err, routing.ErrNoUnderlay) {
		t.Errorf("unknown address: err %v, want ErrNoUnderlay", err)
	}
	if _, _, err := routing.Underlay(nl, netip.Addr{}); err == nil {
		t.Error("no address: want an error")
	}
}

func TestPathTo(t *testing.T) {
	nl := fake.NewNetlink()
	nl.AddAddr("eth0", netip.MustParsePrefix("192.168.1.5/24"), 1500)
	nl.AddAddr("wan", netip.MustParsePrefix("203.0.113.9/24"), 1400)
	eth0, _ := nl.LinkByName("eth0")
	wan, _ := nl.LinkByName("wan")
	nl.Seed(netlink.Route{LinkIndex: wan.Attrs().Index, Family: netlink.FAMILY_V4, Gw: net.ParseIP("203.0.113.1")})
	nl.Seed(netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: mustNet("192.168.1.0/24")})
	nl.Seed(netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: mustNet("10.9.0.0/16"), MTU: 1300})
	for _, tc := range []struct {
		dst  string
		name string
		mtu  int
	}{
		{"198.51.100.7", "wan", 1400},  // the default route
		{"192.168.1.77", "eth0", 1500}, // on-link
		{"10.9.3.4", "eth0", 1300},     // a route with a lower MTU
	} {
		name, mtu, err := routing.PathTo(nl, netip.MustParseAddr(tc.dst))
		if err != nil || name != tc.name || mtu != tc.mtu {
			t.Errorf("PathTo(%s) = %s %d %v, want %s %d", tc.dst, name, mtu, err, tc.name, tc.mtu)
		}
	}
	if _, _, err := routing.PathTo(nl, netip.MustParseAddr("2001:db8::1")); err == nil {
		t.Error("no IPv6 route: want an error")
	}
}

func mustNet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestOnLink(t *testing.T) {
	nl := fake.NewNetlink()
	nl.AddAddr("eth0", netip.MustParsePrefix("192.168.1.5/24"), 1500)
	eth0, _ := nl.LinkByName("eth0")
	nl.Seed(netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: mustNet("192.168.1.0/24")})
	nl.Seed(netlink.Route{LinkIndex: eth0.Attrs().Index, Family: netlink.FAMILY_V4, Gw: net.ParseIP("192.168.1.1")})
	for dst, want := range map[string]bool{"192.168.1.9": true, "192.168.2.9": false} {
		if got, err := routing.OnLink(nl, netip.MustParseAddr(dst)); err != nil || got != want {
			t.Errorf("OnLink(%s) = %v, %v; want %v", dst, got, err, want)
		}
	}
	if _, err := routing.OnLink(nl, netip.MustParseAddr("fd00::1")); err == nil {
		t.Error("no route: want an error")
	}
}
