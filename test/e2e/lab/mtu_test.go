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

// Issue 12: the tunnel MTU is derived from the WAN each gateway sends on.
// bravo's WAN is 1400 bytes, so its tunnel gets 1400 - 60 = 1340 while the
// others (1500) get 1440, with no MTU set in the ClusterSet; TCP between a
// pod of alpha and one of bravo is clamped to bravo's tunnel both ways and
// carries bulk data.
func TestTunnelMTUFollowsWAN(t *testing.T) {
	l := need(t)
	ctx := context.Background()
	want := map[string]int{}
	for _, m := range l.Members() {
		want[m.Name] = 1440
		if m.WANMTU != 0 {
			want[m.Name] = m.WANMTU - 60
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
	// Workers' pods, so the path is worker -> gateway -> tunnel -> gateway
	// -> worker.
	src, dst := workerPod(t, alpha), workerPod(t, bravo)
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
	// bravo's tunnel 1340 less 40 bytes of IPv4 and TCP headers; the
	// kernel's value is a little lower again with TCP options.
	if mss > want[bravo.Name]-40 {
		t.Errorf("client MSS %d, want at most %d (bravo's tunnel MTU %d)", mss, want[bravo.Name]-40, want[bravo.Name])
	}
	payload := make([]byte, 1<<20)
	_, _ = rand.Read(payload)
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
