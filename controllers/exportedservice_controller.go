package controllers

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=exportedservices,verbs=get;list;watch;create;update;patch;delete;deletecollection

// ExportedServiceReconciler copies every member's ExportedService records
// from its hub namespace into its ClusterSet's namespace, next to the peer
// directory, as <member>.<record>. Members write only their own namespace
// and read only their set's: one watch per member gives it the exports of
// the whole set, and a record can speak only for the member whose namespace
// holds it (a record naming another cluster is not copied).
type ExportedServiceReconciler struct {
	Client client.Client
}

// exportCopyName names the copy of a member's record in the set's namespace.
// Member names and records' namespace/name are DNS labels, so the name is
// unique and valid (at most 191 characters).
func exportCopyName(member, record string) string { return member + "." + record }

// SetupWithManager registers the reconciler.
func (r *ExportedServiceReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		return fmt.Errorf("exported service reconciler needs a client")
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("exportedservice").
		// A copy's event (edited or deleted by someone else) is mapped to its
		// source, whose pass repairs it.
		Watches(&meshv1.ExportedService{}, handler.EnqueueRequestsFromMapFunc(exportSource)).
		Complete(r)
}

func exportSource(_ context.Context, o client.Object) []reconcile.Request {
	l := o.GetLabels()
	if l[labelManagedBy] != managedByHub {
		return []reconcile.Request{{NamespacedName: client.ObjectKeyFromObject(o)}}
	}
	member := l[meshv1.LabelMember]
	record, ok := strings.CutPrefix(o.GetName(), member+".")
	if member == "" || !ok {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: MemberNamespace(member), Name: record}}}
}

// Reconcile makes the copy of one member record match it.
func (r *ExportedServiceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: req.Namespace}, ns); err != nil {
		// The member's namespace is gone: its deletion removed the copies.
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	member := ns.Labels[meshv1.LabelMember]
	if member == "" || ns.Labels[labelManagedBy] != managedByHub {
		return ctrl.Result{}, nil // not a member's namespace (a copy, or someone else's)
	}
	m := &meshv1.MemberCluster{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: member}, m); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !m.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // reconcileDelete removes the member's copies
	}
	set := m.Spec.ClusterSet
	dst := &meshv1.ExportedService{ObjectMeta: metav1.ObjectMeta{Namespace: SetNamespace(set), Name: exportCopyName(member, req.Name)}}

	src := &meshv1.ExportedService{}
	err := r.Client.Get(ctx, req.NamespacedName, src)
	switch {
	case apierrors.IsNotFound(err):
		src = nil
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("get exportedservice %s: %w", req.NamespacedName, err)
	}
	if src != nil && (src.Spec.Cluster != member || src.Name != meshv1.ExportedServiceName(src.Spec.Namespace, src.Spec.Name)) {
		logf.FromContext(ctx).Info("Exported service not copied: a member may export only as itself, under the record's own name",
			"record", klog.KObj(src), "member", member, "cluster", src.Spec.Cluster, "want", meshv1.ExportedServiceName(src.Spec.Namespace, src.Spec.Name))
		src = nil
	}
	if src == nil || !src.DeletionTimestamp.IsZero() {
		if err := r.Client.Delete(ctx, dst); client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, fmt.Errorf("delete exportedservice %s/%s: %w", dst.Namespace, dst.Name, err)
		}
		return ctrl.Result{}, nil
	}

	labels := map[string]string{meshv1.LabelMember: member, meshv1.LabelClusterSet: set, labelManagedBy: managedByHub,
		mcsv1beta1.LabelSourceCluster: member}
	cur := &meshv1.ExportedService{}
	err = r.Client.Get(ctx, client.ObjectKeyFromObject(dst), cur)
	switch {
	case apierrors.IsNotFound(err):
		dst.Labels, dst.Spec = labels, *src.Spec.DeepCopy()
		if err := r.Client.Create(ctx, dst); err != nil {
			return ctrl.Result{}, fmt.Errorf("copy exportedservice %s to %s/%s: %w", req.NamespacedName, dst.Namespace, dst.Name, err)
		}
		return ctrl.Result{}, nil
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("get exportedservice %s/%s: %w", dst.Namespace, dst.Name, err)
	}
	if equality.Semantic.DeepEqual(cur.Spec, src.Spec) && equality.Semantic.DeepEqual(cur.Labels, labels) {
		return ctrl.Result{}, nil
	}
	cur.Labels, cur.Spec = labels, *src.Spec.DeepCopy()
	if err := r.Client.Update(ctx, cur); err != nil {
		return ctrl.Result{}, fmt.Errorf("update exportedservice %s/%s: %w", cur.Namespace, cur.Name, err)
	}
	return ctrl.Result{}, nil
}
