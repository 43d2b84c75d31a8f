package routing

import "github.com/archipelago-mesh/archipelago/agent/desired"

const (
	// DefaultTable is the agent's routing table (desired.DefaultTable).
	DefaultTable = desired.DefaultTable

	// DefaultRulePriority is the priority of the agent's rule
	// (desired.DefaultRulePriority).
	DefaultRulePriority = desired.DefaultRulePriority

	// RouteProtocol is the route protocol number (rtm_protocol) the agent
	// stamps on its routes. Numbers up to 4 are the kernel's own, and iproute2's
	// rt_protos list names a few above; 167 is not taken there.
	// The protocol is how Apply and Cleanup tell the agent's routes from
	// routes someone else put in the same table.
	RouteProtocol = 167

	// UnreachableMetric is the metric of the agent's unreachable routes. It
	// sorts after the forwarding route of the same range (metric 0, which
	// IPv6 stores as 1024), so the unreachable route decides only while the
	// forwarding route is missing: not planned (gateway unusable), or
	// flushed by the kernel when the tunnel device went away.
	UnreachableMetric = 0xa7c0
)

// Route and RoutePlan are the desired routing state (package desired).
type (
	Route     = desired.Route
	RoutePlan = desired.RoutePlan
)
