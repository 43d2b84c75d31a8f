package scale

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

const (
	setName = "scale"
	// heartbeat is how often an active gateway's agent refreshes its
	// TunnelGateway status (the agent's --report-interval default).
	heartbeat = time.Minute
)

// BenchmarkHubScale runs the real hub binary on a real apiserver with
// SCALE_MEMBERS (default 1,000) simulated members: each has its
// MemberCluster, one active TunnelGateway whose status is refreshed at the
// agents' heartbeat rate, and a watch on the peer directory as an agent
// holds it. It reports the time to assign every range; how long one
// gateway's endpoint change takes to reach the other members' watches
// (p50/p99); the hub's CPU and RSS and the write rates in steady state; and
// the hub writes and watch bytes one change costs.
func BenchmarkHubScale(b *testing.B) {
	n := envInt("SCALE_MEMBERS", 1000)
	changes := envInt("SCALE_CHANGES", 10)
	steady := time.Duration(envInt("SCALE_STEADY_SECONDS", 60)) * time.Second
	if _, why := framework.AssetsDir(); why != "" {
		b.Skip(why)
	}
	api, why, err := framework.StartAPIServer()
	if err != nil {
		b.Fatal(err)
	}
	if api == nil {
		b.Skip(why)
	}
	defer func() { _ = api.Stop() }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	s := &harness{b: b, n: n, api: api}
	s.startHub()
	for range b.N {
		s.run(ctx, changes, steady)
	}
}

type harness struct {
	b       *testing.B
	n       int
	api     *framework.APIServer
	hub     *framework.HubProcess
	metrics string // the hub's metrics URL
	c       client.Client

	watchBytes    atomic.Int64
	watchRestarts atomic.Int64
	target        atomic.Pointer[change]
}

// change is the endpoint change the watchers are waiting to see.
type change struct {
	member, endpoint string
	start            time.Time
	seen             chan time.Duration
}

