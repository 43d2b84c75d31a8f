// Package desired holds the desired state of each layer of a node's data
// path as plain values: the WireGuard device (TunnelPlan), the routes and
// policy rule (RoutePlan), the packet filter (FilterPlan) and the host
// sysctls (HostSettings). The planner (package plan) computes them; the
// appliers (wireguard, routing, netfilter) make the kernel match them.
//
// It must stay pure: no kernel packages (netlink, nftables, wgctrl's
// client, wireguard-go), no I/O, no Kubernetes; wgtypes only for keys.
package desired
