package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// endpointResolver resolves DNS endpoint hosts off the reconcile path: a
// pass asks Lookup, which answers from memory at once and looks the host up
// in the background (the first time, and again once the answer is older
// than refresh). A failed lookup keeps the last good address, so a DNS
// outage never removes a working peer; a host never resolved yet is an
// error until its first lookup succeeds, then onResolved asks for a pass.
type endpointResolver struct {
	lookup     func(ctx context.Context, host string) (netip.Addr, error)
	refresh    time.Duration
	timeout    time.Duration
	now        func() time.Time
	onResolved func()

	mu    sync.Mutex
	hosts map[string]*resolved
}

type resolved struct {
	addr     netip.Addr
	at       time.Time // of the last good answer
	lastErr  error
	inFlight bool
}

func newEndpointResolver(onResolved func()) *endpointResolver {
	return &endpointResolver{
		lookup: systemLookup, refresh: 30 * time.Second, timeout: 5 * time.Second,
		now: time.Now, onResolved: onResolved, hosts: map[string]*resolved{},
	}
}

func systemLookup(ctx context.Context, host string) (netip.Addr, error) {
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(addrs) == 0 {
		return netip.Addr{}, errors.New("no address")
	}
	return addrs[0].Unmap(), nil
}

// Lookup returns host's last good address without waiting for DNS.
func (r *endpointResolver) Lookup(host string) (netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hosts[host]
	if h == nil {
		h = &resolved{}
		r.hosts[host] = h
	}
	if !h.inFlight && (!h.addr.IsValid() || r.now().Sub(h.at) >= r.refresh) {
		h.inFlight = true
		go r.resolve(host)
	}
	if h.addr.IsValid() {
		return h.addr, nil
	}
	if h.lastErr != nil {
		return netip.Addr{}, fmt.Errorf("resolve %s: %w", host, h.lastErr)
	}
	return netip.Addr{}, fmt.Errorf("resolving %s", host)
}

func (r *endpointResolver) resolve(host string) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	addr, err := r.lookup(ctx, host)
	r.mu.Lock()
	h := r.hosts[host]
	h.inFlight = false
	changed := false
	if err != nil {
		h.lastErr = err
	} else {
		changed = addr != h.addr
		h.addr, h.at, h.lastErr = addr, r.now(), nil
	}
	r.mu.Unlock()
	if changed && r.onResolved != nil {
		r.onResolved()
	}
}
