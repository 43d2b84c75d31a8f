// Package agent holds the API integration tests that run the node agent's control loop (with the data path
// on fake kernels) against a real hub apiserver, with the hub's controllers
// in process, and a real member apiserver.
package agent
