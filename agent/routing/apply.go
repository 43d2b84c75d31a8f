package routing

import (
	"errors"
	"fmt"
	"github.com/archipelago-mesh/archipelago/internal/prefix"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Changes says what one Apply or Cleanup wrote.
type Changes struct {
	Added   []netip.Prefix // routes that were missing
	Updated []netip.Prefix // routes that existed with other attributes
	Deleted []netip.Prefix // routes the plan no longer has
	// RulesAdded and RulesDeleted count policy rules written.
	RulesAdded, RulesDeleted int
}

// Empty reports whether nothing was written.
func (c Changes) Empty() bool {
	return len(c.Added) == 0 && len(c.Updated) == 0 && len(c.Deleted) == 0 &&
		c.RulesAdded == 0 && c.RulesDeleted == 0
}

var families = []int{netlink.FAMILY_V4, netlink.FAMILY_V6}

// Apply makes the agent's table and rule match plan, writing only the
// differences. Routes outside the agent's table, and routes in it without the
// agent's protocol, are never read for a decision nor written. An error for
// one route does not stop the others; all errors are returned joined, and the
// Changes say what was written anyway.
func Apply(nl Netlink, plan RoutePlan) (Changes, error) {
	var ch Changes
	if err := plan.Validate(); err != nil {
		return ch, fmt.Errorf("invalid route plan: %w", err)
	}
	table, prio := plan.TableID(), plan.RulePriorityOrDefault()

	want, err := desiredRoutes(nl, plan)
	var errs []error
	if err != nil {
		// A missing device fails only its own routes; keep going with the rest
		// but do not delete routes whose wanted form we could not compute.
		errs = append(errs, err)
	}

	for _, fam := range families {
		have, err := ownedRoutes(nl, fam, table)
		if err != nil {
			if isNoFamily(err) && !want.hasFamily(fam) {
				continue // e.g. IPv6 disabled on this host and no IPv6 routes wanted
			}
			errs = append(errs, err)
			continue
		}
		haveByKey := make(map[routeKey]netlink.Route, len(have))
		for _, r := range have {
			dst, ok := prefixOf(r.Dst)
			if !ok {
				continue
			}
			k := routeKey{dst: dst, unreachable: r.Type == unix.RTN_UNREACHABLE}
			if _, dup := haveByKey[k]; dup {
				// Two routes for one destination (different metric or TOS):
				// keep the first, the second is stale.
				if err := nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("delete duplicate route %s in table %d: %w", dst, table, err))
				} else {
					ch.Deleted = append(ch.Deleted, dst)
				}
				continue
			}
			haveByKey[k] = r
		}

		for _, k := range want.order {
			if familyOf(k.dst) != fam {
				continue
			}
			w := want.routes[k]
			cur, exists := haveByKey[k]
			if exists && sameRoute(cur, w) {
				continue
			}
			if err := nl.RouteReplace(&w); err != nil {
				errs = append(errs, fmt.Errorf("replace %s in table %d: %w", describe(k, w, want.devs[k.dst]), table, err))
				continue
			}
			if exists && k.unreachable && cur.Priority != w.Priority {
				// Another metric is another route: the replace added one
				// next to the old, which goes now (after, so that the range
				// is never without it).
				if err := nl.RouteDel(&cur); err != nil && !errors.Is(err, unix.ESRCH) {
					errs = append(errs, fmt.Errorf("delete %s with metric %d from table %d: %w", describe(k, cur, ""), cur.Priority, table, err))
				}
			}
			if exists {
				ch.Updated = append(ch.Updated, k.dst)
			} else {
				ch.Added = append(ch.Added, k.dst)
			}
		}

		for k, cur := range haveByKey {
			if _, keep := want.routes[k]; keep || (!k.unreachable && want.failed[k.dst]) {
				continue
			}
			if err := nl.RouteDel(&cur); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete %s from table %d: %w", describe(k, cur, ""), table, err))
				continue
			}
			ch.Deleted = append(ch.Deleted, k.dst)
		}

		added, deleted, err := syncRule(nl, fam, table, prio, want.hasFamily(fam))
		ch.RulesAdded += added
		ch.RulesDeleted += deleted
		if err != nil {
			errs = append(errs, err)
		}
	}
	sortPrefixes(ch.Added)
	sortPrefixes(ch.Updated)
	sortPrefixes(ch.Deleted)
	return ch, errors.Join(errs...)
}

