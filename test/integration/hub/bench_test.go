package hub

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

var benchRun atomic.Int32

// BenchmarkAPIAllocate1000 creates 1,000 MemberClusters through the API and
// measures the time until all of them hold a range (reported as
// members/s), then restarts the hub and measures how long the new hub takes
// to rebuild its ledger from the API and assign one more member.
func BenchmarkAPIAllocate1000(b *testing.B) {
	c := needAPI(b)
	const n = 1000
	for b.Loop() {
		set := fmt.Sprintf("bench-%d", benchRun.Add(1))
		hub := framework.StartHub(b, api.Config, controllers.Options{MaxConcurrentReconciles: 8})
		pool := netip.MustParsePrefix("10.0.0.0/8")
		create(b, c, framework.NewClusterSet(set, []string{pool.String()}, framework.WithBlockSize(20, 0)))

		start := time.Now()
		var wg sync.WaitGroup
		names := make(chan string, n)
		for i := range n {
			names <- fmt.Sprintf("%s-%04d", set, i)
		}
		close(names)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for name := range names {
					if err := c.Create(context.Background(), framework.NewMember(name, set)); err != nil {
						b.Errorf("create %s: %v", name, err)
					}
				}
			}()
		}
		wg.Wait()
		created := time.Since(start)
		waitAllAssigned(b, c, set, n, 5*time.Minute)
		elapsed := time.Since(start)
		b.ReportMetric(float64(n)/elapsed.Seconds(), "members/s")
		b.ReportMetric(created.Seconds(), "create-s")
		b.ReportMetric(elapsed.Seconds(), "all-assigned-s")

		// Restart: the new hub rebuilds from the claims of 1,000 members
		// before it assigns the next one.
		hub.Stop()
		restart := time.Now()
		framework.StartHub(b, api.Config, controllers.Options{MaxConcurrentReconciles: 8})
		create(b, c, framework.NewMember(set+"-late", set))
		waitAssigned(b, c, set+"-late", time.Minute)
		b.ReportMetric(time.Since(restart).Seconds(), "restart-to-assign-s")
	}
}

func waitAllAssigned(b *testing.B, c client.Client, set string, n int, timeout time.Duration) {
	b.Helper()
	eventually(b, timeout, fmt.Sprintf("%d members of %s assigned", n, set), func() error {
		var l meshv1.MemberClusterList
		if err := c.List(context.Background(), &l); err != nil {
			return err
		}
		k := 0
		seen := map[string]string{}
		for i := range l.Items {
			m := &l.Items[i]
			if m.Spec.ClusterSet != set || len(m.Status.PodCIDRs) == 0 {
				continue
			}
			k++
			if other, dup := seen[m.Status.PodCIDRs[0]]; dup {
				b.Fatalf("range %s assigned to %s and %s", m.Status.PodCIDRs[0], other, m.Name)
			}
			seen[m.Status.PodCIDRs[0]] = m.Name
		}
		if k < n {
			return fmt.Errorf("%d of %d assigned", k, n)
		}
		return nil
	})
}

// BenchmarkHubWrites counts the hub's successful API writes for a set of n
// simulated members: until it settles after the members appear (ranges,
// namespaces, RBAC), after their gateways appear (each active, reporting
// every peer up, beating as agents do), for one round of heartbeats of every
// gateway, and for one endpoint change.
func BenchmarkHubWrites(b *testing.B) {
	c := needAPI(b)
	for i, n := range []int{25, 50, 100} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			for b.Loop() {
				wc := countingHub(b, controllers.Options{MaxConcurrentReconciles: 8})
				set := fmt.Sprintf("writes-%d-%d", n, benchRun.Add(1))
				names := simulatedMembers(b, c, set, fmt.Sprintf("10.%d.0.0/16", 153+i), n)
				joins := wc.quiet(b, 2*time.Minute)
				simulatedGateways(b, c, set, names)
				settle := wc.quiet(b, 2*time.Minute)
				for _, name := range names {
					heartbeat(b, c, name, "gw", nil)
				}
				beats := wc.quiet(b, time.Minute)
				gw := &meshv1.TunnelGateway{}
				if err := c.Get(context.Background(), client.ObjectKey{Namespace: controllers.MemberNamespace(names[0]), Name: "gw"}, gw); err != nil {
					b.Fatal(err)
				}
				gw.Spec.Endpoints = []string{"198.51.100.9:51820"}
				if err := c.Update(context.Background(), gw); err != nil {
					b.Fatal(err)
				}
				eventually(b, 20*time.Second, "endpoint change in the directory", func() error {
					p, err := getPeer(c, set, names[0])
					if err == nil && (p.Spec.Gateway == nil || p.Spec.Gateway.Endpoints[0] != "198.51.100.9:51820") {
						err = fmt.Errorf("not yet")
					}
					return err
				})
				change := wc.quiet(b, time.Minute)
				b.ReportMetric(float64(len(joins)), "join-writes")
				b.ReportMetric(float64(len(settle)), "gateways-settle-writes")
				b.ReportMetric(float64(len(beats))/float64(n), "writes/heartbeat")
				b.ReportMetric(float64(len(change)), "endpoint-change-writes")
			}
		})
	}
}
