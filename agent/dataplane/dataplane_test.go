package dataplane_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/dataplane/fake"
	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	"github.com/archipelago-mesh/archipelago/agent/plan"
	"github.com/archipelago-mesh/archipelago/agent/routing"
)

const iface = "wgtest0"

// keyFor is deterministic so that random sequences can name peers again.
func keyFor(i int) wgtypes.Key {
	var seed [32]byte
	seed[1], seed[2], seed[3] = byte(i), byte(i>>8), 0x5a // byte 0 is clamped
	k, _ := wgtypes.NewKey(seed[:])
	return k
}

var selfKey = keyFor(1 << 15)

func peers(n, offset int) []plan.Peer {
	out := make([]plan.Peer, n)
	for i := range n {
		j := i + offset
		out[i] = plan.Peer{
			Cluster:   fmt.Sprintf("c%05d", j),
			PodCIDRs:  []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(j >> 8), byte(j), 0}), 24)},
			Gateway:   fmt.Sprintf("gw%d", j),
			PublicKey: keyFor(j).PublicKey(),
			Endpoint:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, byte(2 + j>>8), byte(j)}), 51820),
		}
	}
	return out
}

func inputs(role string, ps []plan.Peer) plan.Inputs {
	return plan.Inputs{
		Node: "n1", Role: role, LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("172.16.0.0/16")},
		Peers: ps, ActiveGatewayIP: netip.MustParseAddr("198.51.100.1"), PrivateKey: selfKey,
		Tunnel: plan.Tunnel{Interface: iface, Port: 51820, MTU: 1420, Keepalive: 25 * time.Second},
	}
}

// forwarding returns the routes of the agent's table that forward (the
// unreachable routes under them left out).
func forwarding(k *fake.Kernel) []netlink.Route {
	var out []netlink.Route
	for _, r := range k.Netlink.Routes(routing.DefaultTable) {
		if r.Type != unix.RTN_UNREACHABLE {
			out = append(out, r)
		}
	}
	return out
}

// unreachable returns the destinations of the agent's unreachable routes.
func unreachable(k *fake.Kernel) []string {
	var out []string
	for _, r := range k.Netlink.Routes(routing.DefaultTable) {
		if r.Type == unix.RTN_UNREACHABLE {
			out = append(out, r.Dst.String())
		}
	}
	slices.Sort(out)
	return out
}

// hasRule reports whether the agent's policy rule of IPv4 is there.
func hasRule(k *fake.Kernel) bool {
	for _, r := range k.Netlink.Rules() {
		if r.Table == routing.DefaultTable && r.Family == netlink.FAMILY_V4 {
			return true
		}
	}
	return false
}

