//go:build privileged

package netfilter_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/archipelago-mesh/archipelago/internal/netnstest"
)

// namespaces are these tests': arch-nft-<pid>-<n>-<role>. They start no
// processes.
var (
	namespaces = netnstest.Set{Prefix: "arch-nft-"}
	nsSeq      atomic.Int32
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		namespaces.RemoveLeftovers()
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	netnstest.RequireRoot(t, "creates network namespaces and nftables tables", "ip", "nft")
}

// newNS creates a namespace, deleted at the end of the test, with lo up.
func newNS(t *testing.T, role string) (string, netns.NsHandle) {
	t.Helper()
	name, h := namespaces.New(t, fmt.Sprintf("%d-%s", nsSeq.Add(1), role))
	// Without DAD, link-local addresses are usable at once: a router only
	// sends neighbor solicitations for forwarded packets from a non-tentative
	// link-local address, so with DAD the first second of IPv6 is lost.
	netnstest.Run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return name, h
}

// topology is pod-a —veth— node-a —veth— node-b —veth— pod-b.
// Cluster A pods: 10.244.0.0/16 (pod-a 10.244.1.2) and fd00:a::/48;
// cluster B pods: 10.245.0.0/16 (pod-b 10.245.1.2) and fd00:b::/48;
// the node link is 192.168.250.0/30 and fd00:ffff::/64.
type topology struct {
	podA, nodeA, nodeB, podB string
	podAH, nodeAH, podBH     netns.NsHandle
}

const (
	podAIP4, podBIP4, nodeAIP4 = "10.244.1.2", "10.245.1.2", "192.168.250.1"
	podAIP6, podBIP6, nodeAIP6 = "fd00:a:0:1::2", "fd00:b:0:1::2", "fd00:ffff::1"
	// tunnelIf is node-a's link towards node-b: the "tunnel" for MSS tests.
	tunnelIf = "to-b"
)

func newTopology(t *testing.T) *topology {
	t.Helper()
	tp := &topology{}
	tp.podA, tp.podAH = newNS(t, "poda")
	tp.nodeA, tp.nodeAH = newNS(t, "nodea")
	tp.nodeB, _ = newNS(t, "nodeb")
	tp.podB, tp.podBH = newNS(t, "podb")

	veth := func(ns1, if1, ns2, if2 string) {
		netnstest.Run(t, "ip", "-n", ns1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2)
		netnstest.Run(t, "ip", "-n", ns1, "link", "set", if1, "up")
		netnstest.Run(t, "ip", "-n", ns2, "link", "set", if2, "up")
	}
	addr := func(ns, dev, a string) {
		args := []string{"ip", "-n", ns, "addr", "add", a, "dev", dev}
		if strings.Contains(a, ":") {
			args = append(args, "nodad") // no 1-2s wait for duplicate address detection
		}
		netnstest.Run(t, args...)
	}
	veth(tp.podA, "eth0", tp.nodeA, "to-poda")
	veth(tp.nodeA, tunnelIf, tp.nodeB, "to-a")
	veth(tp.nodeB, "to-podb", tp.podB, "eth0")

	addr(tp.podA, "eth0", podAIP4+"/24")
	addr(tp.podA, "eth0", podAIP6+"/64")
	addr(tp.nodeA, "to-poda", "10.244.1.1/24")
	addr(tp.nodeA, "to-poda", "fd00:a:0:1::1/64")
	addr(tp.nodeA, tunnelIf, nodeAIP4+"/30")
	addr(tp.nodeA, tunnelIf, nodeAIP6+"/64")
	addr(tp.nodeB, "to-a", "192.168.250.2/30")
	addr(tp.nodeB, "to-a", "fd00:ffff::2/64")
	addr(tp.nodeB, "to-podb", "10.245.1.1/24")
	addr(tp.nodeB, "to-podb", "fd00:b:0:1::1/64")
	addr(tp.podB, "eth0", podBIP4+"/24")
	addr(tp.podB, "eth0", podBIP6+"/64")

	// The node link stands in for the WireGuard tunnel, which is a layer 3
	// device without neighbour discovery; the agent's tunnel guard drops
	// everything for the node that comes in through it, neighbour
	// advertisements included. Static neighbours make the veth need none.
	mac := func(ns, dev string) string {
		f := strings.Fields(netnstest.Run(t, "ip", "-n", ns, "-br", "link", "show", "dev", dev))
		if len(f) < 3 {
			t.Fatalf("no MAC address of %s in %s: %q", dev, ns, f)
		}
		return f[2]
	}
	netnstest.Run(t, "ip", "-n", tp.nodeA, "neigh", "replace", "fd00:ffff::2", "lladdr", mac(tp.nodeB, "to-a"), "dev", tunnelIf, "nud", "permanent")
	netnstest.Run(t, "ip", "-n", tp.nodeB, "neigh", "replace", nodeAIP6, "lladdr", mac(tp.nodeA, tunnelIf), "dev", "to-a", "nud", "permanent")

	netnstest.Run(t, "ip", "-n", tp.podA, "route", "add", "default", "via", "10.244.1.1")
	netnstest.Run(t, "ip", "-n", tp.podA, "-6", "route", "add", "default", "via", "fd00:a:0:1::1")
	netnstest.Run(t, "ip", "-n", tp.podB, "route", "add", "default", "via", "10.245.1.1")
	netnstest.Run(t, "ip", "-n", tp.podB, "-6", "route", "add", "default", "via", "fd00:b:0:1::1")
	netnstest.Run(t, "ip", "-n", tp.nodeA, "route", "add", "10.245.0.0/16", "via", "192.168.250.2")
	netnstest.Run(t, "ip", "-n", tp.nodeA, "-6", "route", "add", "fd00:b::/48", "via", "fd00:ffff::2")
	netnstest.Run(t, "ip", "-n", tp.nodeB, "route", "add", "10.244.0.0/16", "via", nodeAIP4)
	netnstest.Run(t, "ip", "-n", tp.nodeB, "-6", "route", "add", "fd00:a::/48", "via", nodeAIP6)
	for _, ns := range []string{tp.nodeA, tp.nodeB} {
		netnstest.Run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	}
	return tp
}

