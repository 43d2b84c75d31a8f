// Package mcs is the pure core of multi-cluster services: Merge turns the
// exports of one Service (namespace/name) by several members into the one
// import every member builds, with the conflicts the MCS API (KEP-1645)
// defines, the names and labels the export and import controllers share, and
// the ClusterProperties a member carries (ClusterProperties,
// CheckClusterProperties).
//
// Merge is a function of its inputs alone (the exports, the members'
// liveness and ranges, the time): every member that runs it on the same
// records gets the same import, in whatever order the records arrived, so no
// central merge is needed. The package must not do I/O or talk to an API
// server; the controllers in export/ and imports/ do.
package mcs
