//go:build privileged

package overlay_test

import (
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/archipelago-mesh/archipelago/agent/desired"
	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	"github.com/archipelago-mesh/archipelago/agent/overlay"
	"github.com/archipelago-mesh/archipelago/agent/routing"
	"github.com/archipelago-mesh/archipelago/internal/netnstest"
)

// namespaces are these tests': arch-ovl-<pid>-<name>. They start no
// processes.
var namespaces = netnstest.Set{Prefix: "arch-ovl-"}

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		namespaces.RemoveLeftovers()
	}
	os.Exit(m.Run())
}

// routed is a worker and a gateway on two subnets with a router between
// them (no shared L2), a pod behind the worker and a "remote pod" behind the
// gateway (standing in for the tunnel):
//
//	wpod 10.10.1.2 — worker 192.168.10.2 — router — 192.168.20.2 gateway — rpod 10.99.1.2
type routed struct {
	worker, router, gw, wpod, rpod string
	workerH, gwH, wpodH, rpodH     netns.NsHandle
	workerIP, gwIP, wpodIP, rpodIP netip.Addr
}

func newRouted(t *testing.T) *routed {
	netnstest.RequireRoot(t, "creates network namespaces and VXLAN devices", "ip", "sysctl")
	r := &routed{workerIP: netip.MustParseAddr("192.168.10.2"), gwIP: netip.MustParseAddr("192.168.20.2"),
		wpodIP: netip.MustParseAddr("10.10.1.2"), rpodIP: netip.MustParseAddr("10.99.1.2")}
	r.worker, r.workerH = namespaces.New(t, "worker")
	r.router, _ = namespaces.New(t, "router")
	r.gw, r.gwH = namespaces.New(t, "gw")
	r.wpod, r.wpodH = namespaces.New(t, "wpod")
	r.rpod, r.rpodH = namespaces.New(t, "rpod")
	ip := func(ns string, args ...string) { netnstest.Run(t, append([]string{"ip", "-n", ns}, args...)...) }
	link := func(a, aif, b, bif string) {
		ip(a, "link", "add", aif, "type", "veth", "peer", "name", bif, "netns", b)
		ip(a, "link", "set", aif, "up")
		ip(b, "link", "set", bif, "up")
	}
	link(r.worker, "eth0", r.router, "eth0")
	link(r.router, "eth1", r.gw, "eth0")
	link(r.worker, "pod0", r.wpod, "eth0")
	link(r.gw, "tun0", r.rpod, "eth0")
	ip(r.worker, "addr", "add", "192.168.10.2/24", "dev", "eth0")
	ip(r.router, "addr", "add", "192.168.10.1/24", "dev", "eth0")
	ip(r.router, "addr", "add", "192.168.20.1/24", "dev", "eth1")
	ip(r.gw, "addr", "add", "192.168.20.2/24", "dev", "eth0")
	ip(r.worker, "addr", "add", "10.10.1.1/24", "dev", "pod0")
	ip(r.wpod, "addr", "add", "10.10.1.2/24", "dev", "eth0")
	ip(r.gw, "addr", "add", "10.99.1.1/24", "dev", "tun0")
	ip(r.rpod, "addr", "add", "10.99.1.2/24", "dev", "eth0")
	ip(r.wpod, "route", "add", "default", "via", "10.10.1.1")
	ip(r.rpod, "route", "add", "default", "via", "10.99.1.1")
	// The underlay between the subnets, and the return path to the
	// worker's pods (what the CNI provides between nodes).
	ip(r.worker, "route", "add", "192.168.20.0/24", "via", "192.168.10.1")
	ip(r.gw, "route", "add", "192.168.10.0/24", "via", "192.168.20.1")
	ip(r.gw, "route", "add", "10.10.0.0/16", "via", "192.168.20.1")
	ip(r.router, "route", "add", "10.10.0.0/16", "via", "192.168.10.2")
	// Worker and gateway as the agent sets them (loose reverse path
	// check); the router routes by destination only, as the network
	// between nodes does for pod addresses when the CNI carries them.
	for _, ns := range []string{r.worker, r.router, r.gw} {
		rpf := "2"
		if ns == r.router {
			rpf = "0"
		}
		netnstest.Run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter="+rpf,
			"net.ipv4.conf.default.rp_filter="+rpf)
	}
	return r
}

