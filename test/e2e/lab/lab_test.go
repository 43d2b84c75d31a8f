//go:build e2e

package lab_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/test/lab"
)

func pod(t *testing.T, l *lab.Lab, name string) *lab.Pod {
	t.Helper()
	for _, p := range l.Pods() {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("no pod %s", name)
	return nil
}

// waitPairs waits until every cross-member pair among pods works.
func waitPairs(t *testing.T, pods []*lab.Pod, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for _, pr := range lab.CrossPairs(pods) {
		left := timeout - time.Since(start)
		if _, err := lab.WaitTCP(context.Background(), pr[0], pr[1], left); err != nil {
			t.Fatal(err)
		}
	}
	return time.Since(start)
}

// 1. Ranges are distinct and inside the pools, one per family of the lab;
// node podCIDRs inside the range of their family.
func TestRangesDistinctInsidePool(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	pools := map[bool]netip.Prefix{true: netip.MustParsePrefix(lab.Pool), false: netip.MustParsePrefix(lab.Pool6)}
	var mcs meshv1.MemberClusterList
	if err := l.Hub.Client.List(ctx, &mcs); err != nil {
		t.Fatal(err)
	}
	var seen []netip.Prefix
	for _, mc := range mcs.Items {
		if len(mc.Status.PodCIDRs) != len(l.Families()) {
			t.Errorf("member %s has ranges %v, want one per family %v", mc.Name, mc.Status.PodCIDRs, l.Families())
		}
		for _, s := range mc.Status.PodCIDRs {
			p := netip.MustParsePrefix(s)
			pool := pools[p.Addr().Is4()]
			if !pool.Contains(p.Addr()) || p.Bits() < pool.Bits() {
				t.Errorf("member %s: range %s outside pool %s", mc.Name, p, pool)
			}
			for _, q := range seen {
				if p.Overlaps(q) {
					t.Errorf("member %s: range %s overlaps %s", mc.Name, p, q)
				}
			}
			seen = append(seen, p)
		}
	}
	for _, m := range l.Members() {
		ranges := map[bool]netip.Prefix{}
		for _, s := range m.PodCIDRs {
			p := netip.MustParsePrefix(s)
			ranges[p.Addr().Is4()] = p
		}
		var nodes corev1.NodeList
		if err := m.Cluster.Client.List(ctx, &nodes); err != nil {
			t.Fatal(err)
		}
		if len(nodes.Items) < 2 {
			t.Errorf("member %s has %d nodes, want >= 2", m.Name, len(nodes.Items))
		}
		for _, n := range nodes.Items {
			if len(n.Spec.PodCIDRs) != len(l.Families()) {
				t.Errorf("node %s of %s: podCIDRs %v, want one per family", n.Name, m.Name, n.Spec.PodCIDRs)
			}
			for _, s := range n.Spec.PodCIDRs {
				p := netip.MustParsePrefix(s)
				rng, ok := ranges[p.Addr().Is4()]
				if !ok || !rng.Contains(p.Addr()) || p.Bits() < rng.Bits() {
					t.Errorf("node %s of %s: podCIDR %s outside the member's range of its family %v", n.Name, m.Name, p, m.PodCIDRs)
				}
			}
		}
		t.Logf("%s: %v, %d nodes", m.Name, m.PodCIDRs, len(nodes.Items))
	}
}

// 2. Every pod reaches every pod of every other member over TCP and ICMP,
// in every family of the lab, workers (the routed one too) included, and
// the receiver sees the sender's pod IP of that family.
func TestEveryPodReachesEveryPod(t *testing.T) {
	l := need(t)
	pods := l.Pods()
	cells := lab.Matrix(context.Background(), pods, 3*time.Second)
	var b strings.Builder
	failed := lab.PrintMatrix(&b, pods, cells)
	t.Log("\n" + b.String())
	workerPairs, routedPairs := map[lab.Family]int{}, map[lab.Family]int{}
	for _, c := range cells {
		if !c.Src.Node.Candidate && !c.Dst.Node.Candidate {
			workerPairs[c.Family]++
		}
		if c.Src.Node.Routed || c.Dst.Node.Routed {
			routedPairs[c.Family]++
		}
		if !c.OK() {
			t.Errorf("%s %s -> %s: %s (tcp %v, icmp %v)", c.Family, c.Src.Name, c.Dst.Name, c.Status(), c.TCPErr, c.PingErr)
		}
	}
	for _, f := range l.Families() {
		if workerPairs[f] == 0 || routedPairs[f] == 0 {
			t.Errorf("%s: %d worker-to-worker pairs, %d pairs with the routed worker: the matrix did not cover them", f, workerPairs[f], routedPairs[f])
		}
	}
	if failed > 0 {
		t.Fatalf("%d failed cells", failed)
	}
}

// Status and diagnose call the healthy lab healthy.
func TestStatusAndDiagnoseHealthy(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	out, err := l.WaitHealthy(ctx, 45*time.Second)
	t.Log("\n" + out)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range l.Members() {
		out, code, err := l.CLI(ctx, "diagnose", "--context", m.Name, "--stale-after", "30s")
		if err != nil || code != 0 {
			t.Errorf("diagnose %s: exit %d %v\n%s", m.Name, code, err, out)
		}
	}
}

// 8. The NATed member is reachable both ways; the others learned its
// address from its packets (the NAT's public address).
func TestNATedMemberReachableBothWays(t *testing.T) {
	l := need(t)
	var nat *lab.Member
	for _, m := range l.Members() {
		if m.NAT {
			nat = m
		}
	}
	if nat == nil {
		t.Skip("no member behind NAT in this lab")
	}
	for _, p := range nat.Pods() {
		for _, q := range l.Pods() {
			if q.Node.Member == nat {
				continue
			}
			for _, pr := range [][2]*lab.Pod{{p, q}, {q, p}} {
				seen, err := lab.TCP(context.Background(), pr[0], pr[1], 3*time.Second)
				if err != nil || seen != pr[0].IP.String() {
					t.Errorf("%s -> %s: seen %q, %v", pr[0].Name, pr[1].Name, seen, err)
				}
			}
		}
	}
	natAddr := fmt.Sprintf("198.18.0.%d", 16*(nat.Index+1))
	if l.IPFamily == lab.IPv6 {
		natAddr = fmt.Sprintf("[fd18::%d]", 16*(nat.Index+1))
	}
	ts, err := l.Tunnels(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, tu := range ts {
		if tu.Peer == nat.Name && !strings.HasPrefix(tu.Endpoint, natAddr+":") {
			t.Errorf("%s sees %s at %q, want the NAT's address %s", tu.Gateway, nat.Name, tu.Endpoint, natAddr)
		}
	}
}

// 7. An agent restart on a gateway keeps an established TCP connection
// across the tunnel and the public key.
func TestAgentRestartKeepsConnectionAndKey(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	m := l.Member("bravo")
	gw, err := l.ActiveGateway(ctx, m)
	if err != nil || gw == nil {
		t.Fatalf("active gateway of bravo: %v %v", gw, err)
	}
	keyBefore, _, err := lab.DeviceKey(gw)
	if err != nil {
		t.Fatal(err)
	}
	pidBefore, _ := wireguard.UserspaceDevicePID(gw.Iface)
	src, dst := pod(t, l, "alpha-w1-p1"), pod(t, l, "bravo-w1-p1")
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, r, seen, err := lab.Connect(cctx, src, dst)
	cancel()
	if err != nil || seen != src.IP.String() {
		t.Fatalf("connect: %v (seen %s)", err, seen)
	}
	defer conn.Close()

	var sent, echoed atomic.Int64
	errc := make(chan error, 1)
	stop := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				errc <- nil
				return
			case <-time.After(20 * time.Millisecond):
			}
			msg := fmt.Sprintf("%d\n", i)
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Write([]byte(msg)); err != nil {
				errc <- fmt.Errorf("write %d: %w", i, err)
				return
			}
			sent.Add(1)
			line, err := r.ReadString('\n')
			if err != nil || line != msg {
				errc <- fmt.Errorf("echo %d: %q %v", i, line, err)
				return
			}
			echoed.Add(1)
		}
	}()
	time.Sleep(time.Second)
	start := time.Now()
	l.StopAgent(gw)
	time.Sleep(500 * time.Millisecond)
	if err := l.StartAgent(gw); err != nil {
		t.Fatal(err)
	}
	// Long enough for the new agent to win its Lease back and run passes.
	time.Sleep(8 * time.Second)
	close(stop)
	if err := <-errc; err != nil {
		t.Fatalf("connection broke during the agent restart: %v", err)
	}
	keyAfter, _, err := lab.DeviceKey(gw)
	if err != nil {
		t.Fatal(err)
	}
	pidAfter, _ := wireguard.UserspaceDevicePID(gw.Iface)
	if keyAfter != keyBefore {
		t.Errorf("public key changed: %s -> %s", keyBefore, keyAfter)
	}
	if pidAfter != pidBefore {
		t.Errorf("device process changed: %d -> %d", pidBefore, pidAfter)
	}
	if now, _ := l.ActiveGateway(ctx, m); now != gw {
		t.Errorf("active gateway moved to %v", now)
	}
	t.Logf("agent on %s restarted (%.1fs window); %d/%d messages echoed on %s -> %s, key %s kept, device pid %d kept",
		gw.Name, time.Since(start).Seconds(), echoed.Load(), sent.Load(), src.Name, dst.Name, keyAfter[:10]+"…", pidAfter)
}

