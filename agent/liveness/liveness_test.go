package liveness

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
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

// countingConn counts the datagrams a responder reads.
type countingConn struct {
	net.PacketConn
	reads atomic.Int64
}

func (c *countingConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, from, err := c.PacketConn.ReadFrom(b)
	if err == nil {
		c.reads.Add(1)
	}
	return n, from, err
}

func listen(t *testing.T) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	return pc
}

// A request that claims to come from another responder (here: sent from
// that responder's own socket) gets one reply, and the reply is not
// answered: two responders never echo each other.
func TestRespondersDoNotLoop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := &countingConn{PacketConn: listen(t)}, &countingConn{PacketConn: listen(t)}
	go func() { _ = ServeConn(ctx, a) }()
	go func() { _ = ServeConn(ctx, b) }()

	req := make([]byte, probeLen)
	copy(req, requestMagic)
	req[probeLen-1] = 7
	if _, err := b.PacketConn.WriteTo(req, a.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for b.reads.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a loop would run thousands of rounds in this time
	if got := a.reads.Load(); got != 1 {
		t.Errorf("responder a read %d datagrams, want 1 (the request)", got)
	}
	if got := b.reads.Load(); got != 1 {
		t.Errorf("responder b read %d datagrams, want 1 (a's reply, not answered)", got)
	}
}

// Only a reply of the right type, from the target's address and port, to one
// of the latest probes, makes the target Alive.
func TestProberIgnoresForgedReplies(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	target, other := listen(t), listen(t)
	p := &Prober{Interval: 10 * time.Millisecond, Misses: 50, Log: testr.New(t)}
	p.SetTarget("gw1", netip.MustParseAddrPort(target.LocalAddr().String()))
	go func() { _ = p.Run(ctx) }()

	buf := make([]byte, 64)
	next := func() ([]byte, net.Addr) {
		t.Helper()
		_ = target.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, from, err := target.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no probe arrived: %v", err)
		}
		seq, ok := parse(buf[:n], requestMagic)
		if !ok {
			t.Fatalf("probe %q is not a request", buf[:n])
		}
		msg := make([]byte, probeLen)
		copy(msg, replyMagic)
		binary.BigEndian.PutUint64(msg[len(replyMagic):], seq)
		return msg, from
	}
	withSeq := func(msg []byte, delta int64) []byte {
		out := slices.Clone(msg)
		binary.BigEndian.PutUint64(out[len(replyMagic):], binary.BigEndian.Uint64(msg[len(replyMagic):])+uint64(delta))
		return out
	}
	// fresh drops the probes queued in the socket and returns a reply to
	// the next one.
	fresh := func() ([]byte, net.Addr) {
		t.Helper()
		for {
			_ = target.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, _, err := target.ReadFrom(buf); err != nil {
				break
			}
		}
		return next()
	}
	first, _ := next()
	for i := 0; i < window+1; i++ {
		next()
	}
	for _, c := range []struct {
		name string
		from net.PacketConn
		msg  func(reply []byte) []byte
	}{
		{"a probe number not sent yet", target, func(r []byte) []byte { return withSeq(r, 1000) }},
		{"a probe number far ahead", target, func(r []byte) []byte { return withSeq(r, 1<<40) }},
		{"a stale probe number", target, func([]byte) []byte { return first }},
		{"the right number from another port", other, func(r []byte) []byte { return r }},
		{"the request echoed back (a version-1 responder)", target, func(r []byte) []byte {
			echo := slices.Clone(r)
			copy(echo, requestMagic)
			return echo
		}},
		{"a short datagram", target, func(r []byte) []byte { return r[:probeLen-1] }},
	} {
		reply, prober := fresh()
		if _, err := c.from.WriteTo(c.msg(reply), prober); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond)
		if got := p.State("gw1"); got != Unknown {
			t.Fatalf("after %s: %v, want Unknown", c.name, got)
		}
	}
	reply, prober := fresh()
	if _, err := target.WriteTo(reply, prober); err != nil {
		t.Fatal(err)
	}
	waitState(t, p, "gw1", Alive)
}
