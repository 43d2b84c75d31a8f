package routing

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Netlink is the subset of *netlink.Handle that this package calls. The agent
// owns it so that the applier can be unit-tested on the fake in package fake.
type Netlink interface {
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteReplace(route *netlink.Route) error
	RouteDel(route *netlink.Route) error
	RuleList(family int) ([]netlink.Rule, error)
	RuleAdd(rule *netlink.Rule) error
	RuleDel(rule *netlink.Rule) error
	LinkByName(name string) (netlink.Link, error)
}

var _ Netlink = (*netlink.Handle)(nil)

// New returns a Netlink bound to the network namespace of the calling thread.
func New() (*netlink.Handle, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	return h, nil
}

// NewAt returns a Netlink bound to the given network namespace, without
// switching the calling thread into it. Close it with Delete.
func NewAt(ns netns.NsHandle) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("open netlink handle in netns %s: %w", ns, err)
	}
	return h, nil
}