// Cleanup removes the agent's rules (both families) and every route in table
// that carries the agent's protocol. It is safe to call when nothing is there.
func Cleanup(nl Netlink, table, priority int) error {
	if table == 0 {
		table = DefaultTable
	}
	if priority == 0 {
		priority = DefaultRulePriority
	}
	var errs []error
	for _, fam := range families {
		// Rule first: with the rule gone no packet is steered into a table
		// that is being emptied.
		if _, _, err := syncRule(nl, fam, table, priority, false); err != nil && !isNoFamily(err) {
			errs = append(errs, err)
		}
		have, err := ownedRoutes(nl, fam, table)
		if err != nil {
			if !isNoFamily(err) {
				errs = append(errs, err)
			}
			continue
		}
		for _, r := range have {
			if err := nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %s from table %d: %w", r.Dst, table, err))
			}
		}
	}
	return errors.Join(errs...)
}

// routeKey tells the agent's routes apart: per destination at most one
// forwarding route and one unreachable route.
type routeKey struct {
	dst         netip.Prefix
	unreachable bool
}

type wanted struct {
	routes map[routeKey]netlink.Route
	devs   map[netip.Prefix]string
	order  []routeKey
	// failed holds destinations whose wanted route could not be built (its
	// device is missing); their current forwarding routes are left alone.
	failed map[netip.Prefix]bool
}

func (d wanted) hasFamily(fam int) bool {
	for _, k := range d.order {
		if familyOf(k.dst) == fam {
			return true
		}
	}
	for dst := range d.failed {
		if familyOf(dst) == fam {
			return true
		}
	}
	return false
}

func describe(k routeKey, r netlink.Route, dev string) string {
	if k.unreachable {
		return "unreachable route " + k.dst.String()
	}
	return fmt.Sprintf("route %s via %s dev %q", k.dst, ipString(r.Gw), dev)
}

func desiredRoutes(nl Netlink, plan RoutePlan) (wanted, error) {
	d := wanted{
		routes: make(map[routeKey]netlink.Route, len(plan.Routes)+len(plan.Unreachable)),
		devs:   make(map[netip.Prefix]string, len(plan.Routes)),
		failed: map[netip.Prefix]bool{},
	}
	links := map[string]int{}
	var errs []error
	for _, r := range plan.Routes {
		dst := r.Dst.Masked()
		nr := netlink.Route{
			Dst:      prefixToIPNet(dst),
			Table:    plan.TableID(),
			Protocol: RouteProtocol,
			Type:     unix.RTN_UNICAST,
			Family:   familyOf(dst),
			MTU:      r.MTU,
		}
		if r.Via.IsValid() {
			nr.Gw = net.IP(r.Via.Unmap().AsSlice())
		} else {
			// Like "ip route add <dst> dev <dev>": a device route is on-link.
			nr.Scope = netlink.SCOPE_LINK
		}
		if r.Src.IsValid() {
			nr.Src = net.IP(r.Src.Unmap().AsSlice())
		}
		if r.OnLink {
			nr.Flags |= int(netlink.FLAG_ONLINK)
		}
		if r.Dev != "" {
			idx, ok := links[r.Dev]
			if !ok {
				l, err := nl.LinkByName(r.Dev)
				if err != nil {
					errs = append(errs, fmt.Errorf("route %s: look up device %q: %w", dst, r.Dev, err))
					d.failed[dst] = true
					continue
				}
				idx = l.Attrs().Index
				links[r.Dev] = idx
			}
			nr.LinkIndex = idx
		}
		k := routeKey{dst: dst}
		d.routes[k] = nr
		d.devs[dst] = r.Dev
		d.order = append(d.order, k)
	}
	for _, u := range plan.Unreachable {
		dst := u.Masked()
		k := routeKey{dst: dst, unreachable: true}
		d.routes[k] = netlink.Route{
			Dst:      prefixToIPNet(dst),
			Table:    plan.TableID(),
			Protocol: RouteProtocol,
			Type:     unix.RTN_UNREACHABLE,
			Family:   familyOf(dst),
			Priority: UnreachableMetric,
		}
		d.order = append(d.order, k)
	}
	slices.SortFunc(d.order, func(a, b routeKey) int {
		if c := prefix.Compare(a.dst, b.dst); c != 0 {
			return c
		}
		// The unreachable route first: it is there before the forwarding
		// route of a new range appears.
		switch {
		case a.unreachable == b.unreachable:
			return 0
		case a.unreachable:
			return -1
		}
		return 1
	})
	return d, errors.Join(errs...)
}

