package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
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

// Leader election: Leases in the hub's own namespace only (a Role).
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete,namespace=archipelago-system

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
	if err := (&ExportedServiceReconciler{Client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up exportedservice controller: %w", err)
	}
	return nil
}

// CacheByObject selects what the hub's cache holds of the kinds it creates
// for members: only the objects it labelled as its own (the admission policy
// in config/rbac lets it change no others), not every namespace and role of
// the hub cluster.
func CacheByObject() map[client.Object]cache.ByObject {
	managed := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{labelManagedBy: managedByHub})}
	return map[client.Object]cache.ByObject{
		&corev1.Namespace{}:          managed,
		&corev1.ServiceAccount{}:     managed,
		&corev1.ResourceQuota{}:      managed,
		&rbacv1.Role{}:               managed,
		&rbacv1.RoleBinding{}:        managed,
		&rbacv1.ClusterRole{}:        managed,
		&rbacv1.ClusterRoleBinding{}: managed,
	}
}
