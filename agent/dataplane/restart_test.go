package dataplane_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/dataplane/fake"
	"github.com/archipelago-mesh/archipelago/agent/plan"
)

func TestRestartPeersRecreatesOnlyThosePeers(t *testing.T) {
	k := fake.NewKernel()
	dp := k.Dataplane("arch0", testr.New(t))
	own, _ := wgtypes.GeneratePrivateKey()
	b, _ := wgtypes.GeneratePrivateKey()
	c, _ := wgtypes.GeneratePrivateKey()
	in := plan.Inputs{
		Node: "n1", Role: plan.RoleGateway, PrivateKey: own,
		LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.64.0.0/16")},
		Tunnel:        plan.Tunnel{Interface: "arch0", Port: 51820, Keepalive: 25 * time.Second},
		Peers: []plan.Peer{
			{Cluster: "b", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.65.0.0/16")}, PublicKey: b.PublicKey(), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820")},
			{Cluster: "c", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.66.0.0/16")}, PublicKey: c.PublicKey(), Endpoint: netip.MustParseAddrPort("192.0.2.3:51820")},
		},
	}
	if _, err := dp.Apply(context.Background(), plan.Compute(in)); err != nil {
		t.Fatal(err)
	}
	k.WG.Handshake("arch0", b.PublicKey(), time.Now())
	k.WG.Handshake("arch0", c.PublicKey(), time.Now())
	before := len(k.WG.ConfigureCalls())
	if err := dp.RestartPeers([]wgtypes.Key{b.PublicKey()}); err != nil {
		t.Fatal(err)
	}
	calls := k.WG.ConfigureCalls()[before:]
	if len(calls) != 1 {
		t.Fatalf("%d configurations, want one", len(calls))
	}
	if ps := calls[0].Peers; len(ps) != 2 || !ps[0].Remove || ps[0].PublicKey != b.PublicKey() || ps[1].Remove || ps[1].PublicKey != b.PublicKey() {
		t.Fatalf("configuration %+v, want remove and re-add of b only", ps)
	}
	dev, err := k.WG.Device("arch0")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range dev.Peers {
		switch p.PublicKey {
		case b.PublicKey():
			if !p.LastHandshakeTime.IsZero() || len(p.AllowedIPs) != 1 || p.Endpoint == nil || p.Endpoint.String() != "192.0.2.2:51820" || p.PersistentKeepaliveInterval != 25*time.Second {
				t.Errorf("b after the restart: %+v, want a fresh peer with its range, endpoint and keepalive", p)
			}
		case c.PublicKey():
			if p.LastHandshakeTime.IsZero() {
				t.Error("c lost its session, but only b was restarted")
			}
		}
	}
	// The next pass with the same plan finds nothing to do.
	res, err := dp.Apply(context.Background(), plan.Compute(in))
	if err != nil || res.PeersTouched() != 0 {
		t.Errorf("pass after the restart touched %d peers (%v)", res.PeersTouched(), err)
	}
}
