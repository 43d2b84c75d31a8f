//go:build privileged

package netfilter_test

import (
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	"github.com/archipelago-mesh/archipelago/internal/netnstest"
)

// testPlan is basePlan on the topology's tunnel interface.
func testPlan() netfilter.FilterPlan {
	fp := basePlan()
	fp.TunnelInterface = tunnelIf
	return fp
}

func connIn(t *testing.T, ns interface{ String() string }, fd int) *nftables.Conn {
	t.Helper()
	c, err := netfilter.NewAt(fd)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func listTable(t *testing.T, ns string) string {
	t.Helper()
	return netnstest.Run(t, "ip", "netns", "exec", ns, "nft", "list", "table", "inet", netfilter.TableName)
}

// cni is a stand-in for a CNI such as kindnet that masquerades all traffic
// leaving the cluster's pod range.
type cni struct {
	name    string
	install func(t *testing.T, ns string)
	// masqueraded returns the packet count of the masquerade rules.
	masqueraded func(t *testing.T, ns string) int
}

var cnis = []cni{
	{
		name: "nft",
		install: func(t *testing.T, ns string) {
			netnstest.Nft(t, ns, `
table ip cni-masq {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip daddr != 10.244.0.0/16 counter masquerade
	}
}
table ip6 cni-masq {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip6 daddr != fd00:a::/48 counter masquerade
	}
}`)
		},
		masqueraded: func(t *testing.T, ns string) int {
			v4 := netnstest.Run(t, "ip", "netns", "exec", ns, "nft", "list", "table", "ip", "cni-masq")
			v6 := netnstest.Run(t, "ip", "netns", "exec", ns, "nft", "list", "table", "ip6", "cni-masq")
			return counterOf(t, v4, "masquerade") + counterOf(t, v6, "masquerade")
		},
	},
	{
		name: "iptables-nft",
		install: func(t *testing.T, ns string) {
			for _, tool := range []string{"iptables", "ip6tables"} {
				if _, err := exec.LookPath(tool); err != nil {
					t.Skipf("needs %s", tool)
				}
			}
			if v := netnstest.Run(t, "iptables", "--version"); !strings.Contains(v, "nf_tables") {
				t.Skipf("iptables is not the nf_tables variant: %s", v)
			}
			netnstest.Run(t, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "!", "-d", "10.244.0.0/16", "-j", "MASQUERADE")
			netnstest.Run(t, "ip", "netns", "exec", ns, "ip6tables", "-t", "nat", "-A", "POSTROUTING", "!", "-d", "fd00:a::/48", "-j", "MASQUERADE")
		},
		masqueraded: func(t *testing.T, ns string) int {
			n := 0
			for _, tool := range []string{"iptables", "ip6tables"} {
				out := netnstest.Run(t, "ip", "netns", "exec", ns, tool, "-t", "nat", "-L", "POSTROUTING", "-v", "-n", "-x")
				for _, line := range strings.Split(out, "\n") {
					if f := strings.Fields(line); len(f) > 2 && f[2] == "MASQUERADE" {
						c, _ := strconv.Atoi(f[0])
						n += c
					}
				}
			}
			return n
		},
	},
}

// TestNoSNATKeepsPodSourceIP is the must-have: with a CNI-style masquerade on
// node-a, pod-b first sees node-a's address (proving the masquerade works in
// this topology), then, with the agent's table applied, pod-a's own address.
func TestNoSNATKeepsPodSourceIP(t *testing.T) {
	requireRoot(t)
	for _, c := range cnis {
		t.Run(c.name, func(t *testing.T) {
			tp := newTopology(t)
			c.install(t, tp.nodeA)
			targets := []struct{ dst, podA, nodeA string }{
				{podBIP4, podAIP4, nodeAIP4},
				{podBIP6, podAIP6, nodeAIP6},
			}
			for _, tg := range targets {
				s, _, err := tp.connect(t, tg.dst)
				if err != nil {
					t.Fatalf("connect to %s without the agent: %v", tg.dst, err)
				}
				t.Logf("Without the agent's table pod-b (%s) saw source %s", tg.dst, s.remote)
				if s.remote.String() != tg.nodeA {
					t.Fatalf("without the agent's table pod-b saw %s, want node-a's %s: the masquerade rule is not in effect, so the test proves nothing", s.remote, tg.nodeA)
				}
			}

			conn := connIn(t, tp.nodeAH, int(tp.nodeAH))
			if changed, err := netfilter.Apply(conn, testPlan()); err != nil || !changed {
				t.Fatalf("Apply: changed %v, err %v", changed, err)
			}
			masqBefore := c.masqueraded(t, tp.nodeA)
			for _, tg := range targets {
				s, _, err := tp.connect(t, tg.dst)
				if err != nil {
					t.Fatalf("connect to %s with the agent: %v", tg.dst, err)
				}
				t.Logf("With the agent's table pod-b (%s) saw source %s", tg.dst, s.remote)
				if s.remote.String() != tg.podA {
					t.Fatalf("with the agent's table pod-b saw %s, want pod-a's %s", s.remote, tg.podA)
				}
			}
			if after := c.masqueraded(t, tp.nodeA); after != masqBefore {
				t.Errorf("the CNI's masquerade counter moved from %d to %d; it must not be consulted for pod→remote traffic", masqBefore, after)
			}
			listing := listTable(t, tp.nodeA)
			if n := counterOf(t, listing, "snat ip to ip saddr"); n == 0 {
				t.Errorf("the no-SNAT rule counted no packets:\n%s", listing)
			}
			if err := netfilter.Cleanup(conn); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestVerdictSemantics checks the two kernel facts docs/no-snat.md relies on.
func TestVerdictSemantics(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	cnis[0].install(t, tp.nodeA)

	t.Run("accept in an earlier nat chain does not stop a later masquerade", func(t *testing.T) {
		netnstest.Nft(t, tp.nodeA, `
table inet accept-test {
	chain postrouting {
		type nat hook postrouting priority srcnat - 10; policy accept;
		ip saddr 10.244.0.0/16 ip daddr 10.245.0.0/16 counter accept
	}
}`)
		defer netnstest.Nft(t, tp.nodeA, "delete table inet accept-test")
		before := cnis[0].masqueraded(t, tp.nodeA)
		s, _, err := tp.connect(t, podBIP4)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("With only an accept at priority 90 pod-b saw source %s", s.remote)
		if s.remote.String() != nodeAIP4 {
			t.Fatalf("pod-b saw %s, want node-a's %s (masqueraded despite the accept)", s.remote, nodeAIP4)
		}
		if after := cnis[0].masqueraded(t, tp.nodeA); after == before {
			t.Fatal("the masquerade counter did not move")
		}
	})

	t.Run("accept in the agent's forward chain does not override a later drop", func(t *testing.T) {
		conn := connIn(t, tp.nodeAH, int(tp.nodeAH))
		if _, err := netfilter.Apply(conn, testPlan()); err != nil {
			t.Fatal(err)
		}
		defer netfilter.Cleanup(conn)
		netnstest.Nft(t, tp.nodeA, `
table inet hostfw {
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
}`)
		_, _, err := tp.connect(t, podBIP4)
		netnstest.Nft(t, tp.nodeA, "delete table inet hostfw")
		if err == nil {
			t.Fatal("connected through a host firewall with policy drop; want the drop to be final")
		}
		t.Logf("With a host forward chain policy drop at priority 0 the connection failed: %v", err)
		if _, _, err := tp.connect(t, podBIP4); err != nil {
			t.Fatalf("without the host firewall: %v", err)
		}
	})
}

// TestMSSClamp lowers the node link's MTU to 1400 and checks that the MSS of
// both ends of a TCP connection through it drops from 1460-based to
// 1360-based only with the agent's clamp rules.
func TestMSSClamp(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	netnstest.Run(t, "ip", "-n", tp.nodeA, "link", "set", tunnelIf, "mtu", "1400")
	netnstest.Run(t, "ip", "-n", tp.nodeB, "link", "set", "to-a", "mtu", "1400")

	s, clientMSS, err := tp.connect(t, podBIP4)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Without clamping: server MSS %d, client MSS %d", s.mss, clientMSS)
	if s.mss <= 1360 {
		t.Fatalf("server MSS %d without clamping; want the 1500-MTU value, else the test proves nothing", s.mss)
	}

	conn := connIn(t, tp.nodeAH, int(tp.nodeAH))
	if _, err := netfilter.Apply(conn, testPlan()); err != nil {
		t.Fatal(err)
	}
	listing := listTable(t, tp.nodeA)
	for _, want := range []string{
		`oifname "` + tunnelIf + `" tcp flags syn / syn,rst tcp option maxseg size set rt mtu`,
		`iifname "` + tunnelIf + `" tcp flags syn / syn,rst tcp option maxseg size set rt mtu`,
	} {
		if !strings.Contains(listing, want) {
			t.Fatalf("listing lacks %q:\n%s", want, listing)
		}
	}
	for _, dst := range []string{podBIP4, podBIP6} {
		s, clientMSS, err := tp.connect(t, dst)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("With clamping (%s): server MSS %d, client MSS %d", dst, s.mss, clientMSS)
		// 1400 - 40 (IPv4+TCP) = 1360, or 1400 - 60 = 1340 for IPv6, minus
		// 12 bytes of timestamp option in mss_cache.
		if s.mss > 1360 || clientMSS > 1360 {
			t.Errorf("MSS server %d client %d through a 1400-byte link; want ≤ 1360 both ways", s.mss, clientMSS)
		}
	}

	// Clamping off: the chain goes away.
	p := testPlan()
	p.MSSClamp = false
	if changed, err := netfilter.Apply(conn, p); err != nil || !changed {
		t.Fatalf("Apply without clamp: changed %v, err %v", changed, err)
	}
	if l := listTable(t, tp.nodeA); strings.Contains(l, "maxseg") {
		t.Fatalf("clamp rules left after turning clamping off:\n%s", l)
	}
}

func ruleHandles(t *testing.T, conn *nftables.Conn) []uint64 {
	t.Helper()
	tbl := &nftables.Table{Name: netfilter.TableName, Family: nftables.TableFamilyINet}
	var hs []uint64
	for _, c := range []string{netfilter.ChainNoSNAT, netfilter.ChainForward, netfilter.ChainMSS} {
		rules, err := conn.GetRules(tbl, &nftables.Chain{Name: c, Table: tbl})
		if err != nil {
			t.Fatalf("rules of %s: %v", c, err)
		}
		for _, r := range rules {
			hs = append(hs, r.Handle)
		}
	}
	return hs
}

// TestApplyInNamespace checks the applier against the real kernel: no-change
// passes, element-only updates (rule handles stay), repair of hand edits, and
// that foreign tables survive Apply and Cleanup.
func TestApplyInNamespace(t *testing.T) {
	requireRoot(t)
	ns, h := newNS(t, "apply")
	netnstest.Run(t, "ip", "-n", ns, "link", "add", tunnelIf, "type", "veth", "peer", "name", "peer0")
	netnstest.Nft(t, ns, `
table ip foreign {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip daddr != 10.244.0.0/16 counter masquerade
	}
}`)
	foreign := netnstest.Run(t, "ip", "netns", "exec", ns, "nft", "list", "table", "ip", "foreign")
	conn := connIn(t, h, int(h))

	plan := testPlan()
	if changed, err := netfilter.Apply(conn, plan); err != nil || !changed {
		t.Fatalf("first Apply: changed %v, err %v", changed, err)
	}
	first := listTable(t, ns)
	t.Logf("Table after the first Apply:\n%s", first)
	if changed, err := netfilter.Apply(conn, plan); err != nil || changed {
		t.Fatalf("second Apply: changed %v, err %v; want no change", changed, err)
	}
	handles := ruleHandles(t, conn)

	// Ranges change: only set elements are written (rules keep their handles).
	plan.RemotePodCIDRs = append(plan.RemotePodCIDRs, p("10.246.0.0/16"), p("10.247.0.0/16"), p("10.250.1.0/24"), p("fd00:c::/48"))
	if changed, err := netfilter.Apply(conn, plan); err != nil || !changed {
		t.Fatalf("Apply with more ranges: changed %v, err %v", changed, err)
	}
	if got := ruleHandles(t, conn); !equalU64(got, handles) {
		t.Fatalf("rule handles changed from %v to %v: the table was rebuilt for a range change", handles, got)
	}
	set := netnstest.Run(t, "ip", "netns", "exec", ns, "nft", "list", "set", "inet", netfilter.TableName, netfilter.SetRemote4)
	if !strings.Contains(set, "10.245.0.0-10.247.255.255, 10.250.1.0/24") {
		t.Fatalf("remote4 after adding ranges:\n%s", set)
	}
	plan.RemotePodCIDRs = []netip.Prefix{p("10.246.0.0/16"), p("fd00:b::/48")}
	if changed, err := netfilter.Apply(conn, plan); err != nil || !changed {
		t.Fatalf("Apply with fewer ranges: changed %v, err %v", changed, err)
	}
	set = netnstest.Run(t, "ip", "netns", "exec", ns, "nft", "list", "set", "inet", netfilter.TableName, netfilter.SetRemote4)
	if !strings.Contains(set, "elements = { 10.246.0.0/16 }") {
		t.Fatalf("remote4 after removing ranges:\n%s", set)
	}
	if got := ruleHandles(t, conn); !equalU64(got, handles) {
		t.Fatalf("rule handles changed on a range removal")
	}
	if changed, err := netfilter.Apply(conn, plan); err != nil || changed {
		t.Fatalf("no-change Apply after element updates: changed %v, err %v", changed, err)
	}

	// Hand edits are repaired.
	netnstest.Run(t, "ip", "netns", "exec", ns, "nft", "flush", "chain", "inet", netfilter.TableName, netfilter.ChainForward)
	if changed, err := netfilter.Apply(conn, plan); err != nil || !changed {
		t.Fatalf("Apply after a flushed chain: changed %v, err %v", changed, err)
	}
	netnstest.Run(t, "ip", "netns", "exec", ns, "nft", "delete", "element", "inet", netfilter.TableName, netfilter.SetRemote4, "{ 10.246.0.0/16 }")
	if changed, err := netfilter.Apply(conn, plan); err != nil || !changed {
		t.Fatalf("Apply after a deleted element: changed %v, err %v", changed, err)
	}
	plan = testPlan()
	if _, err := netfilter.Apply(conn, plan); err != nil {
		t.Fatal(err)
	}
	if got := listTable(t, ns); got != first {
		t.Fatalf("table differs from the first Apply's:\n%s\nwant\n%s", got, first)
	}

	if err := netfilter.Cleanup(conn); err != nil {
		t.Fatal(err)
	}
	if err := netfilter.Cleanup(conn); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
	if out, err := netnstest.RunErr("ip", "netns", "exec", ns, "nft", "list", "table", "inet", netfilter.TableName); err == nil {
		t.Fatalf("table still there after Cleanup:\n%s", out)
	}
	if got := netnstest.Run(t, "ip", "netns", "exec", ns, "nft", "list", "table", "ip", "foreign"); got != foreign {
		t.Fatalf("foreign table changed:\n%s\nwant\n%s", got, foreign)
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestMSSClampToTunnelMTU: with the tunnel's MTU in the plan, SYNs both
// ways are clamped to it (1340 - 40 for IPv4, 1340 - 60 for IPv6) on links
// that are all 1500 bytes, where "rt mtu" would leave them at 1460.
func TestMSSClampToTunnelMTU(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	conn := connIn(t, tp.nodeAH, int(tp.nodeAH))
	p := testPlan()
	p.MTU = 1340
	if _, err := netfilter.Apply(conn, p); err != nil {
		t.Fatal(err)
	}
	listing := listTable(t, tp.nodeA)
	for _, want := range []string{
		`meta nfproto ipv4 oifname "` + tunnelIf + `" tcp flags syn / syn,rst tcp option maxseg size set 1300`,
		`meta nfproto ipv6 iifname "` + tunnelIf + `" tcp flags syn / syn,rst tcp option maxseg size set 1280`,
	} {
		if !strings.Contains(listing, want) {
			t.Fatalf("listing lacks %q:\n%s", want, listing)
		}
	}
	for _, tc := range []struct {
		dst string
		max int
	}{{podBIP4, 1300}, {podBIP6, 1280}} {
		s, clientMSS, err := tp.connect(t, tc.dst)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("Clamped to the tunnel MTU 1340 (%s): server MSS %d, client MSS %d", tc.dst, s.mss, clientMSS)
		if s.mss > tc.max || clientMSS > tc.max {
			t.Errorf("%s: MSS server %d client %d; want ≤ %d both ways", tc.dst, s.mss, clientMSS, tc.max)
		}
	}
	// A peer with a smaller path MTU: its ranges' route carries it, and
	// SYNs leaving the tunnel get the route's MSS, the smaller of the two
	// ("rt mtu"); the server's SYN-ACK, which enters the tunnel, keeps
	// the tunnel's.
	if !strings.Contains(listing, `oifname "`+tunnelIf+`" tcp flags syn / syn,rst tcp option maxseg size set rt mtu`) {
		t.Fatalf("listing lacks the route MTU clamp out of the tunnel:\n%s", listing)
	}
	netnstest.Run(t, "ip", "-n", tp.nodeA, "route", "replace", "10.245.0.0/16", "via", "192.168.250.2", "mtu", "1248")
	s, clientMSS, err := tp.connect(t, podBIP4)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Route MTU 1248 towards %s: server MSS %d, client MSS %d", podBIP4, s.mss, clientMSS)
	if s.mss > 1208 {
		t.Errorf("route MTU 1248: the server's MSS towards the client is %d, want ≤ 1208", s.mss)
	}
	netnstest.Run(t, "ip", "-n", tp.nodeA, "route", "replace", "10.245.0.0/16", "via", "192.168.250.2")

	// A larger MTU raises nothing the kernel has not seen (it only lowers),
	// and the rules follow the plan.
	p.MTU = 1420
	if changed, err := netfilter.Apply(conn, p); err != nil || !changed {
		t.Fatalf("Apply with MTU 1420: changed %v, err %v", changed, err)
	}
	if l := listTable(t, tp.nodeA); !strings.Contains(l, "maxseg size set 1380") || strings.Contains(l, "maxseg size set 1300") {
		t.Fatalf("after MTU 1420 the clamp is not at 1380:\n%s", l)
	}
}

// TestTunnelICMPSource: an ICMP error the gateway itself sends through the
// tunnel (here "fragmentation needed" / "packet too big" for a remote pod's
// packet that does not fit the link to the local pod) leaves with an
// address of the local pod range as source, which the peer's WireGuard
// accepts; without the rule it carries the node's address, which WireGuard
// drops. IPv4 and IPv6.
func TestTunnelICMPSource(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	conn := connIn(t, tp.nodeAH, int(tp.nodeAH))
	// The link to the local pod is smaller than the tunnel.
	netnstest.Run(t, "ip", "-n", tp.nodeA, "link", "set", "to-poda", "mtu", "1300")
	ping := func() string {
		out, _ := exec.Command("ip", "netns", "exec", tp.podB, "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1400", podAIP4).CombinedOutput()
		return string(out)
	}
	// Before: the error comes from the node's address on the tunnel link.
	if out := ping(); !strings.Contains(out, "From "+nodeAIP4) || !strings.Contains(out, "mtu = 1300") {
		t.Fatalf("without the rule, want fragmentation needed from %s:\n%s", nodeAIP4, out)
	}
	// podB's kernel now knows the path MTU; forget it, so the next ping
	// asks again.
	netnstest.Run(t, "ip", "-n", tp.podB, "route", "flush", "cache")
	if _, err := netfilter.Apply(conn, testPlan()); err != nil {
		t.Fatal(err)
	}
	out := ping()
	t.Logf("With the rule:\n%s", out)
	if !strings.Contains(out, "From 10.244.0.0 ") || !strings.Contains(out, "mtu = 1300") {
		t.Errorf("with the rule, want fragmentation needed from 10.244.0.0 (the first address of the local range):\n%s", out)
	}
	if l := listTable(t, tp.nodeA); !strings.Contains(l, `oifname "`+tunnelIf+`" ip saddr != @local4`) {
		t.Errorf("listing lacks the tunnel-icmp rule:\n%s", l)
	}
	// IPv6: "packet too big" from the first address of the local IPv6
	// range, with ICMPv6's checksum (which covers the addresses) right:
	// podB captures what arrives and the test checks the sum itself.
	var fd int
	netnstest.In(t, tp.podBH, func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons(unix.ETH_P_IPV6)))
		return err
	})
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2}); err != nil {
		t.Fatal(err)
	}
	out6, _ := exec.Command("ip", "netns", "exec", tp.podB, "ping", "-6", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1400", podAIP6).CombinedOutput()
	t.Logf("IPv6 with the rule:\n%s", out6)
	if !strings.Contains(string(out6), "From fd00:a:: ") || !strings.Contains(string(out6), "mtu=1300") {
		t.Errorf("with the rule, want packet too big from fd00:a:: (the first address of the local IPv6 range):\n%s", out6)
	}
	want := netip.MustParseAddr("fd00:a::")
	buf := make([]byte, 2048)
	for found := false; !found; {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			t.Fatalf("no packet too big from %s captured in %s: %v", want, tp.podB, err)
		}
		pkt := buf[:n]
		if n < 48 || pkt[6] != unix.IPPROTO_ICMPV6 || pkt[40] != 2 || netip.AddrFrom16([16]byte(pkt[8:24])) != want {
			continue
		}
		found = true
		if sum := icmp6Sum(pkt); sum != 0xffff {
			t.Errorf("packet too big from %s: ICMPv6 checksum does not add up (sum %#04x, want 0xffff)", want, sum)
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// icmp6Sum is the one's complement sum of an IPv6 packet's ICMPv6 message
// with its pseudo-header, checksum field included: 0xffff when it is right.
func icmp6Sum(pkt []byte) uint16 {
	plen := int(pkt[4])<<8 | int(pkt[5])
	msg := pkt[40 : 40+plen]
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(pkt[8:40]) // source and destination
	add([]byte{0, 0, byte(plen >> 8), byte(plen), 0, 0, 0, unix.IPPROTO_ICMPV6})
	add(msg)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