func handle(t *testing.T, ns netns.NsHandle) overlay.Links {
	t.Helper()
	h, err := routing.NewAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// dial connects wpod to rpod and returns the source address rpod saw.
func (r *routed) dial(t *testing.T) (netip.Addr, error) {
	t.Helper()
	var ln net.Listener
	netnstest.In(t, r.rpodH, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(r.rpodIP, 0).String())
		return err
	})
	defer ln.Close()
	seen := make(chan netip.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(seen)
			return
		}
		defer c.Close()
		seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	}()
	var derr error
	netnstest.In(t, r.wpodH, func() error {
		c, err := (&net.Dialer{Timeout: 2 * time.Second}).Dial("tcp", ln.Addr().String())
		if err == nil {
			c.Close()
		}
		derr = err
		return nil
	})
	if derr != nil {
		return netip.Addr{}, derr
	}
	select {
	case a := <-seen:
		return a, nil
	case <-time.After(3 * time.Second):
		t.Fatal("no accept")
	}
	return netip.Addr{}, nil
}

func rxPackets(t *testing.T, ns, dev string) int {
	t.Helper()
	out := netnstest.Run(t, "ip", "-n", ns, "-s", "link", "show", dev)
	m := regexp.MustCompile(`RX:[^\n]*\n\s*\d+\s+(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no RX counters in %q", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestWorkerOffLinkThroughVXLAN: a worker on another subnet than its
// gateway cannot route a remote range via the gateway's address (the kernel
// refuses an off-link next hop); over the agent's VXLAN it reaches the
// remote pod with its pod's source address kept, the device's MTU is the
// underlay's less 50, a second Apply writes nothing, a gateway change
// replaces the device, and a nil plan removes it.
func TestWorkerOffLinkThroughVXLAN(t *testing.T) {
	r := newRouted(t)
	wl, gl := handle(t, r.workerH), handle(t, r.gwH)
	wnl, _ := routing.NewAt(r.workerH)
	t.Cleanup(wnl.Close)
	remote := netip.MustParsePrefix("10.99.0.0/16")

	// What the agent's automatic choice reads: the gateway is off-link,
	// the router on-link.
	if on, err := routing.OnLink(wnl, r.gwIP); err != nil || on {
		t.Errorf("OnLink(gateway %s) = %v, %v; want false", r.gwIP, on, err)
	}
	if on, err := routing.OnLink(wnl, netip.MustParseAddr("192.168.10.1")); err != nil || !on {
		t.Errorf("OnLink(router) = %v, %v; want true", on, err)
	}
	direct := desired.RoutePlan{Routes: []desired.Route{{Dst: remote, Via: r.gwIP}}, Unreachable: []netip.Prefix{remote}}
	if _, err := routing.Apply(wnl, direct); err == nil {
		t.Fatal("a route via the off-link gateway was accepted; the test needs the worker off the gateway's link")
	} else {
		t.Logf("Direct route via the off-link gateway refused: %v", err)
	}
	if _, err := r.dial(t); err == nil {
		t.Fatal("wpod reached rpod without a route")
	}

	gwPlan := &desired.OverlayPlan{Interface: desired.DefaultOverlayInterface, VNI: desired.DefaultOverlayVNI, Port: desired.DefaultOverlayPort,
		MTU: 1450, Local: r.gwIP}
	wPlan := &desired.OverlayPlan{Interface: desired.DefaultOverlayInterface, VNI: desired.DefaultOverlayVNI, Port: desired.DefaultOverlayPort,
		MTU: 1450, Local: r.workerIP, Remote: r.gwIP}
	for _, tc := range []struct {
		l Links
		p *desired.OverlayPlan
	}{{gl, gwPlan}, {wl, wPlan}} {
		if changed, err := overlay.Apply(tc.l, tc.p.Interface, tc.p); err != nil || !changed {
			t.Fatalf("Apply %+v: changed %v err %v", tc.p, changed, err)
		}
	}
	viaVX := desired.RoutePlan{Routes: []desired.Route{{Dst: remote, Via: desired.OverlayGatewayIPv4, Dev: desired.DefaultOverlayInterface, OnLink: true}},
		Unreachable: []netip.Prefix{remote}}
	if _, err := routing.Apply(wnl, viaVX); err != nil {
		t.Fatal(err)
	}
	before := rxPackets(t, r.gw, desired.DefaultOverlayInterface)
	src, err := r.dial(t)
	if err != nil {
		dump := ""
		for _, c := range [][]string{{"ip", "-n", r.worker, "-d", "link", "show", desired.DefaultOverlayInterface},
			{"ip", "-n", r.worker, "neigh", "show", "dev", desired.DefaultOverlayInterface}, {"ip", "-n", r.worker, "route", "show", "table", "all"},
			{"ip", "-n", r.worker, "rule"}, {"ip", "-n", r.gw, "-s", "-d", "link", "show", desired.DefaultOverlayInterface},
			{"ip", "-n", r.gw, "-s", "link", "show", "tun0"}, {"ip", "netns", "exec", r.gw, "nstat", "-asz"},
			{"ip", "netns", "exec", r.gw, "sysctl", "net.ipv4.conf.archipelago-vx.rp_filter", "net.ipv4.conf.archipelago-vx.forwarding", "net.ipv4.conf.all.rp_filter"}} {
			out, _ := netnstest.RunErr(c...)
			dump += strings.Join(c, " ") + ":\n" + out
		}
		t.Fatalf("wpod -> rpod over the VXLAN: %v\n%s", err, dump)
	}
	if src != r.wpodIP {
		t.Errorf("rpod saw source %s, want the pod's own %s", src, r.wpodIP)
	}
	if got := rxPackets(t, r.gw, desired.DefaultOverlayInterface) - before; got == 0 {
		t.Error("the gateway's VXLAN device received nothing: the traffic took another path")
	} else {
		t.Logf("Off-link worker's pod reached the remote pod through the VXLAN (%d packets received by the gateway), source %s kept", got, src)
	}
	out := netnstest.Run(t, "ip", "-n", r.worker, "-d", "link", "show", desired.DefaultOverlayInterface)
	for _, want := range []string{"mtu 1450", "vxlan id 2684", "remote 192.168.20.2", "local 192.168.10.2", "dstport 4790"} {
		if !strings.Contains(out, want) {
			t.Errorf("worker device lacks %q:\n%s", want, out)
		}
	}
	for _, tc := range []struct {
		l Links
		p *desired.OverlayPlan
	}{{gl, gwPlan}, {wl, wPlan}} {
		if changed, err := overlay.Apply(tc.l, tc.p.Interface, tc.p); err != nil || changed {
			t.Errorf("second Apply %+v: changed %v err %v, want nothing to do", tc.p, changed, err)
		}
	}
	// A failover to another gateway: the device is replaced.
	moved := *wPlan
	moved.Remote = netip.MustParseAddr("192.168.20.3")
	if changed, err := overlay.Apply(wl, moved.Interface, &moved); err != nil || !changed {
		t.Fatalf("Apply with a new gateway: changed %v err %v", changed, err)
	}
	if out := netnstest.Run(t, "ip", "-n", r.worker, "-d", "link", "show", moved.Interface); !strings.Contains(out, "remote 192.168.20.3") {
		t.Errorf("after the gateway moved:\n%s", out)
	}
	if changed, err := overlay.Apply(wl, moved.Interface, nil); err != nil || !changed {
		t.Fatalf("Apply nil: changed %v err %v", changed, err)
	}
	if _, err := netnstest.RunErr("ip", "-n", r.worker, "link", "show", moved.Interface); err == nil {
		t.Error("the device is still there after a nil plan")
	}
}

// Links is overlay.Links, named for the table above.
type Links = overlay.Links

// TestGatewayVXLANPortOnlyFromNodes: the gateway's VXLAN port accepts only
// the cluster's node addresses (netfilter's overlay-input chain). With the
// worker among the senders its pod reaches the remote pod through the
// VXLAN; with only other addresses listed the same traffic is dropped at
// the gateway's input, before the device decapsulates anything.
func TestGatewayVXLANPortOnlyFromNodes(t *testing.T) {
	r := newRouted(t)
	wl, gl := handle(t, r.workerH), handle(t, r.gwH)
	wnl, _ := routing.NewAt(r.workerH)
	t.Cleanup(wnl.Close)
	remote := netip.MustParsePrefix("10.99.0.0/16")
	for _, tc := range []struct {
		l Links
		p *desired.OverlayPlan
	}{
		{gl, &desired.OverlayPlan{Interface: desired.DefaultOverlayInterface, VNI: desired.DefaultOverlayVNI, Port: desired.DefaultOverlayPort, MTU: 1450, Local: r.gwIP}},
		{wl, &desired.OverlayPlan{Interface: desired.DefaultOverlayInterface, VNI: desired.DefaultOverlayVNI, Port: desired.DefaultOverlayPort, MTU: 1450, Local: r.workerIP, Remote: r.gwIP}},
	} {
		if _, err := overlay.Apply(tc.l, tc.p.Interface, tc.p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := routing.Apply(wnl, desired.RoutePlan{Routes: []desired.Route{{Dst: remote, Via: desired.OverlayGatewayIPv4, Dev: desired.DefaultOverlayInterface, OnLink: true}},
		Unreachable: []netip.Prefix{remote}}); err != nil {
		t.Fatal(err)
	}
	conn, err := netfilter.NewAt(int(r.gwH))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netfilter.Cleanup(conn) })
	filter := func(senders ...string) {
		t.Helper()
		plan := netfilter.FilterPlan{LocalPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.10.0.0/16")}, OverlayPort: desired.DefaultOverlayPort}
		for _, s := range senders {
			plan.OverlaySenders = append(plan.OverlaySenders, netip.MustParsePrefix(s))
		}
		if _, err := netfilter.Apply(conn, plan); err != nil {
			t.Fatal(err)
		}
	}

	filter("192.168.10.2/32", "fd00:10::2/128")
	if src, err := r.dial(t); err != nil || src != r.wpodIP {
		t.Fatalf("with the worker among the senders: source %v, %v; want the pod's %s", src, err, r.wpodIP)
	}

	// Another sender only (the worker's address no node's): dropped.
	filter("192.168.10.99/32")
	before := rxPackets(t, r.gw, desired.DefaultOverlayInterface)
	if _, err := r.dial(t); err == nil {
		t.Fatal("a sender that is no node reached the remote pod through the gateway's VXLAN")
	}
	if got := rxPackets(t, r.gw, desired.DefaultOverlayInterface) - before; got != 0 {
		t.Errorf("the gateway's VXLAN device decapsulated %d packets from a sender that is no node", got)
	}
	out := netnstest.Run(t, "ip", "netns", "exec", r.gw, "nft", "list", "chain", "inet", netfilter.TableName, netfilter.ChainOverlayInput)
	n := 0
	for _, m := range regexp.MustCompile(`counter packets (\d+)`).FindAllStringSubmatch(out, -1) {
		v, _ := strconv.Atoi(m[1])
		n += v
	}
	if n == 0 {
		t.Errorf("overlay-input dropped nothing:\n%s", out)
	} else {
		t.Logf("VXLAN from a sender that is no node: dropped at input (%d packets), the device decapsulated none", n)
	}
}
