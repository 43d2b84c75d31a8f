package desired

import (
	"fmt"
	"net/netip"

	"github.com/archipelago-mesh/archipelago/internal/prefix"
)

const (
	// DefaultTable is the routing table that holds the agent's routes
	// (0xa7c). Linux table ids are 32-bit; ids above 255 need RTA_TABLE,
	// which every kernel the agent supports has.
	DefaultTable = 0xa7c

	// DefaultRulePriority is the priority of the agent's "from all lookup
	// <table>" rule. It must sort before the main table's rule (32766) so
	// that a remote pod range in the agent's table wins over a less specific
	// route (the default route) in main.
	DefaultRulePriority = 0xa7c
)

// Route is one route the agent wants in its table.
type Route struct {
	// Dst is the remote pod range. It is masked before use.
	Dst netip.Prefix
	// Via is the next hop: the active gateway's node IP on other nodes.
	// Optional when Dev is set.
	Via netip.Addr
	// Dev is the outgoing interface, e.g. the WireGuard interface on the
	// gateway. Optional when Via is set.
	Dev string
	// Src is the preferred source address. Optional.
	Src netip.Addr
	// MTU is the route MTU (RTAX_MTU). Zero means unset.
	MTU int
	// OnLink says Via is reachable on Dev without a route to it (the
	// overlay's gateway address, which no subnet of Dev holds).
	OnLink bool
}

// RoutePlan is the complete desired routing state of the agent on one node.
type RoutePlan struct {
	Routes []Route
	// Unreachable are ranges that must never be routed outside the agent's
	// table: each gets an unreachable route under the forwarding route in
	// Routes if there is one. While a range is listed here the policy rule
	// of its family stays, so a lookup for it never falls through to the
	// main table (fail closed).
	Unreachable []netip.Prefix
	// Table is the agent's routing table; 0 means DefaultTable.
	Table int
	// RulePriority is the priority of the policy rule; 0 means
	// DefaultRulePriority (priority 0 belongs to the local table's rule).
	RulePriority int
}

// TableID is Table or its default.
func (p RoutePlan) TableID() int {
	if p.Table == 0 {
		return DefaultTable
	}
	return p.Table
}

// RulePriorityOrDefault is RulePriority or its default.
func (p RoutePlan) RulePriorityOrDefault() int {
	if p.RulePriority == 0 {
		return DefaultRulePriority
	}
	return p.RulePriority
}

// Validate checks what the kernel would reject less helpfully.
func (p RoutePlan) Validate() error {
	if t := p.TableID(); t < 0 || t == 253 || t == 254 || t == 255 {
		return fmt.Errorf("route table %d is reserved (default 253, main 254, local 255); pick another table", t)
	}
	if pr := p.RulePriorityOrDefault(); pr < 0 || pr >= 32766 {
		return fmt.Errorf("rule priority %d must be between 1 and 32765 so the rule sorts before the main table's rule", pr)
	}
	seen := make(map[netip.Prefix]bool, len(p.Routes))
	for _, r := range p.Routes {
		if !r.Dst.IsValid() {
			return fmt.Errorf("route with invalid destination %v", r.Dst)
		}
		dst := r.Dst.Masked()
		if seen[dst] {
			return fmt.Errorf("route %s appears twice in the plan", dst)
		}
		seen[dst] = true
		if !r.Via.IsValid() && r.Dev == "" {
			return fmt.Errorf("route %s needs a next hop (Via) or a device (Dev)", dst)
		}
		if r.Via.IsValid() && r.Via.Unmap().Is4() != dst.Addr().Is4() {
			return fmt.Errorf("route %s via %s: next hop is of another address family", dst, r.Via)
		}
		if r.Src.IsValid() && r.Src.Unmap().Is4() != dst.Addr().Is4() {
			return fmt.Errorf("route %s src %s: source is of another address family", dst, r.Src)
		}
		if r.MTU < 0 {
			return fmt.Errorf("route %s: negative MTU %d", dst, r.MTU)
		}
	}
	floors := make(map[netip.Prefix]bool, len(p.Unreachable))
	for _, u := range p.Unreachable {
		if !u.IsValid() {
			return fmt.Errorf("unreachable route with invalid destination %v", u)
		}
		dst := prefix.Canonical(u)
		if floors[dst] {
			return fmt.Errorf("unreachable route %s appears twice in the plan", dst)
		}
		floors[dst] = true
	}
	return nil
}