func (s *harness) startHub() {
	b := s.b
	user, err := s.api.Env.AddUser(envtest.User{Name: "scale-hub", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	kcfg, err := user.KubeConfig()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	kcfgPath := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kcfgPath, kcfg, 0o600); err != nil {
		b.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "hub.log"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = logFile.Close() })
	port := freePort(b)
	s.metrics = fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	s.hub = &framework.HubProcess{
		Bin: framework.BuildHub(b), Kubeconfig: kcfgPath, Log: logFile,
		Args: []string{"--leader-elect=false", "--health-probe-bind-address=0",
			fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", port)},
	}
	s.hub.Start(b)
	b.Logf("hub log: %s", logFile.Name())

	cfg := rest.CopyConfig(s.api.Config)
	cfg.QPS, cfg.Burst = 2000, 4000
	s.c, err = client.New(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		b.Fatal(err)
	}
}

func (s *harness) run(ctx context.Context, changes int, steady time.Duration) {
	b := s.b
	n := s.n
	cs := framework.NewClusterSet(setName, []string{"10.0.0.0/8"}, framework.WithBlockSize(20, 0))
	if err := s.c.Create(ctx, cs); err != nil {
		b.Fatal(err)
	}

	// 1. Every member joins; time until all hold a range.
	start := time.Now()
	parallel(n, 32, func(i int) error {
		return s.c.Create(ctx, framework.NewMember(memberName(i), setName))
	})
	members := s.waitMembers(ctx, "assigned", 10*time.Minute, func(m *meshv1.MemberCluster) bool {
		return len(m.Status.PodCIDRs) > 0 && m.Status.Namespace != ""
	})
	assignAll := time.Since(start)
	b.Logf("%d members assigned in %s", n, assignAll.Round(time.Millisecond))

	// 2. Each member's agent publishes its active gateway and heartbeats.
	parallel(n, 32, func(i int) error {
		gw := &meshv1.TunnelGateway{
			ObjectMeta: metav1.ObjectMeta{Name: "gw1", Namespace: members[memberName(i)].Status.Namespace},
			Spec: meshv1.TunnelGatewaySpec{NodeName: memberName(i) + "-gw1", PublicKey: newKey(b),
				Endpoints: []string{endpoint(i, 0)}, Active: true},
		}
		if err := s.c.Create(ctx, gw); err != nil {
			return err
		}
		now := metav1.NewTime(time.Now().Truncate(time.Second))
		patch := client.MergeFrom(gw.DeepCopy())
		gw.Status.LastSeen = &now
		return s.c.Status().Patch(ctx, gw, patch)
	})
	s.waitMembers(ctx, "gateways published", 10*time.Minute, func(m *meshv1.MemberCluster) bool {
		return m.Status.ActiveGateway != ""
	})
	b.Logf("%d gateways published after %s", n, time.Since(start).Round(time.Millisecond))

	// 3. Every member watches the peer directory.
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	s.startWatchers(wctx)

	hbCtx, stopHeartbeats := context.WithCancel(ctx)
	defer stopHeartbeats()
	go s.heartbeats(hbCtx, members)

	// 4. Steady state: let the hub settle, then measure a window.
	settled := s.waitQuiet(ctx, 2*time.Minute)
	b.Logf("hub settled after %s (quiet: %v)", time.Since(start).Round(time.Millisecond), settled)
	w0 := s.sample(ctx)
	time.Sleep(steady)
	w1 := s.sample(ctx)
	win := w1.at.Sub(w0.at).Seconds()
	hubCores := (w1.hub.CPU - w0.hub.CPU).Seconds() / win
	hubWritesPerSec := float64(w1.hubWrites-w0.hubWrites) / win
	apiWritesPerSec := float64(w1.apiWrites-w0.apiWrites) / win
	bytesPerSec := float64(w1.watchBytes-w0.watchBytes) / win
	b.Logf("steady state: %.0f bytes/s to all watchers", bytesPerSec)

	// 5. Endpoint changes, one at a time, seen by the other n-1 watchers.
	var lat []time.Duration
	c0 := s.sample(ctx)
	for k := range changes {
		i := (k * 7919) % n
		name := memberName(i)
		ch := &change{member: name, endpoint: endpoint(i, k+1), start: time.Now(), seen: make(chan time.Duration, n)}
		s.target.Store(ch)
		gw := &meshv1.TunnelGateway{}
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: members[name].Status.Namespace, Name: "gw1"}, gw); err != nil {
			b.Fatal(err)
		}
		patch := client.MergeFrom(gw.DeepCopy())
		gw.Spec.Endpoints = []string{ch.endpoint}
		ch.start = time.Now()
		if err := s.c.Patch(ctx, gw, patch); err != nil {
			b.Fatal(err)
		}
		got := 0
		timeout := time.After(30 * time.Second)
	collect:
		for got < n-1 {
			select {
			case d := <-ch.seen:
				lat = append(lat, d)
				got++
			case <-timeout:
				b.Logf("change %d: only %d of %d watchers saw it within 30 s", k, got, n-1)
				for ; got < n-1; got++ {
					lat = append(lat, 30*time.Second)
				}
				break collect
			}
		}
		time.Sleep(2 * time.Second) // let follow-up writes of this change land
	}
	// Everything the hub wrote and the watchers received while the changes
	// ran, heartbeats included (they cost neither when the hub ignores them).
	c1 := s.sample(ctx)
	hubWritesPerChange := float64(c1.hubWrites-c0.hubWrites) / float64(changes)
	bytesPerChange := float64(c1.watchBytes-c0.watchBytes) / float64(changes)

	slices.Sort(lat)
	p50, p99 := pct(lat, 50), pct(lat, 99)
	b.ReportMetric(assignAll.Seconds(), "assign-all-s")
	b.ReportMetric(float64(p50.Microseconds())/1000, "change-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "change-p99-ms")
	b.ReportMetric(hubCores, "hub-cores")
	b.ReportMetric(float64(w1.hub.RSS)/(1<<20), "hub-RSS-MiB")
	b.ReportMetric(hubWritesPerSec, "hub-writes/s")
	b.ReportMetric(apiWritesPerSec, "api-writes/s")
	b.ReportMetric(hubWritesPerChange, "hub-writes/change")
	b.ReportMetric(bytesPerChange/1024, "watch-KiB/change")
	if r := s.watchRestarts.Load(); r > 0 {
		b.Logf("watches closed by the apiserver and opened again: %d", r)
	}
	b.Logf("members %d | assign all %.1f s | change seen by %d watchers p50 %s p99 %s | hub %.3f cores, %.0f MiB RSS | writes/s hub %.2f, apiserver %.2f (heartbeats %.1f/s) | per change: %.1f hub writes, %.1f KiB to watchers",
		n, assignAll.Seconds(), n-1, p50.Round(time.Millisecond), p99.Round(time.Millisecond), hubCores, float64(w1.hub.RSS)/(1<<20),
		hubWritesPerSec, apiWritesPerSec, float64(n)/heartbeat.Seconds(), hubWritesPerChange, bytesPerChange/1024)
	stopHeartbeats()
	stopWatch()
}

