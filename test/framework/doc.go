// Package framework starts what the API integration tests run against: a
// real kube-apiserver and etcd (envtest, with the binaries hack/ builds into
// bin/k8s) with the archipelago CRDs installed, and the hub's controllers in
// process. It also builds test objects with functional options.
//
// It is test support only: nothing outside test/ may import it.
package framework
