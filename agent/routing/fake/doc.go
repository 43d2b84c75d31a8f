// Package fake holds in-memory stand-ins for the kernel interfaces of package
// routing (Netlink, Sysctl), with assertion helpers for tests. It models only
// what the applier relies on: routes keyed by (table, destination, metric), rules
// keyed by (family, priority, table), links by name, and the kernel's
// filtering rules of RouteListFiltered. It must not be used outside tests.
package fake
