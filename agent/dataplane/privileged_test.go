//go:build privileged

package dataplane_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/go-logr/logr/testr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/dataplane"
	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	"github.com/archipelago-mesh/archipelago/agent/plan"
	"github.com/archipelago-mesh/archipelago/agent/routing"
	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	archnetns "github.com/archipelago-mesh/archipelago/internal/netns"
	"github.com/archipelago-mesh/archipelago/internal/netnstest"
)

const (
	envDevice = "ARCHIPELAGO_DPTEST_DEVICE"
	nsPrefix  = "arch-dpt-"
	ifPrefix  = "adp"
	wgPort    = 51820
)

// namespaces are this package's: arch-dpt-<pid>-..., and the device
// processes the tests start in them.
var namespaces = netnstest.Set{Prefix: nsPrefix, Ours: netnstest.EnvMarked(envDevice + "=" + ifPrefix)}

func TestMain(m *testing.M) {
	if name := os.Getenv(envDevice); name != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		log := funcr.New(func(p, a string) { fmt.Fprintln(os.Stderr, p, a) }, funcr.Options{})
		if err := wireguard.RunUserspaceDevice(ctx, name, wireguard.DefaultMTU, log); err != nil {
			log.Error(err, "Device process failed")
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Geteuid() == 0 {
		namespaces.RemoveLeftovers()
		wireguard.RemoveStaleSockets(ifPrefix)
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	netnstest.RequireRoot(t, "creates network namespaces, TUN devices and nftables tables", "ip", "nft")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
}

// nsSysctl is routing.ProcSys inside a network namespace.
type nsSysctl struct{ ns netns.NsHandle }

func (s nsSysctl) Get(name string) (v string, err error) {
	err2 := archnetns.Do(s.ns, func() error { v, err = routing.ProcSys{}.Get(name); return nil })
	if err2 != nil {
		return "", err2
	}
	return v, err
}

func (s nsSysctl) Set(name, value string) error {
	var err error
	if err2 := archnetns.Do(s.ns, func() error { err = routing.ProcSys{}.Set(name, value); return nil }); err2 != nil {
		return err2
	}
	return err
}

// node is one "node" of a member cluster: a network namespace on the lab
// LAN, with a "pod" namespace behind it.
type node struct {
	t        *testing.T
	name     string // netns
	nsh      netns.NsHandle
	lan      netip.Addr
	pod      netip.Addr
	podNS    netns.NsHandle
	podNet   netip.Prefix
	iface    string
	stateDir string
	logPath  string
	dp       *dataplane.Dataplane
	links    *wireguard.NetlinkLinks
	closeFn  func()
	key      wgtypes.Key
}

type lab struct {
	t   *testing.T
	lan string
}

func newLab(t *testing.T) *lab {
	requireRoot(t)
	l := &lab{t: t}
	l.lan, _ = namespaces.New(t, "lan")
	netnstest.Run(t, "ip", "-n", l.lan, "link", "add", "br0", "type", "bridge")
	netnstest.Run(t, "ip", "-n", l.lan, "link", "set", "br0", "up")
	return l
}

// addNode makes node namespace arch-dpt-<pid>-<suffix> with LAN address lan
// and a pod namespace with address pod (the node side gets .1 of the pod's
// /24).
func (l *lab) addNode(suffix string, lan, pod string) *node {
	t := l.t
	n := &node{t: t, lan: netip.MustParseAddr(lan), pod: netip.MustParseAddr(pod),
		iface: fmt.Sprintf("%s%d%s", ifPrefix, os.Getpid()%100000, suffix), stateDir: filepath.Join(t.TempDir(), "state")}
	n.logPath = filepath.Join(t.TempDir(), "device.log")
	n.name, n.nsh = namespaces.New(t, suffix)
	var podNS string
	podNS, n.podNS = namespaces.New(t, suffix+"-pod")
	veth := "v" + suffix
	netnstest.Run(t, "ip", "-n", l.lan, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", n.name)
	netnstest.Run(t, "ip", "-n", l.lan, "link", "set", veth, "master", "br0", "up")
	netnstest.Run(t, "ip", "-n", n.name, "addr", "add", lan+"/24", "dev", "eth0")
	netnstest.Run(t, "ip", "-n", n.name, "link", "set", "eth0", "up")
	n.podNet = netip.PrefixFrom(n.pod, 24).Masked()
	gw := n.podNet.Addr().Next()
	netnstest.Run(t, "ip", "-n", n.name, "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", podNS)
	netnstest.Run(t, "ip", "-n", n.name, "addr", "add", gw.String()+"/24", "dev", "pod0")
	netnstest.Run(t, "ip", "-n", n.name, "link", "set", "pod0", "up")
	netnstest.Run(t, "ip", "-n", podNS, "addr", "add", pod+"/24", "dev", "eth0")
	netnstest.Run(t, "ip", "-n", podNS, "link", "set", "eth0", "up")
	netnstest.Run(t, "ip", "-n", podNS, "route", "add", "default", "via", gw.String())
	var err error
	if n.links, err = wireguard.NewNetlinkLinks(n.nsh); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.links.Close)
	if n.key, err = wireguard.LoadOrCreateKey(n.stateDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Normally Cleanup ran already; this catches failures.
		_ = wireguard.Teardown(context.Background(), n.iface, n.links, logr.Discard())
		if t.Failed() {
			b, _ := os.ReadFile(n.logPath)
			t.Logf("device %s log:\n%s", n.iface, b)
		}
	})
	n.open()
	return n
}

// cniMasquerade installs what kindnet does: masquerade everything from the
// cluster's pod range that leaves it.
func (n *node) cniMasquerade(cluster string) {
	script := fmt.Sprintf("add table ip cni\nadd chain ip cni post { type nat hook postrouting priority srcnat; }\nadd rule ip cni post ip saddr %s ip daddr != %s counter masquerade\n", cluster, cluster)
	netnstest.Nft(n.t, n.name, script)
}

// open is what an agent does at start: a new Dataplane on the node.
func (n *node) open() {
	t := n.t
	nl, err := routing.NewAt(n.nsh)
	if err != nil {
		t.Fatal(err)
	}
	nft, err := netfilter.NewAt(int(n.nsh))
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	driver := &dataplane.WireGuardDriver{
		Links: n.links, Log: testr.New(t),
		Userspace: func(name string, mtu int) wireguard.UserspaceProcess {
			return wireguard.UserspaceProcess{Path: "ip", Args: []string{"netns", "exec", n.name, exe, "-test.run=^$"},
				Env: []string{envDevice + "=" + name}, LogPath: n.logPath}
		},
	}
	n.dp = dataplane.New(dataplane.Options{Tunnels: driver, Netlink: nl, Links: nl, Filter: nft, Sysctl: nsSysctl{n.nsh},
		TunnelInterface: n.iface, Log: testr.New(t).WithName(n.name)})
	n.closeFn = func() {
		_ = n.dp.Close()
		nl.Close()
		_ = nft.CloseLasting()
	}
	t.Cleanup(func() {
		if n.closeFn != nil {
			n.closeFn()
		}
	})
}

func (n *node) restart() {
	n.closeFn()
	n.closeFn = nil
	n.open()
	k, err := wireguard.LoadOrCreateKey(n.stateDir)
	if err != nil {
		n.t.Fatal(err)
	}
	if k != n.key {
		n.t.Fatal("key changed across restart")
	}
}

func (n *node) apply(p plan.NodePlan) dataplane.Result {
	n.t.Helper()
	res, err := n.dp.Apply(context.Background(), p)
	if err != nil {
		n.t.Fatalf("apply on %s: %v", n.name, err)
	}
	return res
}

func (n *node) peer(k wgtypes.Key) wgtypes.Peer {
	n.t.Helper()
	st, err := n.dp.TunnelState()
	if err != nil || st == nil {
		n.t.Fatalf("tunnel state of %s: %v", n.name, err)
	}
	for _, p := range st.Peers {
		if p.PublicKey == k {
			return p
		}
	}
	n.t.Fatalf("%s has no peer %s", n.name, k)
	return wgtypes.Peer{}
}

type cluster struct {
	name  string
	cidrs []netip.Prefix
	gw    *node
}

func (c cluster) asPeer() plan.Peer {
	return plan.Peer{Cluster: c.name, PodCIDRs: c.cidrs, Gateway: c.gw.name, PublicKey: c.gw.key.PublicKey(),
		Endpoint: netip.AddrPortFrom(c.gw.lan, wgPort)}
}

func gatewayPlan(c cluster, others ...cluster) plan.NodePlan {
	in := plan.Inputs{Node: c.gw.name, Role: plan.RoleGateway, LocalPodCIDRs: c.cidrs, PrivateKey: c.gw.key,
		Tunnel: plan.Tunnel{Interface: c.gw.iface, Port: wgPort, MTU: 1420, Keepalive: 25 * time.Second}}
	for _, o := range others {
		in.Peers = append(in.Peers, o.asPeer())
	}
	return plan.Compute(in)
}

func workerPlan(w *node, c cluster, others ...cluster) plan.NodePlan {
	in := plan.Inputs{Node: w.name, Role: plan.RoleWorker, LocalPodCIDRs: c.cidrs, ActiveGatewayIP: c.gw.lan,
		Tunnel: plan.Tunnel{Interface: w.iface}}
	for _, o := range others {
		in.Peers = append(in.Peers, o.asPeer())
	}
	return plan.Compute(in)
}

// dial opens a TCP connection from pod namespace from to addr:port and
// returns both ends and the source address the server saw.
func dial(t *testing.T, from *node, to *node, port int) (c, s net.Conn) {
	t.Helper()
	var ln net.Listener
	if err := archnetns.Do(to.podNS, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(to.pod, uint16(port)).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(acc)
			return
		}
		acc <- conn
	}()
	if err := archnetns.Do(from.podNS, func() (err error) {
		d := net.Dialer{Timeout: 15 * time.Second}
		c, err = d.Dial("tcp", netip.AddrPortFrom(to.pod, uint16(port)).String())
		return err
	}); err != nil {
		t.Fatalf("dial %s -> %s: %v", from.pod, to.pod, err)
	}
	t.Cleanup(func() { c.Close() })
	select {
	case s = <-acc:
	case <-time.After(10 * time.Second):
		t.Fatal("no accept")
	}
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { s.Close() })
	src := s.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	if src != from.pod {
		t.Fatalf("receiver %s sees source %s, want the sender's pod IP %s (SNAT happened)", to.pod, src, from.pod)
	}
	return c, s
}