// check compares the fake kernel with p.
func check(t *testing.T, k *fake.Kernel, p plan.NodePlan) {
	t.Helper()
	var got []string
	for _, r := range forwarding(k) {
		got = append(got, r.Dst.String())
	}
	var want []string
	for _, r := range p.Routes.Routes {
		want = append(want, r.Dst.String())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	want = want[:0]
	for _, r := range p.Routes.Unreachable {
		want = append(want, r.String())
	}
	slices.Sort(want)
	if got := unreachable(k); !slices.Equal(got, want) {
		t.Fatalf("unreachable routes %v, want %v", got, want)
	}
	if p.Tunnel == nil {
		if k.WG.HasDevice(iface) {
			t.Fatal("device exists on a non-gateway node")
		}
	} else {
		dev, err := k.WG.Device(iface)
		if err != nil {
			t.Fatalf("device missing on the gateway: %v", err)
		}
		var have, wantKeys []string
		for _, peer := range dev.Peers {
			have = append(have, peer.PublicKey.String())
		}
		for _, peer := range p.Tunnel.Peers {
			wantKeys = append(wantKeys, peer.PublicKey.String())
		}
		slices.Sort(have)
		slices.Sort(wantKeys)
		if !slices.Equal(have, wantKeys) {
			t.Fatalf("device peers %d, want %d", len(have), len(wantKeys))
		}
	}
	if !k.NFT.HasTable(0x1, "archipelago") && !hasTable(k) {
		t.Fatal("nftables table missing")
	}
}

func hasTable(k *fake.Kernel) bool {
	for _, fam := range []byte{1, 2, 10} {
		if k.NFT.HasTable(tableFamily(fam), "archipelago") {
			return true
		}
	}
	return false
}

// TestApplyStates drives the applier through random sequences of plans (role
// changes, peers added, removed and changed), applied by event-driven passes
// interleaved with resyncs, some after drift made by hand, and checks that
// the kernel ends at exactly the last plan: a repeated plan writes nothing
// (and reads nothing when event-driven), and a full pass finds nothing to
// repair.
func TestApplyStates(t *testing.T) {
	roles := []string{plan.RoleGateway, plan.RoleStandby, plan.RoleWorker}
	ctx := context.Background()
	for seed := range 40 {
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		k := fake.NewKernel()
		dp := k.Dataplane(iface, logr.Discard())
		var last plan.NodePlan
		for step := range 16 {
			switch r.IntN(6) {
			case 0:
				if step > 0 {
					drift(k, r)
					if res, err := dp.Resync(ctx); err != nil || !res.Full {
						t.Fatalf("seed %d step %d: resync full=%v: %v", seed, step, res.Full, err)
					}
					check(t, k, last)
					continue
				}
			case 1:
				if step > 0 {
					if _, err := dp.Resync(ctx); err != nil {
						t.Fatalf("seed %d step %d: resync: %v", seed, step, err)
					}
				}
			}
			in := inputs(roles[r.IntN(len(roles))], peers(r.IntN(8), r.IntN(4)))
			if r.IntN(4) == 0 && len(in.Peers) > 0 {
				in.Peers[0].Endpoint = netip.MustParseAddrPort("203.0.113.7:4500")
			}
			if r.IntN(4) == 0 && len(in.Peers) > 1 {
				in.Peers[1].PodCIDRs = append(in.Peers[1].PodCIDRs, netip.MustParsePrefix("10.200.0.0/24"))
			}
			// Not routable (fail closed): a hold, or no known gateway.
			switch r.IntN(8) {
			case 0:
				in.Hold = "hold"
			case 1:
				in.ActiveGatewayIP = netip.Addr{}
			}
			last = plan.Compute(in)
			if _, err := dp.Apply(ctx, last); err != nil {
				t.Fatalf("seed %d step %d (%s): %v", seed, step, in.Role, err)
			}
			check(t, k, last)
		}
		k.ResetWrites()
		k.ResetReads()
		res, err := dp.Apply(ctx, last)
		if err != nil || !res.Empty() || res.Full || k.Writes() != 0 || k.Reads() != 0 {
			t.Fatalf("seed %d: repeated plan wrote %d times, read %d times (%+v, %v)", seed, k.Writes(), k.Reads(), res, err)
		}
		res, err = dp.ApplyFull(ctx, last)
		if err != nil || !res.Empty() || !res.Full || k.Writes() != 0 {
			t.Fatalf("seed %d: full pass after event passes wrote %d times (%+v, %v)", seed, k.Writes(), res, err)
		}
	}
}

// drift changes the fake kernel behind the agent's back, as a person with
// ip, wg, nft or sysctl would.
func drift(k *fake.Kernel, r *rand.Rand) {
	switch r.IntN(4) {
	case 0:
		if rs := k.Netlink.Routes(routing.DefaultTable); len(rs) > 0 {
			_ = k.Netlink.RouteDel(&rs[r.IntN(len(rs))])
		}
	case 1:
		if dev, err := k.WG.Device(iface); err == nil && len(dev.Peers) > 0 {
			_ = k.WG.ConfigureDevice(iface, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: dev.Peers[r.IntN(len(dev.Peers))].PublicKey, Remove: true}}})
		}
	case 2:
		_ = k.Sysctl.Set("net.ipv4.ip_forward", "0")
	case 3:
		_ = netfilter.Cleanup(k.NFT) // nft delete table inet archipelago
	}
}

