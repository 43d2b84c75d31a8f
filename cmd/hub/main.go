// Command archipelago-hub runs the hub controller: it owns ClusterSets and
// MemberClusters and gives every member a pod range no other member has.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/archipelago-mesh/archipelago/controllers"
	archscheme "github.com/archipelago-mesh/archipelago/internal/scheme"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "archipelago-hub:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		metricsAddr      = flag.String("metrics-bind-address", ":8080", "Address the Prometheus metrics endpoint listens on; \"0\" turns it off.")
		probeAddr        = flag.String("health-probe-bind-address", ":8081", "Address the /healthz and /readyz endpoints listen on.")
		leaderElect      = flag.Bool("leader-elect", true, "Elect one active hub through a Lease; keep it on whenever more than one replica can run.")
		leaderNamespace  = flag.String("leader-election-namespace", "archipelago-system", "Namespace of the leader election Lease.")
		leaseDuration    = flag.Duration("leader-election-lease-duration", 15*time.Second, "How long a leader's Lease is valid without renewal.")
		renewDeadline    = flag.Duration("leader-election-renew-deadline", 10*time.Second, "How long the leader keeps retrying to renew before it gives up leading.")
		retryPeriod      = flag.Duration("leader-election-retry-period", 2*time.Second, "How often candidates try to take the Lease.")
		peerDrainTimeout = flag.Duration("peer-drain-timeout", time.Minute, "How long a deleted member's ranges wait at most for its live peers to acknowledge that they dropped it before they are released into quarantine anyway.")
		staleAfter       = flag.Duration("heartbeat-stale-after", controllers.DefaultHeartbeatStaleAfter, "How old the newest heartbeat (TunnelGateway status.lastSeen) of a member's gateways may be before the member is reported AgentConnected=False (HeartbeatStale) and peers' drains stop waiting for it; agents beat once a minute.")
		concurrency      = flag.Int("member-concurrency", 4, "How many MemberClusters are reconciled at once.")
	)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: archipelago-hub [flags]\n\nRuns the archipelago hub controller against the cluster of the current kubeconfig\n(in-cluster config when run as a Pod).\n\nFlags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))

	scheme := archscheme.New()
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress:  *probeAddr,
		LeaderElection:          *leaderElect,
		LeaderElectionID:        "archipelago-hub",
		LeaderElectionNamespace: *leaderNamespace,
		LeaseDuration:           leaseDuration,
		RenewDeadline:           renewDeadline,
		RetryPeriod:             retryPeriod,
		// Step down at once on shutdown so a new hub takes over without
		// waiting for the lease to run out.
		LeaderElectionReleaseOnCancel: true,
		// The hub watches only the namespaces, quotas and RBAC objects it made itself.
		Cache: cache.Options{ByObject: controllers.CacheByObject()},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	ctx := ctrl.SetupSignalHandler()
	if err := controllers.SetupHub(ctx, mgr, controllers.Options{
		PeerDrainTimeout:        *peerDrainTimeout,
		HeartbeatStaleAfter:     *staleAfter,
		MaxConcurrentReconciles: *concurrency,
	}); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	ctrl.Log.WithName("setup").Info("Starting archipelago hub", "leaderElection", *leaderElect)
	return mgr.Start(ctx)
}
