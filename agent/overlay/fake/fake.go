// Package fake is an in-memory overlay.Links: VXLAN devices and their
// neighbour and address entries, with a write counter.
package fake

import (
	"net"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Links is an in-memory overlay.Links. It is safe for concurrent use.
type Links struct {
	mu     sync.Mutex
	next   int
	links  map[string]*netlink.Vxlan
	neighs map[int][]netlink.Neigh
	addrs  map[int][]netlink.Addr
	writes int
	// OnAdd, when set, is called with the name of every device added (a
	// routing fake that must know the device too).
	OnAdd func(name string)
}

// New returns a fake without devices.
func New() *Links {
	return &Links{next: 100, links: map[string]*netlink.Vxlan{}, neighs: map[int][]netlink.Neigh{}, addrs: map[int][]netlink.Addr{}}
}

// Device returns a copy of the VXLAN device name, if it exists.
func (l *Links) Device(name string) (netlink.Vxlan, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.links[name]
	if !ok {
		return netlink.Vxlan{}, false
	}
	return *v, true
}

// Neighbours returns the neighbour entries of device name.
func (l *Links) Neighbours(name string) []netlink.Neigh {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.links[name]
	if !ok {
		return nil
	}
	return append([]netlink.Neigh(nil), l.neighs[v.Index]...)
}

// Writes is the number of writes so far.
func (l *Links) Writes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writes
}

// LinkByName implements overlay.Links.
func (l *Links) LinkByName(name string) (netlink.Link, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v, ok := l.links[name]; ok {
		c := *v
		return &c, nil
	}
	return nil, netlink.LinkNotFoundError{}
}

// LinkAdd implements overlay.Links (VXLAN devices only).
func (l *Links) LinkAdd(link netlink.Link) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := link.(*netlink.Vxlan)
	if !ok {
		return unix.EOPNOTSUPP
	}
	if _, dup := l.links[v.Name]; dup {
		return unix.EEXIST
	}
	c := *v
	l.next++
	c.Index = l.next
	c.Flags &^= net.FlagUp
	if len(c.HardwareAddr) == 0 {
		c.HardwareAddr = net.HardwareAddr{0x0a, 0, 0, 0, 0, byte(c.Index)}
	}
	l.links[c.Name] = &c
	l.writes++
	if l.OnAdd != nil {
		l.OnAdd(c.Name)
	}
	return nil
}

// LinkDel implements overlay.Links.
func (l *Links) LinkDel(link netlink.Link) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.links[link.Attrs().Name]
	if !ok {
		return unix.ENODEV
	}
	delete(l.neighs, v.Index)
	delete(l.addrs, v.Index)
	delete(l.links, v.Name)
	l.writes++
	return nil
}

func (l *Links) get(link netlink.Link) (*netlink.Vxlan, error) {
	v, ok := l.links[link.Attrs().Name]
	if !ok {
		return nil, unix.ENODEV
	}
	return v, nil
}

// LinkSetUp implements overlay.Links.
func (l *Links) LinkSetUp(link netlink.Link) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, err := l.get(link)
	if err != nil {
		return err
	}
	v.Flags |= net.FlagUp
	l.writes++
	return nil
}

// LinkSetMTU implements overlay.Links.
func (l *Links) LinkSetMTU(link netlink.Link, mtu int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, err := l.get(link)
	if err != nil {
		return err
	}
	v.MTU = mtu
	l.writes++
	return nil
}

// NeighList implements overlay.Links.
func (l *Links) NeighList(idx, family int) ([]netlink.Neigh, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []netlink.Neigh
	for _, n := range l.neighs[idx] {
		if n.Family == family {
			out = append(out, n)
		}
	}
	return out, nil
}

// NeighSet implements overlay.Links.
func (l *Links) NeighSet(n *netlink.Neigh) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	list := l.neighs[n.LinkIndex]
	for i := range list {
		if list[i].IP.Equal(n.IP) {
			list[i] = *n
			l.writes++
			return nil
		}
	}
	l.neighs[n.LinkIndex] = append(list, *n)
	l.writes++
	return nil
}

// AddrList implements overlay.Links.
func (l *Links) AddrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, err := l.get(link)
	if err != nil {
		return nil, err
	}
	var out []netlink.Addr
	for _, a := range l.addrs[v.Index] {
		if (a.IP.To4() != nil) == (family == netlink.FAMILY_V4) {
			out = append(out, a)
		}
	}
	return out, nil
}

// AddrReplace implements overlay.Links.
func (l *Links) AddrReplace(link netlink.Link, a *netlink.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, err := l.get(link)
	if err != nil {
		return err
	}
	l.addrs[v.Index] = append(l.addrs[v.Index], *a)
	l.writes++
	return nil
}
