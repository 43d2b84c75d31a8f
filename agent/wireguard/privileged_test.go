//go:build privileged

package wireguard_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/go-logr/logr/testr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	"github.com/archipelago-mesh/archipelago/internal/netnstest"
)

// Environment of the re-executed test binary that runs a device process.
const (
	envDevice     = "ARCHIPELAGO_WGTEST_DEVICE"
	envNoOffloads = "ARCHIPELAGO_WGTEST_NO_OFFLOADS"
	// envAgent makes the test binary a short-lived "agent" that starts the
	// device (ns, name and log path separated by commas) and exits.
	envAgent   = "ARCHIPELAGO_WGTEST_AGENT"
	nsPrefix   = "arch-wgt-"
	ifPrefix   = "awt"
	listenPort = 51820
)

// namespaces are this package's: arch-wgt-<pid>-..., and the device
// processes the tests start in them.
var namespaces = netnstest.Set{Prefix: nsPrefix, Ours: netnstest.EnvMarked(envDevice + "=" + ifPrefix)}

func TestMain(m *testing.M) {
	if name := os.Getenv(envDevice); name != "" {
		os.Exit(runDeviceProcess(name))
	}
	if spec := os.Getenv(envAgent); spec != "" {
		os.Exit(runShortLivedAgent(spec))
	}
	if os.Geteuid() == 0 {
		// What runs that died before their cleanups left: namespaces, the
		// device processes in them and their sockets.
		namespaces.RemoveLeftovers()
		wireguard.RemoveStaleSockets(ifPrefix)
		// Device processes orphaned on purpose (agent-restart test) are
		// re-parented to us rather than to PID 1, so that the test can reap
		// them; some sandboxes' PID 1 never reaps and would keep zombies.
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	}
	os.Exit(m.Run())
}

// runDeviceProcess is what "archipelago-agent wireguard-device" does.
func runDeviceProcess(name string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log := funcr.New(func(prefix, args string) { fmt.Fprintln(os.Stderr, prefix, args) }, funcr.Options{})
	var opts []wireguard.DeviceOption
	if os.Getenv(envNoOffloads) != "" {
		opts = append(opts, wireguard.WithoutOffloads())
	}
	if err := wireguard.RunUserspaceDevice(ctx, name, wireguard.DefaultMTU, log, opts...); err != nil {
		log.Error(err, "Device process failed")
		return 1
	}
	return 0
}

// runShortLivedAgent starts the device detached and exits, leaving the
// device process orphaned, as an agent crash does.
func runShortLivedAgent(spec string) int {
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		fmt.Fprintln(os.Stderr, "bad", envAgent, spec)
		return 2
	}
	g := &gateway{ns: parts[0], name: parts[1], logPath: parts[2]}
	up, err := g.userspace()
	if err == nil {
		_, err = wireguard.EnsureUserspaceDevice(context.Background(), g.name, up, funcr.New(func(p, a string) { fmt.Fprintln(os.Stderr, p, a) }, funcr.Options{}))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func processAlive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func requireRoot(t *testing.T) {
	t.Helper()
	netnstest.RequireRoot(t, "creates network namespaces and TUN devices", "ip")
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs root: /dev/net/tun is missing")
	}
}

// gateway is one member cluster's active gateway: a network namespace with an
// underlay address on the lab LAN and a userspace WireGuard device.
type gateway struct {
	ns       string
	nsh      netns.NsHandle
	name     string
	keyDir   string
	underlay netip.Addr // 192.0.2.x on the lab LAN
	addr     netip.Addr // 10.255.0.x on the WireGuard interface
	logPath  string
	noOffl   bool
	links    *wireguard.NetlinkLinks
	dev      *wireguard.Device
	key      wgtypes.Key
}