func TestRoleChangeTearsDownDevice(t *testing.T) {
	k := fake.NewKernel()
	dp := k.Dataplane(iface, logr.Discard())
	ctx := context.Background()
	if _, err := dp.Apply(ctx, plan.Compute(inputs(plan.RoleGateway, peers(3, 0)))); err != nil {
		t.Fatal(err)
	}
	if !k.WG.HasDevice(iface) {
		t.Fatal("no device on the gateway")
	}
	res, err := dp.Apply(ctx, plan.Compute(inputs(plan.RoleWorker, peers(3, 0))))
	if err != nil || !res.TunnelRemoved || k.WG.HasDevice(iface) {
		t.Fatalf("gateway -> worker: removed=%v device=%v err=%v", res.TunnelRemoved, k.WG.HasDevice(iface), err)
	}
	for _, r := range forwarding(k) {
		if r.Gw == nil {
			t.Errorf("route %s still points into the tunnel", r.Dst)
		}
	}
	// A new agent on a node that is a worker now removes a device an
	// earlier agent left behind.
	k2 := fake.NewKernel()
	if _, err := k2.Dataplane(iface, logr.Discard()).Apply(ctx, plan.Compute(inputs(plan.RoleGateway, peers(1, 0)))); err != nil {
		t.Fatal(err)
	}
	if _, err := k2.Dataplane(iface, logr.Discard()).Apply(ctx, plan.Compute(inputs(plan.RoleWorker, peers(1, 0)))); err != nil {
		t.Fatal(err)
	}
	if k2.WG.HasDevice(iface) {
		t.Error("stale device of an earlier agent kept on a worker")
	}
}

func TestRestartKeepsDevice(t *testing.T) {
	k := fake.NewKernel()
	ctx := context.Background()
	p := plan.Compute(inputs(plan.RoleGateway, peers(5, 0)))
	dp := k.Dataplane(iface, logr.Discard())
	if _, err := dp.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	_ = dp.Close()
	k.ResetWrites()
	dp2 := k.Dataplane(iface, logr.Discard())
	if _, err := dp2.Apply(ctx, p); err != nil {
		t.Fatal(err)
	}
	if k.Writes() != 0 {
		t.Errorf("restart with the same plan wrote %d times", k.Writes())
	}
}

func TestCleanup(t *testing.T) {
	k := fake.NewKernel()
	dp := k.Dataplane(iface, logr.Discard())
	ctx := context.Background()
	if _, err := dp.Apply(ctx, plan.Compute(inputs(plan.RoleGateway, peers(3, 0)))); err != nil {
		t.Fatal(err)
	}
	if err := dp.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if k.WG.HasDevice(iface) || len(k.Netlink.Routes(routing.DefaultTable)) != 0 || hasTable(k) {
		t.Error("cleanup left state behind")
	}
	for _, r := range k.Netlink.Rules() {
		if r.Table == routing.DefaultTable {
			t.Errorf("rule %v left", r)
		}
	}
}

func TestReport(t *testing.T) {
	k := fake.NewKernel()
	dp := k.Dataplane(iface, logr.Discard())
	ps := peers(2, 0)
	if _, err := dp.Apply(context.Background(), plan.Compute(inputs(plan.RoleGateway, ps))); err != nil {
		t.Fatal(err)
	}
	k.WG.Handshake(iface, ps[0].PublicKey, time.Now())
	r := dp.Report()
	if r.Role != plan.RoleGateway || !r.InterfaceUp || len(r.Peers) != 2 || r.Peers[0].Cluster != ps[0].Cluster ||
		r.Peers[0].LatestHandshake == nil || r.Routes != 2 || !r.NoSNAT || !r.MSSClamp || !r.IPForwarding || r.LastError != "" {
		t.Errorf("report %+v", r)
	}
}

// remoteSet returns the elements of the no-SNAT set of remote IPv4 ranges.
func remoteSet(k *fake.Kernel) int {
	return len(k.NFT.Elements(nftables.TableFamilyINet, netfilter.TableName, netfilter.SetRemote4))
}

