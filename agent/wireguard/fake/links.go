package fake

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/archipelago-mesh/archipelago/agent/wireguard"
)

// Links is an in-memory wireguard.LinkOps that records every call that
// changed something.
type Links struct {
	mu sync.Mutex
	// KernelSupported decides whether AddWireGuard succeeds or fails with
	// wireguard.ErrKernelUnsupported.
	KernelSupported bool
	links           map[string]*Link
	changes         []string
}

// Link is the state of one fake interface.
type Link struct {
	Kind  wireguard.LinkKind
	MTU   int
	Up    bool
	Addrs []netip.Prefix
}

var _ wireguard.LinkOps = (*Links)(nil)

// NewLinks returns an empty fake.
func NewLinks(kernelSupported bool) *Links {
	return &Links{KernelSupported: kernelSupported, links: map[string]*Link{}}
}

// Put sets a link's state, e.g. a TUN left by a running userspace device.
func (l *Links) Put(name string, link Link) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.links[name] = &link
}

// Get returns a copy of a link's state.
func (l *Links) Get(name string) (Link, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lk, ok := l.links[name]
	if !ok {
		return Link{}, false
	}
	out := *lk
	out.Addrs = slices.Clone(lk.Addrs)
	return out, true
}

// Changes returns a description of every state-changing call, in order.
func (l *Links) Changes() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.changes)
}

// ResetChanges forgets recorded changes.
func (l *Links) ResetChanges() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.changes = nil
}

func (l *Links) get(name string) (*Link, error) {
	lk, ok := l.links[name]
	if !ok {
		return nil, fmt.Errorf("fake link %s: not found", name)
	}
	return lk, nil
}

// Kind implements wireguard.LinkOps.
func (l *Links) Kind(name string) (wireguard.LinkKind, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lk, ok := l.links[name]
	if !ok {
		return wireguard.LinkAbsent, nil
	}
	return lk.Kind, nil
}

// AddWireGuard implements wireguard.LinkOps.
func (l *Links) AddWireGuard(name string, mtu int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.KernelSupported {
		return fmt.Errorf("fake add %s: %w", name, wireguard.ErrKernelUnsupported)
	}
	if _, ok := l.links[name]; ok {
		return fmt.Errorf("fake add %s: exists", name)
	}
	l.links[name] = &Link{Kind: wireguard.LinkWireGuard, MTU: mtu}
	l.changes = append(l.changes, fmt.Sprintf("add %s mtu %d", name, mtu))
	return nil
}

// SetMTU implements wireguard.LinkOps.
func (l *Links) SetMTU(name string, mtu int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	lk, err := l.get(name)
	if err != nil {
		return err
	}
	if lk.MTU != mtu {
		lk.MTU = mtu
		l.changes = append(l.changes, fmt.Sprintf("mtu %s %d", name, mtu))
	}
	return nil
}

// SetUp implements wireguard.LinkOps.
func (l *Links) SetUp(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	lk, err := l.get(name)
	if err != nil {
		return err
	}
	if !lk.Up {
		lk.Up = true
		l.changes = append(l.changes, "up "+name)
	}
	return nil
}

// ReplaceAddrs implements wireguard.LinkOps.
func (l *Links) ReplaceAddrs(name string, addrs []netip.Prefix) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	lk, err := l.get(name)
	if err != nil {
		return err
	}
	want := slices.Clone(addrs)
	slices.SortFunc(want, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if !slices.Equal(want, lk.Addrs) {
		lk.Addrs = want
		l.changes = append(l.changes, fmt.Sprintf("addrs %s %v", name, want))
	}
	return nil
}

// Delete implements wireguard.LinkOps.
func (l *Links) Delete(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.links[name]; ok {
		delete(l.links, name)
		l.changes = append(l.changes, "delete "+name)
	}
	return nil
}
