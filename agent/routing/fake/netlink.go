package fake

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netlink is an in-memory routing.Netlink. It is safe for concurrent use.
type Netlink struct {
	mu     sync.Mutex
	routes []netlink.Route
	rules  []netlink.Rule
	links  map[string]netlink.Link
	addrs  []netlink.Addr
	writes map[string]int
	// failures injects errors: op name ("RouteReplace", ...) to error.
	failures map[string]error
}

// NewNetlink returns an empty fake with the kernel's default rules
// (local 0, main 32766, default 32767) for both families.
func NewNetlink() *Netlink {
	f := &Netlink{links: map[string]netlink.Link{}, writes: map[string]int{}, failures: map[string]error{}}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		for _, r := range []struct{ prio, table int }{{0, unix.RT_TABLE_LOCAL}, {32766, unix.RT_TABLE_MAIN}, {32767, unix.RT_TABLE_DEFAULT}} {
			if fam == netlink.FAMILY_V6 && r.table == unix.RT_TABLE_DEFAULT {
				continue
			}
			rule := netlink.NewRule()
			rule.Family, rule.Priority, rule.Table = fam, r.prio, r.table
			rule.Protocol = unix.RTPROT_KERNEL
			f.rules = append(f.rules, *rule)
		}
	}
	return f
}

// AddLink makes a device known to LinkByName and returns its index.
func (f *Netlink) AddLink(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.links[name]; ok {
		return l.Attrs().Index
	}
	idx := len(f.links) + 2 // 1 is lo
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.Index = name, idx
	f.links[name] = &netlink.Dummy{LinkAttrs: attrs}
	return idx
}

// FailNext makes the next call of op (a method name such as "RouteReplace")
// return err.
func (f *Netlink) FailNext(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures[op] = err
}

func (f *Netlink) fail(op string) error {
	if err, ok := f.failures[op]; ok {
		delete(f.failures, op)
		return err
	}
	return nil
}

// Seed installs a route as someone else would (not counted as a write).
// Table 0 means main.
func (f *Netlink) Seed(r netlink.Route) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.put(normalize(r))
}

// SeedRule installs a rule as someone else would (not counted as a write).
func (f *Netlink) SeedRule(r netlink.Rule) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, r)
}

// Writes returns the number of write calls (RouteReplace, RouteDel, RuleAdd,
// RuleDel) since creation or the last ResetWrites, including failed ones.
func (f *Netlink) Writes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.writes {
		n += c
	}
	return n
}

// WritesOf returns the number of calls of one write method.
func (f *Netlink) WritesOf(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes[op]
}

// ResetWrites zeroes the write counters.
func (f *Netlink) ResetWrites() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = map[string]int{}
}

// Routes returns copies of all routes in table (0 means main), sorted by
// destination.
func (f *Netlink) Routes(table int) []netlink.Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	if table == 0 {
		table = unix.RT_TABLE_MAIN
	}
	var out []netlink.Route
	for _, r := range f.routes {
		if r.Table == table {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if a, b := out[i].Dst.String(), out[j].Dst.String(); a != b {
			return a < b
		}
		return out[i].Priority < out[j].Priority
	})
	return out
}

// AllRoutes returns copies of every route in every table.
func (f *Netlink) AllRoutes() []netlink.Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.routes)
}

// Rules returns copies of all rules.
func (f *Netlink) Rules() []netlink.Rule {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.rules)
}

// AwaitRoutes waits up to 5s until table holds a route for each of dsts
// (CIDR strings) and fails the test otherwise.
func (f *Netlink) AwaitRoutes(t testing.TB, table int, dsts ...string) {
	t.Helper()
	f.await(t, func() (bool, string) {
		have := map[string]bool{}
		for _, r := range f.Routes(table) {
			have[r.Dst.String()] = true
		}
		for _, d := range dsts {
			if !have[canonical(d)] {
				return false, fmt.Sprintf("route %s not in table %d (have %v)", d, table, keys(have))
			}
		}
		return true, ""
	})
}

// AwaitNoRoutes waits up to 5s until table holds none of dsts (CIDR strings),
// or no route at all when dsts is empty.
func (f *Netlink) AwaitNoRoutes(t testing.TB, table int, dsts ...string) {
	t.Helper()
	f.await(t, func() (bool, string) {
		rs := f.Routes(table)
		if len(dsts) == 0 {
			return len(rs) == 0, fmt.Sprintf("table %d still has %d routes", table, len(rs))
		}
		for _, r := range rs {
			for _, d := range dsts {
				if r.Dst.String() == canonical(d) {
					return false, fmt.Sprintf("route %s still in table %d", d, table)
				}
			}
		}
		return true, ""
	})
}

