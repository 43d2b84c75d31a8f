package probe

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestServeAnswersWithRemoteAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln) }()

	for i := 0; i < 3; i++ {
		answer, err := Connect(context.Background(), ln.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		host, port, err := net.SplitHostPort(answer)
		if err != nil {
			t.Fatalf("answer %q is not host:port: %v", answer, err)
		}
		if host != "127.0.0.1" {
			t.Errorf("server saw %s, want 127.0.0.1", host)
		}
		if p, err := strconv.Atoi(port); err != nil || p == 0 {
			t.Errorf("answer %q has no source port", answer)
		}
		if got := SeenHost(answer); got != "127.0.0.1" {
			t.Errorf("SeenHost(%q) = %q", answer, got)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
}

func TestConnectFailsOnClosedPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	if _, err := Connect(context.Background(), addr, 2*time.Second); err == nil {
		t.Fatal("connect to a closed port succeeded")
	}
}

func TestConnectTimesOutOnSilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	// Accepts (the kernel does) but never answers.
	start := time.Now()
	if _, err := Connect(context.Background(), ln.Addr().String(), 300*time.Millisecond); err == nil {
		t.Fatal("connect to a silent server succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("connect took %s, want about the 300ms timeout", d)
	}
}

func TestSeenHostIPv6(t *testing.T) {
	if got := SeenHost("[fd00::5]:4000\n"); got != "fd00::5" {
		t.Fatalf("SeenHost = %q", got)
	}
}

func TestServeUDPAnswersWithRemoteAddressAndName(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeUDP(ctx, pc, "echo-1") }()

	ports := map[string]bool{}
	for i := 0; i < 3; i++ {
		answer, err := ConnectUDP(context.Background(), pc.LocalAddr().String(), 5*time.Second)
		if err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		f := strings.Fields(answer)
		if len(f) != 2 || f[1] != "echo-1" {
			t.Fatalf("answer %q, want \"<addr> echo-1\"", answer)
		}
		host, port, err := net.SplitHostPort(f[0])
		if err != nil || host != "127.0.0.1" {
			t.Fatalf("answer %q: address %q %v, want 127.0.0.1:<port>", answer, host, err)
		}
		ports[port] = true
	}
	if len(ports) != 3 {
		t.Errorf("3 requests came from %d source ports, want a new one each", len(ports))
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
}

func TestConnectUDPTimesOutWithoutServer(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer pc.Close() // bound but silent
	if _, err := ConnectUDP(context.Background(), pc.LocalAddr().String(), 700*time.Millisecond); err == nil {
		t.Fatal("a silent UDP socket answered")
	}
}

// Two servers on the same port (here 127.0.0.1 and 127.0.0.2) never answer
// each other: one forged datagram must not start an endless exchange.
func TestServeUDPIgnoresAnotherServersPort(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = ServeUDP(ctx, pc, "echo-1") }()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	peer, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.2", strconv.Itoa(port)))
	if err != nil {
		t.Skipf("no second loopback address to bind port %d on: %v", port, err)
	}
	defer peer.Close()
	if _, err := peer.WriteTo([]byte("probe\n"), pc.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, _, err := peer.ReadFrom(make([]byte, 256)); err == nil {
		t.Fatalf("the server answered a datagram from its own port number (%d bytes)", n)
	}
	// An ordinary client still gets its answer.
	if _, err := ConnectUDP(context.Background(), pc.LocalAddr().String(), 5*time.Second); err != nil {
		t.Fatalf("connect: %v", err)
	}
}
