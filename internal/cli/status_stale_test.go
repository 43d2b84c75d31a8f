package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// A member whose active gateway stopped reporting is not healthy, even
// though the hub still holds its last (good) conditions.
func TestStatusStaleGateway(t *testing.T) {
	for _, tc := range []struct {
		name      string
		lastSeen  time.Duration
		staleness time.Duration
		wantStale bool
	}{
		{"fresh", 10 * time.Second, time.Minute, false},
		{"stale", 2 * time.Minute, time.Minute, true},
		{"check off", time.Hour, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gw := gateway("alpha", ago(tc.lastSeen), 1)
			c := fakeClient(
				&meshv1.ClusterSet{ObjectMeta: metav1.ObjectMeta{Name: "demo"}, Spec: meshv1.ClusterSetSpec{PodCIDRPools: []meshv1.CIDR{"10.0.0.0/8"}}},
				member("alpha", "10.1.0.0/16"), gw,
			)
			r, err := BuildStatusWithLimits(context.Background(), c, "", now, tc.staleness)
			if err != nil {
				t.Fatal(err)
			}
			row := r.ClusterSets[0].Members[0]
			if row.Stale != tc.wantStale || r.Healthy() == tc.wantStale {
				t.Fatalf("stale %v healthy %v, want stale %v", row.Stale, r.Healthy(), tc.wantStale)
			}
			var b strings.Builder
			if err := WriteStatus(&b, r, "table"); err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(b.String(), "Gateway=Stale"); got != tc.wantStale {
				t.Fatalf("table mentions Gateway=Stale: %v, want %v\n%s", got, tc.wantStale, b.String())
			}
		})
	}
}
