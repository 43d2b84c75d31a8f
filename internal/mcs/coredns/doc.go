// Package coredns edits a member's CoreDNS configuration so that it answers
// <service>.<namespace>.svc.clusterset.local from ServiceImports: Enable adds
// the zone to the kubernetes plugin and its `multicluster` option (CoreDNS
// 1.12.2 and later), Disable takes exactly that out again, and RBAC is the
// access CoreDNS then needs (list and watch ServiceImports).
//
// The functions are pure (text in, text out): applying the result to the
// coredns ConfigMap is the caller's (kubectl archipelago join and leave). They
// must never touch lines they did not add.
package coredns
