//go:build privileged

package netfilter_test

import (
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	"github.com/archipelago-mesh/archipelago/internal/netnstest"
)

// dial opens a TCP connection from namespace from to a listener on addr in
// namespace at; a dropped SYN shows as a timeout.
func dial(t *testing.T, from, at netns.NsHandle, listen, dst string) error {
	t.Helper()
	var ln net.Listener
	netnstest.In(t, at, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(listen, "0"))
		return err
	})
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	var err error
	netnstest.In(t, from, func() error {
		var c net.Conn
		d := net.Dialer{Timeout: time.Second}
		if c, err = d.Dial("tcp", net.JoinHostPort(dst, port)); err == nil {
			c.Close()
		}
		return nil
	})
	return err
}

// TestTunnelGuard plays a hostile remote member: pod-b (a remote pod
// address, as WireGuard would let through) sends into node-a's tunnel
// interface. Before the agent's table everything answers; with it only
// local pod addresses do. Node addresses (also one inside the local pod
// range), another host behind node-a, and a "ClusterIP" that node-a DNATs
// to pod-a are all cut off.
func TestTunnelGuard(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	// A host on node-a's node network that is no pod: 172.16.9.2 on pod-a's
	// namespace, routed by node-a and node-b like any other address.
	netnstest.Run(t, "ip", "-n", tp.podA, "addr", "add", "172.16.9.2/32", "dev", "eth0")
	netnstest.Run(t, "ip", "-n", tp.nodeA, "route", "add", "172.16.9.2/32", "dev", "to-poda")
	netnstest.Run(t, "ip", "-n", tp.nodeB, "route", "add", "172.16.9.0/24", "via", nodeAIP4)
	// A Service: kube-proxy-style DNAT of 10.96.0.10 to pod-a.
	netnstest.Run(t, "ip", "-n", tp.nodeB, "route", "add", "10.96.0.0/12", "via", nodeAIP4)
	netnstest.Nft(t, tp.nodeA, `
table ip kube-proxy-test {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.96.0.10 counter dnat to `+podAIP4+`
	}
}`)

	type target struct {
		name        string
		at          netns.NsHandle
		listen, dst string
	}
	allowed := []target{
		{"pod-a", tp.podAH, podAIP4, podAIP4},
		{"pod-a (IPv6)", tp.podAH, podAIP6, podAIP6},
	}
	blocked := []target{
		{"node-a's tunnel-side address", tp.nodeAH, nodeAIP4, nodeAIP4},
		{"node-a's tunnel-side address (IPv6)", tp.nodeAH, nodeAIP6, nodeAIP6},
		{"node-a's address in the pod range", tp.nodeAH, "10.244.1.1", "10.244.1.1"},
		{"node-a's address in the pod range (IPv6)", tp.nodeAH, "fd00:a:0:1::1", "fd00:a:0:1::1"},
		{"a host behind node-a", tp.podAH, "172.16.9.2", "172.16.9.2"},
		{"a Service address DNATed to pod-a", tp.podAH, podAIP4, "10.96.0.10"},
	}
	for _, c := range append(allowed, blocked...) {
		if err := dial(t, tp.podBH, c.at, c.listen, c.dst); err != nil {
			t.Fatalf("without the agent's table pod-b cannot reach %s (%s): %v; the test would prove nothing", c.name, c.dst, err)
		}
	}

	conn := connIn(t, tp.nodeAH, int(tp.nodeAH))
	if _, err := netfilter.Apply(conn, testPlan()); err != nil {
		t.Fatal(err)
	}
	for _, c := range allowed {
		if err := dial(t, tp.podBH, c.at, c.listen, c.dst); err != nil {
			t.Errorf("remote pod to %s (%s) through the tunnel: %v, want a connection", c.name, c.dst, err)
		}
	}
	for _, c := range blocked {
		if err := dial(t, tp.podBH, c.at, c.listen, c.dst); err == nil {
			t.Errorf("remote pod reached %s (%s) through the tunnel, want it dropped", c.name, c.dst)
		} else {
			t.Logf("Remote pod to %s (%s): %v", c.name, c.dst, err)
		}
	}
	listing := listTable(t, tp.nodeA)
	for _, marker := range []string{"archipelago:tunnel-guard-v4", "archipelago:tunnel-guard-v6", "archipelago:tunnel-input"} {
		if counterOf(t, listing, marker) == 0 {
			t.Errorf("rule %s dropped nothing:\n%s", marker, listing)
		}
	}
	// Local pods still reach the remote side and node-a itself; only what
	// comes in through the tunnel is limited.
	if err := dial(t, tp.podAH, tp.podBH, podBIP4, podBIP4); err != nil {
		t.Errorf("pod-a to pod-b with the guard: %v", err)
	}
	if err := dial(t, tp.podAH, tp.nodeAH, "10.244.1.1", "10.244.1.1"); err != nil {
		t.Errorf("pod-a to its own node with the guard: %v", err)
	}
	if err := netfilter.Cleanup(conn); err != nil {
		t.Fatal(err)
	}
}
