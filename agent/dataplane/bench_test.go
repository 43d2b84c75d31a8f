package dataplane_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/go-logr/logr"

	"github.com/archipelago-mesh/archipelago/agent/dataplane/fake"
	"github.com/archipelago-mesh/archipelago/agent/plan"
)

// BenchmarkNoChange is a steady-state pass on the active gateway: compute
// the plan from the directory and apply it to a kernel that already matches
// (fakes for WireGuard, netlink and nftables). It must write nothing.
func BenchmarkNoChange(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			k := fake.NewKernel()
			dp := k.Dataplane(iface, logr.Discard())
			in := inputs(plan.RoleGateway, peers(n, 0))
			ctx := context.Background()
			if _, err := dp.Apply(ctx, plan.Compute(in)); err != nil {
				b.Fatal(err)
			}
			k.ResetWrites()
			b.ResetTimer()
			for b.Loop() {
				if _, err := dp.Apply(ctx, plan.Compute(in)); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if w := k.Writes(); w != 0 {
				b.Fatalf("no-change passes wrote %d times", w)
			}
			b.ReportMetric(0, "writes/op")
		})
	}
}

// BenchmarkOnePeerChanged changes one peer's endpoint (a gateway failover in
// a remote cluster) at 1,000 peers, alternating between two endpoints, and
// reports how many peers each pass touched.
func BenchmarkOnePeerChanged(b *testing.B) {
	k := fake.NewKernel()
	dp := k.Dataplane(iface, logr.Discard())
	ctx := context.Background()
	in := inputs(plan.RoleGateway, peers(1000, 0))
	if _, err := dp.Apply(ctx, plan.Compute(in)); err != nil {
		b.Fatal(err)
	}
	eps := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.1:51820"), netip.MustParseAddrPort("203.0.113.2:51820")}
	touched, passes := 0, 0
	b.ResetTimer()
	for b.Loop() {
		in.Peers[500].Endpoint = eps[passes%2]
		res, err := dp.Apply(ctx, plan.Compute(in))
		if err != nil {
			b.Fatal(err)
		}
		touched += res.PeersTouched()
		passes++
		if !res.Routes.Empty() || res.FilterChanged {
			b.Fatalf("endpoint change rewrote routes or filter: %+v", res)
		}
	}
	b.ReportMetric(float64(touched)/float64(passes), "peers-touched/op")
}

// BenchmarkCompute is the pure plan computation alone.
func BenchmarkCompute(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			in := inputs(plan.RoleGateway, peers(n, 0))
			for b.Loop() {
				_ = plan.Compute(in)
			}
		})
	}
}
