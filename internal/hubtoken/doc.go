// Package hubtoken reads the claims of a member's hub token (a bound
// ServiceAccount token issued by the hub's TokenRequest API) and decides
// when it is due for renewal. The kubectl plugin and the agent share it.
//
// It only decodes: it never verifies a signature (the hub does that on every
// request) and it does no I/O.
package hubtoken
