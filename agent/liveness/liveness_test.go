package liveness

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
)

func TestProberAliveThenDead(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srvCtx, stopSrv := context.WithCancel(ctx)
	go func() { _ = ServeConn(srvCtx, pc) }()
	go func() { <-srvCtx.Done(); _ = pc.Close() }()

	var dead atomic.Int32
	p := &Prober{Interval: 20 * time.Millisecond, Misses: 3, Log: testr.New(t), OnDead: func(string) { dead.Add(1) }}
	addr := netip.MustParseAddrPort(pc.LocalAddr().String())
	if got := p.State("gw1"); got != Unknown {
		t.Fatalf("before any target: %v, want Unknown", got)
	}
	p.SetTarget("gw1", addr)
	go func() { _ = p.Run(ctx) }()
	waitState(t, p, "gw1", Alive)
	if got := p.State("gw2"); got != Unknown {
		t.Errorf("state of a node that is not the target: %v, want Unknown", got)
	}
	stopSrv() // the node "loses power"
	waitState(t, p, "gw1", Dead)
	deadline := time.Now().Add(2 * time.Second)
	for dead.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if dead.Load() != 1 {
		t.Errorf("OnDead called %d times, want 1", dead.Load())
	}
	// A new target starts Unknown: never answered means no responder, and
	// the Lease alone decides.
	p.SetTarget("gw2", netip.MustParseAddrPort("127.0.0.1:9"))
	time.Sleep(100 * time.Millisecond)
	if got := p.State("gw2"); got != Unknown {
		t.Errorf("target that never answered: %v, want Unknown", got)
	}
}

func waitState(t *testing.T, p *Prober, target string, want State) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if p.State(target) == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s never became %v (is %v)", target, want, p.State(target))
}