func ownedRoutes(nl Netlink, fam, table int) ([]netlink.Route, error) {
	rs, err := nl.RouteListFiltered(fam,
		&netlink.Route{Table: table, Protocol: RouteProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("list %s routes in table %d: %w", familyName(fam), table, err)
	}
	return rs, nil
}

// sameRoute compares only the attributes the agent sets. The kernel fills in
// others (for IPv6 a metric of 1024, for a route via a gateway the outgoing
// interface), which must not count as drift.
func sameRoute(cur, want netlink.Route) bool {
	if !ipEqual(cur.Gw, want.Gw) || !ipEqual(cur.Src, want.Src) || cur.MTU != want.MTU {
		return false
	}
	if onlink := int(netlink.FLAG_ONLINK); cur.Flags&onlink != want.Flags&onlink {
		return false
	}
	if want.LinkIndex != 0 && cur.LinkIndex != want.LinkIndex {
		return false
	}
	if cur.Type != 0 && cur.Type != want.Type {
		return false
	}
	if want.Type == unix.RTN_UNREACHABLE && cur.Priority != want.Priority {
		return false
	}
	return len(cur.MultiPath) == 0
}

// syncRule makes the rules of one family at (table, prio) be exactly one
// plain "from all lookup table" rule when present is true, and none otherwise.
// Rules at other priorities or pointing at other tables are not the agent's.
func syncRule(nl Netlink, fam, table, prio int, present bool) (added, deleted int, _ error) {
	rules, err := nl.RuleList(fam)
	if err != nil {
		return 0, 0, fmt.Errorf("list %s rules: %w", familyName(fam), err)
	}
	var errs []error
	kept := false
	for _, r := range rules {
		if r.Table != table || r.Priority != prio {
			continue
		}
		if present && !kept && plainRule(r) {
			kept = true
			continue
		}
		del := r
		if err := nl.RuleDel(&del); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete %s rule %d lookup %d: %w", familyName(fam), prio, table, err))
			continue
		}
		deleted++
	}
	if present && !kept {
		r := netlink.NewRule()
		r.Family = fam
		r.Table = table
		r.Priority = prio
		// Tag the rule like the routes (FRA_PROTOCOL, Linux 4.17+), so that
		// "ip rule" shows whose it is; matching does not rely on it.
		r.Protocol = RouteProtocol
		switch err := nl.RuleAdd(r); {
		case err == nil:
			added++
		case errors.Is(err, unix.EEXIST):
			// Added concurrently by someone else with the same selector: fine.
		default:
			errs = append(errs, fmt.Errorf("add %s rule %d lookup %d: %w", familyName(fam), prio, table, err))
		}
	}
	return added, deleted, errors.Join(errs...)
}

// plainRule reports whether r matches all traffic and only looks up a table.
func plainRule(r netlink.Rule) bool {
	return r.Src == nil && r.Dst == nil && r.IifName == "" && r.OifName == "" &&
		r.Mark == 0 && (r.Mask == nil || *r.Mask == 0) && !r.Invert && r.Goto <= 0 &&
		r.Tos == 0 && r.Dport == nil && r.Sport == nil && r.IPProto <= 0 && r.UIDRange == nil &&
		(r.Type == 0 || r.Type == unix.RTN_UNICAST) &&
		r.SuppressPrefixlen <= 0 && r.SuppressIfgroup <= 0
}

func isNoFamily(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EPFNOSUPPORT)
}

func familyOf(p netip.Prefix) int {
	if p.Addr().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func familyName(fam int) string {
	if fam == netlink.FAMILY_V4 {
		return "IPv4"
	}
	return "IPv6"
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

func ipEqual(a, b net.IP) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	return a.Equal(b)
}

func ipString(ip net.IP) string {
	if len(ip) == 0 {
		return "-"
	}
	return ip.String()
}

func sortPrefixes(ps []netip.Prefix) { prefix.Sort(ps) }
