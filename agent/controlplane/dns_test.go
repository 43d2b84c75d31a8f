package controlplane

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// scriptedDNS answers lookups from a table it can change, and can block.
type scriptedDNS struct {
	mu      sync.Mutex
	answers map[string]netip.Addr
	fail    bool
	gate    chan struct{} // when not nil, every lookup waits for it
	calls   int
}

func (d *scriptedDNS) lookup(ctx context.Context, host string) (netip.Addr, error) {
	d.mu.Lock()
	gate := d.gate
	d.calls++
	d.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return netip.Addr{}, ctx.Err()
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail {
		return netip.Addr{}, errors.New("server misbehaving")
	}
	a, ok := d.answers[host]
	if !ok {
		return netip.Addr{}, errors.New("no such host")
	}
	return a, nil
}

func TestResolverNeverBlocksAndKeepsLastGood(t *testing.T) {
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	dns := &scriptedDNS{answers: map[string]netip.Addr{"gw.example": netip.MustParseAddr("192.0.2.7")}, gate: make(chan struct{})}
	resolvedCh := make(chan struct{}, 10)
	r := newEndpointResolver(func() { resolvedCh <- struct{}{} })
	r.lookup, r.now, r.refresh = dns.lookup, clock, 30*time.Second

	// The first lookup of a host does not wait for DNS (which hangs here).
	start := time.Now()
	if _, err := r.Lookup("gw.example"); err == nil {
		t.Fatal("unresolved host returned an address")
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Fatalf("Lookup blocked for %s", took)
	}
	close(dns.gate)
	select {
	case <-resolvedCh:
	case <-time.After(2 * time.Second):
		t.Fatal("no pass requested after the lookup succeeded")
	}
	if a, err := r.Lookup("gw.example"); err != nil || a != netip.MustParseAddr("192.0.2.7") {
		t.Fatalf("after resolution: %v %v", a, err)
	}
	// DNS fails from now on: the refresh fails, the address stays.
	dns.mu.Lock()
	dns.fail = true
	dns.mu.Unlock()
	advance(time.Minute)
	for i := 0; i < 5; i++ {
		a, err := r.Lookup("gw.example")
		if err != nil || a != netip.MustParseAddr("192.0.2.7") {
			t.Fatalf("during a DNS outage: %v %v, want the last good address", a, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	dns.mu.Lock()
	calls := dns.calls
	dns.mu.Unlock()
	if calls < 2 {
		t.Errorf("%d lookups, want a refresh after the refresh period", calls)
	}
	// A new address is picked up by the next refresh.
	dns.mu.Lock()
	dns.fail = false
	dns.answers["gw.example"] = netip.MustParseAddr("192.0.2.8")
	dns.mu.Unlock()
	advance(time.Minute)
	_, _ = r.Lookup("gw.example")
	select {
	case <-resolvedCh:
	case <-time.After(2 * time.Second):
		t.Fatal("no pass requested after the address changed")
	}
	if a, _ := r.Lookup("gw.example"); a != netip.MustParseAddr("192.0.2.8") {
		t.Errorf("after the change: %v, want 192.0.2.8", a)
	}
}
