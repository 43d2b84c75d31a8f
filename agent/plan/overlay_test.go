package plan_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/archipelago-mesh/archipelago/agent/desired"
	"github.com/archipelago-mesh/archipelago/agent/plan"
)

func TestWithOverlay(t *testing.T) {
	b := plan.Peer{Cluster: "b", PodCIDRs: pfx("10.2.0.0/16", "fd00:2::/48"), Gateway: "b-gw", PublicKey: key(t).PublicKey(),
		Endpoint: netip.MustParseAddrPort("192.0.2.2:51820")}
	gw4 := netip.MustParseAddr("192.168.20.2")
	me := netip.MustParseAddr("192.168.10.2")
	base := plan.Inputs{Node: "w1", Role: plan.RoleWorker, LocalPodCIDRs: pfx("10.1.0.0/16", "fd00:1::/48"), Peers: []plan.Peer{b},
		ActiveGatewayIPs: []netip.Addr{gw4}, Tunnel: plan.Tunnel{Interface: "wg0", Port: 51820, Keepalive: 25 * time.Second}}
	for _, tc := range []struct {
		name     string
		o        plan.Overlay
		wantVX   bool
		wantMTU  int
		wantRtes int
	}{
		{"no mode: direct", plan.Overlay{Local: me}, false, 0, 1},
		{"direct forced while off-link", plan.Overlay{Mode: plan.EncapDirect, Local: me}, false, 0, 1},
		{"auto, gateway on-link: direct", plan.Overlay{Mode: plan.EncapAuto, Local: me, GatewayOnLink: true}, false, 0, 1},
		{"auto, gateway off-link: VXLAN", plan.Overlay{Mode: plan.EncapAuto, Local: me, Underlay: plan.Underlay{Interface: "eth0", MTU: 1500}}, true, 1450, 2},
		{"vxlan forced while on-link", plan.Overlay{Mode: plan.EncapVXLAN, Local: me, GatewayOnLink: true, Underlay: plan.Underlay{MTU: 9000}}, true, 8950, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := base
			in.Overlay = tc.o
			p := plan.WithOverlay(plan.Compute(in), in)
			if (p.Overlay != nil) != tc.wantVX || len(p.Routes.Routes) != tc.wantRtes {
				t.Fatalf("overlay %+v routes %+v, want VXLAN %v and %d routes", p.Overlay, p.Routes.Routes, tc.wantVX, tc.wantRtes)
			}
			if !tc.wantVX {
				if p.Routes.Routes[0].Via != gw4 || len(p.CannotRoute) != 1 {
					t.Errorf("direct: routes %+v cannot %+v", p.Routes.Routes, p.CannotRoute)
				}
				return
			}
			o := *p.Overlay
			if o.Remote != gw4 || o.Local != me || o.MTU != tc.wantMTU || o.VNI != desired.DefaultOverlayVNI || o.Port != desired.DefaultOverlayPort || o.Validate() != nil {
				t.Errorf("overlay %+v (validate %v), want remote %s local %s MTU %d", o, o.Validate(), gw4, me, tc.wantMTU)
			}
			// Both families through the device: the outer packets need only
			// the gateway's IPv4 address.
			r4, r6 := p.Routes.Routes[0], p.Routes.Routes[1]
			if r4.Via != desired.OverlayGatewayIPv4 || !r4.OnLink || r4.Dev != o.Interface || r6.Via != desired.OverlayGatewayIPv6 || r6.Dev != o.Interface {
				t.Errorf("routes %+v", p.Routes.Routes)
			}
			if len(p.CannotRoute) != 0 || len(p.Filter.RemotePodCIDRs) != 2 {
				t.Errorf("cannot route %+v, no-SNAT ranges %v", p.CannotRoute, p.Filter.RemotePodCIDRs)
			}
			if err := p.Routes.Validate(); err != nil {
				t.Error(err)
			}
		})
	}
	// The gateway always has the receiving side; a hold keeps workers closed.
	gw := base
	gw.Role, gw.PrivateKey, gw.Overlay = plan.RoleGateway, key(t), plan.Overlay{Mode: plan.EncapAuto, Local: gw4}
	if p := plan.WithOverlay(plan.Compute(gw), gw); p.Overlay == nil || p.Overlay.Remote.IsValid() || p.Routes.Routes[0].Dev != "wg0" {
		t.Errorf("gateway: overlay %+v routes %+v", p.Overlay, p.Routes.Routes)
	}
	held := base
	held.Hold, held.Overlay = "CIDRs", plan.Overlay{Mode: plan.EncapVXLAN, Local: me}
	if p := plan.WithOverlay(plan.Compute(held), held); p.Overlay != nil || len(p.Routes.Routes) != 0 {
		t.Errorf("held worker: overlay %+v routes %+v", p.Overlay, p.Routes.Routes)
	}
}

// The gateway's VXLAN port is limited to the cluster's node addresses.
func TestWithOverlayGatewaySenders(t *testing.T) {
	me := netip.MustParseAddr("192.168.10.2")
	in := plan.Inputs{Node: "gw", Role: plan.RoleGateway, LocalPodCIDRs: pfx("10.1.0.0/16"),
		Tunnel: plan.Tunnel{Interface: "wg0", Port: 51820}}
	in.Overlay = plan.Overlay{Mode: plan.EncapAuto, Local: me,
		Senders: []netip.Addr{me, netip.MustParseAddr("192.168.20.7"), netip.MustParseAddr("fd00:10::7"), netip.MustParseAddr("::ffff:192.168.30.1")}}
	p := plan.WithOverlay(plan.Compute(in), in)
	if p.Overlay == nil || p.Filter.OverlayPort != desired.DefaultOverlayPort {
		t.Fatalf("overlay %+v, filter port %d", p.Overlay, p.Filter.OverlayPort)
	}
	want := pfx("192.168.10.2/32", "192.168.20.7/32", "fd00:10::7/128", "192.168.30.1/32")
	if len(p.Filter.OverlaySenders) != len(want) {
		t.Fatalf("senders %v, want %v", p.Filter.OverlaySenders, want)
	}
	for i := range want {
		if p.Filter.OverlaySenders[i] != want[i] {
			t.Errorf("sender %d: %v, want %v", i, p.Filter.OverlaySenders[i], want[i])
		}
	}
	// A worker's plan has no such filter: it only sends.
	w := in
	w.Role, w.ActiveGatewayIPs = plan.RoleWorker, []netip.Addr{netip.MustParseAddr("192.168.20.2")}
	if wp := plan.WithOverlay(plan.Compute(w), w); wp.Filter.OverlayPort != 0 || wp.Filter.OverlaySenders != nil {
		t.Errorf("worker filter %+v", wp.Filter)
	}
}
