package controllers

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/ipam"
)

// ClusterSetReconciler keeps ClusterSet status (members, blocks per family,
// conditions), ends quarantines, and holds a set's deletion until it has no
// members left.
type ClusterSetReconciler struct {
	Client client.Client
	Ledger *BlockLedger
}

// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=clustersets,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=clustersets/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=clustersets/finalizers,verbs=update

// Reconcile runs the phases of one ClusterSet.
func (r *ClusterSetReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	cs := &meshv1.ClusterSet{}
	if err := r.Client.Get(ctx, req.NamespacedName, cs); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	before := cs.DeepCopy()
	defer func() {
		if equality.Semantic.DeepEqual(before.Status, cs.Status) || !controllerutil.ContainsFinalizer(cs, meshv1.Finalizer) {
			return
		}
		cs.Status.ObservedGeneration = cs.Generation
		if err := r.Client.Status().Patch(ctx, cs, client.MergeFrom(before)); err != nil && !apierrors.IsNotFound(err) {
			retErr = kerrors.NewAggregate([]error{retErr, fmt.Errorf("patch status of clusterset %s: %w", cs.Name, err)})
		}
	}()

	var members meshv1.MemberClusterList
	if err := r.Client.List(ctx, &members, client.MatchingFields{IndexClusterSet: cs.Name}, readOnly); err != nil {
		return ctrl.Result{}, fmt.Errorf("list members of clusterset %s: %w", cs.Name, err)
	}
	cs.Status.Members = int32(len(members.Items))

	if !cs.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, cs, len(members.Items))
	}
	if !controllerutil.ContainsFinalizer(cs, meshv1.Finalizer) {
		patch := client.MergeFrom(cs.DeepCopy())
		controllerutil.AddFinalizer(cs, meshv1.Finalizer)
		if err := r.Client.Patch(ctx, cs, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer to clusterset %s: %w", cs.Name, err)
		}
	}

	next, err := r.Ledger.Expire(ctx, cs)
	if err != nil {
		return ctrl.Result{}, err
	}
	usage, err := r.Ledger.Usage(ctx, cs)
	if err != nil {
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ConditionReady, metav1.ConditionFalse, meshv1.ReasonInvalidPools, err.Error())
		return ctrl.Result{}, nil
	}
	setUsageStatus(cs, usage)
	setClusterSetFamilies(cs, usage.Families)
	// A quarantine that ends frees a block: come back then, so a member
	// waiting on an exhausted pool gets it.
	if next > 0 {
		res.RequeueAfter = next + 100*time.Millisecond
	}
	return res, nil
}

func (r *ClusterSetReconciler) reconcileDelete(ctx context.Context, cs *meshv1.ClusterSet, members int) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(cs, meshv1.Finalizer) {
		return ctrl.Result{}, nil
	}
	if members > 0 {
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ConditionReady, metav1.ConditionFalse, "Deleting",
			fmt.Sprintf("waiting for %d MemberCluster(s) of this set to be deleted", members))
		return ctrl.Result{}, nil
	}
	if err := r.Ledger.DeleteClaims(ctx, cs.Name); err != nil {
		return ctrl.Result{}, fmt.Errorf("delete claims of clusterset %s: %w", cs.Name, err)
	}
	// The peer directory goes with the set (its ClusterSetPeers went with
	// their members).
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: SetNamespace(cs.Name)}, ns); err == nil {
		if ns.Labels[meshv1.LabelClusterSet] == cs.Name && ns.DeletionTimestamp.IsZero() {
			if err := r.Client.Delete(ctx, ns); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, fmt.Errorf("delete namespace %s of clusterset %s: %w", ns.Name, cs.Name, err)
			}
		}
	} else if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("get namespace of clusterset %s: %w", cs.Name, err)
	}
	patch := client.MergeFrom(cs.DeepCopy())
	controllerutil.RemoveFinalizer(cs, meshv1.Finalizer)
	if err := r.Client.Patch(ctx, cs, patch); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("remove finalizer of clusterset %s: %w", cs.Name, err)
	}
	return ctrl.Result{}, nil
}

