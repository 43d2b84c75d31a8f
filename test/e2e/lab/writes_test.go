//go:build e2e

package lab_test

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/test/lab"
)

// writeCount is what a member's apiserver stored over one window: every
// write bumps its etcd's revision; Lease renewals (the gateway election's,
// at its own pace whatever the traffic) are counted apart.
type writeCount struct {
	total, leases int64
	window        time.Duration
}

func (w writeCount) other() int64 { return w.total - w.leases }

func perMin(n int64, d time.Duration) float64 { return float64(n) / d.Minutes() }

func (w writeCount) String() string {
	return fmt.Sprintf("%.0f/min (Lease renewals %.0f, other %.0f)",
		perMin(w.total, w.window), perMin(w.leases, w.window), perMin(w.other(), w.window))
}

// revision is the member's etcd revision: a list read from storage carries
// it as its resourceVersion.
func revision(ctx context.Context, m *lab.Member) (int64, error) {
	var l corev1.NamespaceList
	if err := m.Cluster.Client.List(ctx, &l, client.Limit(1)); err != nil {
		return 0, err
	}
	return strconv.ParseInt(l.ResourceVersion, 10, 64)
}

// countWrites counts m's apiserver writes over d.
func countWrites(ctx context.Context, m *lab.Member, d time.Duration) (writeCount, error) {
	kc, err := kubernetes.NewForConfig(m.Cluster.Config)
	if err != nil {
		return writeCount{}, err
	}
	w, err := kc.CoordinationV1().Leases("").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return writeCount{}, err
	}
	defer w.Stop()
	var leases atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			if ev.Type == watch.Modified || ev.Type == watch.Added {
				leases.Add(1)
			}
		}
	}()
	// The watch's initial events (Added for each existing Lease) are not
	// writes of the window.
	time.Sleep(500 * time.Millisecond)
	leases.Store(0)
	r0, err := revision(ctx, m)
	if err != nil {
		return writeCount{}, err
	}
	start := time.Now()
	time.Sleep(d)
	r1, err := revision(ctx, m)
	if err != nil {
		return writeCount{}, err
	}
	wc := writeCount{total: r1 - r0, leases: leases.Load(), window: time.Since(start)}
	w.Stop()
	<-done
	return wc, nil
}

// traffic runs a TCP stream of rate (iperf3 -b, e.g. "50M") from src to dst
// for about secs seconds; wait returns when it ended.
func traffic(t testing.TB, l *lab.Lab, src, dst *lab.Pod, rate string, secs int) (wait func() error) {
	t.Helper()
	srv, err := l.StartProcess("writes/iperf3-server-"+dst.Name, dst.NS, "iperf3", "-s", "-1", "-p", "5202")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	cmd := exec.Command("ip", "netns", "exec", src.NS, "iperf3", "-c", dst.IP.String(), "-p", "5202", "-b", rate, "-t", fmt.Sprint(secs))
	if err := cmd.Start(); err != nil {
		srv.Stop(time.Second)
		t.Fatal(err)
	}
	return func() error {
		defer srv.Stop(2 * time.Second)
		return cmd.Wait()
	}
}

// measureWrites returns alpha's writes over window idle, then over window
// under a 50 Mbit/s stream alpha -> bravo through the tunnel.
func measureWrites(t testing.TB, l *lab.Lab, window time.Duration) (idle, busy writeCount) {
	t.Helper()
	ctx := context.Background()
	m := l.Member("alpha")
	var src, dst *lab.Pod
	for _, p := range l.Pods() {
		switch p.Name {
		case "alpha-w1-p1":
			src = p
		case "bravo-w1-p1":
			dst = p
		}
	}
	if src == nil || dst == nil {
		t.Fatal("no pods alpha-w1-p1 and bravo-w1-p1")
	}
	if _, err := lab.WaitTCP(ctx, src, dst, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var err error
	if idle, err = countWrites(ctx, m, window); err != nil {
		t.Fatal(err)
	}
	wait := traffic(t, l, src, dst, "50M", int(window.Seconds())+3)
	time.Sleep(time.Second) // the stream is up
	busy, err = countWrites(ctx, m, window)
	if werr := wait(); werr != nil {
		t.Errorf("iperf3 stream alpha -> bravo: %v", werr)
	}
	if err != nil {
		t.Fatal(err)
	}
	return idle, busy
}

// The member's API writes do not depend on tunnel traffic (no
// live counters in reports; an agent's own writes do not wake it). The
// bound is generous: only a regression breaks it (with byte counters in the
// NodeReport it was about 7.5 writes/s against 1.7 idle).
func TestAPIWritesIndependentOfTraffic(t *testing.T) {
	l := need(t)
	const window = 20 * time.Second
	idle, busy := measureWrites(t, l, window)
	nodes := len(l.Member("alpha").Nodes)
	t.Logf("WRITES: member alpha apiserver (%d nodes), %s windows: idle %s; under 50 Mbit/s %s", nodes, window, idle, busy)
	if limit := 2*idle.other() + 10; busy.other() > limit {
		t.Errorf("under traffic alpha's apiserver took %d writes besides Lease renewals in %s, idle %d: want at most %d",
			busy.other(), window, idle.other(), limit)
	}
}
