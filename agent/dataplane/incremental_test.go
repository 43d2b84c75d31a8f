package dataplane_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/go-logr/logr"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/dataplane/fake"
	"github.com/archipelago-mesh/archipelago/agent/plan"
	"github.com/archipelago-mesh/archipelago/agent/wireguard"
)

// TestEventPassTouchesOnlyWhatChanged: after the first (full) pass, a pass
// with the same plan reads and writes nothing, and a pass that changes one
// peer's endpoint sends one ConfigureDevice naming only that peer, without
// reading the device or any other layer.
func TestEventPassTouchesOnlyWhatChanged(t *testing.T) {
	k := fake.NewKernel()
	dp := k.Dataplane(iface, logr.Discard())
	ctx := context.Background()
	in := inputs(plan.RoleGateway, peers(50, 0))
	res, err := dp.Apply(ctx, plan.Compute(in))
	if err != nil || !res.Full {
		t.Fatalf("first pass full=%v: %v", res.Full, err)
	}
	if k.Reads() == 0 {
		t.Fatal("first pass read nothing")
	}

	k.ResetWrites()
	k.ResetReads()
	res, err = dp.Apply(ctx, plan.Compute(in))
	if err != nil || res.Full || !res.Empty() || k.Reads() != 0 || k.Writes() != 0 {
		t.Fatalf("no-change pass: full=%v reads=%d writes=%d err=%v", res.Full, k.Reads(), k.Writes(), err)
	}

	in.Peers[7].Endpoint = netip.MustParseAddrPort("203.0.113.9:4500")
	res, err = dp.Apply(ctx, plan.Compute(in))
	if err != nil {
		t.Fatal(err)
	}
	calls := k.WG.ConfigureCalls()
	if k.Reads() != 0 || k.Writes() != 1 || len(calls) != 1 || len(calls[0].Peers) != 1 ||
		calls[0].Peers[0].PublicKey != in.Peers[7].PublicKey || !calls[0].Peers[0].UpdateOnly || res.PeersTouched() != 1 {
		t.Fatalf("one peer changed: reads=%d writes=%d calls=%+v", k.Reads(), k.Writes(), calls)
	}
	dev, _ := k.WG.Device(iface)
	for _, p := range dev.Peers {
		if p.PublicKey == in.Peers[7].PublicKey && p.Endpoint.String() != "203.0.113.9:4500" {
			t.Errorf("endpoint %v", p.Endpoint)
		}
	}

	// A peer removed and one added: only those two are named; the routes
	// and the filter (whose part of the plan changed) are diffed again.
	// Each range has two routes: forwarding, and unreachable under it.
	k.ResetWrites()
	in.Peers = append(in.Peers[1:], peers(1, 60)...)
	want := plan.Compute(in)
	res, err = dp.Apply(ctx, want)
	if err != nil || len(res.Tunnel.Added) != 1 || len(res.Tunnel.Removed) != 1 || len(res.Tunnel.Updated) != 0 ||
		len(res.Routes.Added) != 2 || len(res.Routes.Deleted) != 2 || !res.FilterChanged {
		t.Fatalf("peer replaced: %+v, %v", res, err)
	}
	if got := len(k.WG.PeersTouched()); got != 2 {
		t.Errorf("touched %d peers, want 2", got)
	}
	check(t, k, want)
	if res, err := dp.ApplyFull(ctx, want); err != nil || !res.Empty() {
		t.Errorf("full pass after event passes: %+v, %v", res, err)
	}
}