// setUsageStatus writes block counts per family and the conditions that
// follow from them.
func setUsageStatus(cs *meshv1.ClusterSet, u Usage) {
	byFam := map[ipam.Family]*meshv1.FamilyStatus{}
	var order []ipam.Family
	for _, s := range u.Stats {
		f, ok := byFam[s.Family]
		if !ok {
			f = &meshv1.FamilyStatus{Family: apiFamily(s.Family), BlockPrefixLength: int32(s.BlockLen)}
			byFam[s.Family] = f
			order = append(order, s.Family)
		}
		f.Total = satAdd64(f.Total, s.Total)
		f.Allocated = satAdd64(f.Allocated, s.Allocated)
		f.Quarantined = satAdd64(f.Quarantined, s.Quarantined)
		f.Free = satAdd64(f.Free, s.Free)
	}
	cs.Status.Families = nil
	var free, exhausted []string
	for _, fam := range order {
		f := byFam[fam]
		cs.Status.Families = append(cs.Status.Families, *f)
		free = append(free, fmt.Sprintf("%s: %s", f.Family, countString(f.Free)))
		if f.Free == 0 {
			exhausted = append(exhausted, string(f.Family))
		}
	}
	freeSummary := "free blocks: " + strings.Join(free, ", ")
	cs.Status.BlocksOutsidePools = nil
	for _, o := range u.Orphans {
		if o.QuarantinedUntil.IsZero() {
			cs.Status.BlocksOutsidePools = append(cs.Status.BlocksOutsidePools, fmt.Sprintf("%s (%s)", o.Prefix, ownerName(o.Owner)))
		}
	}
	if len(exhausted) > 0 {
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ClusterSetPoolExhausted, metav1.ConditionTrue, meshv1.ReasonExhausted,
			fmt.Sprintf("no free block left for %s: add a pool to spec.podCIDRPools or delete members (released blocks return after spec.quarantineSeconds)", strings.Join(exhausted, ", ")))
	} else {
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ClusterSetPoolExhausted, metav1.ConditionFalse, meshv1.ReasonAvailable, freeSummary)
	}
	if len(cs.Status.BlocksOutsidePools) > 0 {
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ClusterSetRemovedPoolsInUse, metav1.ConditionTrue, meshv1.ReasonBlocksOutsidePools,
			"blocks of removed pools stay assigned to their members: "+strings.Join(cs.Status.BlocksOutsidePools, ", "))
	} else {
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ClusterSetRemovedPoolsInUse, metav1.ConditionFalse, meshv1.ReasonAllInsidePools, "every assigned block lies inside a pool")
	}
	if len(exhausted) > 0 {
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ConditionReady, metav1.ConditionFalse, meshv1.ReasonExhausted, "pool exhausted for "+strings.Join(exhausted, ", "))
	} else {
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ConditionReady, metav1.ConditionTrue, meshv1.ReasonAvailable, freeSummary)
	}
}

func apiFamily(f ipam.Family) meshv1.IPFamily {
	if f == ipam.IPv6 {
		return meshv1.IPv6
	}
	return meshv1.IPv4
}

func satAdd64(a int64, b uint64) int64 {
	if b > math.MaxInt64 || a > math.MaxInt64-int64(b) {
		return math.MaxInt64
	}
	return a + int64(b)
}

func countString(n int64) string {
	if n == math.MaxInt64 {
		return ">=2^63"
	}
	return fmt.Sprint(n)
}

// SetupWithManager registers the reconciler and its watches.
func (r *ClusterSetReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil || r.Ledger == nil {
		return errors.New("clusterset reconciler needs a client and a ledger")
	}
	toSet := func(name func(client.Object) string) handler.EventHandler {
		return handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			if n := name(o); n != "" {
				return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: n}}}
			}
			return nil
		})
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&meshv1.ClusterSet{}).
		// The set counts its members: only their arrival and departure
		// matter, not the status writes of every member.
		Watches(&meshv1.MemberCluster{}, toSet(func(o client.Object) string { return o.(*meshv1.MemberCluster).Spec.ClusterSet }),
			builder.WithPredicates(predicate.Funcs{UpdateFunc: func(event.UpdateEvent) bool { return false }})).
		Watches(&meshv1.CIDRClaim{}, toSet(func(o client.Object) string { return o.(*meshv1.CIDRClaim).Spec.ClusterSet })).
		Named("clusterset").
		Complete(r)
}
