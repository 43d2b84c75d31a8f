// Package upgrade tests an upgrade in place against a real kube-apiserver and
// etcd: objects stored by the previous release's CRDs (testdata/v0) must stay
// readable, writable and listable by this release's types once its CRDs are
// applied over them.
package upgrade