// TestFailClosed: while the node cannot route a remote range (the gateway's
// device cannot be opened, the plan holds, a worker knows no gateway), the
// range stays in the agent's table as an unreachable route, the policy rule
// stays, and the no-SNAT sets keep the range: nothing falls through to the
// main table. Traffic returns to the tunnel when the cause goes, and only
// Cleanup (leave, uninstall) removes the routes and the rule.
func TestFailClosed(t *testing.T) {
	ctx := context.Background()
	ps := peers(3, 0)
	closed := []string{"10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"}
	wantClosed := func(t *testing.T, k *fake.Kernel, when string) {
		t.Helper()
		if f := forwarding(k); len(f) != 0 {
			t.Errorf("%s: %d forwarding routes, want none", when, len(f))
		}
		if got := unreachable(k); !slices.Equal(got, closed) {
			t.Errorf("%s: unreachable routes %v, want %v", when, got, closed)
		}
		if !hasRule(k) {
			t.Errorf("%s: the policy rule is gone: remote ranges would follow the main table", when)
		}
		if n := remoteSet(k); n == 0 {
			t.Errorf("%s: the no-SNAT set of remote ranges is empty", when)
		}
	}

	t.Run("device cannot be opened", func(t *testing.T) {
		k := fake.NewKernel()
		dp := k.Dataplane(iface, logr.Discard())
		p := plan.Compute(inputs(plan.RoleGateway, ps))
		if _, err := dp.Apply(ctx, p); err != nil {
			t.Fatal(err)
		}
		// The device process dies (the kernel drops the device's routes)
		// and cannot be started again.
		_ = dp.Close()
		if err := k.Driver.Teardown(ctx, iface); err != nil {
			t.Fatal(err)
		}
		for _, r := range forwarding(k) {
			_ = k.Netlink.RouteDel(&r)
		}
		k.Driver.FailOpen = errors.New("device not open")
		dp = k.Dataplane(iface, logr.Discard())
		if _, err := dp.Apply(ctx, p); err == nil {
			t.Fatal("no error without the device")
		}
		wantClosed(t, k, "device not open")
		k.Driver.FailOpen = nil
		if _, err := dp.Resync(ctx); err != nil {
			t.Fatal(err)
		}
		check(t, k, p)
		if len(forwarding(k)) != 3 {
			t.Errorf("tunnel back: %d forwarding routes, want 3", len(forwarding(k)))
		}
	})
	t.Run("gateway on hold", func(t *testing.T) {
		k := fake.NewKernel()
		dp := k.Dataplane(iface, logr.Discard())
		if _, err := dp.Apply(ctx, plan.Compute(inputs(plan.RoleGateway, ps))); err != nil {
			t.Fatal(err)
		}
		in := inputs(plan.RoleGateway, ps)
		in.Hold = "node n2 podCIDR outside the assigned ranges"
		if _, err := dp.Apply(ctx, plan.Compute(in)); err != nil {
			t.Fatal(err)
		}
		wantClosed(t, k, "hold")
	})
	t.Run("worker without gateway", func(t *testing.T) {
		k := fake.NewKernel()
		dp := k.Dataplane(iface, logr.Discard())
		if _, err := dp.Apply(ctx, plan.Compute(inputs(plan.RoleWorker, ps))); err != nil {
			t.Fatal(err)
		}
		in := inputs(plan.RoleWorker, ps)
		in.ActiveGatewayIP = netip.Addr{}
		if _, err := dp.Apply(ctx, plan.Compute(in)); err != nil {
			t.Fatal(err)
		}
		wantClosed(t, k, "no gateway")
		if r := dp.Report(); r.Unreachable != 3 || r.Routes != 0 {
			t.Errorf("report: routes %d, unreachable %d; want 0 and 3", r.Routes, r.Unreachable)
		}
		if err := dp.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		if len(k.Netlink.Routes(routing.DefaultTable)) != 0 || hasRule(k) || hasTable(k) {
			t.Error("cleanup left routes, the rule or the table")
		}
	})
}
