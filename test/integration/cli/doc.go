// Package cli_test runs `kubectl archipelago` join and leave against real
// apiservers: one hub (with the hub's controllers in process) and two
// members, each an envtest kube-apiserver with the archipelago CRDs.
//
// Only 127.0.0.1 is contacted. Nothing here may depend on the agent.
package cli_test