// seen is what the receiver saw of one TCP connection.
type seen struct {
	remote netip.Addr
	mss    int // TCP_MAXSEG of the accepted socket
}

// connect opens a TCP connection from pod-a to pod-b's address dst and
// returns what each side saw: the listener's RemoteAddr and MSS, and the
// client's MSS.
func (tp *topology) connect(t *testing.T, dst string) (server seen, clientMSS int, err error) {
	t.Helper()
	var ln net.Listener
	netnstest.In(t, tp.podBH, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(dst, "0"))
		return err
	})
	defer ln.Close()
	got := make(chan seen, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		defer c.Close()
		ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		got <- seen{remote: ap.Addr().Unmap(), mss: maxseg(c)}
	}()

	var c net.Conn
	netnstest.In(t, tp.podAH, func() error {
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err = d.Dial("tcp", ln.Addr().String())
		return nil // a failed dial is the caller's to judge
	})
	if err != nil {
		return seen{}, 0, err
	}
	defer c.Close()
	clientMSS = maxseg(c)
	select {
	case s, ok := <-got:
		if !ok {
			t.Fatal("accept failed")
		}
		return s, clientMSS, nil
	case <-time.After(3 * time.Second):
		t.Fatal("no connection accepted within 3s")
	}
	return
}

func maxseg(c net.Conn) int {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1
	}
	mss := -1
	_ = rc.Control(func(fd uintptr) {
		mss, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG)
	})
	return mss
}

// counterOf returns the packets counter of the first rule in an nft listing
// whose line contains marker.
func counterOf(t *testing.T, listing, marker string) int {
	t.Helper()
	for _, line := range strings.Split(listing, "\n") {
		if !strings.Contains(line, marker) {
			continue
		}
		f := strings.Fields(line)
		for i := range f {
			if (f[i] == "packets" || f[i] == "counter") && i+1 < len(f) {
				if n, err := strconv.Atoi(f[i+1]); err == nil {
					return n
				}
			}
		}
	}
	t.Fatalf("no counter on a line with %q in:\n%s", marker, listing)
	return 0
}
