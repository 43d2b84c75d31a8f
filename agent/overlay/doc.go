// Package overlay keeps a node's VXLAN device equal to an OverlayPlan: the
// encapsulation of worker → gateway traffic for workers that are not on
// their gateway's link (another subnet, another zone). On a worker the
// device sends to the active gateway's node address (the VXLAN remote) and
// holds permanent neighbour entries for the overlay's gateway addresses
// (desired.OverlayGatewayIPv4/IPv6) with the gateway's fixed MAC; the
// agent's routes send remote ranges via those addresses on the device. On a
// gateway candidate the device has no remote and that MAC, so it accepts
// every worker's packets and forwards them by their inner destination, with
// the pods' source addresses unchanged.
//
// Links is the subset of *netlink.Handle it calls; package fake implements
// it in memory. Apply reads first and writes nothing when the device
// matches; a device whose VNI, port, addresses or MAC differ is replaced
// (VXLAN attributes cannot be changed in place on every kernel).
package overlay