// newLab builds n gateway namespaces joined by a bridge in a LAN namespace.
// Nothing in it routes anywhere outside.
func newLab(t *testing.T, n int, noOffloads bool) []*gateway {
	t.Helper()
	requireRoot(t)
	pid := os.Getpid()
	id := strings.ToLower(strings.ReplaceAll(t.Name(), "/", ""))
	id = id[len(id)-min(len(id), 6):]
	lan, _ := namespaces.New(t, id+"-lan")
	netnstest.Run(t, "ip", "-n", lan, "link", "add", "br0", "type", "bridge")
	netnstest.Run(t, "ip", "-n", lan, "link", "set", "br0", "up")

	var gws []*gateway
	for i := range n {
		suffix := string(rune('a' + i))
		g := &gateway{
			name:     fmt.Sprintf("%s%d%s", ifPrefix, pid, suffix),
			keyDir:   filepath.Join(t.TempDir(), "key"),
			underlay: netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}),
			addr:     netip.AddrFrom4([4]byte{10, 255, 0, byte(i + 1)}),
			logPath:  filepath.Join(t.TempDir(), "device.log"),
			noOffl:   noOffloads,
		}
		// Teardown (registered later, so run earlier) normally stops the
		// device; the namespace's cleanup kills it if that failed.
		g.ns, g.nsh = namespaces.New(t, id+"-"+suffix)
		veth := "p" + suffix
		netnstest.Run(t, "ip", "-n", lan, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", g.ns)
		netnstest.Run(t, "ip", "-n", lan, "link", "set", veth, "master", "br0", "up")
		netnstest.Run(t, "ip", "-n", g.ns, "addr", "add", g.underlay.String()+"/24", "dev", "eth0")
		netnstest.Run(t, "ip", "-n", g.ns, "link", "set", "eth0", "up")
		var err error
		if g.links, err = wireguard.NewNetlinkLinks(g.nsh); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(g.links.Close)
		t.Cleanup(func() {
			if err := wireguard.Teardown(context.Background(), g.name, g.links, testr.New(t)); err != nil {
				t.Errorf("Teardown %s: %v", g.name, err)
			}
			if t.Failed() {
				log, _ := os.ReadFile(g.logPath)
				t.Logf("device %s log:\n%s", g.name, log)
			}
		})
		gws = append(gws, g)
	}
	return gws
}

func (g *gateway) userspace() (wireguard.UserspaceProcess, error) {
	exe, err := os.Executable()
	if err != nil {
		return wireguard.UserspaceProcess{}, err
	}
	env := []string{envDevice + "=" + g.name}
	if g.noOffl {
		env = append(env, envNoOffloads+"=1")
	}
	return wireguard.UserspaceProcess{
		// ip netns exec execs in place: the PID we start is the device's
		// PID, in the gateway's namespace.
		Path:    "ip",
		Args:    []string{"netns", "exec", g.ns, exe, "-test.run=^$"},
		Env:     env,
		LogPath: g.logPath,
	}, nil
}

func (g *gateway) options(t *testing.T) wireguard.Options {
	up, err := g.userspace()
	if err != nil {
		t.Fatal(err)
	}
	return wireguard.Options{Name: g.name, Links: g.links, Log: testr.New(t), Userspace: up}
}

// open is what the agent does at start.
func (g *gateway) open(t *testing.T) {
	t.Helper()
	var err error
	if g.key, err = wireguard.LoadOrCreateKey(g.keyDir); err != nil {
		t.Fatal(err)
	}
	if g.dev, err = wireguard.New(context.Background(), g.options(t)); err != nil {
		t.Fatalf("New %s: %v", g.name, err)
	}
	if g.dev.Kind() != wireguard.KindUserspace {
		t.Fatalf("probe chose %s, want userspace on this machine", g.dev.Kind())
	}
	if err := g.dev.SetAddresses([]netip.Prefix{netip.PrefixFrom(g.addr, 32)}); err != nil {
		t.Fatal(err)
	}
}

