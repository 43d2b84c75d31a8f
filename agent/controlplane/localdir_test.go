package controlplane

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/dataplane"
	"github.com/archipelago-mesh/archipelago/agent/plan"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// deviceOnly is a Datapath whose device state a test sets.
type deviceOnly struct{ dev *wgtypes.Device }

func (d *deviceOnly) Apply(context.Context, plan.NodePlan) (dataplane.Result, error) {
	return dataplane.Result{}, nil
}
func (d *deviceOnly) TunnelState() (*wgtypes.Device, error) { return d.dev, nil }
func (d *deviceOnly) Report() meshv1.NodeReport             { return meshv1.NodeReport{} }
func (d *deviceOnly) Cleanup(context.Context) error         { return nil }

func TestFollowRoaming(t *testing.T) {
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	key, _ := wgtypes.GeneratePrivateKey()
	pub := key.PublicKey()
	ap := netip.MustParseAddrPort
	D, E, F := ap("192.0.2.1:51820"), ap("192.0.2.2:51820"), ap("192.0.2.3:51820")
	dev := &deviceOnly{}
	a := &Agent{cfg: Config{Datapath: dev, Now: func() time.Time { return now }}}
	device := func(ep netip.AddrPort, handshake time.Time) {
		dev.dev = &wgtypes.Device{Peers: []wgtypes.Peer{{PublicKey: pub, Endpoint: net.UDPAddrFromAddrPort(ep), LastHandshakeTime: handshake}}}
	}
	pass := func(dir netip.AddrPort) (netip.AddrPort, int) {
		out, restart := a.followRoaming([]plan.Peer{{Cluster: "b", PublicKey: pub, Endpoint: dir}})
		return out[0].Endpoint, len(restart)
	}

	// The remote failed over with its shared identity; its new gateway's
	// handshake moved the peer to E. The directory still says D.
	device(E, now.Add(-time.Second))
	if ep, n := pass(D); ep != E || n != 0 {
		t.Errorf("roamed peer, unchanged directory: plan %s restarts %d, want %s and none", ep, n, E)
	}
	if ep, _ := pass(D); ep != E {
		t.Errorf("second pass: plan %s, want the roamed %s kept", ep, E)
	}
	// The directory catches up with E: nothing to restart.
	if ep, n := pass(E); ep != E || n != 0 {
		t.Errorf("directory caught up: plan %s restarts %d", ep, n)
	}
	// The directory moves the peer to F (we are behind NAT: the remote's new
	// gateway cannot reach us): enforced, and the session restarted.
	if ep, n := pass(F); ep != F || n != 1 {
		t.Errorf("directory moved the peer: plan %s restarts %d, want %s and 1", ep, n, F)
	}
	// A stale handshake at another endpoint does not win.
	device(E, now.Add(-10*time.Minute))
	if ep, n := pass(F); ep != F || n != 0 {
		t.Errorf("stale roam: plan %s restarts %d, want %s and none", ep, n, F)
	}
	// A peer without a directory endpoint (behind NAT) is left to the device.
	out, restart := a.followRoaming([]plan.Peer{{Cluster: "b", PublicKey: pub}})
	if out[0].Endpoint.IsValid() || len(restart) != 0 {
		t.Errorf("NAT peer: plan %s restarts %d", out[0].Endpoint, len(restart))
	}
}