func exchange(t *testing.T, a, b net.Conn, msg string) {
	t.Helper()
	_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := a.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != msg {
		t.Fatalf("read %q: got %q, %v", msg, buf, err)
	}
}

// wantUnreachable checks that the node's lookup of each address ends in
// the agent's unreachable routes (and that the agent's rule is there): a
// route via the default gateway would be a leak outside the tunnel.
func wantUnreachable(t *testing.T, n *node, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		out, err := netnstest.RunErr("ip", "-n", n.name, "route", "get", a)
		if err == nil || strings.Contains(out, "via") {
			t.Errorf("%s: route get %s = %q (%v), want unreachable", n.name, a, strings.TrimSpace(out), err)
		}
	}
	if out := netnstest.Run(t, "ip", "-n", n.name, "rule", "show"); !strings.Contains(out, "lookup "+strconv.Itoa(routing.DefaultTable)) {
		t.Errorf("%s: the agent's rule is gone:\n%s", n.name, out)
	}
}

func ownRoutes(t *testing.T, n *node) string {
	return netnstest.Run(t, "ip", "-n", n.name, "route", "show", "table", strconv.Itoa(routing.DefaultTable))
}

// TestPrivilegedDataPath builds three member clusters on one LAN: A (a
// gateway and a worker), B and C (a gateway each), every node with a pod
// behind it and a kindnet-style masquerade rule, and drives the real
// applier with plans from plan.Compute.
func TestPrivilegedDataPath(t *testing.T) {
	l := newLab(t)
	gwA := l.addNode("a", "192.0.2.1", "10.10.1.2")
	wA := l.addNode("w", "192.0.2.11", "10.10.2.2")
	gwB := l.addNode("b", "192.0.2.2", "10.20.1.2")
	gwC := l.addNode("c", "192.0.2.3", "10.30.1.2")
	a := cluster{"a", []netip.Prefix{netip.MustParsePrefix("10.10.0.0/16")}, gwA}
	b := cluster{"b", []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")}, gwB}
	c := cluster{"c", []netip.Prefix{netip.MustParsePrefix("10.30.0.0/16")}, gwC}
	// The CNI's own routes between A's nodes.
	netnstest.Run(t, "ip", "-n", gwA.name, "route", "add", "10.10.2.0/24", "via", wA.lan.String())
	netnstest.Run(t, "ip", "-n", wA.name, "route", "add", "10.10.1.0/24", "via", gwA.lan.String())
	for _, n := range []*node{gwA, wA} {
		n.cniMasquerade("10.10.0.0/16")
	}
	gwB.cniMasquerade("10.20.0.0/16")
	gwC.cniMasquerade("10.30.0.0/16")

	pA, pB, pC := gatewayPlan(a, b, c), gatewayPlan(b, a, c), gatewayPlan(c, a, b)
	pW := workerPlan(wA, a, b, c)
	gwA.apply(pA)
	gwB.apply(pB)
	gwC.apply(pC)
	wA.apply(pW)

	ab, ba := dial(t, gwA, gwB, 7001)
	exchange(t, ab, ba, "pod a -> pod b")
	exchange(t, ba, ab, "pod b -> pod a")
	wb, bw := dial(t, wA, gwB, 7002)
	exchange(t, wb, bw, "pod behind worker -> pod b, through a's gateway")
	ac, ca := dial(t, gwA, gwC, 7003)
	exchange(t, ac, ca, "pod a -> pod c")

	t.Run("no-change pass writes nothing", func(t *testing.T) {
		for _, x := range []struct {
			n *node
			p plan.NodePlan
		}{{gwA, pA}, {wA, pW}, {gwB, pB}} {
			if res := x.n.apply(x.p); !res.Empty() {
				t.Errorf("%s: repeated plan changed %+v", x.n.name, res)
			}
		}
	})

	t.Run("agent restart keeps device, key and connection", func(t *testing.T) {
		pid, err := wireguard.UserspaceDevicePID(gwA.iface)
		if err != nil {
			t.Fatal(err)
		}
		hs := gwA.peer(gwB.key.PublicKey()).LastHandshakeTime
		gwA.restart()
		exchange(t, ab, ba, "while the agent restarts")
		res := gwA.apply(pA)
		if !res.TunnelOpened || !res.Tunnel.Empty() || !res.Routes.Empty() || res.FilterChanged {
			t.Errorf("restart pass changed something: %+v", res)
		}
		if got, _ := wireguard.UserspaceDevicePID(gwA.iface); got != pid {
			t.Errorf("device process %d replaced by %d", pid, got)
		}
		if st, err := gwA.dp.TunnelState(); err != nil || st.PublicKey != gwA.key.PublicKey() {
			t.Errorf("device key changed (%v)", err)
		}
		if got := gwA.peer(gwB.key.PublicKey()).LastHandshakeTime; !got.Equal(hs) {
			t.Errorf("handshake redone: %s -> %s", hs, got)
		}
		exchange(t, ab, ba, "after the restart")
		exchange(t, ba, ab, "and back")
	})

	t.Run("resync repairs a route deleted by hand", func(t *testing.T) {
		netnstest.Run(t, "ip", "-n", gwA.name, "route", "del", "10.20.0.0/16", "table", strconv.Itoa(routing.DefaultTable))
		netnstest.Run(t, "ip", "-n", wA.name, "route", "del", "10.30.0.0/16", "table", strconv.Itoa(routing.DefaultTable))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go gwA.dp.RunResync(ctx, 200*time.Millisecond)
		go wA.dp.RunResync(ctx, 200*time.Millisecond)
		deadline := time.Now().Add(5 * time.Second)
		// A forwarding route's line starts with its destination; the
		// unreachable route under it stays all along.
		for !strings.Contains("\n"+ownRoutes(t, gwA), "\n10.20.0.0/16 ") || !strings.Contains("\n"+ownRoutes(t, wA), "\n10.30.0.0/16 ") {
			if time.Now().After(deadline) {
				t.Fatalf("routes not repaired:\n%s\n%s", ownRoutes(t, gwA), ownRoutes(t, wA))
			}
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
		exchange(t, ab, ba, "after the repair")
	})

	t.Run("changing one peer leaves the others alone", func(t *testing.T) {
		before := gwA.peer(gwB.key.PublicKey())
		if before.LastHandshakeTime.IsZero() {
			t.Fatal("no handshake with b yet")
		}
		c2 := c
		c2.cidrs = append([]netip.Prefix{}, c.cidrs...)
		c2.cidrs = append(c2.cidrs, netip.MustParsePrefix("10.31.0.0/16"))
		res := gwA.apply(gatewayPlan(a, b, c2))
		if res.PeersTouched() != 1 || len(res.Tunnel.Updated) != 1 || res.Tunnel.Updated[0] != gwC.key.PublicKey() {
			t.Errorf("changes %s, want only c updated", res.Tunnel)
		}
		after := gwA.peer(gwB.key.PublicKey())
		if !after.LastHandshakeTime.Equal(before.LastHandshakeTime) || after.Endpoint.String() != before.Endpoint.String() {
			t.Errorf("peer b disturbed: handshake %s -> %s", before.LastHandshakeTime, after.LastHandshakeTime)
		}
		exchange(t, ab, ba, "b after c changed")
		exchange(t, ac, ca, "c after c changed")
	})

	t.Run("fail closed: a worker without gateway drops remote traffic", func(t *testing.T) {
		// A default route to a sink: what the node must never use for a
		// remote pod range.
		netnstest.Run(t, "ip", "-n", wA.name, "route", "replace", "default", "via", "192.0.2.254")
		defer netnstest.Run(t, "ip", "-n", wA.name, "route", "del", "default")
		in := plan.Inputs{Node: wA.name, Role: plan.RoleWorker, LocalPodCIDRs: a.cidrs, Tunnel: plan.Tunnel{Interface: wA.iface},
			Peers: []plan.Peer{b.asPeer(), c.asPeer()}}
		wA.apply(plan.Compute(in))
		wantUnreachable(t, wA, "10.20.1.2", "10.30.1.2")
		if out := netnstest.Run(t, "ip", "netns", "exec", wA.name, "nft", "list", "set", "inet", netfilter.TableName, netfilter.SetRemote4); !strings.Contains(out, "10.20.0.0/16") {
			t.Errorf("no-SNAT set lost the remote ranges:\n%s", out)
		}
		wA.apply(pW)
		exchange(t, wb, bw, "through the tunnel again once the gateway is known")
	})

	t.Run("resync recreates a device deleted by hand", func(t *testing.T) {
		netnstest.Run(t, "ip", "-n", gwB.name, "route", "replace", "default", "via", "192.0.2.254")
		defer netnstest.Run(t, "ip", "-n", gwB.name, "route", "del", "default")
		netnstest.Run(t, "ip", "-n", gwB.name, "link", "del", gwB.iface)
		// The kernel dropped the device's routes; until the device is back
		// the remote ranges are unreachable, not sent to the default route.
		wantUnreachable(t, gwB, "10.10.1.2", "10.30.1.2")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go gwB.dp.RunResync(ctx, 200*time.Millisecond)
		deadline := time.Now().Add(10 * time.Second)
		for {
			kind, _ := gwB.links.Kind(gwB.iface)
			st, err := gwB.dp.TunnelState()
			if kind != wireguard.LinkAbsent && err == nil && st.PublicKey == gwB.key.PublicKey() && len(st.Peers) == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("device %s not recreated with its key and peers (link %q, %v)", gwB.iface, kind, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
		// Traffic flows again over the new device.
		nab, nba := dial(t, gwA, gwB, 7010)
		exchange(t, nab, nba, "pod a -> pod b over the recreated device")
		exchange(t, nba, nab, "and back")
	})

	t.Run("gateway to worker tears the device down", func(t *testing.T) {
		// c stops being a gateway (its cluster elected another node).
		gwC.apply(workerPlan(gwC, c, a, b))
		if kind, err := gwC.links.Kind(gwC.iface); err != nil || kind != wireguard.LinkAbsent {
			t.Errorf("device %s still there (%s, %v)", gwC.iface, kind, err)
		}
	})

	t.Run("cleanup leaves nothing behind", func(t *testing.T) {
		for _, n := range []*node{gwA, wA, gwB, gwC} {
			if err := n.dp.Cleanup(context.Background()); err != nil {
				t.Fatalf("cleanup %s: %v", n.name, err)
			}
			if kind, _ := n.links.Kind(n.iface); kind != wireguard.LinkAbsent {
				t.Errorf("%s: interface %s left", n.name, n.iface)
			}
			if _, err := os.Stat(wireguard.SocketPath(n.iface)); !os.IsNotExist(err) {
				t.Errorf("%s: socket left (%v)", n.name, err)
			}
			if out := ownRoutes(t, n); strings.TrimSpace(out) != "" {
				t.Errorf("%s: routes left:\n%s", n.name, out)
			}
			for _, fam := range []string{"-4", "-6"} {
				if out := netnstest.Run(t, "ip", fam, "-n", n.name, "rule", "show"); strings.Contains(out, "lookup "+strconv.Itoa(routing.DefaultTable)) {
					t.Errorf("%s: rule left:\n%s", n.name, out)
				}
			}
			if out := netnstest.Run(t, "ip", "netns", "exec", n.name, "nft", "list", "tables"); strings.Contains(out, netfilter.TableName) {
				t.Errorf("%s: nftables table left:\n%s", n.name, out)
			}
		}
	})
}