func (g *gateway) plan(peers ...*gateway) wireguard.TunnelPlan {
	p := wireguard.TunnelPlan{PrivateKey: g.key, ListenPort: listenPort, MTU: wireguard.DefaultMTU}
	for _, o := range peers {
		p.Peers = append(p.Peers, wireguard.PeerPlan{
			PublicKey:           o.key.PublicKey(),
			Endpoint:            netip.AddrPortFrom(o.underlay, listenPort),
			AllowedIPs:          []netip.Prefix{netip.PrefixFrom(o.addr, 32)},
			PersistentKeepalive: 25 * time.Second,
		})
	}
	return p
}

func (g *gateway) apply(t *testing.T, p wireguard.TunnelPlan) wireguard.Changes {
	t.Helper()
	ch, err := g.dev.Apply(p)
	if err != nil {
		t.Fatalf("Apply on %s: %v", g.name, err)
	}
	// Routes are another package's job; the test routes peers' tunnel
	// addresses into the device by hand.
	for _, peer := range p.Peers {
		for _, pr := range peer.AllowedIPs {
			netnstest.Run(t, "ip", "-n", g.ns, "route", "replace", pr.String(), "dev", g.name)
		}
	}
	return ch
}

func (g *gateway) pid(t *testing.T) int {
	t.Helper()
	pid, err := wireguard.UserspaceDevicePID(g.name)
	if err != nil {
		t.Fatalf("device %s: %v", g.name, err)
	}
	return pid
}

func (g *gateway) peer(t *testing.T, k wgtypes.Key) wgtypes.Peer {
	t.Helper()
	st, err := g.dev.State()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Peers {
		if p.PublicKey == k {
			return p
		}
	}
	t.Fatalf("%s has no peer %s", g.name, k)
	return wgtypes.Peer{}
}

// tcpPair opens a TCP connection from client's tunnel address to server's
// and returns both ends, checking the remote address the server sees.
func tcpPair(t *testing.T, client, server *gateway) (c, s net.Conn) {
	t.Helper()
	var ln net.Listener
	netnstest.In(t, server.nsh, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(server.addr, 7000).String())
		return err
	})
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- conn
	}()
	netnstest.In(t, client.nsh, func() (err error) {
		d := net.Dialer{Timeout: 15 * time.Second, LocalAddr: &net.TCPAddr{IP: client.addr.AsSlice()}}
		c, err = d.Dial("tcp", netip.AddrPortFrom(server.addr, 7000).String())
		return err
	})
	t.Cleanup(func() { c.Close() })
	select {
	case s = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not accept")
	}
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { s.Close() })
	remote := s.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	if remote != client.addr {
		t.Fatalf("server sees remote %s, want %s (source must survive the tunnel)", remote, client.addr)
	}
	return c, s
}

// exchange sends msg from a to b and checks the bytes arrive.
func exchange(t *testing.T, a, b net.Conn, msg string) {
	t.Helper()
	_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := a.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(b, buf); err != nil {
		t.Fatalf("read %q: %v", msg, err)
	}
	if string(buf) != msg {
		t.Fatalf("got %q, want %q", buf, msg)
	}
}

// offloadLine returns the device log's "Created TUN device" line.
func offloadLine(t *testing.T, g *gateway) string {
	t.Helper()
	f, err := os.Open(g.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "Created TUN device") {
			return sc.Text()
		}
	}
	t.Fatalf("no offload line in %s", g.logPath)
	return ""
}

