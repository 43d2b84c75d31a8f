// Package export is the export side of multi-cluster services, run in a
// member cluster: for each ServiceExport it reads the Service of the same name
// and its EndpointSlices, builds the ExportedService record importers need,
// hands it to a Publisher (the hub connection, wired by the agent) when it
// changed, and keeps the ServiceExport's conditions as the MCS API defines
// them: Valid (NoService, InvalidServiceType), Ready (Exported, Pending) and
// Conflict (from the merge, fed back with SetConflicts).
//
// It must not talk to the hub itself: everything hub-side goes through
// Publisher, so the hub wiring stays separate and testable.
package export
