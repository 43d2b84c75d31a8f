package plan

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/desired"
)

func TestTunnelMTU(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setting int
		u       Underlay
		want    int
		source  string
		inMsg   string
	}{
		{"IPv4 underlay 1500", 0, Underlay{Interface: "eth0", MTU: 1500}, 1440, MTUFromUnderlay, "eth0 MTU 1500 less WireGuard's 60 bytes over IPv4"},
		{"IPv6 underlay 1500", 0, Underlay{Interface: "eth0", MTU: 1500, IPv6: true}, 1420, MTUFromUnderlay, "80 bytes over IPv6"},
		{"IPv4 WAN 1400", 0, Underlay{Interface: "wan", MTU: 1400}, 1340, MTUFromUnderlay, "wan MTU 1400"},
		{"IPv6 WAN 1400", 0, Underlay{Interface: "wan", MTU: 1400, IPv6: true}, 1320, MTUFromUnderlay, ""},
		{"jumbo frames", 0, Underlay{Interface: "bond0", MTU: 9000}, 8940, MTUFromUnderlay, ""},
		{"below IPv6's minimum", 0, Underlay{Interface: "ppp0", MTU: 1300}, MinMTU, MTUFromUnderlay, "below IPv6's minimum"},
		{"loopback MTU", 0, Underlay{Interface: "lo", MTU: 65536}, 65476, MTUFromUnderlay, ""},
		{"beyond any tunnel MTU", 0, Underlay{Interface: "x", MTU: 1 << 20}, MaxMTU, MTUFromUnderlay, ""},
		{"ClusterSet wins", 1380, Underlay{Interface: "eth0", MTU: 1500}, 1380, MTUFromClusterSet, "spec.tunnel.mtu"},
		{"ClusterSet too large for the underlay", 1420, Underlay{Interface: "wan", MTU: 1400}, 1420, MTUFromClusterSet, "larger than the 1340 bytes"},
		{"ClusterSet, underlay unknown", 1400, Underlay{}, 1400, MTUFromClusterSet, ""},
		{"nothing known", 0, Underlay{}, desired.DefaultMTU, MTUDefault, "not known"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := TunnelMTU(tc.setting, tc.u)
			if d.MTU != tc.want || d.Source != tc.source {
				t.Errorf("TunnelMTU(%d, %+v) = %d from %s, want %d from %s", tc.setting, tc.u, d.MTU, d.Source, tc.want, tc.source)
			}
			if !strings.Contains(d.Message, tc.inMsg) {
				t.Errorf("message %q does not say %q", d.Message, tc.inMsg)
			}
			if d.Underlay != tc.u {
				t.Errorf("underlay %+v, want %+v", d.Underlay, tc.u)
			}
		})
	}
}

