// Package netnstest is the network-namespace plumbing of the agent's
// privileged tests: namespaces named after the test package and the test
// process (Set), created with their cleanup registered in t.Cleanup, the
// leftovers of crashed runs removed at start, code run inside a namespace on
// a locked OS thread (In), and commands run with their output in the failure
// message (Run).
//
// Only _test.go files may import it. It must not touch a namespace or a
// process that the calling test package did not create: namespaces are found
// by the package's own prefix and the creating process's PID, and processes
// are killed by PID, only those the package marked as its own (Set.Ours).
package netnstest
