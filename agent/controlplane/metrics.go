package controlplane

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Metrics of the agent, registered with controller-runtime's registry.
var (
	peerHandshakeAge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "archipelago_agent_peer_handshake_age_seconds",
		Help: "Seconds since the latest WireGuard handshake with a peer cluster's gateway (-1: never).",
	}, []string{"cluster"})
	peerRxBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "archipelago_agent_peer_receive_bytes",
		Help: "Bytes received from a peer cluster's gateway, as the WireGuard device counts them.",
	}, []string{"cluster"})
	peerTxBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "archipelago_agent_peer_transmit_bytes",
		Help: "Bytes sent to a peer cluster's gateway, as the WireGuard device counts them.",
	}, []string{"cluster"})
	peersUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "archipelago_agent_peers_up",
		Help: "Peers with a recent handshake (on the active gateway).",
	})
	peersTotal = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "archipelago_agent_peers",
		Help: "Peers in the directory, valid or not.",
	})
	reconcileSeconds = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "archipelago_agent_last_reconcile_duration_seconds",
		Help: "Duration of the last data path pass.",
	})
	reconcileErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "archipelago_agent_reconcile_errors_total",
		Help: "Passes that ended with an error.",
	})
	peersTouched = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "archipelago_agent_peers_touched_total",
		Help: "WireGuard peers added, changed or removed.",
	})
	isGateway = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "archipelago_agent_active_gateway",
		Help: "1 when this node is its cluster's active gateway.",
	})
	registerOnce sync.Once
)

// RegisterMetrics adds the agent's metrics to controller-runtime's registry.
func RegisterMetrics() {
	registerOnce.Do(func() {
		metrics.Registry.MustRegister(peerHandshakeAge, peerRxBytes, peerTxBytes, peersUp, peersTotal,
			reconcileSeconds, reconcileErrors, peersTouched, isGateway)
	})
}
