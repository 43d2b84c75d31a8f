package desired

// HostSettings says which kernel parameters a node needs.
type HostSettings struct {
	// IPv4 and IPv6 turn on forwarding for that family. IPv6 forwarding on a
	// host with IPv6 disabled is an error only when IPv6 is requested.
	IPv4, IPv6 bool
	// TunnelInterface, when set, gets a loose rp_filter. The interface must
	// exist (its conf directory appears with it).
	TunnelInterface string
}
