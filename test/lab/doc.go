// Package lab builds a whole archipelago on one Linux machine out of network
// namespaces and real processes: a hub (kube-apiserver + etcd + the real
// archipelago-hub binary), member clusters (each with its own kube-apiserver
// + etcd, a LAN, gateway-candidate and worker nodes, pods) and the real
// archipelago-agent on every node. Members join with the real
// kubectl-archipelago plugin. The lab is the project's demo (cmd/lab) and the
// ground for the end-to-end tests (test/e2e/lab).
//
// The lab only uses addresses inside namespaces it creates (198.18.0.0/15
// for the WAN and the NAT insides, 172.30.0.0/16 for LANs, the ClusterSet's
// pool for pods); no namespace gets a route to the outside world, and the
// host namespace gets no address or route at all: the lab process reaches the
// apiservers through TCP proxies on 127.0.0.1 that dial inside the
// namespaces.
//
// It must not touch anything it did not create: processes are stopped by the
// PID the lab started them with, namespaces carry the "arl-" prefix, and a
// state file (/run/archipelago-lab/state.json) lets the next run remove the
// leftovers of a crashed one. It needs root.
package lab
