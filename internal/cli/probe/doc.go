// Package probe is the tiny TCP echo that `kubectl archipelago verify` runs
// in its probe pods: the server answers every connection with the remote
// address it saw, and the client prints that answer. Comparing it with the
// sender's pod IP shows whether the source address survived the path. The
// UDP side answers every datagram the same way and adds the server's name
// (the pod's hostname), so that a test can tell which pod answered.
//
// It must stay dependency-free (only the standard library): it is the whole
// of the archipelago/probe image.
package probe
