// Package routing makes the kernel's routing state on one node match a
// RoutePlan: routes to the remote clusters' pod ranges, plus the policy rule
// that sends lookups to them, plus the host sysctls forwarding needs.
//
// Ownership. Every route the agent installs lives in its own routing table
// (DefaultTable, 2684 = 0xa7c) and carries its own route protocol number
// (RouteProtocol, 167). One "from all lookup <table>" rule per address family,
// at a fixed priority (DefaultRulePriority) before the main table's rule
// (32766), makes the kernel consult that table first. The table holds only
// remote pod ranges, so a lookup that finds nothing there falls through to
// the next rule (main, default) and all other traffic routes as before. This
// is the layout Submariner uses (table 100 + rule) and it means the agent
// never has to compete with the CNI or the host for routes in the main table.
//
// Apply lists the routes in that table that carry the agent's protocol and
// writes only the differences (RouteReplace for new or changed routes,
// RouteDel for stale ones); a pass with nothing to change makes zero netlink
// writes. The rule for a family exists exactly while the plan has routes of
// that family.
//
// What this package must not do: touch routes in any other table, routes in
// its table that carry another protocol number, or rules that do not point at
// its table with its priority; flush tables; or decide what the routes should
// be (that is the agent's planner, which builds the RoutePlan). Every kernel
// call goes through the Netlink interface so that unit tests run on the fake
// in package fake; *netlink.Handle is the real implementation.
package routing
