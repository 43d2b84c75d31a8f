package controlplane

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Per-peer tunnel metrics, read from the WireGuard device when scraped
// (tunnelCollector): live values such as byte counters belong here and
// never in an API object, whose every change is a write.
var (
	peerHandshakeAgeDesc = prometheus.NewDesc("archipelago_agent_peer_handshake_age_seconds",
		"Seconds since the latest WireGuard handshake with a peer cluster's gateway (-1: never).", []string{"cluster"}, nil)
	peerRxBytesDesc = prometheus.NewDesc("archipelago_agent_peer_receive_bytes_total",
		"Bytes received from a peer cluster's gateway, as the WireGuard device counts them.", []string{"cluster"}, nil)
	peerTxBytesDesc = prometheus.NewDesc("archipelago_agent_peer_transmit_bytes_total",
		"Bytes sent to a peer cluster's gateway, as the WireGuard device counts them.", []string{"cluster"}, nil)
)

// Metrics of the agent, registered with controller-runtime's registry.
var (
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
		metrics.Registry.MustRegister(peersUp, peersTotal, reconcileSeconds, reconcileErrors, peersTouched, isGateway)
	})
}

// tunnelCollector reports the device's per-peer counters and handshake
// ages at scrape time, so they are current without any pass running.
type tunnelCollector struct{ a *Agent }

func (c tunnelCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- peerHandshakeAgeDesc
	ch <- peerRxBytesDesc
	ch <- peerTxBytesDesc
}

func (c tunnelCollector) Collect(ch chan<- prometheus.Metric) {
	dev, err := c.a.cfg.Datapath.TunnelState()
	if err != nil || dev == nil {
		return // not the gateway, or no device open
	}
	names := c.a.peerNames()
	now := c.a.cfg.Now()
	for _, p := range dev.Peers {
		cluster := names[p.PublicKey]
		if cluster == "" {
			cluster = "unknown:" + p.PublicKey.String()[:8]
		}
		age := -1.0
		if !p.LastHandshakeTime.IsZero() {
			age = now.Sub(p.LastHandshakeTime).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(peerHandshakeAgeDesc, prometheus.GaugeValue, age, cluster)
		ch <- prometheus.MustNewConstMetric(peerRxBytesDesc, prometheus.CounterValue, float64(p.ReceiveBytes), cluster)
		ch <- prometheus.MustNewConstMetric(peerTxBytesDesc, prometheus.CounterValue, float64(p.TransmitBytes), cluster)
	}
}

// registerTunnelCollector adds a's tunnelCollector to controller-runtime's
// registry. One agent runs per process; a second one (tests) is not
// registered.
func (a *Agent) registerTunnelCollector() {
	err := metrics.Registry.Register(tunnelCollector{a})
	if are := (prometheus.AlreadyRegisteredError{}); err != nil && !errors.As(err, &are) {
		a.log.Error(err, "Register tunnel metrics")
	}
}

func (a *Agent) peerNames() map[wgtypes.Key]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.peerClusters
}