// 3. The path is the tunnel: with the gateways' agents stopped and their
// tunnel interfaces removed, cross-cluster traffic fails; status and
// diagnose say so; with the agents back it returns.
func TestPathIsTheTunnel(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	var gws []*lab.Node
	for _, m := range l.Members() {
		gw, err := l.ActiveGateway(ctx, m)
		if err != nil || gw == nil {
			t.Fatalf("active gateway of %s: %v %v", m.Name, gw, err)
		}
		gws = append(gws, gw)
	}
	stopped := time.Now()
	for _, gw := range gws {
		l.StopAgent(gw)
		if err := l.RemoveTunnel(gw); err != nil {
			t.Fatalf("cleanup on %s: %v", gw.Name, err)
		}
	}
	restarted := false
	restart := func() {
		if restarted {
			return
		}
		restarted = true
		for _, gw := range gws {
			if err := l.StartAgent(gw); err != nil {
				t.Error(err)
			}
		}
	}
	defer restart()

	pods := l.Pods()
	cells := lab.Matrix(ctx, pods, time.Second)
	for _, c := range cells {
		if c.TCPErr == nil || c.PingErr == nil {
			t.Errorf("%s -> %s still works without tunnels (tcp %v, icmp %v, seen %s)", c.Src.Name, c.Dst.Name, c.TCPErr, c.PingErr, c.Seen)
		}
	}
	t.Logf("without tunnels: %d/%d cross-cluster pairs fail, as they must", countFailed(cells), len(cells))

	// Diagnose names the broken member (its gateway's report goes
	// stale and it has no tunnel); status names it once the hub notices.
	time.Sleep(time.Until(stopped.Add(12 * time.Second)))
	out, code, err := l.CLI(ctx, "diagnose", "--context", "bravo", "--stale-after", "10s")
	if err != nil || code != 1 || !strings.Contains(out, "bravo-gw1") {
		t.Errorf("diagnose of the broken bravo: exit %d %v, want 1 naming bravo-gw1\n%s", code, err, out)
	} else {
		t.Log("diagnose --context bravo (broken):\n" + out)
	}
	out, code, err = l.CLI(ctx, "status", "--hub-context", lab.HubContext, "--stale-after", "10s")
	if err != nil || code != 1 || !strings.Contains(out, "bravo") {
		t.Errorf("status of the broken lab: exit %d %v, want 1 naming bravo\n%s", code, err, out)
	} else {
		t.Log("status (broken):\n" + out)
	}

	restart()
	back := waitPairs(t, pods, 60*time.Second)
	t.Logf("agents back: every pair works again %.1fs after the restart", back.Seconds())
}

