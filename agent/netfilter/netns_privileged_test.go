//go:build privileged

package netfilter_test

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsPrefix names every namespace these tests create: arch-nft-<pid>-<n>.
const nsPrefix = "arch-nft-"

var nsSeq atomic.Int32

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and nftables tables")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (iproute2/nftables) on PATH", tool)
		}
	}
	removeLeftovers(t)
}

// removeLeftovers deletes namespaces of earlier runs of these tests whose
// process is gone (a killed test cannot run its cleanups).
func removeLeftovers(t *testing.T) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(rest, "-", 2)[0])
		if err == nil && (pid == os.Getpid() || syscall.Kill(pid, 0) == nil) {
			continue // ours or a concurrent run's
		}
		if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
			t.Logf("Remove leftover netns %s: %v: %s", e.Name(), err, out)
		}
	}
}

// newNS creates a namespace, deleted at the end of the test, with lo up.
func newNS(t *testing.T, role string) (string, netns.NsHandle) {
	t.Helper()
	name := fmt.Sprintf("%s%d-%d-%s", nsPrefix, os.Getpid(), nsSeq.Add(1), role)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	// Without DAD, link-local addresses are usable at once: a router only
	// sends neighbor solicitations for forwarded packets from a non-tentative
	// link-local address, so with DAD the first second of IPv6 is lost.
	run(t, "ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return name, h
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func runErr(args ...string) (string, error) {
	cmd := exec.Command(args[0], args[1:]...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return buf.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, buf.String())
	}
	return buf.String(), nil
}

func nftIn(t *testing.T, ns, script string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f in %s: %v: %s\n%s", ns, err, out, script)
	}
}

// inNS runs fn on an OS thread switched into ns. Sockets created there stay
// in ns after the thread switches back.
func inNS(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatalf("enter netns: %v", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// The thread is in the wrong namespace; a locked goroutine that
			// never unlocks makes the runtime discard the thread.
			panic(fmt.Sprintf("return to original netns: %v", err))
		}
	}()
	fn()
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
		run(t, "ip", "-n", ns1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2)
		run(t, "ip", "-n", ns1, "link", "set", if1, "up")
		run(t, "ip", "-n", ns2, "link", "set", if2, "up")
	}
	addr := func(ns, dev, a string) {
		args := []string{"ip", "-n", ns, "addr", "add", a, "dev", dev}
		if strings.Contains(a, ":") {
			args = append(args, "nodad") // no 1-2s wait for duplicate address detection
		}
		run(t, args...)
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

	run(t, "ip", "-n", tp.podA, "route", "add", "default", "via", "10.244.1.1")
	run(t, "ip", "-n", tp.podA, "-6", "route", "add", "default", "via", "fd00:a:0:1::1")
	run(t, "ip", "-n", tp.podB, "route", "add", "default", "via", "10.245.1.1")
	run(t, "ip", "-n", tp.podB, "-6", "route", "add", "default", "via", "fd00:b:0:1::1")
	run(t, "ip", "-n", tp.nodeA, "route", "add", "10.245.0.0/16", "via", "192.168.250.2")
	run(t, "ip", "-n", tp.nodeA, "-6", "route", "add", "fd00:b::/48", "via", "fd00:ffff::2")
	run(t, "ip", "-n", tp.nodeB, "route", "add", "10.244.0.0/16", "via", nodeAIP4)
	run(t, "ip", "-n", tp.nodeB, "-6", "route", "add", "fd00:a::/48", "via", nodeAIP6)
	for _, ns := range []string{tp.nodeA, tp.nodeB} {
		run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
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
	inNS(t, tp.podBH, func() {
		ln, err = net.Listen("tcp", net.JoinHostPort(dst, "0"))
	})
	if err != nil {
		t.Fatalf("listen in pod-b: %v", err)
	}
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
	inNS(t, tp.podAH, func() {
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err = d.Dial("tcp", ln.Addr().String())
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
