// Package lab holds the end-to-end suite (tier 4 of DESIGN.md §5) in its
// tests: they bring up one lab (test/lab: a hub and three member clusters as
// network namespaces with real apiservers, the real hub, agents and kubectl
// plugin) and check the flat network against it, and benchmark it. Build
// tag e2e; they need root and the binaries of 'make test-binaries
// lab-binaries' ('make e2e' and 'make bench-lab' do all that), and skip with
// the reason otherwise.
package lab
