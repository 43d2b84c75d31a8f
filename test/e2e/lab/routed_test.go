//go:build e2e

package lab_test

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/archipelago-mesh/archipelago/test/lab"
)

// vxlanRemote returns the remote of the agent's VXLAN device on node n
// ("" when it has none).
func vxlanRemote(n *lab.Node) string {
	out, err := exec.Command("ip", "-n", n.NS, "-d", "link", "show", "archipelago-vx").CombinedOutput()
	if err != nil {
		return ""
	}
	if m := regexp.MustCompile(`remote (\S+)`).FindStringSubmatch(string(out)); m != nil {
		return m[1]
	}
	return "(none)"
}

// vxlanRx returns the packets the node's VXLAN device received.
func vxlanRx(t *testing.T, n *lab.Node) int {
	t.Helper()
	out, err := exec.Command("ip", "-n", n.NS, "-s", "-j", "link", "show", "archipelago-vx").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", n.Name, err, out)
	}
	m := regexp.MustCompile(`"rx":\{"bytes":\d+,"packets":(\d+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("%s: no rx counters in %s", n.Name, out)
	}
	v, _ := strconv.Atoi(m[1])
	return v
}

// gatewayAddr is the address the workers route to: the gateway's
// InternalIP of the lab's first family.
func gatewayAddr(l *lab.Lab, gw *lab.Node) string {
	if !l.Has4() {
		return gw.LANIP6
	}
	return gw.LANIP
}

// A worker on a routed subnet (no shared L2 with its gateway) reaches the
// remote pods through the agent's VXLAN to the gateway, in every family,
// with its pods' source addresses; the on-link worker routes directly.
func TestRoutedWorkerThroughVXLAN(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	m := l.Member("alpha")
	r, w := m.Node("r1"), m.Node("w1")
	if r == nil {
		t.Skip("alpha has no routed worker in this lab")
	}
	gw, err := l.ActiveGateway(ctx, m)
	if err != nil || gw == nil {
		t.Fatalf("active gateway of alpha: %v %v", gw, err)
	}
	want := gatewayAddr(l, gw)

	// The gateway is off-link: the kernel refuses a route via it.
	out, err := exec.Command("ip", "-n", r.NS, "route", "add", "192.0.2.0/24", "via", want, "table", "99").CombinedOutput()
	if err == nil {
		_ = exec.Command("ip", "-n", r.NS, "route", "del", "192.0.2.0/24", "table", "99").Run()
		t.Fatalf("a route via the gateway %s was accepted on %s: the lab's routed worker shares its L2", want, r.Name)
	}
	t.Logf("direct route refused on %s: %s", r.Name, strings.TrimSpace(string(out)))

	deadline := time.Now().Add(30 * time.Second)
	for vxlanRemote(r) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: VXLAN device remote %q, want the gateway %s", r.Name, vxlanRemote(r), want)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := vxlanRemote(w); got != "" {
		t.Errorf("on-link worker %s has a VXLAN device (remote %s): it must route directly", w.Name, got)
	}

	// Traffic from the routed worker's pod arrives at the gateway's
	// VXLAN device, in every family, and the receiver sees the pod's
	// address.
	src := lab.PodByName(l, r.Name+"-p1")
	before := vxlanRx(t, gw)
	sent := 0
	for _, f := range l.Families() {
		for _, q := range l.Pods() {
			if q.Node.Member == m {
				continue
			}
			s, d := src.As(f), q.As(f)
			for i := 0; i < 3; i++ {
				seen, err := lab.TCP(ctx, s, d, 3*time.Second)
				if err != nil || seen != s.IP.String() {
					t.Errorf("%s %s -> %s: seen %q, %v", f, s.Name, d.Name, seen, err)
				}
				sent++
			}
		}
	}
	// Each TCP exchange is at least three packets from the worker.
	if got := vxlanRx(t, gw) - before; got < 3*sent {
		t.Errorf("the gateway's VXLAN device received %d packets for %d TCP exchanges: traffic did not take the VXLAN", got, sent)
	} else {
		t.Logf("%d TCP exchanges from %s, %d packets through %s's VXLAN device", sent, src.Name, got, gw.Name)
	}

	// The gateway's VXLAN port takes only the member's nodes: its sender
	// set has the routed worker's address, not the WAN's.
	set := "overlay4"
	if !l.Has4() {
		set = "overlay6"
	}
	senders, err := exec.Command("ip", "netns", "exec", gw.NS, "nft", "list", "set", "inet", "archipelago", set).CombinedOutput()
	if err != nil || !strings.Contains(string(senders), want) && !strings.Contains(string(senders), r.LANIP) {
		t.Errorf("the gateway's VXLAN senders do not hold %s: %v\n%s", r.Name, err, senders)
	}
	if strings.Contains(string(senders), "198.18.") || strings.Contains(string(senders), "fd18:") {
		t.Errorf("the gateway's VXLAN senders hold a WAN address:\n%s", senders)
	}

	// diagnose tells the operator.
	out2, code, err := l.CLI(ctx, "diagnose", "--context", m.Name, "--stale-after", "30s")
	if err != nil || code != 0 {
		t.Errorf("diagnose: exit %d %v\n%s", code, err, out2)
	}
	if wantLine := fmt.Sprintf("vxlan archipelago-vx to %s", want); !strings.Contains(out2, wantLine) {
		t.Errorf("diagnose does not say %q:\n%s", wantLine, out2)
	}
}
