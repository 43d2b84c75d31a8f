package plan

import (
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestWithStandbyDevice(t *testing.T) {
	key, _ := wgtypes.GeneratePrivateKey()
	peer, _ := wgtypes.GeneratePrivateKey()
	in := Inputs{
		Node: "gw2", Role: RoleStandby, PrivateKey: key,
		LocalPodCIDRs:   []netip.Prefix{netip.MustParsePrefix("10.64.0.0/16")},
		ActiveGatewayIP: netip.MustParseAddr("172.18.0.2"),
		Tunnel:          Tunnel{Interface: "arch0", Port: 51820, Keepalive: 25 * time.Second},
		Peers: []Peer{{Cluster: "b", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.65.0.0/16")},
			PublicKey: peer.PublicKey(), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820")}},
	}
	base := Compute(in)
	p := WithStandbyDevice(base, in)
	if p.Tunnel == nil || p.Tunnel.PrivateKey != key || p.Tunnel.ListenPort != 51820 || p.Tunnel.MTU == 0 || len(p.Tunnel.Peers) != 0 {
		t.Fatalf("standby tunnel %+v, want the key and port without peers", p.Tunnel)
	}
	if len(p.Routes.Routes) != 1 || p.Routes.Routes[0].Via != in.ActiveGatewayIP || p.Routes.Routes[0].Dev != "" {
		t.Errorf("standby routes %+v, want via the active gateway", p.Routes.Routes)
	}
	if p.Filter.TunnelInterface != "" || p.Filter.MSSClamp {
		t.Errorf("standby filter names the tunnel: %+v", p.Filter)
	}
	if base.Tunnel != nil {
		t.Error("WithStandbyDevice changed its argument")
	}
	for _, role := range []string{RoleGateway, RoleWorker} {
		in2 := in
		in2.Role = role
		q := Compute(in2)
		if got := WithStandbyDevice(q, in2); (got.Tunnel == nil) != (q.Tunnel == nil) || (got.Tunnel != nil && len(got.Tunnel.Peers) != len(q.Tunnel.Peers)) {
			t.Errorf("role %s: plan changed", role)
		}
	}
	in.PrivateKey = wgtypes.Key{}
	if WithStandbyDevice(Compute(in), in).Tunnel != nil {
		t.Error("standby without a key got a device")
	}
}