func (f *Netlink) await(t testing.TB, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// RouteListFiltered implements routing.Netlink with the library's semantics:
// without RT_FILTER_TABLE only the main table is listed.
func (f *Netlink) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("RouteListFiltered"); err != nil {
		return nil, err
	}
	var out []netlink.Route
	for _, r := range f.routes {
		if family != netlink.FAMILY_ALL && r.Family != family {
			continue
		}
		switch {
		case filter == nil || mask&netlink.RT_FILTER_TABLE == 0:
			if r.Table != unix.RT_TABLE_MAIN {
				continue
			}
		case filter.Table != unix.RT_TABLE_UNSPEC && r.Table != filter.Table:
			continue
		}
		if filter != nil {
			if mask&netlink.RT_FILTER_PROTOCOL != 0 && r.Protocol != filter.Protocol {
				continue
			}
			if mask&netlink.RT_FILTER_DST != 0 && r.Dst.String() != filter.Dst.String() {
				continue
			}
			if mask&netlink.RT_FILTER_OIF != 0 && r.LinkIndex != filter.LinkIndex {
				continue
			}
			if mask&netlink.RT_FILTER_GW != 0 && !r.Gw.Equal(filter.Gw) {
				continue
			}
		}
		out = append(out, clone(r))
	}
	return out, nil
}

// RouteReplace implements routing.Netlink.
func (f *Netlink) RouteReplace(r *netlink.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes["RouteReplace"]++
	if err := f.fail("RouteReplace"); err != nil {
		return err
	}
	if r.Dst == nil {
		return unix.EINVAL
	}
	if r.LinkIndex != 0 && !f.hasIndex(r.LinkIndex) {
		return unix.ENODEV
	}
	nr := normalize(*r)
	if nr.LinkIndex == 0 && len(nr.Gw) != 0 {
		// The kernel resolves the outgoing device of a gateway route; the
		// fake pretends it is eth0 (index 1000) so that read-back differs
		// from what was written, as it does for real.
		nr.LinkIndex = 1000
	}
	f.put(nr)
	return nil
}

// RouteDel implements routing.Netlink: like the kernel it deletes the first
// route (lowest metric) with the same table and destination, of the given
// metric and type when those are set.
func (f *Netlink) RouteDel(r *netlink.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes["RouteDel"]++
	if err := f.fail("RouteDel"); err != nil {
		return err
	}
	typ, prio := r.Type, r.Priority
	nr := normalize(*r)
	f.sort()
	for i, cur := range f.routes {
		if cur.Table == nr.Table && cur.Dst.String() == nr.Dst.String() &&
			(typ == 0 || cur.Type == typ) && (prio == 0 || cur.Priority == nr.Priority) {
			f.routes = slices.Delete(f.routes, i, i+1)
			return nil
		}
	}
	return unix.ESRCH
}

// RuleList implements routing.Netlink.
func (f *Netlink) RuleList(family int) ([]netlink.Rule, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("RuleList"); err != nil {
		return nil, err
	}
	var out []netlink.Rule
	for _, r := range f.rules {
		if family == netlink.FAMILY_ALL || r.Family == family {
			out = append(out, r)
		}
	}
	return out, nil
}

// RuleAdd implements routing.Netlink; like the kernel it refuses an
// identical rule with EEXIST.
func (f *Netlink) RuleAdd(r *netlink.Rule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes["RuleAdd"]++
	if err := f.fail("RuleAdd"); err != nil {
		return err
	}
	for _, cur := range f.rules {
		if sameRule(cur, *r) {
			return unix.EEXIST
		}
	}
	f.rules = append(f.rules, *r)
	return nil
}

// RuleDel implements routing.Netlink.
func (f *Netlink) RuleDel(r *netlink.Rule) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes["RuleDel"]++
	if err := f.fail("RuleDel"); err != nil {
		return err
	}
	for i, cur := range f.rules {
		if sameRule(cur, *r) {
			f.rules = slices.Delete(f.rules, i, i+1)
			return nil
		}
	}
	return unix.ENOENT
}

// LinkByName implements routing.Netlink.
func (f *Netlink) LinkByName(name string) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("LinkByName"); err != nil {
		return nil, err
	}
	if l, ok := f.links[name]; ok {
		return l, nil
	}
	return nil, netlink.LinkNotFoundError{}
}

// AddAddr puts an address on the device name (made with AddLink if new)
// and sets the device's MTU, as the node's network setup would.
func (f *Netlink) AddAddr(name string, p netip.Prefix, mtu int) {
	idx := f.AddLink(name)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.links[name].Attrs().MTU = mtu
	ip := net.IP(p.Addr().AsSlice())
	f.addrs = append(f.addrs, netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, LinkIndex: idx})
}