func TestPrivilegedTunnelTCP(t *testing.T) {
	for _, tc := range []struct {
		name       string
		noOffloads bool
	}{{"offloads", false}, {"nooffloads", true}} {
		t.Run(tc.name, func(t *testing.T) {
			gws := newLab(t, 2, tc.noOffloads)
			a, b := gws[0], gws[1]
			a.open(t)
			b.open(t)
			if ch := a.apply(t, a.plan(b)); len(ch.Added) != 1 || !ch.DeviceChanged {
				t.Errorf("first apply on a: %s", ch)
			}
			b.apply(t, b.plan(a))

			c, s := tcpPair(t, a, b)
			exchange(t, c, s, "hello from behind gateway a")
			exchange(t, s, c, "hello back from behind gateway b")
			// A bulk transfer exercises segmentation offload when on.
			big := strings.Repeat("x", 1<<20)
			go func() { _, _ = c.Write([]byte(big)) }()
			_ = s.SetReadDeadline(time.Now().Add(20 * time.Second))
			got := make([]byte, len(big))
			if _, err := io.ReadFull(s, got); err != nil || string(got) != big {
				t.Fatalf("bulk transfer: %v", err)
			}

			line := offloadLine(t, a)
			t.Logf("device a: %s", line)
			wantTCP := fmt.Sprintf(`"tcpOffload"=%t`, !tc.noOffloads)
			if !strings.Contains(line, wantTCP) {
				t.Errorf("offload line %q lacks %s", line, wantTCP)
			}
			// The wg CLI sees the userspace device like a kernel one.
			out := netnstest.Run(t, "wg", "show", a.name, "peers")
			if !strings.Contains(out, b.key.PublicKey().String()) {
				t.Errorf("wg show %s peers = %q, want b's key", a.name, out)
			}
		})
	}
}

func TestPrivilegedAgentRestartKeepsTunnel(t *testing.T) {
	var orphan int
	t.Cleanup(func() { reap(t, orphan) }) // runs after Teardown
	gws := newLab(t, 2, false)
	a, b := gws[0], gws[1]

	// A first agent process starts a's device and dies: the device must not
	// go with it.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	first := exec.Command(exe, "-test.run=^$")
	first.Env = append(os.Environ(), envAgent+"="+strings.Join([]string{a.ns, a.name, a.logPath}, ","))
	if out, err := first.CombinedOutput(); err != nil {
		t.Fatalf("first agent: %v\n%s", err, out)
	}
	orphan = a.pid(t) // it still answers after its starter exited
	if ppid := parentPID(t, orphan); ppid == first.Process.Pid {
		t.Fatalf("device process parent is the exited agent %d", ppid)
	}

	a.open(t)
	b.open(t)
	a.apply(t, a.plan(b))
	b.apply(t, b.plan(a))
	c, s := tcpPair(t, a, b)
	exchange(t, c, s, "before restart")

	pidBefore := a.pid(t)
	pubBefore := a.key.PublicKey()
	hsBefore := a.peer(t, b.key.PublicKey()).LastHandshakeTime

	// The agent goes away: its wgctrl client and netlink handles close;
	// the device process is not the agent's to take down.
	if err := a.dev.Close(); err != nil {
		t.Fatal(err)
	}
	a.dev = nil
	exchange(t, c, s, "while the agent is gone")

	// A fresh agent: same key from disk, probe, reuse, apply the same plan.
	a.open(t)
	if ch := a.apply(t, a.plan(b)); !ch.Empty() {
		t.Errorf("apply after restart changed %s, want nothing", ch)
	}
	if got := a.pid(t); got != pidBefore {
		t.Errorf("device process %d replaced by %d", pidBefore, got)
	}
	st, err := a.dev.State()
	if err != nil {
		t.Fatal(err)
	}
	if st.PublicKey != pubBefore {
		t.Errorf("public key changed across restart")
	}
	if hs := a.peer(t, b.key.PublicKey()).LastHandshakeTime; !hs.Equal(hsBefore) {
		t.Errorf("handshake redone across restart: %s -> %s", hsBefore, hs)
	}
	exchange(t, c, s, "after restart")
	exchange(t, s, c, "and back")
}

