// Package netns runs code and commands against named Linux network
// namespaces: entering one on a locked OS thread (Do, DoNamed) and creating,
// deleting and listing the namespaces "ip netns" manages (Add, Delete, List).
// It is shared by the lab (test/lab) and the privileged tests' support
// package (internal/netnstest).
//
// Only the lab and tests may import it: the agent and the hub never create
// namespaces or switch threads into them. It must not decide which
// namespaces are whose: callers own their names and their leftovers.
package netns