// waitMembers polls until every member satisfies ok, and returns them by name.
func (s *harness) waitMembers(ctx context.Context, what string, limit time.Duration, ok func(*meshv1.MemberCluster) bool) map[string]*meshv1.MemberCluster {
	deadline := time.Now().Add(limit)
	for {
		var list meshv1.MemberClusterList
		if err := s.c.List(ctx, &list); err != nil {
			s.b.Fatal(err)
		}
		out := map[string]*meshv1.MemberCluster{}
		for i := range list.Items {
			if ok(&list.Items[i]) {
				out[list.Items[i].Name] = &list.Items[i]
			}
		}
		if len(out) == s.n {
			return out
		}
		if time.Now().After(deadline) {
			s.b.Fatalf("%s: %d of %d members after %s", what, len(out), s.n, limit)
		}
		time.Sleep(time.Second)
	}
}

// startWatchers opens one watch on the peer directory (the ClusterSetPeers
// of the set's namespace) per member, as each member's active agent holds
// it, over one transport that counts the bytes the apiserver sends.
func (s *harness) startWatchers(ctx context.Context) {
	cfg := rest.CopyConfig(s.api.Config)
	cfg.QPS, cfg.Burst = 2000, 4000
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &countingTransport{rt: rt, n: &s.watchBytes} })
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		s.b.Fatal(err)
	}
	var ready sync.WaitGroup
	for i := range s.n {
		ready.Add(1)
		go s.watch(ctx, wc, memberName(i), &ready)
	}
	ready.Wait()
}

func (s *harness) watch(ctx context.Context, wc client.WithWatch, self string, ready *sync.WaitGroup) {
	var once sync.Once
	defer once.Do(ready.Done)
	for ctx.Err() == nil {
		w, err := wc.Watch(ctx, &meshv1.ClusterSetPeerList{}, client.InNamespace(meshv1.ClusterSetNamespace(setName)))
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		once.Do(ready.Done)
		var recorded *change
		for ev := range w.ResultChan() {
			if ev.Type != watch.Added && ev.Type != watch.Modified {
				continue
			}
			p, ok := ev.Object.(*meshv1.ClusterSetPeer)
			if !ok {
				continue
			}
			ch := s.target.Load()
			if ch == nil || ch == recorded || p.Name != ch.member || self == ch.member {
				continue
			}
			if activeEndpoint(p) == ch.endpoint {
				recorded = ch
				ch.seen <- time.Since(ch.start)
			}
		}
		w.Stop()
		s.watchRestarts.Add(1)
	}
}

// activeEndpoint is the first endpoint of the member's active gateway in
// the directory.
func activeEndpoint(p *meshv1.ClusterSetPeer) string {
	if g := p.Spec.Gateway; g != nil && len(g.Endpoints) > 0 {
		return g.Endpoints[0]
	}
	return ""
}

// heartbeats refreshes each gateway's status.lastSeen once per heartbeat
// period, spread evenly, as the agents do.
func (s *harness) heartbeats(ctx context.Context, members map[string]*meshv1.MemberCluster) {
	tick := time.NewTicker(heartbeat / time.Duration(s.n))
	defer tick.Stop()
	for i := 0; ; i = (i + 1) % s.n {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m := members[memberName(i)]
		gw := &meshv1.TunnelGateway{ObjectMeta: metav1.ObjectMeta{Namespace: m.Status.Namespace, Name: "gw1"}}
		now := metav1.NewTime(time.Now().Truncate(time.Second))
		body := fmt.Sprintf(`{"status":{"lastSeen":%q}}`, now.UTC().Format(time.RFC3339))
		_ = s.c.Status().Patch(ctx, gw, client.RawPatch("application/merge-patch+json", []byte(body)))
	}
}