// TestComputeMTU: the gateway's device and MSS clamp, and a standby's
// device, follow the underlay; the ClusterSet's setting overrides it.
func TestComputeMTU(t *testing.T) {
	key, _ := wgtypes.GeneratePrivateKey()
	peer, _ := wgtypes.GeneratePrivateKey()
	in := Inputs{
		Node: "gw", Role: RoleGateway, PrivateKey: key,
		LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.64.0.0/16")},
		Tunnel:        Tunnel{Interface: "arch0", Port: 51820, Keepalive: 25 * time.Second},
		Underlay:      Underlay{Interface: "wan", MTU: 1400},
		Peers: []Peer{{Cluster: "b", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.65.0.0/16")},
			PublicKey: peer.PublicKey(), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820")}},
	}
	p := Compute(in)
	if p.Tunnel == nil || p.Tunnel.MTU != 1340 || p.Filter.MTU != 1340 || !p.Filter.MSSClamp || p.MTU.Source != MTUFromUnderlay {
		t.Fatalf("gateway on a 1400-byte IPv4 WAN: tunnel %+v filter MTU %d decision %+v, want 1340 from the underlay", p.Tunnel, p.Filter.MTU, p.MTU)
	}
	in.Tunnel.MTU = 1300
	if p := Compute(in); p.Tunnel.MTU != 1300 || p.Filter.MTU != 1300 || p.MTU.Source != MTUFromClusterSet {
		t.Errorf("ClusterSet MTU 1300: tunnel %d filter %d source %s", p.Tunnel.MTU, p.Filter.MTU, p.MTU.Source)
	}
	in.Tunnel.MTU = 0
	in.Role, in.ActiveGatewayIP = RoleStandby, netip.MustParseAddr("172.18.0.2")
	in.Underlay = Underlay{Interface: "eth0", MTU: 9000, IPv6: true}
	if p := WithStandbyDevice(Compute(in), in); p.Tunnel == nil || p.Tunnel.MTU != 8920 {
		t.Errorf("standby on a 9000-byte IPv6 underlay: tunnel %+v, want MTU 8920", p.Tunnel)
	}
}

// TestPathMTU: a peer whose tunnel MTU differs from this gateway's gets a
// route MTU that fits both and that WireGuard's padding (to 16 bytes, up
// to the larger device's MTU) cannot push over the smaller underlay; both
// ends compute the same value.
func TestPathMTU(t *testing.T) {
	for _, tc := range []struct{ own, peer, want int }{
		{1440, 1440, 0},    // same: the device's MTU applies
		{1440, 0, 0},       // peer's not known
		{0, 1340, 0},       // own not known
		{1440, 1340, 1328}, // 1340 would be padded to 1344
		{1340, 1440, 1328}, // the same on the other end
		{1420, 1440, 1408},
		{9000, 1440, 1440}, // already a multiple of 16
		{1440, 1290, MinMTU},
		{1300, 1280, MinMTU},
	} {
		if got := PathMTU(tc.own, tc.peer); got != tc.want {
			t.Errorf("PathMTU(%d, %d) = %d, want %d", tc.own, tc.peer, got, tc.want)
		}
		if got := PathMTU(tc.own, tc.peer); got != 0 && got%16 != 0 {
			t.Errorf("PathMTU(%d, %d) = %d is not a multiple of 16", tc.own, tc.peer, got)
		}
	}
}

// TestComputePathMTU: on the gateway, the ranges of a peer with a smaller
// tunnel MTU are routed with the path MTU, those of a peer with the same
// or an unknown MTU with none; workers' routes never carry one (the
// gateway answers too-large packets with ICMP).
func TestComputePathMTU(t *testing.T) {
	key, _ := wgtypes.GeneratePrivateKey()
	small, _ := wgtypes.GeneratePrivateKey()
	same, _ := wgtypes.GeneratePrivateKey()
	unknown, _ := wgtypes.GeneratePrivateKey()
	in := Inputs{
		Node: "gw", Role: RoleGateway, PrivateKey: key,
		LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.64.0.0/16")},
		Tunnel:        Tunnel{Interface: "arch0", Port: 51820, Keepalive: 25 * time.Second},
		Underlay:      Underlay{Interface: "wan", MTU: 1500},
		Peers: []Peer{
			{Cluster: "small", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.65.0.0/16"), netip.MustParsePrefix("fd00:65::/48")},
				PublicKey: small.PublicKey(), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), MTU: 1340},
			{Cluster: "same", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.66.0.0/16")},
				PublicKey: same.PublicKey(), Endpoint: netip.MustParseAddrPort("192.0.2.3:51820"), MTU: 1440},
			{Cluster: "unknown", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.67.0.0/16")},
				PublicKey: unknown.PublicKey(), Endpoint: netip.MustParseAddrPort("192.0.2.4:51820")},
		},
	}
	want := map[string]int{"10.65.0.0/16": 1328, "fd00:65::/48": 1328, "10.66.0.0/16": 0, "10.67.0.0/16": 0}
	p := Compute(in)
	if p.Tunnel == nil || p.Tunnel.MTU != 1440 {
		t.Fatalf("tunnel %+v, want MTU 1440", p.Tunnel)
	}
	if len(p.Routes.Routes) != len(want) {
		t.Fatalf("routes %+v, want %d", p.Routes.Routes, len(want))
	}
	for _, r := range p.Routes.Routes {
		if w, ok := want[r.Dst.String()]; !ok || r.MTU != w {
			t.Errorf("gateway route %s MTU %d, want %d", r.Dst, r.MTU, w)
		}
	}
	in.Role, in.ActiveGatewayIP = RoleWorker, netip.MustParseAddr("172.18.0.2")
	for _, r := range Compute(in).Routes.Routes {
		if r.MTU != 0 {
			t.Errorf("worker route %s has MTU %d, want none", r.Dst, r.MTU)
		}
	}
}
