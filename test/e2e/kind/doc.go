// Package kind is the kind e2e tier (DESIGN.md §5, tier 5): a hub cluster and
// two member clusters of real kind nodes (kubelet, kube-proxy, a masquerading
// CNI), the project's images loaded with `kind load docker-image`, installed
// with `kubectl apply -k config/...` and joined with `kubectl archipelago`.
//
// Run it with `make e2e-kind`, which builds (offline) or reuses the node image,
// the project's images and the tools first, then runs
//
//	ARCHIPELAGO_KIND_E2E=1 go test -tags e2e ./test/e2e/kind -v
//
// The suite creates its clusters itself (names start with "arch-e2e-"; left
// overs of a crashed run are deleted first), uses its own KUBECONFIG file and
// its own Docker network, and deletes all of them at the end, also on failure
// (E2E_KEEP=1 keeps them for debugging; E2E_REUSE=1 reuses kept ones).
//
// It must not be imported: it only drives binaries (kind, kubectl, docker).
package kind