func countFailed(cells []lab.Cell) int {
	n := 0
	for _, c := range cells {
		if !c.OK() {
			n++
		}
	}
	return n
}

// 9. Gateway failover: the active gateway's node loses power during a UDP
// stream at 20 ms. A standby's liveness probes notice, it takes the Lease,
// configures the member's shared identity with the peers from the local
// status, and handshakes; workers follow the Lease. The loss window is
// printed (benchmarks measure it; the bound here only catches regressions),
// and an established TCP connection survives.
func TestGatewayPowerLoss(t *testing.T) { powerLoss(t, false) }

// 9b. The same with the hub stopped first: nothing of the takeover needs it.
func TestGatewayPowerLossHubDown(t *testing.T) { powerLoss(t, true) }

func powerLoss(t *testing.T, hubDown bool) {
	l := need(t)
	ctx := context.Background()
	m := l.Member("alpha")
	if len(m.Candidates()) < 2 {
		t.Skip("alpha has one gateway candidate in this lab")
	}
	res, old, now, err := failover(ctx, t, l, m, 20*time.Millisecond, hubDown)
	if err != nil {
		t.Fatal(err)
	}
	what := "power loss"
	if hubDown {
		what = "power loss, hub down"
	}
	t.Logf("FAILOVER (%s): %s -> %s: %s (loss window starts %s after the power went)", what, old.Name, now.Name, res.stream,
		res.stream.WindowStart.Sub(res.off).Round(time.Millisecond))
	if res.stream.LossWindow > 10*time.Second {
		t.Errorf("loss window %s, want well under 10s", res.stream.LossWindow)
	}
	if !res.stream.LastEcho.After(res.off.Add(res.stream.LossWindow)) {
		t.Errorf("no echo after the power loss: %s", res.stream)
	}
	if res.tcpErr != nil {
		t.Errorf("established TCP connection %s -> %s did not survive the failover: %v", res.src.Name, res.dst.Name, res.tcpErr)
	}
	if r := m.Node("r1"); r != nil {
		// The worker behind the router follows the new gateway: its
		// VXLAN device now points there, and its pod reaches bravo's.
		start := time.Now()
		for vxlanRemote(r) != gatewayAddr(l, now) {
			if time.Since(start) > 30*time.Second {
				t.Fatalf("%s: VXLAN remote %q 30s after the failover, want the new gateway %s", r.Name, vxlanRemote(r), gatewayAddr(l, now))
			}
			time.Sleep(100 * time.Millisecond)
		}
		switched := time.Since(start)
		if took, err := lab.WaitTCP(ctx, lab.PodByName(l, r.Name+"-p1"), res.dst, 30*time.Second); err != nil {
			t.Error(err)
		} else {
			t.Logf("routed worker %s: VXLAN to %s %s after the new gateway was seen, its pod reached %s %s after that", r.Name, now.Name, switched.Round(time.Millisecond), res.dst.Name, took.Round(time.Millisecond))
		}
	}
	if hubDown {
		if err := l.StartHub(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.PowerOn(old); err != nil {
		t.Fatal(err)
	}
	waitPairs(t, l.Pods(), 90*time.Second)
	if h, _ := l.ActiveGateway(ctx, m); h != now {
		t.Errorf("after %s came back the gateway is %v, want %s (it must stand by)", old.Name, h, now.Name)
	}
}

type failoverResult struct {
	src, dst *lab.Pod
	off      time.Time
	stream   lab.StreamResult
	tcpErr   error
}

// failover powers off m's active gateway during a stream from m's worker
// pod to bravo's, and returns what the stream saw; the old gateway stays off
// (and the hub stopped when hubDown).
func failover(ctx context.Context, tb testing.TB, l *lab.Lab, m *lab.Member, interval time.Duration, hubDown bool) (failoverResult, *lab.Node, *lab.Node, error) {
	var r failoverResult
	r.src, r.dst = lab.PodByName(l, m.Name+"-w1-p1"), lab.PodByName(l, "bravo-w1-p1")
	for _, pr := range [][2]*lab.Pod{{r.src, r.dst}, {r.dst, r.src}} {
		if _, err := lab.WaitTCP(ctx, pr[0], pr[1], 60*time.Second); err != nil {
			return r, nil, nil, err
		}
	}
	old, err := l.ActiveGateway(ctx, m)
	if err != nil || old == nil {
		return r, nil, nil, fmt.Errorf("active gateway of %s: %v %v", m.Name, old, err)
	}
	conn, err := lab.Dial(ctx, r.src, r.dst)
	if err != nil {
		return r, nil, nil, err
	}
	defer conn.Close()
	if err := conn.Check(5 * time.Second); err != nil {
		return r, nil, nil, err
	}
	if hubDown {
		l.StopHub()
		time.Sleep(2 * time.Second)
	}
	st, err := lab.StartStream(ctx, r.src, r.dst, interval)
	if err != nil {
		return r, nil, nil, err
	}
	time.Sleep(time.Second)
	r.off = time.Now()
	if err := l.PowerOff(old); err != nil {
		st.Stop()
		return r, nil, nil, err
	}
	var now *lab.Node
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if n, _ := l.ActiveGateway(ctx, m); n != nil && n != old {
			now = n
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Let the stream run on well past the takeover.
	time.Sleep(6 * time.Second)
	r.tcpErr = conn.Check(20 * time.Second)
	r.stream = st.Stop()
	if now == nil {
		return r, old, nil, fmt.Errorf("no new gateway of %s 20s after %s lost power (%s)", m.Name, old.Name, r.stream)
	}
	return r, old, now, nil
}

// 9c. A rollout: SIGTERM of the active agent during a stream at 50 ms, the
// agent back a second later. The Lease is not released, the device process
// lives on and keeps answering the standby's probes: nothing is lost and the
// gateway stays.
func TestActiveAgentSIGTERMLosesNothing(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	m := l.Member("alpha")
	if len(m.Candidates()) < 2 {
		t.Skip("alpha has one gateway candidate in this lab")
	}
	src, dst := pod(t, l, "alpha-w1-p1"), pod(t, l, "bravo-w1-p1")
	if _, err := lab.WaitTCP(ctx, src, dst, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	gw, err := l.ActiveGateway(ctx, m)
	if err != nil || gw == nil {
		t.Fatalf("active gateway: %v %v", gw, err)
	}
	lost, err := restartActive(ctx, l, m, gw, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ROLLOUT: SIGTERM of the agent on %s, back after 1s: %s", gw.Name, lost)
	if lost.Lost != 0 {
		t.Errorf("%d datagrams lost across the agent restart, want 0", lost.Lost)
	}
	if now, _ := l.ActiveGateway(ctx, m); now != gw {
		t.Errorf("the gateway moved to %v, want it to stay on %s", now, gw.Name)
	}
}

// restartActive stops gw's agent with SIGTERM during a stream, starts it a
// second later, and returns what the stream saw.
func restartActive(ctx context.Context, l *lab.Lab, m *lab.Member, gw *lab.Node, interval time.Duration) (lab.StreamResult, error) {
	src, dst := lab.PodByName(l, m.Name+"-w1-p1"), lab.PodByName(l, "bravo-w1-p1")
	st, err := lab.StartStream(ctx, src, dst, interval)
	if err != nil {
		return lab.StreamResult{}, err
	}
	time.Sleep(time.Second)
	l.StopAgent(gw)
	time.Sleep(time.Second)
	if err := l.StartAgent(gw); err != nil {
		st.Stop()
		return lab.StreamResult{}, err
	}
	// Longer than the Lease: the new agent must have renewed it.
	time.Sleep(6 * time.Second)
	return st.Stop(), nil
}

// 5. A fourth member joins a running archipelago: time from the
// MemberCluster's creation (the join command) to the first packet.
func TestFourthMemberJoins(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	m, took := joinTimed(t, l, "delta")
	_ = m
	t.Logf("JOIN: delta joined; MemberCluster creation -> first packet both ways with alpha: %.2fs", took.Seconds())
	waitPairs(t, l.Pods(), 60*time.Second)
	if _, err := l.WaitHealthy(ctx, 45*time.Second); err != nil {
		t.Error(err)
	}
}

func joinTimed(t *testing.T, l *lab.Lab, name string) (*lab.Member, time.Duration) {
	t.Helper()
	ctx := context.Background()
	m, err := l.PrepareMember(ctx, lab.MemberSpec{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.JoinMember(ctx, m); err != nil {
		t.Fatal(err)
	}
	a, b := pod(t, l, "alpha-w1-p1"), pod(t, l, name+"-w1-p1")
	if _, err := lab.WaitTCP(ctx, b, a, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.WaitTCP(ctx, a, b, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return m, time.Since(m.JoinStarted)
}

// 6. A member leaves: its peers and routes are gone from the others within
// a bounded time, and its range is released after the quarantine.
func TestMemberLeaves(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	m := l.Member("delta")
	if m == nil {
		m, _ = joinTimed(t, l, "delta")
	}
	if m == nil || len(m.PodCIDRs) == 0 {
		t.Fatalf("delta did not join: %+v", m)
	}
	rng := m.PodCIDRs[0]
	var keys []string
	for _, n := range m.Candidates() {
		if k, _, err := lab.DeviceKey(n); err == nil {
			keys = append(keys, k)
		}
	}
	start := time.Now()
	out, err := l.RemoveMember(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leave took %.1fs:\n%s", time.Since(start).Seconds(), out)
	deadline := start.Add(30 * time.Second)
	for {
		var left []string
		for _, o := range l.Members() {
			for _, n := range o.Nodes {
				for _, d := range lab.AgentRoutes(n) {
					if d == rng {
						left = append(left, "route on "+n.Name)
					}
				}
				if n.Candidate {
					_, peers, _ := lab.DeviceKey(n)
					for _, p := range peers {
						for _, k := range keys {
							if p == k {
								left = append(left, "peer on "+n.Name)
							}
						}
					}
				}
			}
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after leave: %s", strings.Join(left, ", "))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("LEAVE: delta's peers and routes gone from every other node %.1fs after leave started", time.Since(start).Seconds())

	// The range is quarantined, then free again.
	var cs meshv1.ClusterSet
	qdeadline := time.Now().Add(time.Duration(l.QuarantineSeconds)*time.Second + 45*time.Second)
	sawQuarantine := false
	for {
		if err := l.Hub.Client.Get(ctx, types.NamespacedName{Name: lab.ClusterSetName}, &cs); err != nil {
			t.Fatal(err)
		}
		var q, alloc int64
		for _, f := range cs.Status.Families {
			q += f.Quarantined
			alloc += f.Allocated
		}
		var claims meshv1.CIDRClaimList
		_ = l.Hub.Client.List(ctx, &claims)
		held := false
		for _, c := range claims.Items {
			if string(c.Spec.CIDR) == rng {
				held = true
			}
		}
		if q > 0 || held {
			sawQuarantine = true
		}
		// One block per family for every member still in the set.
		if q == 0 && !held && alloc == int64(len(l.Members())*len(l.Families())) {
			break
		}
		if time.Now().After(qdeadline) {
			t.Fatalf("range %s not released: quarantined %d, allocated %d, claim held %v", rng, q, alloc, held)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("RELEASE: %s free again %.1fs after leave (quarantine %ds, observed in quarantine: %v)", rng, time.Since(start).Seconds(), l.QuarantineSeconds, sawQuarantine)
}

// 4. Hub outage: hub apiserver and controller stopped for 60 s; traffic
// keeps flowing the whole time; afterwards a new member can join.
func TestHubOutage(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	pods := l.Pods()
	pairs := lab.CrossPairs(pods)
	var mu sync.Mutex
	probes, failures := 0, []string{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			pr := pairs[i%len(pairs)]
			seen, err := lab.TCP(ctx, pr[0], pr[1], 2*time.Second)
			mu.Lock()
			probes++
			if err != nil || seen != pr[0].IP.String() {
				failures = append(failures, fmt.Sprintf("%s %s->%s: %v %s", time.Now().Format("15:04:05.000"), pr[0].Name, pr[1].Name, err, seen))
			}
			mu.Unlock()
		}
	}()
	start := time.Now()
	l.StopHub()
	time.Sleep(60 * time.Second)
	if err := l.StartHub(ctx); err != nil {
		close(stop)
		wg.Wait()
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	t.Logf("OUTAGE: hub down %.1fs; %d probes across the tunnels, %d failed", time.Since(start).Seconds(), probes, len(failures))
	if len(failures) > 0 {
		t.Errorf("traffic failed during the hub outage:\n%s", strings.Join(failures, "\n"))
	}
	name := l.NextMemberName()
	_, took := joinTimed(t, l, name)
	t.Logf("after the outage, %s joined; first packet %.2fs after join started", name, took.Seconds())
	waitPairs(t, l.Pods(), 60*time.Second)
}
