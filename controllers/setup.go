package controllers

import (
	"context"
	"fmt"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
)

// Options configure the hub's controllers.
type Options struct {
	// PeerDrainTimeout bounds how long a deleted member's ranges wait for its
	// peers to drop it.
	PeerDrainTimeout time.Duration
	// HeartbeatStaleAfter is how old a member's newest gateway heartbeat may
	// be before its agent counts as gone (default 3 min: three heartbeats).
	HeartbeatStaleAfter time.Duration
	// MaxConcurrentReconciles of the MemberCluster controller.
	MaxConcurrentReconciles int
	// Now is the clock of the ledger (quarantine) and of heartbeat
	// staleness; nil means time.Now.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete

// SetupHub registers the hub's controllers with mgr.
func SetupHub(ctx context.Context, mgr ctrl.Manager, opts Options) error {
	ledger := &BlockLedger{Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Now: opts.Now}
	if err := (&MemberClusterReconciler{
		Client:                  mgr.GetClient(),
		Ledger:                  ledger,
		Recorder:                mgr.GetEventRecorder("archipelago-hub"),
		PeerDrainTimeout:        opts.PeerDrainTimeout,
		HeartbeatStaleAfter:     opts.HeartbeatStaleAfter,
		MaxConcurrentReconciles: opts.MaxConcurrentReconciles,
		Now:                     opts.Now,
	}).SetupWithManager(ctx, mgr); err != nil {
		return fmt.Errorf("set up membercluster controller: %w", err)
	}
	if err := (&ClusterSetReconciler{Client: mgr.GetClient(), Ledger: ledger}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up clusterset controller: %w", err)
	}
	return nil
}