// TestDriftRepairedByResync: event-driven passes do not look for drift made
// by hand; the periodic full pass finds and repairs it.
func TestDriftRepairedByResync(t *testing.T) {
	k := fake.NewKernel()
	dp := k.Dataplane(iface, logr.Discard())
	ctx := context.Background()
	ps := peers(5, 0)
	p := plan.Compute(inputs(plan.RoleGateway, ps))
	if _, err := dp.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	// By hand: ip route del, wg set peer remove, sysctl.
	rs := forwarding(k)
	if err := k.Netlink.RouteDel(&rs[2]); err != nil {
		t.Fatal(err)
	}
	if err := k.WG.ConfigureDevice(iface, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: ps[3].PublicKey, Remove: true}}}); err != nil {
		t.Fatal(err)
	}
	if err := k.Sysctl.Set("net.ipv4.ip_forward", "0"); err != nil {
		t.Fatal(err)
	}
	k.ResetWrites()

	res, err := dp.Apply(ctx, p)
	if err != nil || !res.Empty() || k.Writes() != 0 {
		t.Fatalf("event pass wrote: %+v, %v", res, err)
	}
	if got := len(forwarding(k)); got != 4 {
		t.Fatalf("event pass repaired the route (%d routes): it should not have read the table", got)
	}

	res, err = dp.Resync(ctx)
	if err != nil || !res.Full {
		t.Fatalf("resync full=%v: %v", res.Full, err)
	}
	if len(res.Routes.Added) != 1 || len(res.Tunnel.Added) != 1 || len(res.HostSettings) != 1 {
		t.Errorf("resync repaired %+v", res)
	}
	check(t, k, p)
	if v, _ := k.Sysctl.Get("net.ipv4.ip_forward"); v != "1" {
		t.Errorf("ip_forward %q after resync", v)
	}
	k.ResetWrites()
	if res, err := dp.Apply(ctx, p); err != nil || !res.Empty() || k.Writes() != 0 {
		t.Errorf("event pass after resync: %+v, %v", res, err)
	}
}

// TestApplyErrorForcesFullPass: a layer whose apply failed is diffed
// against the kernel on the next pass, even with the same plan. A failed
// tunnel apply is retried at once on a device opened again (the device may
// be gone), in full.
func TestApplyErrorForcesFullPass(t *testing.T) {
	ctx := context.Background()
	t.Run("tunnel", func(t *testing.T) {
		k := fake.NewKernel()
		dp := k.Dataplane(iface, logr.Discard())
		in := inputs(plan.RoleGateway, peers(5, 0))
		if _, err := dp.Apply(ctx, plan.Compute(in)); err != nil {
			t.Fatal(err)
		}
		in.Peers[1].Endpoint = netip.MustParseAddrPort("203.0.113.1:1")
		p := plan.Compute(in)
		k.WG.FailNextConfigure(errors.New("injected"))
		k.ResetReads()
		res, err := dp.Apply(ctx, p)
		if err != nil || !res.TunnelOpened || len(res.Tunnel.Updated) != 1 {
			t.Fatalf("pass with a failing ConfigureDevice: %+v, %v (want the device opened again and the peer updated)", res, err)
		}
		if k.Reads() == 0 {
			t.Error("the retry on the reopened device did not read it (not a full apply)")
		}
		check(t, k, p)
		k.ResetReads()
		if res, err := dp.Apply(ctx, p); err != nil || !res.Empty() || k.Reads() != 0 {
			t.Errorf("next pass: %+v, reads %d, %v", res, k.Reads(), err)
		}
		check(t, k, p)
	})
	t.Run("routes", func(t *testing.T) {
		k := fake.NewKernel()
		dp := k.Dataplane(iface, logr.Discard())
		if _, err := dp.Apply(ctx, plan.Compute(inputs(plan.RoleWorker, peers(3, 0)))); err != nil {
			t.Fatal(err)
		}
		p := plan.Compute(inputs(plan.RoleWorker, peers(4, 0)))
		k.Netlink.FailNext("RouteReplace", errors.New("injected"))
		if _, err := dp.Apply(ctx, p); err == nil {
			t.Fatal("no error from a failed RouteReplace")
		}
		k.ResetReads()
		res, err := dp.Apply(ctx, p)
		if err != nil || len(res.Routes.Added) != 1 {
			t.Fatalf("pass after the error: %+v, %v", res, err)
		}
		if k.Reads() == 0 {
			t.Error("pass after a route error did not read the routes")
		}
		check(t, k, p)
	})
}

