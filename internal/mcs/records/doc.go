// Package records keeps the ExportedService records on the hub: Publisher
// writes one member's records into its hub namespace (the export side's
// Publisher), and Collect reads the records a member may see, for mcs.Merge.
//
// It is given a client for the hub and the namespaces to use; finding them
// (the member's hub namespace, where the set's records are) and holding the
// hub connection is the agent's job. It must not cache or watch: callers
// decide how often to read.
package records
