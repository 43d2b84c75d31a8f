//go:build e2e

package lab_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/test/lab"
)

// TestTunnelMTUFollowsWAN: the tunnel MTU is derived from the WAN each
// gateway sends on. bravo's WAN is 1400 bytes, so its tunnel gets 1400 - 60
// = 1340 while the others (1500) get 1440, with no MTU set in the
// ClusterSet. alpha and bravo route each other's ranges with the path MTU
// (1328: WireGuard pads to 16 bytes), so TCP between their pods is clamped
// to it both ways and carries bulk data, and ICMP and UDP larger than the
// path learn it from the gateways (the remote one too) instead of
// vanishing on bravo's WAN.
func TestTunnelMTUFollowsWAN(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	// WireGuard's overhead over the WAN's family: the IPv6 lab's
	// tunnels ride IPv6.
	overhead := 60
	if l.IPFamily == lab.IPv6 {
		overhead = 80
	}
	want := map[string]int{}
	for _, m := range l.Members() {
		want[m.Name] = 1500 - overhead
		if m.WANMTU != 0 {
			want[m.Name] = m.WANMTU - overhead
		}
	}
	for _, m := range l.Members() {
		deadline := time.Now().Add(30 * time.Second)
		for {
			var ms meshv1.ClusterSetMembership
			err := m.Cluster.Client.Get(ctx, client.ObjectKey{Name: "membership"}, &ms)
			st := ms.Status.TunnelMTU
			if err == nil && st != nil && int(st.Effective) == want[m.Name] && st.Source == "Underlay" && st.UnderlayInterface == "wan0" {
				t.Logf("%s: tunnel MTU %d (%s)", m.Name, st.Effective, st.Message)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: status.tunnelMTU %+v (err %v), want %d from the underlay wan0", m.Name, st, err, want[m.Name])
			}
			time.Sleep(500 * time.Millisecond)
		}
		// Every candidate's device (the standby's too) has it.
		for _, n := range m.Candidates() {
			if got := linkMTU(t, n.NS, n.Iface); got != want[m.Name] {
				t.Errorf("%s: device %s MTU %d, want %d", n.Name, n.Iface, got, want[m.Name])
			}
		}
	}

	var alpha, bravo *lab.Member
	for _, m := range l.Members() {
		switch {
		case m.WANMTU != 0:
			bravo = m
		case !m.NAT && alpha == nil:
			alpha = m
		}
	}
	if alpha == nil || bravo == nil {
		t.Fatal("the lab needs a member with a smaller WAN and one without")
	}
	// Both ends route the other's ranges with the same path MTU: the
	// smaller tunnel MTU rounded down to a multiple of 16, which
	// WireGuard's padding (up to alpha's larger device MTU) cannot push
	// over bravo's WAN.
	pathMTU := want[bravo.Name] / 16 * 16
	for _, c := range []struct{ m, peer *lab.Member }{{alpha, bravo}, {bravo, alpha}} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			var ms meshv1.ClusterSetMembership
			err := c.m.Cluster.Client.Get(ctx, client.ObjectKey{Name: "membership"}, &ms)
			got := int32(-1)
			for _, p := range ms.Status.Peers {
				if p.Cluster == c.peer.Name {
					got = p.PathMTU
				}
			}
			if err == nil && int(got) == pathMTU {
				t.Logf("%s routes %s's ranges with MTU %d", c.m.Name, c.peer.Name, got)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: status.peers[%s].pathMTU %d (err %v), want %d", c.m.Name, c.peer.Name, got, err, pathMTU)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}

	// Workers' pods, so the path is worker -> gateway -> tunnel -> gateway
	// -> worker.
	src, dst := workerPod(t, alpha), workerPod(t, bravo)

	for _, f := range l.Families() {
		s, d := src.As(f), dst.As(f)
		// IP and ICMP (or UDP) headers of the family.
		hdr := 28
		if f == lab.Family6 {
			hdr = 48
		}
		// Path MTU discovery across the clusters: a ping that does not
		// fit gets "fragmentation needed" ("packet too big") with the
		// path MTU from alpha's gateway (not a silent drop on bravo's
		// WAN), one that fits goes through.
		big := exec.Command("ip", "netns", "exec", s.NS, "ping", "-n", "-c", "3", "-i", "0.3", "-W", "1", "-M", "do", "-s", fmt.Sprint(want[alpha.Name]-hdr), d.IP.String())
		out, _ := big.CombinedOutput()
		if m := regexp.MustCompile(`mtu ?= ?(\d+)`).FindSubmatch(out); m == nil || string(m[1]) != fmt.Sprint(pathMTU) {
			t.Errorf("%s ping of %d bytes with DF from %s to %s: want an ICMP error naming mtu %d, got:\n%s", f, want[alpha.Name], s.Name, d.Name, pathMTU, out)
		}
		fits := exec.Command("ip", "netns", "exec", s.NS, "ping", "-n", "-q", "-c", "1", "-W", "2", "-M", "do", "-s", fmt.Sprint(pathMTU-hdr), d.IP.String())
		if out, err := fits.CombinedOutput(); err != nil {
			t.Errorf("%s ping of %d bytes with DF from %s to %s: %v\n%s", f, pathMTU, s.Name, d.Name, err, out)
		}
		// UDP larger than the path: the sockets learn the path MTU from
		// the gateways' ICMP errors and fragment; the datagram and its
		// echo arrive.
		if err := bigUDPEcho(ctx, s, d, want[alpha.Name]-hdr); err != nil {
			t.Errorf("%s UDP datagram of %d bytes from %s to %s and back: %v", f, want[alpha.Name]-hdr, s.Name, d.Name, err)
		}
		// The first hop that needs it may be the remote gateway: bravo's
		// gateway forwards to the worker over a link it routes with a
		// smaller MTU. Its "fragmentation needed" has to come back
		// through the tunnel, whose far end accepts from bravo only
		// sources in bravo's pod ranges.
		if err := remoteGatewaySaysFragNeeded(t, ctx, bravo, s, d, pathMTU, hdr); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}

	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, r, seen, err := lab.Connect(cctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if seen != src.IP.String() {
		t.Errorf("receiver saw %s, want %s", seen, src.IP)
	}
	mss := maxseg(t, c)
	// The path MTU less 40 bytes of IPv4 and TCP headers (60 of IPv6);
	// the kernel's value is a little lower again with TCP options.
	tcpHdr := 40
	if src.IP.Is6() {
		tcpHdr = 60
	}
	if mss > pathMTU-tcpHdr {
		t.Errorf("client MSS %d, want at most %d (path MTU %d)", mss, pathMTU-tcpHdr, pathMTU)
	}
	payload := make([]byte, 1<<20)
	_, _ = rand.Read(payload)
	// A black hole stalls the transfer: fail in a minute, not after TCP's
	// 15 minutes of retransmissions.
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	start := time.Now()
	go func() { _, _ = c.Write(payload) }()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("echo of 1 MiB through bravo's smaller tunnel: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("echo differs")
	}
	t.Logf("%s -> %s: MSS %d, 1 MiB echoed in %s", src.Name, dst.Name, mss, time.Since(start).Round(time.Millisecond))
}

// remoteGatewaySaysFragNeeded lowers the MTU of the route from m's active
// gateway to dst's node to 1300 for a moment, sends a ping with DF that fits
// the tunnel but not that route from src, and expects "fragmentation
// needed" naming 1300 at src.
func remoteGatewaySaysFragNeeded(t *testing.T, ctx context.Context, m *lab.Member, src, dst *lab.Pod, pathMTU, hdr int) error {
	t.Helper()
	var ms meshv1.ClusterSetMembership
	if err := m.Cluster.Client.Get(ctx, client.ObjectKey{Name: "membership"}, &ms); err != nil {
		return err
	}
	var gw *lab.Node
	for _, n := range m.Candidates() {
		if n.Name == ms.Status.ActiveGateway {
			gw = n
		}
	}
	if gw == nil || dst.Node == gw {
		return fmt.Errorf("%s: active gateway %q is not a candidate, or hosts %s", m.Name, ms.Status.ActiveGateway, dst.Name)
	}
	// The CNI's route to dst's node for dst's family.
	pc, via := dst.Node.PodCIDR, dst.Node.LANIP
	if dst.IP.Is6() {
		pc, via = dst.Node.PodCIDR6, dst.Node.LANIP6
		if !pc.IsValid() {
			pc = dst.Node.PodCIDR // an IPv6-only lab's first podCIDR
		}
	}
	route := []string{pc.String(), "via", via, "dev", "eth0"}
	set := func(extra ...string) error {
		args := append(append([]string{"-n", gw.NS, "route", "replace"}, route...), extra...)
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v %s", args, err, out)
		}
		return nil
	}
	if err := set("mtu", "1300"); err != nil {
		return err
	}
	defer func() {
		if err := set(); err != nil {
			t.Errorf("restore the route of %s: %v", gw.Name, err)
		}
	}()
	ping := exec.Command("ip", "netns", "exec", src.NS, "ping", "-n", "-c", "3", "-i", "0.3", "-W", "1", "-M", "do", "-s", fmt.Sprint(pathMTU-hdr), dst.IP.String())
	out, _ := ping.CombinedOutput()
	if !regexp.MustCompile(`mtu ?= ?1300\b`).Match(out) {
		return fmt.Errorf("ping of %d bytes with DF from %s to %s through %s's route at MTU 1300: want an ICMP error naming mtu 1300 from the remote gateway, got:\n%s", pathMTU, src.Name, dst.Name, gw.Name, out)
	}
	t.Logf("%s's gateway %s answered a %d-byte ping from %s with fragmentation needed (mtu 1300) through the tunnel", m.Name, gw.Name, pathMTU, src.Name)
	return nil
}

// bigUDPEcho sends datagrams of size bytes from src to dst's UDP echo until
// one comes back whole (the first ones teach both ends the path MTU).
func bigUDPEcho(ctx context.Context, src, dst *lab.Pod, size int) error {
	var conn net.Conn
	if err := lab.InNS(src.NS, func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "udp", net.JoinHostPort(dst.IP.String(), fmt.Sprint(lab.EchoPort)))
		return err
	}); err != nil {
		return err
	}
	defer conn.Close()
	msg := make([]byte, size)
	_, _ = rand.Read(msg)
	buf := make([]byte, 2*size)
	var last error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		if _, err := conn.Write(msg); err != nil {
			last = err // EMSGSIZE or an ICMP error reported on the socket
		}
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := conn.Read(buf)
		if err == nil && bytes.Equal(buf[:n], msg) {
			return nil
		}
		if err != nil {
			last = err
		}
	}
	return fmt.Errorf("no whole echo in 15s (last: %v)", last)
}

func workerPod(t *testing.T, m *lab.Member) *lab.Pod {
	t.Helper()
	for _, n := range m.Nodes {
		if !n.Candidate && len(n.Pods) > 0 {
			return n.Pods[0]
		}
	}
	t.Fatalf("%s has no worker pod", m.Name)
	return nil
}

func linkMTU(t *testing.T, ns, dev string) int {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "link", "show", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s link show %s: %v %s", ns, dev, err, out)
	}
	m := regexp.MustCompile(`mtu (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no MTU in %q", out)
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

func maxseg(t *testing.T, c net.Conn) int {
	t.Helper()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("connection is a %T", c)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	mss := -1
	_ = rc.Control(func(fd uintptr) { mss, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG) })
	if mss < 0 {
		t.Fatal(fmt.Errorf("TCP_MAXSEG unreadable"))
	}
	return mss
}