// reap collects an orphaned device process that was re-parented to us.
func reap(t *testing.T, pid int) {
	if pid <= 0 {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if got == pid || err != nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("device process %d did not exit", pid)
}

func parentPID(t *testing.T, pid int) int {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name may hold spaces; fields after its closing paren are
	// state, ppid, ...
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	ppid, err := strconv.Atoi(fields[1])
	if err != nil {
		t.Fatal(err)
	}
	return ppid
}

// countingClient records the configs the real client receives.
type countingClient struct {
	wireguard.Client
	calls []wgtypes.Config
}

func (c *countingClient) ConfigureDevice(name string, cfg wgtypes.Config) error {
	c.calls = append(c.calls, cfg)
	return c.Client.ConfigureDevice(name, cfg)
}

func TestPrivilegedOnePeerChange(t *testing.T) {
	gws := newLab(t, 3, false)
	a, b, cc := gws[0], gws[1], gws[2]
	for _, g := range gws {
		g.open(t)
	}
	a.apply(t, a.plan(b, cc))
	b.apply(t, b.plan(a, cc))
	cc.apply(t, cc.plan(a, b))
	ab, ba := tcpPair(t, a, b)
	exchange(t, ab, ba, "a to b")
	ac, ca := tcpPair(t, a, cc)
	exchange(t, ac, ca, "a to c")

	peerB := a.peer(t, b.key.PublicKey())
	if peerB.LastHandshakeTime.IsZero() {
		t.Fatal("no handshake with b")
	}

	// c's cluster gets a second range.
	next := a.plan(b, cc)
	for i := range next.Peers {
		if next.Peers[i].PublicKey == cc.key.PublicKey() {
			next.Peers[i].AllowedIPs = append(next.Peers[i].AllowedIPs, netip.MustParsePrefix("10.255.3.0/24"))
		}
	}
	client, err := wireguard.NewClient()
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	rec := &countingClient{Client: client}
	ch, err := wireguard.Apply(rec, a.name, next)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ch.Updated, []wgtypes.Key{cc.key.PublicKey()}) || len(ch.Added)+len(ch.Removed) != 0 || ch.DeviceChanged {
		t.Errorf("changes = %s, want exactly c updated", ch)
	}
	if len(rec.calls) != 1 || len(rec.calls[0].Peers) != 1 || rec.calls[0].ReplacePeers {
		t.Fatalf("ConfigureDevice calls = %+v, want one call naming one peer", rec.calls)
	}
	afterB := a.peer(t, b.key.PublicKey())
	if !afterB.LastHandshakeTime.Equal(peerB.LastHandshakeTime) || afterB.Endpoint.String() != peerB.Endpoint.String() {
		t.Errorf("untouched peer b changed: handshake %s -> %s, endpoint %s -> %s",
			peerB.LastHandshakeTime, afterB.LastHandshakeTime, peerB.Endpoint, afterB.Endpoint)
	}
	if got := a.peer(t, cc.key.PublicKey()).AllowedIPs; len(got) != 2 {
		t.Errorf("c's allowed IPs = %v, want 2", got)
	}
	exchange(t, ab, ba, "a to b after c changed")
	exchange(t, ac, ca, "a to c after c changed")

	// The same plan again: nothing.
	rec.calls = nil
	if ch, err := wireguard.Apply(rec, a.name, next); err != nil || !ch.Empty() || len(rec.calls) != 0 {
		t.Errorf("repeat apply: changes %s, %d calls, err %v", ch, len(rec.calls), err)
	}
}

func TestPrivilegedTeardown(t *testing.T) {
	gws := newLab(t, 1, false)
	g := gws[0]
	g.open(t)
	pid := g.pid(t)
	if err := g.dev.Close(); err != nil {
		t.Fatal(err)
	}
	if err := wireguard.Teardown(context.Background(), g.name, g.links, testr.New(t)); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if kind, err := g.links.Kind(g.name); err != nil || kind != wireguard.LinkAbsent {
		t.Errorf("interface %s still there (%q, %v)", g.name, kind, err)
	}
	if _, err := os.Stat(wireguard.SocketPath(g.name)); !os.IsNotExist(err) {
		t.Errorf("socket %s still there (%v)", wireguard.SocketPath(g.name), err)
	}
	// The process is our child here; the reaper in EnsureUserspaceDevice
	// collects it, after which the PID is gone.
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("device process %d still running after Teardown", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Teardown is idempotent.
	if err := wireguard.Teardown(context.Background(), g.name, g.links, testr.New(t)); err != nil {
		t.Errorf("second Teardown: %v", err)
	}
}