type sample struct {
	at                   time.Time
	hub                  framework.ProcUsage
	hubWrites, apiWrites int64
	watchBytes           int64
}

func (s *harness) sample(ctx context.Context) sample {
	u, err := framework.ReadProcUsage(s.hub.PID())
	if err != nil {
		s.b.Fatalf("hub process: %v", err)
	}
	return sample{
		at:         time.Now(),
		hub:        u,
		hubWrites:  s.hubWrites(),
		apiWrites:  s.apiWrites(ctx),
		watchBytes: s.watchBytes.Load(),
	}
}

// waitQuiet waits until the hub has made no write for 5 s.
func (s *harness) waitQuiet(ctx context.Context, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	last, since := s.hubWrites(), time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(time.Second)
		if w := s.hubWrites(); w != last {
			last, since = w, time.Now()
		} else if time.Since(since) >= 5*time.Second {
			return true
		}
	}
	return false
}

// hubWrites sums the hub's own write requests to the apiserver
// (controller-runtime's rest_client_requests_total).
func (s *harness) hubWrites() int64 {
	resp, err := http.Get(s.metrics) //nolint:noctx // loopback, bounded by the test
	if err != nil {
		s.b.Fatalf("hub metrics: %v", err)
	}
	defer resp.Body.Close()
	return sumMetric(resp.Body, "rest_client_requests_total", "method")
}

// apiWrites sums every client's write requests the apiserver served. It
// asks over a connection of its own (HTTP/1.1): the shared HTTP/2
// connection carries a thousand watch streams.
func (s *harness) apiWrites(ctx context.Context) int64 {
	tlsCfg, err := rest.TLSConfigFor(s.api.Config)
	if err != nil {
		s.b.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	defer hc.CloseIdleConnections()
	var last error
	for try := 0; try < 5; try++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(s.api.Config.Host, "/")+"/metrics", nil)
		if err != nil {
			s.b.Fatal(err)
		}
		if s.api.Config.BearerToken != "" {
			req.Header.Set("Authorization", "Bearer "+s.api.Config.BearerToken)
		}
		resp, err := hc.Do(req)
		if err != nil {
			last = err
			time.Sleep(time.Second)
			continue
		}
		n := sumMetric(resp.Body, "apiserver_request_total", "verb")
		resp.Body.Close()
		return n
	}
	s.b.Fatalf("apiserver metrics: %v", last)
	return 0
}

// sumMetric adds up the samples of a Prometheus counter whose label (method
// or verb) is a write.
func sumMetric(r io.Reader, name, label string) int64 {
	var total float64
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		write := false
		for _, v := range []string{"POST", "PUT", "PATCH", "DELETE", "APPLY"} {
			if strings.Contains(line, label+`="`+v+`"`) {
				write = true
			}
		}
		if !write {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			total += v
		}
	}
	return int64(total)
}

type countingTransport struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, n: t.n}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	k, err := b.ReadCloser.Read(p)
	b.n.Add(int64(k))
	return k, err
}

func parallel(n, workers int, f func(i int) error) {
	var wg sync.WaitGroup
	next := atomic.Int64{}
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				for try := 0; ; try++ {
					err := f(i)
					if err == nil {
						break
					}
					if try == 20 {
						errs <- err
						return
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		panic(err)
	}
}

func memberName(i int) string { return fmt.Sprintf("m%04d", i) }

// endpoint is member i's gateway endpoint after k changes: an address of
// the documentation range that nothing sends to.
func endpoint(i, k int) string {
	return fmt.Sprintf("198.18.%d.%d:%d", i/250, i%250+1, 51820+k)
}

func newKey(b *testing.B) string {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		b.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(k)
}

func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