// SetLinkMTU changes the MTU of a device made with AddLink.
func (f *Netlink) SetLinkMTU(name string, mtu int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.links[name]; ok {
		l.Attrs().MTU = mtu
	}
}

// AddrList implements routing.Links (link nil: every device's).
func (f *Netlink) AddrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("AddrList"); err != nil {
		return nil, err
	}
	var out []netlink.Addr
	for _, a := range f.addrs {
		if link != nil && link.Attrs().Index != a.LinkIndex {
			continue
		}
		if is4 := a.IP.To4() != nil; (family == netlink.FAMILY_V4 && !is4) || (family == netlink.FAMILY_V6 && is4) {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

// LinkByIndex implements routing.Links.
func (f *Netlink) LinkByIndex(index int) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.links {
		if l.Attrs().Index == index {
			return l, nil
		}
	}
	return nil, netlink.LinkNotFoundError{}
}

// RouteGet implements routing.Links: the most specific route of the main
// table that holds dst (Seed them), as "ip route get" would find it.
func (f *Netlink) RouteGet(dst net.IP) ([]netlink.Route, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ip, ok := netip.AddrFromSlice(dst)
	if !ok {
		return nil, unix.EINVAL
	}
	ip = ip.Unmap()
	var best *netlink.Route
	bestBits := -1
	for i := range f.routes {
		r := &f.routes[i]
		if r.Table != unix.RT_TABLE_MAIN || r.Type == unix.RTN_UNREACHABLE {
			continue
		}
		bits, want := 0, netip.Prefix{}
		if r.Dst != nil {
			p, err := netip.ParsePrefix(r.Dst.String())
			if err != nil {
				continue
			}
			bits, want = p.Bits(), p
		} else {
			if r.Family != 0 && (r.Family == netlink.FAMILY_V6) != ip.Is6() {
				continue
			}
			want = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if ip.Is6() {
				want = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
		}
		if want.Contains(ip) && bits > bestBits {
			best, bestBits = r, bits
		}
	}
	if best == nil {
		return nil, unix.ENETUNREACH
	}
	return []netlink.Route{clone(*best)}, nil
}

func (f *Netlink) hasIndex(idx int) bool {
	for _, l := range f.links {
		if l.Attrs().Index == idx {
			return true
		}
	}
	return false
}

// put adds r or replaces the route with its table, destination and metric,
// as NLM_F_REPLACE does.
func (f *Netlink) put(r netlink.Route) {
	for i, cur := range f.routes {
		if cur.Table == r.Table && cur.Dst.String() == r.Dst.String() && cur.Priority == r.Priority {
			f.routes[i] = r
			return
		}
	}
	f.routes = append(f.routes, r)
}

// sort orders routes by metric, the order in which the kernel finds them.
func (f *Netlink) sort() {
	slices.SortStableFunc(f.routes, func(a, b netlink.Route) int { return a.Priority - b.Priority })
}

func sameRule(a, b netlink.Rule) bool {
	return a.Family == b.Family && a.Priority == b.Priority && a.Table == b.Table &&
		fmt.Sprint(a.Src) == fmt.Sprint(b.Src) && fmt.Sprint(a.Dst) == fmt.Sprint(b.Dst) &&
		a.Mark == b.Mark && a.IifName == b.IifName && a.OifName == b.OifName
}

func normalize(r netlink.Route) netlink.Route {
	r = clone(r)
	if r.Table == 0 {
		r.Table = unix.RT_TABLE_MAIN
	}
	if r.Dst != nil {
		r.Dst = &net.IPNet{IP: r.Dst.IP.Mask(r.Dst.Mask), Mask: r.Dst.Mask}
		if ip4 := r.Dst.IP.To4(); ip4 != nil && len(r.Dst.Mask) == net.IPv4len {
			r.Dst.IP = ip4
		}
		if r.Family == 0 {
			r.Family = netlink.FAMILY_V6
			if len(r.Dst.Mask) == net.IPv4len {
				r.Family = netlink.FAMILY_V4
			}
		}
	}
	if r.Family == netlink.FAMILY_V6 && r.Priority == 0 {
		r.Priority = 1024 // the kernel's default IPv6 metric
	}
	if r.Type == 0 {
		r.Type = unix.RTN_UNICAST
	}
	return r
}

func clone(r netlink.Route) netlink.Route {
	if r.Dst != nil {
		r.Dst = &net.IPNet{IP: slices.Clone(r.Dst.IP), Mask: slices.Clone(r.Dst.Mask)}
	}
	r.Gw = slices.Clone(r.Gw)
	r.Src = slices.Clone(r.Src)
	return r
}

func canonical(cidr string) string {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return cidr
	}
	return n.String()
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
