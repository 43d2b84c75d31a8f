package dataplane_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/go-logr/logr"

	"github.com/archipelago-mesh/archipelago/agent/dataplane"
	"github.com/archipelago-mesh/archipelago/agent/dataplane/fake"
	"github.com/archipelago-mesh/archipelago/agent/plan"
)

// The benchmarks run on the fakes of WireGuard, netlink and nftables and
// measure what DESIGN.md §6 names: one event-driven pass of the active
// gateway, Compute and Apply together. Each reports kernel writes, kernel
// reads and WireGuard peers configured per pass.

var sizes = []int{1000, 10000}

// gateway returns a fake gateway that has applied the plan of n peers.
func gateway(b *testing.B, n int) (*fake.Kernel, *dataplane.Dataplane, plan.Inputs) {
	b.Helper()
	k := fake.NewKernel()
	dp := k.Dataplane(iface, logr.Discard())
	in := inputs(plan.RoleGateway, peers(n, 0))
	if _, err := dp.Apply(context.Background(), plan.Compute(in)); err != nil {
		b.Fatal(err)
	}
	k.ResetWrites()
	k.ResetReads()
	return k, dp, in
}

func report(b *testing.B, k *fake.Kernel, touched, passes int) {
	b.ReportMetric(float64(k.Writes())/float64(passes), "writes/op")
	b.ReportMetric(float64(k.Reads())/float64(passes), "reads/op")
	b.ReportMetric(float64(touched)/float64(passes), "peers-touched/op")
}

// BenchmarkNoChange is a steady-state event-driven pass on the active
// gateway: compute the plan from the directory and apply it to a kernel that
// already matches. It must write nothing.
func BenchmarkNoChange(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			k, dp, in := gateway(b, n)
			ctx := context.Background()
			touched, passes := 0, 0
			for b.Loop() {
				res, err := dp.Apply(ctx, plan.Compute(in))
				if err != nil {
					b.Fatal(err)
				}
				touched += res.PeersTouched()
				passes++
			}
			if w := k.Writes(); w != 0 {
				b.Fatalf("no-change passes wrote %d times", w)
			}
			report(b, k, touched, passes)
		})
	}
}

// BenchmarkOnePeerChanged changes one peer's endpoint (a gateway failover in
// a remote cluster), alternating between two endpoints: compute and an
// event-driven apply, which must configure that peer only.
func BenchmarkOnePeerChanged(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			k, dp, in := gateway(b, n)
			ctx := context.Background()
			eps := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.1:51820"), netip.MustParseAddrPort("203.0.113.2:51820")}
			touched, passes := 0, 0
			for b.Loop() {
				in.Peers[n/2].Endpoint = eps[passes%2]
				res, err := dp.Apply(ctx, plan.Compute(in))
				if err != nil {
					b.Fatal(err)
				}
				if res.PeersTouched() != 1 || !res.Routes.Empty() || res.FilterChanged {
					b.Fatalf("endpoint change: %+v", res)
				}
				touched += res.PeersTouched()
				passes++
			}
			report(b, k, touched, passes)
		})
	}
}

// BenchmarkOnePeerAddedRemoved adds a peer and removes it again on
// alternate passes (a member joins or leaves): the tunnel gets one peer,
// but the routes and the filter sets change too, and those layers are
// diffed against the kernel.
func BenchmarkOnePeerAddedRemoved(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			k, dp, in := gateway(b, n)
			ctx := context.Background()
			with := append(in.Peers[:n:n], peers(1, n)...)
			without := in.Peers
			touched, passes := 0, 0
			for b.Loop() {
				in.Peers = with
				if passes%2 == 1 {
					in.Peers = without
				}
				res, err := dp.Apply(ctx, plan.Compute(in))
				if err != nil {
					b.Fatal(err)
				}
				if res.PeersTouched() != 1 || len(res.Routes.Added)+len(res.Routes.Deleted) != 1 {
					b.Fatalf("one peer added or removed: %+v", res)
				}
				touched += res.PeersTouched()
				passes++
			}
			report(b, k, touched, passes)
		})
	}
}

// BenchmarkResync is the periodic full pass (no drift): the last plan is
// diffed against every layer of the kernel, reading all of it.
func BenchmarkResync(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			k, dp, _ := gateway(b, n)
			ctx := context.Background()
			passes := 0
			for b.Loop() {
				res, err := dp.Resync(ctx)
				if err != nil || !res.Full {
					b.Fatal(err)
				}
				passes++
			}
			if w := k.Writes(); w != 0 {
				b.Fatalf("resync without drift wrote %d times", w)
			}
			report(b, k, 0, passes)
		})
	}
}

// BenchmarkCompute is the pure plan computation alone.
func BenchmarkCompute(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			in := inputs(plan.RoleGateway, peers(n, 0))
			for b.Loop() {
				_ = plan.Compute(in)
			}
		})
	}
}
