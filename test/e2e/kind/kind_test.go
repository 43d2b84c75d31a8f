//go:build e2e

package kind

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestKind runs the whole tier-5 suite on one set of clusters: creating them
// is the expensive part (about a minute), so every check is a subtest of one
// test, in an order where the destructive ones (agent restart, gateway node
// stopped, uninstall) come last.
func TestKind(t *testing.T) {
	if os.Getenv("ARCHIPELAGO_KIND_E2E") != "1" {
		t.Skip("kind e2e: set ARCHIPELAGO_KIND_E2E=1 (make e2e-kind builds the images and does)")
	}
	e := newEnv(t)
	e.setUp()

	// Pods the data-path checks use: one probe per node of each member.
	probes := map[string][]probe{}
	e.phase("probe pods", func() {
		for _, c := range e.members {
			e.apply(c, "apiVersion: v1\nkind: Namespace\nmetadata: {name: "+testNS+"}\n")
			for _, n := range e.nodes(c) {
				p := probe{cluster: c, node: n.Name, gateway: n.Gateway, pod: "probe-" + strings.TrimPrefix(n.Name, prefix)}
				e.apply(c, probePod(p.pod, n.Name, nil))
				probes[c] = append(probes[c], p)
			}
		}
		for _, c := range e.members {
			for i := range probes[c] {
				probes[c][i].ip, probes[c][i].ip6 = e.podIPs(c, probes[c][i].pod)
			}
		}
	})

	// The members are dual-stack (IPv4 primary): both families, every pair.
	t.Run("PodToPodEveryRolePair", func(t *testing.T) {
		t.Run("IPv4", func(t *testing.T) { e.testPodToPod(t, probes, ipv4) })
		t.Run("IPv6", func(t *testing.T) { e.testPodToPod(t, probes, ipv6) })
	})
	t.Run("Verify", func(t *testing.T) { e.testVerify(t) })
	t.Run("Diagnose", func(t *testing.T) { e.testDiagnose(t) })
	t.Run("ServiceEndpointSliceAddresses", func(t *testing.T) { e.testService(t, probes) })
	t.Run("MultiClusterServices", func(t *testing.T) { e.testServices(t, probes) })
	t.Run("DualStackServiceExport", func(t *testing.T) { e.testDualStackService(t, probes) })
	t.Run("AgentRestartKeepsTCP", func(t *testing.T) { e.testAgentRestart(t, probes) })
	t.Run("GatewayNodeStoppedFailover", func(t *testing.T) { e.testFailover(t, probes) })
	t.Run("UninstallLeavesNothing", func(t *testing.T) { e.testUninstall(t) })
}

type probe struct {
	cluster, node, pod string
	ip, ip6            string // pod IPs: IPv4 (primary) and IPv6
	gateway            bool
}

// family is an IP family of the dual-stack members.
type family string

const (
	ipv4 family = "IPv4"
	ipv6 family = "IPv6"
)

// addr is the probe pod's IP of family f.
func (p probe) addr(f family) string {
	if f == ipv6 {
		return p.ip6
	}
	return p.ip
}

func (p probe) role(active string) string {
	switch {
	case p.node == active:
		return "active-gateway"
	case p.gateway:
		return "standby-gateway"
	default:
		return "worker"
	}
}

