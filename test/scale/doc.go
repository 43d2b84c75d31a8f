// Package scale holds the hub's scale harness (make bench-scale): the real
// hub binary on a real apiserver with a thousand simulated members, each
// writing what its agent writes and watching the peer directory as its agent
// does. It measures; it asserts nothing about speed.
package scale
