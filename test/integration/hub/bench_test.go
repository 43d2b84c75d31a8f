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