// setUp creates (or, with E2E_REUSE=1, reuses) the hub and the members and
// installs archipelago; it registers the deletion of everything it made.
func (e *env) setUp() {
	t := e.t
	keep := os.Getenv("E2E_KEEP") == "1"
	reuse := os.Getenv("E2E_REUSE") == "1" && e.clustersExist()
	if !keep {
		t.Cleanup(e.deleteAll)
		// A Ctrl-C or a go test timeout does not run t.Cleanup: delete the
		// clusters from a signal handler too (a crashed run's leftovers are
		// removed by the next run anyway).
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		go func() {
			if _, ok := <-sig; ok {
				e.deleteAll()
				os.Exit(1)
			}
		}()
		t.Cleanup(func() { signal.Stop(sig); close(sig) })
	}
	t.Cleanup(func() { dumpOnFailure(e) })
	if reuse {
		fmt.Println("==> E2E_REUSE=1: reusing the kept clusters")
		return
	}
	e.phase("delete leftovers of earlier runs", e.deleteAll)
	if err := os.MkdirAll(filepath.Dir(e.kubeconfig), 0o755); err != nil {
		t.Fatal(err)
	}

	e.phase("create hub cluster", func() { e.createCluster(e.hub, "", nil) })
	// kind made the Docker network with the hub: with an IPv6 subnet where
	// the engine can (it falls back to IPv4 only where it cannot), and the
	// dual-stack members need one.
	if out := strings.TrimSpace(e.must(time.Minute, "docker", "network", "inspect", "-f", "{{.EnableIPv6}} {{range .IPAM.Config}}{{.Subnet}} {{end}}", dockerNet)); !strings.HasPrefix(out, "true ") {
		t.Fatalf("Docker network %s has no IPv6 (%q): the dual-stack members need it (docs/kind.md, Dual stack)", dockerNet, out)
	} else {
		fmt.Printf("==> Docker network %s: IPv6 on, subnets %s\n", dockerNet, strings.TrimPrefix(out, "true "))
	}
	e.phase("install hub (kind load + kubectl apply -k config/hub)", func() {
		e.must(time.Minute, "kind", "load", "docker-image", hubImage, "--name", e.hub)
		e.must(2*time.Minute, "kubectl", "--context", ctxName(e.hub), "apply", "-k", filepath.Join(e.root, "config/hub"))
		e.must(3*time.Minute, "kubectl", "--context", ctxName(e.hub), "-n", agentNS, "rollout", "status", "deployment/archipelago-hub", "--timeout=3m")
		e.apply(e.hub, fmt.Sprintf(`apiVersion: mesh.archipelago.dev/v1alpha1
kind: ClusterSet
metadata:
  name: %s
spec:
  podCIDRPools: [%q, %q]
  blockSize: {ipv4: 16, ipv6: %d}
`, clusterSet, poolV4, poolV6, blockV6))
	})

	hubIP := strings.TrimSpace(e.must(time.Minute, "docker", "inspect", "-f",
		fmt.Sprintf("{{(index .NetworkSettings.Networks %q).IPAddress}}", dockerNet), e.hub+"-control-plane"))
	hubServer := "https://" + hubIP + ":6443"

	// Members: created with the range the hub assigned (join --kind-config),
	// in parallel. c1: the worker is the only gateway candidate, the control
	// plane a plain worker. c2: both workers are gateway candidates (one
	// active, one standby) and the control plane a plain worker, so that
	// stopping the active gateway's node never stops the member's API server.
	e.phase("create member clusters (join --kind-config, in parallel)", func() {
		var wg sync.WaitGroup
		errs := make([]error, len(e.members))
		for i, c := range e.members {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			cfg, err := runStdout(ctx, "kubectl-archipelago", "join", c, "--clusterset", clusterSet, "--hub-context", ctxName(e.hub), "--kind-config")
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				nodes := []nodeRole{{role: "control-plane"}, {role: "worker", gateway: true}}
				if i == 1 {
					nodes = append(nodes, nodeRole{role: "worker", gateway: true})
				}
				errs[i] = e.tryCreateCluster(c, cfg, nodes)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	})

	e.phase("install agents and join (kind load, apply -k config/crd, join, apply -k config/agent)", func() {
		for _, c := range e.members {
			e.must(2*time.Minute, "kind", "load", "docker-image", agentImage, probeImage, "--name", c)
			e.must(2*time.Minute, "kubectl", "--context", ctxName(c), "apply", "-k", filepath.Join(e.root, "config/crd"))
			if _, err := e.archipelago("join", c, "--clusterset", clusterSet, "--hub-context", ctxName(e.hub),
				"--context", ctxName(c), "--hub-server", hubServer); err != nil {
				t.Fatal(err)
			}
			e.must(2*time.Minute, "kubectl", "--context", ctxName(c), "apply", "-k", filepath.Join(e.root, "config/agent"))
		}
		for _, c := range e.members {
			// Workers' agents and gateway candidates' agents (the only ones
			// that may read the hub Secret) are two DaemonSets.
			for _, ds := range []string{"daemonset/archipelago-agent", "daemonset/archipelago-gateway"} {
				e.must(4*time.Minute, "kubectl", "--context", ctxName(c), "-n", agentNS, "rollout", "status", ds, "--timeout=4m")
			}
		}
	})

	e.phase("tunnels up (membership readyPeerCount 1/1 in both members)", func() { e.waitTunnels(3 * time.Minute) })

	e.phase("standby candidate in c2 published its key", func() {
		if err := eventually(time.Minute, time.Second, func() error {
			out, err := e.kubectl(e.members[1], "get", "nodes", "-l", gatewayKey, "-o", "jsonpath={range .items[*]}{.metadata.annotations.archipelago\\.dev/public-key}{\"\\n\"}{end}")
			if err != nil {
				return err
			}
			if n := len(strings.Fields(out)); n != 2 {
				return fmt.Errorf("%d of 2 candidates published a key", n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
}

func (e *env) clustersExist() bool {
	out, err := run(context.Background(), "", "kind", "get", "clusters")
	if err != nil {
		return false
	}
	have := strings.Fields(out)
	for _, c := range append([]string{e.hub}, e.members...) {
		if !slices.Contains(have, c) {
			return false
		}
	}
	return true
}

// deleteAll deletes every kind cluster with the suite's prefix, the suite's
// Docker network and its kubeconfig. One cluster after the other: kind
// locks the shared kubeconfig while it removes a cluster's entry, and a
// second delete at the same time fails on that lock.
func (e *env) deleteAll() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, _ := run(ctx, "", "kind", "get", "clusters")
	for _, c := range strings.Fields(out) {
		if strings.HasPrefix(c, prefix) {
			if _, err := run(ctx, "", "kind", "delete", "cluster", "--name", c); err != nil {
				fmt.Printf("delete cluster %s: %v\n", c, err)
			}
		}
	}
	_, _ = run(ctx, "", "docker", "network", "rm", dockerNet)
	_ = os.Remove(e.kubeconfig)
}

type nodeRole struct {
	role    string
	gateway bool
}

func (e *env) createCluster(name, cfg string, nodes []nodeRole) {
	e.t.Helper()
	if err := e.tryCreateCluster(name, cfg, nodes); err != nil {
		e.t.Fatal(err)
	}
}

// tryCreateCluster creates a kind cluster from cfg (a kind Cluster config, or
// "" for a default one) with the given nodes. The kubelet patch is for hosts
// with cgroup v1 only; it is harmless elsewhere.
func (e *env) tryCreateCluster(name, cfg string, nodes []nodeRole) error {
	if cfg == "" {
		cfg = "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n"
	}
	var b strings.Builder
	b.WriteString(cfg)
	if !strings.HasSuffix(cfg, "\n") {
		b.WriteString("\n")
	}
	if len(nodes) > 0 {
		b.WriteString("nodes:\n")
		for _, n := range nodes {
			fmt.Fprintf(&b, "  - role: %s\n", n.role)
			if n.gateway {
				fmt.Fprintf(&b, "    labels:\n      %s: \"\"\n", gatewayKey)
			}
		}
	}
	b.WriteString("kubeadmConfigPatches:\n  - |\n    kind: KubeletConfiguration\n    failCgroupV1: false\n")
	path := filepath.Join(filepath.Dir(e.kubeconfig), name+".kind.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return err
	}
	args := []string{"create", "cluster", "--name", name, "--config", path, "--kubeconfig", e.kubeconfig, "--wait", "3m"}
	if e.nodeImage != "" {
		args = append(args, "--image", e.nodeImage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	_, err := run(ctx, "", "kind", args...)
	return err
}

func (e *env) archipelago(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return run(ctx, "", "kubectl-archipelago", args...)
}

func (e *env) waitTunnels(timeout time.Duration) {
	e.t.Helper()
	start, said := time.Now(), time.Now()
	err := eventually(timeout, 2*time.Second, func() (err error) {
		defer func() {
			// A slow start shows what it waits for, not only a timeout.
			if err != nil && time.Since(said) > 20*time.Second {
				said = time.Now()
				fmt.Printf("    [%s] after %.0fs: %v\n", said.Format("15:04:05"), time.Since(start).Seconds(), err)
			}
		}()
		for _, c := range e.members {
			m, err := e.membership(c)
			if err != nil {
				return err
			}
			if m.ReadyPeers != 1 || m.TotalPeers != 1 {
				return fmt.Errorf("%s: readyPeerCount %d/%d, active gateway %q, peers %+v", c, m.ReadyPeers, m.TotalPeers, m.ActiveGateway, m.Peers)
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// testPodToPod: every ordered pair of probe pods in different clusters, over
// IP family f: TCP (the receiver reports the source address it saw) and ICMP
// or ICMPv6 (the receiver's node's conntrack entry shows the sender's pod
// address). For IPv6 it first checks what the family's path rests on: both
// members hold an IPv6 range from the hub, every node has an IPv6 InternalIP
// (the workers' next hop to the gateway) and every probe pod an IPv6 address
// inside its member's range.
func (e *env) testPodToPod(t *testing.T, probes map[string][]probe, f family) {
	active := map[string]string{}
	for _, c := range e.members {
		m, err := e.membership(c)
		if err != nil {
			t.Fatal(err)
		}
		active[c] = m.ActiveGateway
		if f == ipv6 {
			e.checkDualStack(t, c, m, probes[c])
		}
	}
	if t.Failed() {
		return
	}
	var all []probe
	for _, c := range e.members {
		all = append(all, probes[c]...)
	}
	e.checkRoutes(t, probes, f, active)
	ping, ctFamily := "ICMP  ", []string{"-p", "icmp"}
	if f == ipv6 {
		ping, ctFamily = "ICMPv6", []string{"-f", "ipv6", "-p", "icmpv6"}
	}
	for _, from := range all {
		for _, to := range all {
			if from.cluster == to.cluster {
				continue
			}
			src, dst := from.addr(f), to.addr(f)
			name := fmt.Sprintf("%s(%s)->%s(%s)", from.pod, from.role(active[from.cluster]), to.pod, to.role(active[to.cluster]))
			seen, err := e.seen(from.cluster, from.pod, net.JoinHostPort(dst, strconv.Itoa(probePort)), 5*time.Second)
			switch {
			case err != nil:
				t.Errorf("TCP/%s %s: %v", f, name, err)
			case seen != src:
				t.Errorf("TCP/%s %s: receiver saw %s, want the sender's pod IP %s (SNAT)", f, name, seen, src)
			default:
				t.Logf("TCP/%s    %s: ok, %s -> %s, receiver saw %s", f, name, src, dst, seen)
			}
			if _, err := e.podExec(from.cluster, from.pod, 20*time.Second, "ping", "-c", "2", "-W", "3", dst); err != nil {
				t.Errorf("%s %s: %v", ping, name, err)
				continue
			}
			ct, err := e.dockerExec(to.node, append(append([]string{"conntrack", "-L"}, ctFamily...), "-d", dst)...)
			switch {
			case err != nil:
				t.Errorf("%s %s: conntrack on %s: %v", ping, name, to.node, err)
			case !strings.Contains(ct, "src="+src+" "):
				t.Errorf("%s %s: no conntrack entry from %s on %s (SNAT?):\n%s", ping, name, src, to.node, ct)
			default:
				t.Logf("%s %s: ok, receiver's node saw src=%s", ping, name, src)
			}
		}
	}
}

// checkRoutes: on every node of each member, the route to a pod of the other
// member in family f is the agent's (table 2684): into the tunnel on the
// active gateway, via the active gateway's InternalIP of that family
// elsewhere.
func (e *env) checkRoutes(t *testing.T, probes map[string][]probe, f family, active map[string]string) {
	t.Helper()
	ip := "-4"
	if f == ipv6 {
		ip = "-6"
	}
	for i, c := range e.members {
		remote := probes[e.members[1-i]][0]
		nodes := e.nodes(c)
		var via string
		for _, n := range nodes {
			if n.Name == active[c] {
				via = "via " + n.IP + " "
				if f == ipv6 {
					via = "via " + n.IP6 + " "
				}
			}
		}
		for _, n := range nodes {
			out, err := e.dockerExec(n.Name, "ip", ip, "route", "get", remote.addr(f))
			want := via
			if n.Name == active[c] {
				want = "dev " + wgInterface + " "
			}
			switch {
			case err != nil:
				t.Errorf("%s: ip %s route get %s: %v", n.Name, ip, remote.addr(f), err)
			case !strings.Contains(out, want) || !strings.Contains(out, "table "+routeTable+" "):
				t.Errorf("%s: route to %s (%s) is not the agent's %q in table %s: %s", n.Name, remote.addr(f), remote.pod, strings.TrimSpace(want), routeTable, out)
			default:
				t.Logf("%s: route to %s %s", n.Name, remote.addr(f), strings.TrimSpace(want))
			}
		}
	}
}

// checkDualStack: member c holds an IPv4 and an IPv6 range from the hub,
// every node has InternalIPs of both families, and every probe pod an
// address of each family inside the member's range of that family.
func (e *env) checkDualStack(t *testing.T, c string, m membership, probes []probe) {
	t.Helper()
	var v4, v6 netip.Prefix
	for _, s := range m.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		switch {
		case err != nil:
			t.Errorf("%s: membership podCIDR %q: %v", c, s, err)
		case p.Addr().Is4():
			v4 = p
		default:
			v6 = p
		}
	}
	if !v4.IsValid() || !v6.IsValid() {
		t.Errorf("%s: membership podCIDRs %v, want one range per family", c, m.PodCIDRs)
		return
	}
	for _, n := range e.nodes(c) {
		if n.IP == "" || n.IP6 == "" {
			t.Errorf("%s: node %s InternalIPs %q and %q, want one of each family", c, n.Name, n.IP, n.IP6)
		}
		// The CNI masquerades IPv6 leaving the pod range too (as kindnet
		// does): the source check below is against a real masquerade.
		masq := fmt.Sprintf("ip6 saddr %s ip6 daddr != %s counter", v6, v6)
		if out, err := e.dockerExec(n.Name, "nft", "list", "table", "inet", "kindcni"); err != nil || !strings.Contains(out, masq) || !strings.Contains(out, "masquerade") {
			t.Errorf("%s: node %s has no IPv6 masquerade of kindcni (%q ... masquerade): %v\n%s", c, n.Name, masq, err, out)
		}
	}
	for _, p := range probes {
		a4, err4 := netip.ParseAddr(p.ip)
		a6, err6 := netip.ParseAddr(p.ip6)
		if err4 != nil || err6 != nil || !v4.Contains(a4) || !v6.Contains(a6) {
			t.Errorf("%s: pod %s has addresses %q and %q, want one in each of %s and %s", c, p.pod, p.ip, p.ip6, v4, v6)
		}
	}
	t.Logf("%s: ranges %s and %s from the hub; every node has an IPv4 and an IPv6 InternalIP and kindcni's IPv6 masquerade; every probe pod an address in each range", c, v4, v6)
}

func (e *env) testVerify(t *testing.T) {
	start := time.Now()
	out, err := e.archipelago("verify", "--contexts", ctxName(e.members[0])+","+ctxName(e.members[1]),
		"--per-node", "--image", probeImage, "--image-pull-policy", "Never", "--timeout", "2m")
	t.Logf("kubectl archipelago verify (%.1fs):\n%s", time.Since(start).Seconds(), out)
	if err != nil {
		t.Fatal(err)
	}
}

func (e *env) testDiagnose(t *testing.T) {
	for _, c := range e.members {
		out, err := e.archipelago("diagnose", "--context", ctxName(c))
		t.Logf("kubectl archipelago diagnose --context %s:\n%s", ctxName(c), out)
		if err != nil {
			t.Errorf("diagnose %s: %v", c, err)
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); slices.Contains(f, "fail") || slices.Contains(f, "warn") {
				t.Errorf("diagnose %s is not clean: %s", c, line)
			}
		}
	}
}

// testService: a Deployment behind a Service in c2; a pod of c1 reaches every
// address of the Service's EndpointSlices, keeping its source address.
func (e *env) testService(t *testing.T, probes map[string][]probe) {
	c1, c2 := e.members[0], e.members[1]
	e.apply(c2, probeDeployment("echo", 2)+fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: echo, namespace: %[1]s}
spec:
  selector: {app: echo}
  ports: [{port: %[3]d, targetPort: %[3]d}]
`, testNS, probeImage, probePort))
	var addrs []string
	if err := eventually(2*time.Minute, time.Second, func() error {
		out, err := e.kubectl(c2, "-n", testNS, "get", "endpointslices", "-l", "kubernetes.io/service-name=echo",
			"-o", "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{\"\\n\"}{end}")
		if err != nil {
			return err
		}
		addrs = strings.Fields(out)
		if len(addrs) != 2 {
			return fmt.Errorf("echo has %d ready endpoints, want 2", len(addrs))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	from := probes[c1][0]
	for _, a := range addrs {
		seen, err := e.seen(c1, from.pod, fmt.Sprintf("%s:%d", a, probePort), 5*time.Second)
		switch {
		case err != nil:
			t.Errorf("%s -> endpoint %s of service %s/echo in %s: %v", from.pod, a, testNS, c2, err)
		case seen != from.ip:
			t.Errorf("%s -> endpoint %s: receiver saw %s, want %s", from.pod, a, seen, from.ip)
		default:
			t.Logf("%s (%s) -> endpoint %s of service echo in %s: ok, source kept", from.pod, c1, a, c2)
		}
	}
}

// stream is a long-lived TCP connection from a pod of c1 to an echo server in
// a pod of c2 (busybox nc), writing a numbered line every 100 ms.
type stream struct {
	e                   *env
	fromCluster, from   string
	toCluster, to, toIP string
}

func (e *env) startStream(t *testing.T, fromCluster, from, toCluster, to string) *stream {
	s := &stream{e: e, fromCluster: fromCluster, from: from, toCluster: toCluster, to: to}
	s.toIP = e.podIP(toCluster, to)
	if _, err := e.podExec(toCluster, to, 20*time.Second, "sh", "-c",
		fmt.Sprintf("killall nc 2>/dev/null; setsid nc -l -p %d -e cat </dev/null >/dev/null 2>&1 & sleep 1", streamPort)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := e.podExec(fromCluster, from, 20*time.Second, "sh", "-c",
		fmt.Sprintf("killall nc 2>/dev/null; rm -f /tmp/stream.out; setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i; usleep 100000; done | nc %[1]s %[2]d >/tmp/stream.out 2>&1' </dev/null >/dev/null 2>&1 & sleep 1",
			s.toIP, streamPort)); err != nil {
		t.Fatal(err)
	}
	if err := eventually(20*time.Second, 500*time.Millisecond, func() error {
		n, err := s.lines()
		if err == nil && n < 5 {
			err = fmt.Errorf("only %d echoed lines", n)
		}
		return err
	}); err != nil {
		t.Fatalf("stream %s -> %s:%d did not start: %v", from, s.toIP, streamPort, err)
	}
	return s
}

// lines returns how many lines came back, and fails when nc has exited (the
// connection broke).
func (s *stream) lines() (int, error) {
	out, err := s.e.podExec(s.fromCluster, s.from, 20*time.Second, "sh", "-c",
		"pidof nc >/dev/null || echo DEAD; wc -l </tmp/stream.out")
	if err != nil {
		return 0, err
	}
	if strings.Contains(out, "DEAD") {
		return 0, fmt.Errorf("nc exited: the connection broke")
	}
	return strconv.Atoi(strings.TrimSpace(out))
}

// growing checks that the stream still flows (more lines after a while).
func (s *stream) growing(within time.Duration) error {
	before, err := s.lines()
	if err != nil {
		return err
	}
	return eventually(within, 500*time.Millisecond, func() error {
		n, err := s.lines()
		if err != nil {
			return err
		}
		if n <= before+3 {
			return fmt.Errorf("stream stalled at %d lines", n)
		}
		return nil
	})
}

// testAgentRestart: an established TCP connection through both active
// gateways survives (1) a restart of the agent container on the active
// gateway, (2) the deletion of the whole agent pod there (the WireGuard
// device and the liveness responder live in the archipelago-device
// DaemonSet's pod) and (3) `kubectl rollout restart` of the agent DaemonSets;
// the gateway stays on its node throughout (SIGTERM keeps the Lease).
func (e *env) testAgentRestart(t *testing.T, probes map[string][]probe) {
	c1, c2 := e.members[0], e.members[1]
	m2, err := e.membership(c2)
	if err != nil {
		t.Fatal(err)
	}
	from := pick(probes[c1], func(p probe) bool { return !p.gateway })
	to := pick(probes[c2], func(p probe) bool { return p.node == m2.ActiveGateway })
	s := e.startStream(t, c1, from.pod, c2, to.pod)
	for _, c := range e.members {
		m, err := e.membership(c)
		if err != nil {
			t.Fatal(err)
		}
		pod := e.agentPod(t, c, m.ActiveGateway)

		start := time.Now()
		out, err := e.dockerExec(m.ActiveGateway, "sh", "-c",
			fmt.Sprintf("crictl stop $(crictl ps -q --name '^agent$' --pod $(crictl pods -q --name %s))", pod))
		if err != nil {
			t.Fatalf("stop the agent container on %s: %v\n%s", m.ActiveGateway, err, out)
		}
		e.waitAgentReady(t, c, m.ActiveGateway)
		if err := s.growing(15 * time.Second); err != nil {
			t.Errorf("%s: agent container restart on the active gateway %s broke the connection: %v", c, m.ActiveGateway, err)
		} else {
			t.Logf("%s: agent container restarted on %s in %.1fs; the TCP connection kept flowing", c, m.ActiveGateway, time.Since(start).Seconds())
		}

		start = time.Now()
		e.mustKubectl(c, "-n", agentNS, "delete", "pod", pod, "--wait=true")
		e.waitAgentReady(t, c, m.ActiveGateway)
		if err := s.growing(30 * time.Second); err != nil {
			t.Errorf("%s: agent pod deletion on the active gateway %s broke the connection: %v", c, m.ActiveGateway, err)
		} else {
			t.Logf("%s: agent pod recreated on %s in %.1fs; the TCP connection survived", c, m.ActiveGateway, time.Since(start).Seconds())
		}
		start = time.Now()
		// Workers' and candidates' agents (the device DaemonSet is not
		// touched: OnDelete).
		for _, ds := range []string{"daemonset/archipelago-agent", "daemonset/archipelago-gateway"} {
			e.mustKubectl(c, "-n", agentNS, "rollout", "restart", ds)
			e.mustKubectl(c, "-n", agentNS, "rollout", "status", ds, "--timeout=4m")
		}
		if err := s.growing(30 * time.Second); err != nil {
			t.Errorf("%s: kubectl rollout restart of the agents broke the connection: %v", c, err)
		} else {
			t.Logf("%s: agent DaemonSet rolled out in %.1fs; the TCP connection survived", c, time.Since(start).Seconds())
		}
		// SIGTERM keeps the Lease and the device pod answers the standby's
		// probes: the gateway must not have moved.
		if m2, err := e.membership(c); err != nil {
			t.Error(err)
		} else if m2.ActiveGateway != m.ActiveGateway {
			t.Errorf("%s: active gateway moved from %s to %s during agent restarts", c, m.ActiveGateway, m2.ActiveGateway)
		}
		e.waitTunnels(time.Minute)
	}
}

func pick(ps []probe, f func(probe) bool) probe {
	for _, p := range ps {
		if f(p) {
			return p
		}
	}
	return ps[0]
}

func (e *env) agentPod(t *testing.T, cluster, node string) string {
	out := e.mustKubectl(cluster, "-n", agentNS, "get", "pods", "-l", agentLabel,
		"--field-selector", "spec.nodeName="+node, "-o", "jsonpath={.items[0].metadata.name}")
	if strings.TrimSpace(out) == "" {
		t.Fatalf("%s: no agent pod on %s", cluster, node)
	}
	return strings.TrimSpace(out)
}

func (e *env) waitAgentReady(t *testing.T, cluster, node string) {
	if err := eventually(2*time.Minute, time.Second, func() error { return e.podReadyOn(cluster, agentLabel, node) }); err != nil {
		t.Fatal(err)
	}
}

// podReadyOn is nil when one pod with label runs on node, is not being
// deleted, and has every container ready.
func (e *env) podReadyOn(cluster, label, node string) error {
	out, err := e.kubectl(cluster, "-n", agentNS, "get", "pods", "-l", label, "--field-selector", "spec.nodeName="+node,
		"-o", "jsonpath={range .items[*]}{.metadata.deletionTimestamp}/{range .status.containerStatuses[*]}{.ready}{end}{\"\\n\"}{end}")
	if err != nil {
		return err
	}
	deleting, ready, one := strings.Cut(strings.TrimSpace(out), "/")
	if !one || deleting != "" || ready == "" || strings.ReplaceAll(ready, "true", "") != "" {
		return fmt.Errorf("pod %s on %s not ready: %q", label, node, out)
	}
	return nil
}

// testFailover stops the node of c2's active gateway and measures how long
// until a pod of c1 reaches a pod of c2 again; c2's other candidate must then
// be the active gateway. First with `docker stop` (systemd shuts the node
// down; the agent gets SIGTERM and keeps its Lease), then, with that node
// started again as the standby, with `docker kill` (a crash). Either way the
// standby's liveness probes find the node gone and it takes the Lease.
func (e *env) testFailover(t *testing.T, probes map[string][]probe) {
	c2 := e.members[1]
	stopped := e.failover(t, probes, "stop")
	e.must(time.Minute, "docker", "start", stopped)
	if err := eventually(3*time.Minute, 2*time.Second, func() error {
		out, err := e.kubectl(c2, "get", "node", stopped, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err == nil && out != "True" {
			err = fmt.Errorf("node %s Ready=%q", stopped, out)
		}
		return err
	}); err != nil {
		t.Fatalf("node %s did not come back: %v", stopped, err)
	}
	e.waitAgentReady(t, c2, stopped)
	e.waitStandbyReady(t, c2, stopped)
	e.failover(t, probes, "kill")
}

// waitStandbyReady waits until a candidate that came back can take over: its
// device pod (the userspace WireGuard device and the liveness responder) is
// ready, and its agent reports role standby with the device up.
func (e *env) waitStandbyReady(t *testing.T, cluster, node string) {
	start := time.Now()
	if err := eventually(3*time.Minute, time.Second, func() error {
		if err := e.podReadyOn(cluster, deviceLabel, node); err != nil {
			return err
		}
		raw, err := e.kubectl(cluster, "get", "node", node, "-o", `jsonpath={.metadata.annotations.archipelago\.dev/datapath}`)
		if err != nil {
			return err
		}
		var r struct {
			Role        string `json:"role"`
			InterfaceUp bool   `json:"interfaceUp"`
		}
		if err := json.Unmarshal([]byte(raw), &r); err != nil {
			return fmt.Errorf("node %s report %q: %v", node, raw, err)
		}
		if r.Role != "standby" || !r.InterfaceUp {
			return fmt.Errorf("node %s reports role %q, interface up %v", node, r.Role, r.InterfaceUp)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %s is a ready standby %.1fs after its agent pod was ready", cluster, node, time.Since(start).Seconds())
}

// failover stops c2's active gateway node with `docker HOW` and returns its name.
func (e *env) failover(t *testing.T, probes map[string][]probe, how string) string {
	c1, c2 := e.members[0], e.members[1]
	m, err := e.membership(c2)
	if err != nil {
		t.Fatal(err)
	}
	standby := ""
	for _, n := range e.nodes(c2) {
		if n.Gateway && n.Name != m.ActiveGateway {
			standby = n.Name
		}
	}
	from := pick(probes[c1], func(p probe) bool { return !p.gateway })
	to := pick(probes[c2], func(p probe) bool { return !p.gateway })
	if standby == "" || to.gateway {
		t.Fatalf("%s needs a standby candidate and a plain worker (active %s)", c2, m.ActiveGateway)
	}
	addr := fmt.Sprintf("%s:%d", to.ip, probePort)
	if err := eventually(30*time.Second, time.Second, func() error {
		seen, err := e.seen(c1, from.pod, addr, 3*time.Second)
		if err == nil && seen != from.ip {
			err = fmt.Errorf("seen %q", seen)
		}
		return err
	}); err != nil {
		t.Fatalf("before failover: %s -> %s: %v", from.pod, addr, err)
	}

	stopped := m.ActiveGateway
	start := time.Now()
	e.must(time.Minute, "docker", how, stopped)
	stopTook := time.Since(start)
	// One connection attempt every 0.2 s from inside the pod, until one works.
	out, err := e.podExec(c1, from.pod, 3*time.Minute, "sh", "-c",
		fmt.Sprintf("i=0; until archipelago-probe connect %s --timeout 1s 2>/dev/null; do i=$((i+1)); [ $i -ge 150 ] && exit 1; sleep 0.2; done", addr))
	took := time.Since(start)
	if err != nil {
		t.Fatalf("traffic did not come back after 'docker %s %s': %v", how, stopped, err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if got := lines[len(lines)-1]; !strings.HasPrefix(got, from.ip+":") {
		t.Errorf("after failover the receiver saw %q, want %s", got, from.ip)
	}
	// IPv6 follows the same takeover (the workers' next hop of each
	// family, one peer per remote): it must answer too, source kept.
	addr6 := net.JoinHostPort(to.ip6, strconv.Itoa(probePort))
	if err := eventually(15*time.Second, 200*time.Millisecond, func() error {
		seen, err := e.seen(c1, from.pod, addr6, time.Second)
		if err == nil && seen != from.ip6 {
			err = fmt.Errorf("the receiver saw %s, want %s", seen, from.ip6)
		}
		return err
	}); err != nil {
		t.Errorf("after 'docker %s %s', IPv6 %s -> %s: %v", how, stopped, from.pod, addr6, err)
	}
	took6 := time.Since(start)
	msg := fmt.Sprintf("FAILOVER (docker %s): active gateway node %s (docker %s took %.1fs); traffic %s -> %s back after %.1fs (IPv4), IPv6 answering %.1fs after the command",
		how, stopped, how, stopTook.Seconds(), from.pod, to.pod, took.Seconds(), took6.Seconds())
	fmt.Println("==> " + msg)
	t.Log(msg)
	if took > 5*time.Second {
		// Slower than the target: show what the standby did meanwhile.
		for _, l := range []string{agentLabel, deviceLabel} {
			pod, _ := e.kubectl(c2, "-n", agentNS, "get", "pods", "-l", l, "--field-selector", "spec.nodeName="+standby, "-o", "name")
			out, _ := e.kubectl(c2, "-n", agentNS, "logs", strings.TrimSpace(pod), "--tail=60", "--all-containers")
			t.Logf("slow failover: %s logs on %s:\n%s", l, standby, out)
		}
	}
	if err := eventually(time.Minute, time.Second, func() error {
		m2, err := e.membership(c2)
		if err != nil {
			return err
		}
		if m2.ActiveGateway != standby {
			return fmt.Errorf("active gateway is %q, want %s", m2.ActiveGateway, standby)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	return stopped
}

// testUninstall: kubectl delete -k config/agent, then `archipelago-agent
// cleanup` on every node (docs/agent.md, Uninstall: deleting the DaemonSet
// keeps the kernel state on purpose), must leave no interface, route, rule or
// nftables table behind.
func (e *env) testUninstall(t *testing.T) {
	for _, c := range e.members {
		// --wait=false: the agent pod of a node the failover test stopped
		// stays Terminating (and with it the namespace) until that node's
		// pods are evicted, minutes later.
		e.must(2*time.Minute, "kubectl", "--context", ctxName(c), "delete", "-k", filepath.Join(e.root, "config/agent"), "--wait=false", "--ignore-not-found")
		for _, n := range e.nodes(c) {
			if running, _ := run(context.Background(), "", "docker", "inspect", "-f", "{{.State.Running}}", n.Name); strings.TrimSpace(running) != "true" {
				continue // the failover test stopped it
			}
			if err := eventually(2*time.Minute, time.Second, func() error {
				out, err := e.kubectl(c, "-n", agentNS, "get", "pods", "-l", agentLabel, "--field-selector", "spec.nodeName="+n.Name, "-o", "name")
				if err == nil && strings.TrimSpace(out) != "" {
					err = fmt.Errorf("agent pod on %s still there: %s", n.Name, out)
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			name := "cleanup-" + strings.TrimPrefix(n.Name, prefix)
			e.apply(c, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s}
spec:
  nodeName: %s
  hostNetwork: true
  restartPolicy: Never
  tolerations: [{operator: Exists}]
  containers:
    - name: cleanup
      image: %s
      imagePullPolicy: IfNotPresent
      args: [cleanup, --interface=%s, --state-dir=/var/lib/archipelago]
      securityContext: {capabilities: {add: [NET_ADMIN, NET_RAW]}}
      volumeMounts:
        - {name: state, mountPath: /var/lib/archipelago}
        - {name: wireguard-sockets, mountPath: /var/run/wireguard}
  volumes:
    - {name: state, hostPath: {path: /var/lib/archipelago}}
    - {name: wireguard-sockets, hostPath: {path: /var/run/wireguard}}
`, name, testNS, n.Name, agentImage, wgInterface))
			if err := eventually(2*time.Minute, time.Second, func() error {
				out, err := e.kubectl(c, "-n", testNS, "get", "pod", name, "-o", "jsonpath={.status.phase}")
				if err == nil && out != "Succeeded" {
					err = fmt.Errorf("cleanup pod on %s: %s", n.Name, out)
				}
				return err
			}); err != nil {
				logs, _ := e.kubectl(c, "-n", testNS, "logs", name)
				t.Fatalf("%v\n%s", err, logs)
			}
			e.checkNodeClean(t, n.Name)
		}
	}
}

func (e *env) checkNodeClean(t *testing.T, node string) {
	checks := []struct {
		what string
		cmd  []string
		bad  func(string) bool
	}{
		{"interface " + wgInterface, []string{"ip", "-o", "link", "show"}, func(s string) bool { return strings.Contains(s, wgInterface) }},
		{"rules to table " + routeTable, []string{"ip", "rule", "show"}, func(s string) bool { return strings.Contains(s, "lookup "+routeTable) }},
		{"IPv6 rules to table " + routeTable, []string{"ip", "-6", "rule", "show"}, func(s string) bool { return strings.Contains(s, "lookup "+routeTable) }},
		{"routes in table " + routeTable, []string{"sh", "-c", "ip route show table " + routeTable + " 2>/dev/null; ip -6 route show table " + routeTable + " 2>/dev/null; true"}, func(s string) bool { return strings.TrimSpace(s) != "" }},
		{"routes of protocol " + routeProto, []string{"sh", "-c", "ip route show table all proto " + routeProto + "; ip -6 route show table all proto " + routeProto}, func(s string) bool { return strings.TrimSpace(s) != "" }},
		{"nftables table inet archipelago", []string{"nft", "list", "tables"}, func(s string) bool { return strings.Contains(s, "inet archipelago") }},
		{"UAPI socket", []string{"sh", "-c", "ls /var/run/wireguard/ 2>/dev/null; true"}, func(s string) bool { return strings.Contains(s, wgInterface) }},
	}
	for _, c := range checks {
		out, err := e.dockerExec(node, c.cmd...)
		switch {
		case err != nil:
			t.Errorf("%s: %s: %v", node, c.what, err)
		case c.bad(out):
			t.Errorf("%s: %s left behind:\n%s", node, c.what, out)
		}
	}
	t.Logf("%s: no interface, route, rule or nftables table of archipelago left", node)
}
