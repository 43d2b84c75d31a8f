//go:build e2e

package lab_test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/archipelago-mesh/archipelago/test/lab"
)

// sinkCount returns the packets toward dst (a CIDR) that reached the sink
// namespace.
func sinkCount(t *testing.T, ns string) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "sink", "pre").CombinedOutput()
	if err != nil {
		t.Fatalf("read the sink's counter: %v: %s", err, out)
	}
	ms := regexp.MustCompile(`counter packets (\d+)`).FindAllSubmatch(out, -1)
	if ms == nil {
		t.Fatalf("no counter in the sink's chain:\n%s", out)
	}
	total := 0
	for _, m := range ms {
		n, _ := strconv.Atoi(string(m[1]))
		total += n
	}
	return total
}

// sendUDP sends a small datagram every 20 ms for d from
// pod src to dst's address (the echo port; UDP has no listener there, the
// datagrams only need to leave).
func sendUDP(t *testing.T, src *lab.Pod, dst string, d time.Duration) int {
	t.Helper()
	var c net.Conn
	if err := lab.InNS(src.NS, func() (err error) {
		c, err = net.Dial("udp", net.JoinHostPort(dst, fmt.Sprint(lab.EchoPort)))
		return err
	}); err != nil {
		t.Fatalf("udp from %s: %v", src.Name, err)
	}
	defer c.Close()
	sent := 0
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		// Unreachable routes answer with ICMP errors, which the next write
		// reports (ECONNREFUSED, EHOSTUNREACH): expected, keep sending.
		if _, err := c.Write([]byte("fail-closed probe")); err == nil {
			sent++
		}
	}
	return sent
}

// Fail closed. alpha's active gateway gets a default route to a
// sink namespace (what a real node's main table has: a way out that is not
// the tunnel), of every family of the lab. Its tunnel device is deleted
// (the device process dies) while pods on the gateway and on a worker send
// to bravo's ranges: the sink sees none of it, and traffic returns through
// the tunnel when the agent opens the device again.
func TestFailClosedSink(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	alpha, bravo := l.Member("alpha"), l.Member("bravo")
	gw, err := l.ActiveGateway(ctx, alpha)
	if err != nil || gw == nil {
		t.Fatalf("active gateway of alpha: %v %v", gw, err)
	}
	remote := strings.Join(bravo.PodCIDRs, ",")
	dst := pod(t, l, "bravo-w1-p1")
	srcs := []*lab.Pod{gw.Pods[0], pod(t, l, "alpha-w1-p1")}
	for _, s := range srcs {
		if _, err := lab.WaitTCP(ctx, s, dst, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	sink := lab.NSPrefix + "sink"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", sink)
	t.Cleanup(func() {
		_ = exec.Command("ip", "-n", gw.NS, "route", "del", "default", "via", "198.18.9.2").Run()
		_ = exec.Command("ip", "-n", gw.NS, "-6", "route", "del", "default", "via", "fd18:9::2").Run()
		_ = exec.Command("ip", "netns", "del", sink).Run()
	})
	run("ip", "-n", gw.NS, "link", "add", "sink0", "type", "veth", "peer", "name", "eth0", "netns", sink)
	run("ip", "-n", gw.NS, "addr", "add", "198.18.9.1/30", "dev", "sink0")
	run("ip", "-n", gw.NS, "addr", "add", "fd18:9::1/64", "dev", "sink0", "nodad")
	run("ip", "-n", gw.NS, "link", "set", "sink0", "up")
	run("ip", "-n", sink, "addr", "add", "198.18.9.2/30", "dev", "eth0")
	run("ip", "-n", sink, "addr", "add", "fd18:9::2/64", "dev", "eth0", "nodad")
	run("ip", "-n", sink, "link", "set", "eth0", "up")
	run("ip", "-n", sink, "link", "set", "lo", "up")
	var rules []string
	for _, c := range bravo.PodCIDRs {
		if strings.Contains(c, ":") {
			rules = append(rules, "  ip6 daddr "+c+" counter")
		} else {
			rules = append(rules, "  ip daddr "+c+" counter")
		}
	}
	nftScript := fmt.Sprintf("table inet sink {\n chain pre {\n  type filter hook prerouting priority raw;\n%s\n }\n}\n", strings.Join(rules, "\n"))
	cmd := exec.Command("ip", "netns", "exec", sink, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(nftScript)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sink counter: %v: %s", err, out)
	}
	run("ip", "-n", gw.NS, "route", "add", "default", "via", "198.18.9.2", "dev", "sink0")
	run("ip", "-n", gw.NS, "-6", "route", "add", "default", "via", "fd18:9::2", "dev", "sink0")

	// The default routes lead to the sink.
	for _, probe := range []string{"198.51.100.7", "2001:db8::7"} {
		if out, _ := exec.Command("ip", "-n", gw.NS, "route", "get", probe).CombinedOutput(); !strings.Contains(string(out), "sink0") {
			t.Fatalf("the default route does not lead to the sink: %s", out)
		}
	}

	// The tunnel becomes unusable: its device disappears.
	start := time.Now()
	run("ip", "-n", gw.NS, "link", "del", gw.Iface)
	sent := 0
	for _, s := range srcs {
		for _, f := range l.Families() {
			sent += sendUDP(t, s.As(f), dst.Addr(f).String(), 750*time.Millisecond)
		}
	}
	route, _ := exec.Command("ip", "-n", gw.NS, "route", "get", dst.IP.String()).CombinedOutput()
	if n := sinkCount(t, sink); n != 0 {
		t.Errorf("the sink saw %d packets toward %s after the tunnel device went away (route now: %s)", n, remote, strings.TrimSpace(string(route)))
	} else {
		t.Logf("FAIL-CLOSED: %d datagrams to %s sent while %s had no tunnel device; the sink saw none (route: %s)",
			sent, remote, gw.Name, strings.TrimSpace(string(route)))
	}

	// The agent opens the device again on its next full pass: traffic
	// returns through the tunnel, still none of it to the sink.
	for _, s := range srcs {
		if _, err := lab.WaitTCP(ctx, s, dst, 60*time.Second); err != nil {
			t.Fatalf("traffic did not return through the tunnel: %v", err)
		}
	}
	t.Logf("traffic through the tunnel again %.1fs after the device was deleted", time.Since(start).Seconds())
	if n := sinkCount(t, sink); n != 0 {
		t.Errorf("the sink saw %d packets toward %s", n, remote)
	}

	// Leave the lab whole for the tests after this one. A member behind NAT
	// has no endpoint on the new device until it handshakes again, which
	// its own traffic starts (WireGuard rekeys when data gets no answer):
	// its pods speak first.
	for _, m := range l.Members() {
		if !m.NAT {
			continue
		}
		for _, p := range m.Pods() {
			if _, err := lab.WaitTCP(ctx, p, srcs[0], 90*time.Second); err != nil {
				t.Fatalf("%s -> %s after the device came back: %v", p.Name, srcs[0].Name, err)
			}
		}
	}
	waitPairs(t, l.Pods(), 90*time.Second)
}