// TestTunnelWithoutPeerConfigurer: a Tunnel that can only be applied whole
// is read and diffed on every pass, and still converges.
func TestTunnelWithoutPeerConfigurer(t *testing.T) {
	k := fake.NewKernel()
	k.Driver.NoPeerConfigurer = true
	dp := k.Dataplane(iface, logr.Discard())
	ctx := context.Background()
	in := inputs(plan.RoleGateway, peers(4, 0))
	if _, err := dp.Apply(ctx, plan.Compute(in)); err != nil {
		t.Fatal(err)
	}
	in.Peers[2].Endpoint = netip.MustParseAddrPort("203.0.113.1:1")
	p := plan.Compute(in)
	k.ResetReads()
	res, err := dp.Apply(ctx, p)
	if err != nil || res.PeersTouched() != 1 || k.Reads() != 1 {
		t.Fatalf("%+v reads=%d %v", res, k.Reads(), err)
	}
	check(t, k, p)
}

// TestRestartIsFull: a new Dataplane (agent restart) diffs everything on
// its first pass and then goes event-driven.
func TestRestartIsFull(t *testing.T) {
	k := fake.NewKernel()
	ctx := context.Background()
	p := plan.Compute(inputs(plan.RoleGateway, peers(3, 0)))
	dp := k.Dataplane(iface, logr.Discard())
	if _, err := dp.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	_ = dp.Close()
	rs := forwarding(k)
	_ = k.Netlink.RouteDel(&rs[0]) // drift while the agent was down
	dp = k.Dataplane(iface, logr.Discard())
	res, err := dp.Apply(ctx, p)
	if err != nil || !res.Full || len(res.Routes.Added) != 1 {
		t.Fatalf("first pass after restart: %+v, %v", res, err)
	}
	if res, _ := dp.Apply(ctx, p); res.Full {
		t.Error("second pass was full")
	}
}

// TestEventPassValidates: a plan that the device could not converge to is
// refused on the event-driven path as on the full one.
func TestEventPassValidates(t *testing.T) {
	ctx := context.Background()
	k := fake.NewKernel()
	dp := k.Dataplane(iface, logr.Discard())
	good := plan.Compute(inputs(plan.RoleGateway, peers(4, 0)))
	if _, err := dp.Apply(ctx, good); err != nil {
		t.Fatal(err)
	}
	clone := func(p plan.NodePlan) plan.NodePlan {
		tp := *p.Tunnel
		tp.Peers = append([]wireguard.PeerPlan(nil), tp.Peers...)
		p.Tunnel = &tp
		return p
	}
	bad := clone(good) // same keys, one peer takes another's range
	bad.Tunnel.Peers[2].AllowedIPs = append([]netip.Prefix{bad.Tunnel.Peers[0].AllowedIPs[0]}, bad.Tunnel.Peers[2].AllowedIPs...)
	dup := clone(good) // a key twice
	dup.Tunnel.Peers[3] = dup.Tunnel.Peers[1]
	dup.Tunnel.Peers[3].AllowedIPs = []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")}
	nokey := clone(good)
	nokey.Tunnel.Peers[1].PublicKey = wgtypes.Key{}
	port0 := clone(good) // same keys, one endpoint without port
	port0.Tunnel.Peers[1].Endpoint = netip.MustParseAddrPort("203.0.113.1:0")
	for name, p := range map[string]plan.NodePlan{"shared range": bad, "duplicate key": dup, "no key": nokey, "port 0": port0} {
		k.ResetWrites()
		if _, err := dp.Apply(ctx, p); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if n := len(k.WG.ConfigureCalls()); n != 0 {
			t.Errorf("%s: %d ConfigureDevice calls", name, n)
		}
		if _, err := dp.Apply(ctx, good); err != nil {
			t.Fatal(err)
		}
		check(t, k, good)
	}
}
