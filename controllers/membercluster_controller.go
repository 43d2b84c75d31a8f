package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// IndexClusterSet indexes MemberClusters by spec.clusterSet.
const IndexClusterSet = "spec.clusterSet"

// MemberClusterReconciler assigns ranges to members, gives each member its
// hub namespace and credentials, and validates the gateways it publishes.
type MemberClusterReconciler struct {
	Client   client.Client
	Ledger   *BlockLedger
	Recorder events.EventRecorder
	// PeerDrainTimeout bounds how long a deleted member's range waits for its
	// peers to drop it before it is released (into quarantine) anyway.
	PeerDrainTimeout time.Duration
	// MaxConcurrentReconciles is how many members are reconciled at once.
	MaxConcurrentReconciles int
}

// memberScope is what one pass reads and writes.
type memberScope struct {
	member     *meshv1.MemberCluster
	clusterSet *meshv1.ClusterSet
	gateways   []meshv1.TunnelGateway
}

// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=memberclusters,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=memberclusters/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=memberclusters/finalizers,verbs=update
// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=cidrclaims,verbs=get;list;watch;create;update;patch;delete;deletecollection
// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=tunnelgateways,verbs=get;list;watch;create;update;patch;delete;deletecollection
// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=tunnelgateways/status,verbs=get;update;patch
// The hub may write namespaces, ServiceAccounts, ResourceQuotas and RBAC
// objects anywhere as far as RBAC goes (it cannot name them in advance); the
// ValidatingAdmissionPolicy in config/rbac confines every change to objects
// it labelled itself, and RBAC objects to the names it uses.
// +kubebuilder:rbac:groups="",resources=namespaces;serviceaccounts;resourcequotas,verbs=get;list;watch;create;update;patch;delete
// The hub grants members create on their own serviceaccounts/token (renewal), so it must hold it (RBAC escalation check).
// +kubebuilder:rbac:groups="",resources=serviceaccounts/token,verbs=create
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings;clusterroles;clusterrolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile runs the phases of one MemberCluster.
func (r *MemberClusterReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	log := logf.FromContext(ctx)
	m := &meshv1.MemberCluster{}
	if err := r.Client.Get(ctx, req.NamespacedName, m); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	before := m.DeepCopy()
	s := &memberScope{member: m}

	// One status write per pass, with optimistic concurrency: a pass that
	// read an old object must not overwrite a newer assignment.
	defer func() {
		if equality.Semantic.DeepEqual(before.Status, m.Status) || !m.DeletionTimestamp.IsZero() && !controllerutil.ContainsFinalizer(m, meshv1.Finalizer) {
			return
		}
		m.Status.ObservedGeneration = m.Generation
		if err := r.Client.Status().Patch(ctx, m, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
			if apierrors.IsConflict(err) {
				log.V(1).Info("Status write conflicted, requeueing", "member", klog.KObj(m))
				res = ctrl.Result{RequeueAfter: 100 * time.Millisecond}
				return
			}
			retErr = kerrors.NewAggregate([]error{retErr, fmt.Errorf("patch status of member %s: %w", m.Name, err)})
		}
	}()

	if !m.DeletionTimestamp.IsZero() {
		return r.reconcileDelete(ctx, s)
	}
	if !controllerutil.ContainsFinalizer(m, meshv1.Finalizer) {
		patch := client.MergeFrom(m.DeepCopy())
		controllerutil.AddFinalizer(m, meshv1.Finalizer)
		if err := r.Client.Patch(ctx, m, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer to member %s: %w", m.Name, err)
		}
		before.Finalizers = m.Finalizers
		before.ResourceVersion = m.ResourceVersion
	}

	phases := []func(context.Context, *memberScope) (ctrl.Result, error){
		r.reconcileClusterSet,
		r.reconcileRanges,
		r.reconcileNamespace,
		r.reconcileGateways,
		r.reconcileConnectivity,
	}
	var errs []error
	for _, phase := range phases {
		pr, err := phase(ctx, s)
		if err != nil {
			errs = append(errs, err)
		}
		res = lowestResult(res, pr)
		if errors.Is(err, errStop) {
			break
		}
	}
	setReadyCondition(m)
	return res, filterStop(kerrors.NewAggregate(errs))
}

// errStop ends a pass without an error (later phases need what is missing).
var errStop = errors.New("stop")

func filterStop(err error) error {
	if err == nil {
		return nil
	}
	var agg kerrors.Aggregate
	if errors.As(err, &agg) {
		var out []error
		for _, e := range agg.Errors() {
			if !errors.Is(e, errStop) {
				out = append(out, e)
			}
		}
		return kerrors.NewAggregate(out)
	}
	if errors.Is(err, errStop) {
		return nil
	}
	return err
}

func lowestResult(a, b ctrl.Result) ctrl.Result {
	if b.RequeueAfter > 0 && (a.RequeueAfter == 0 || b.RequeueAfter < a.RequeueAfter) {
		a.RequeueAfter = b.RequeueAfter
	}
	return a
}

func (r *MemberClusterReconciler) reconcileClusterSet(ctx context.Context, s *memberScope) (ctrl.Result, error) {
	m := s.member
	cs := &meshv1.ClusterSet{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: m.Spec.ClusterSet}, cs); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("get clusterset %s: %w", m.Spec.ClusterSet, err)
		}
		cs = nil
	}
	setAcceptedCondition(m, cs)
	if cs == nil || !cs.DeletionTimestamp.IsZero() {
		setCIDRPendingCondition(m, "waiting for the ClusterSet")
		return ctrl.Result{}, nil
	}
	s.clusterSet = cs
	return ctrl.Result{}, nil
}

func (r *MemberClusterReconciler) reconcileRanges(ctx context.Context, s *memberScope) (ctrl.Result, error) {
	m := s.member
	if s.clusterSet == nil {
		return ctrl.Result{}, nil
	}
	a, err := r.Ledger.Assign(ctx, s.clusterSet, m)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("assign ranges to member %s: %w", m.Name, err)
	}
	if a.Unchanged {
		// Keep the reason of the pass that assigned the ranges (Allocated or
		// Adopted); only a request that now differs is worth a new message.
		if cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated); cond != nil && cond.Status == metav1.ConditionTrue && cond.Reason != meshv1.ReasonRequestDiffers {
			a.Reason, a.Message = cond.Reason, cond.Message
		}
	}
	if a.Assigned() {
		if len(m.Status.PodCIDRs) == 0 {
			r.Recorder.Eventf(m, nil, corev1.EventTypeNormal, a.Reason, "AssignRanges", "Pod ranges %s", strings.Join(a.PodCIDRs, ", "))
		}
		m.Status.PodCIDRs = a.PodCIDRs
		if req := requestedNotAssigned(m); req != "" {
			a.Message = "assigned " + strings.Join(a.PodCIDRs, ", ") + "; spec.podCIDRs asks for " + req + " but an assigned range never changes: delete and re-create the member to move it"
			a.Reason = meshv1.ReasonRequestDiffers
		}
	} else if len(m.Status.PodCIDRs) > 0 {
		// Never take an assigned range away; report why the rest failed.
		a.PodCIDRs = m.Status.PodCIDRs
	}
	setCIDRAllocatedCondition(m, a)
	return ctrl.Result{}, nil
}

func requestedNotAssigned(m *meshv1.MemberCluster) string {
	var out []string
	for _, c := range m.Spec.PodCIDRs {
		if !slices.Contains(m.Status.PodCIDRs, string(c)) {
			out = append(out, string(c))
		}
	}
	return strings.Join(out, ", ")
}

// reconcileNamespace gives the member its hub namespace, ServiceAccount and
// the RBAC that confines it: TunnelGateways in its own namespace, read access to
// ClusterSets and MemberClusters, nothing else (never MemberCluster status);
// and a ResourceQuota that bounds its TunnelGateways.
func (r *MemberClusterReconciler) reconcileNamespace(ctx context.Context, s *memberScope) (ctrl.Result, error) {
	m := s.member
	nsName := MemberNamespace(m.Name)
	labels := map[string]string{meshv1.LabelMember: m.Name, labelManagedBy: managedByHub}

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName}}
	if err := r.ensure(ctx, ns, labels, func() error {
		if owner := ns.Labels[meshv1.LabelMember]; owner != "" && owner != m.Name {
			return fmt.Errorf("namespace %s belongs to member %q", nsName, owner)
		}
		return nil
	}); err != nil {
		return ctrl.Result{}, err
	}
	if !ns.DeletionTimestamp.IsZero() {
		// A member of the same name was deleted a moment ago.
		return ctrl.Result{RequeueAfter: 2 * time.Second}, errStop
	}
	subject := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: MemberServiceAccount, Namespace: nsName}}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: memberRoleName, Namespace: nsName}}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: memberRoleName, Namespace: nsName}}
	cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: memberRoleName}}
	crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: memberClusterRoleBinding(m.Name)}}
	quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: memberRoleName, Namespace: nsName}}
	for _, e := range []struct {
		obj    client.Object
		labels map[string]string
		mutate func() error
	}{
		{&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: MemberServiceAccount, Namespace: nsName}}, labels, nil},
		{role, labels, func() error { role.Rules = memberNamespaceRules(); return nil }},
		{rb, labels, func() error {
			rb.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: memberRoleName}
			rb.Subjects = subject
			return nil
		}},
		// The ClusterRole is shared by all members, so it carries no member label.
		{cr, map[string]string{labelManagedBy: managedByHub}, func() error { cr.Rules = memberClusterRules(); return nil }},
		{crb, labels, func() error {
			crb.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: memberRoleName}
			crb.Subjects = subject
			return nil
		}},
		// What the member writes on the hub is bounded; its Role does not let
		// it change the quota.
		{quota, labels, func() error {
			quota.Spec.Hard = corev1.ResourceList{GatewayQuotaResource: *resource.NewQuantity(MaxGatewaysPerMember, resource.DecimalSI)}
			return nil
		}},
	} {
		if err := r.ensure(ctx, e.obj, e.labels, e.mutate); err != nil {
			return ctrl.Result{}, err
		}
	}
	m.Status.Namespace = nsName
	m.Status.ServiceAccount = MemberServiceAccount
	return ctrl.Result{}, nil
}

// ensure creates obj or patches it to carry labels and what mutate sets.
func (r *MemberClusterReconciler) ensure(ctx context.Context, obj client.Object, labels map[string]string, mutate func() error) error {
	if _, err := controllerutil.CreateOrPatch(ctx, r.Client, obj, func() error {
		if mutate != nil {
			if err := mutate(); err != nil {
				return err
			}
		}
		obj.SetLabels(mergeLabels(obj.GetLabels(), labels))
		return nil
	}); err != nil {
		kind := strings.ToLower(strings.TrimPrefix(fmt.Sprintf("%T", obj), "*v1."))
		return fmt.Errorf("ensure %s %s: %w", kind, client.ObjectKeyFromObject(obj), err)
	}
	return nil
}

// memberClusterRules is what every member may read cluster-wide.
func memberClusterRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{{
		APIGroups: []string{meshv1.GroupVersion.Group},
		Resources: []string{"clustersets", "memberclusters"},
		Verbs:     []string{"get", "list", "watch"},
	}}
}

func memberNamespaceRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{
			APIGroups: []string{meshv1.GroupVersion.Group},
			Resources: []string{"tunnelgateways"},
			Verbs:     []string{"get", "list", "watch", "create", "update", "patch", "delete"},
		},
		{
			APIGroups: []string{meshv1.GroupVersion.Group},
			Resources: []string{"tunnelgateways/status"},
			Verbs:     []string{"get", "update", "patch"},
		},
		{
			// The elected agent renews its own token (bound to its
			// credential Secret, which only join and leave create and delete).
			APIGroups:     []string{""},
			Resources:     []string{"serviceaccounts/token"},
			ResourceNames: []string{MemberServiceAccount},
			Verbs:         []string{"create"},
		},
	}
}

func mergeLabels(have, want map[string]string) map[string]string {
	if have == nil {
		have = map[string]string{}
	}
	for k, v := range want {
		have[k] = v
	}
	return have
}

// reconcileGateways validates the TunnelGateway objects the member's agent wrote
// and copies the valid ones into the member's status. An invalid Gateway is
// marked on its own status and on the member, and is never given to peers.
func (r *MemberClusterReconciler) reconcileGateways(ctx context.Context, s *memberScope) (ctrl.Result, error) {
	m := s.member
	var list meshv1.TunnelGatewayList
	if err := r.Client.List(ctx, &list, client.InNamespace(MemberNamespace(m.Name))); err != nil {
		return ctrl.Result{}, fmt.Errorf("list gateways of member %s: %w", m.Name, err)
	}
	s.gateways = list.Items
	var (
		valid   []meshv1.MemberGateway
		invalid []string
		errs    []error
	)
	for i := range list.Items {
		gw := &list.Items[i]
		refusal, err := r.refuseGateway(ctx, m, gw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		gwBefore := gw.DeepCopy()
		if refusal != nil {
			invalid = append(invalid, gw.Name+": "+refusal.message)
			setCondition(&gw.Status.Conditions, gw.Generation, meshv1.TunnelGatewayValid, metav1.ConditionFalse, refusal.reason, refusal.message)
		} else {
			setCondition(&gw.Status.Conditions, gw.Generation, meshv1.TunnelGatewayValid, metav1.ConditionTrue, meshv1.ReasonValid, "public key and endpoints parse")
			valid = append(valid, meshv1.MemberGateway{
				Name: gw.Name, Node: gw.Spec.NodeName, PublicKey: gw.Spec.PublicKey,
				Endpoints: gw.Spec.Endpoints, Active: gw.Spec.Active,
			})
		}
		if !equality.Semantic.DeepEqual(gwBefore.Status.Conditions, gw.Status.Conditions) {
			if err := r.Client.Status().Patch(ctx, gw, client.MergeFrom(gwBefore)); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("patch status of gateway %s/%s: %w", gw.Namespace, gw.Name, err))
			}
		}
	}
	// Exactly one active gateway is given to peers; if the member claims
	// several, the lowest name wins so every peer picks the same one.
	slices.SortFunc(valid, func(a, b meshv1.MemberGateway) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	m.Status.ActiveGateway = ""
	var actives []string
	for i := range valid {
		if !valid[i].Active {
			continue
		}
		actives = append(actives, valid[i].Name)
		if m.Status.ActiveGateway == "" {
			m.Status.ActiveGateway = valid[i].Node
			continue
		}
		valid[i].Active = false
	}
	m.Status.Gateways = valid
	setGatewayConditions(m, len(list.Items), invalid, actives)
	return ctrl.Result{}, kerrors.NewAggregate(errs)
}

// refuseGateway returns why gw must not be given to peers (nil if it may
// be): a field that does not parse, or a public key that another member's
// gateway holds. The error is a failure to find out.
func (r *MemberClusterReconciler) refuseGateway(ctx context.Context, m *meshv1.MemberCluster, gw *meshv1.TunnelGateway) (*gatewayError, error) {
	if err := validateGatewaySyntax(gw); err != nil {
		return &gatewayError{reason: meshv1.ReasonInvalidGateway, message: err.Error()}, nil
	}
	key := gw.Spec.PublicKey
	var publishers meshv1.MemberClusterList
	if err := r.Client.List(ctx, &publishers, client.MatchingFields{IndexPublishedKey: key}, readOnly); err != nil {
		return nil, fmt.Errorf("list members that publish the public key of %s/%s: %w", gw.Namespace, gw.Name, err)
	}
	mine := publishedKeys(m)[key]
	var other *gatewayError
	for i := range publishers.Items {
		p := &publishers.Items[i]
		if p.Name == m.Name || other != nil {
			continue
		}
		for _, pg := range p.Status.Gateways {
			if pg.PublicKey == key {
				other = publishedKeyError(p.Name, pg.Name)
				break
			}
		}
	}
	switch {
	case other != nil && !mine:
		return other, nil
	case other == nil && mine:
		return nil, nil
	}
	// No member gives the key to peers yet (or, after a race, several do):
	// the oldest gateway holds it.
	var sharing meshv1.TunnelGatewayList
	if err := r.Client.List(ctx, &sharing, client.MatchingFields{IndexPublicKey: key}, readOnly); err != nil {
		return nil, fmt.Errorf("list gateways with the public key of %s/%s: %w", gw.Namespace, gw.Name, err)
	}
	own := MemberNamespace(m.Name)
	holder, member := keyHolder(sharing.Items, func(ns string) string {
		if ns == own {
			return m.Name
		}
		return r.memberOfNamespace(ctx, ns)
	})
	if holder != nil && holder.Namespace != own {
		return duplicateKeyError(holder, member), nil
	}
	return nil, nil
}

// memberOfNamespace names the member whose hub namespace ns is, or "" for a
// namespace the hub did not make for a member.
func (r *MemberClusterReconciler) memberOfNamespace(ctx context.Context, ns string) string {
	n := &corev1.Namespace{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: ns}, n); err != nil {
		return ""
	}
	return n.Labels[meshv1.LabelMember]
}

// reconcileConnectivity counts the peers the active gateway reports up.
func (r *MemberClusterReconciler) reconcileConnectivity(ctx context.Context, s *memberScope) (ctrl.Result, error) {
	m := s.member
	if s.clusterSet == nil {
		return ctrl.Result{}, nil
	}
	var peers meshv1.MemberClusterList
	if err := r.Client.List(ctx, &peers, client.MatchingFields{IndexClusterSet: s.clusterSet.Name}, readOnly); err != nil {
		return ctrl.Result{}, fmt.Errorf("list members of clusterset %s: %w", s.clusterSet.Name, err)
	}
	var active *meshv1.TunnelGateway
	for i := range s.gateways {
		if s.gateways[i].Spec.Active && s.gateways[i].Spec.NodeName == m.Status.ActiveGateway {
			active = &s.gateways[i]
			break
		}
	}
	up, total := 0, 0
	var down []string
	for i := range peers.Items {
		p := &peers.Items[i]
		if p.Name == m.Name || len(p.Status.PodCIDRs) == 0 || !p.DeletionTimestamp.IsZero() {
			continue
		}
		total++
		if active != nil && peerUp(active, p.Name) {
			up++
		} else {
			down = append(down, p.Name)
		}
	}
	setConnectedCondition(m, up, total, down)
	return ctrl.Result{}, nil
}

func peerUp(gw *meshv1.TunnelGateway, cluster string) bool {
	for _, p := range gw.Status.Peers {
		if p.Cluster == cluster {
			return p.Up
		}
	}
	return false
}

// reconcileDelete removes what the hub made for the member, waits for the
// peers to drop it, and only then releases its ranges (into quarantine).
func (r *MemberClusterReconciler) reconcileDelete(ctx context.Context, s *memberScope) (ctrl.Result, error) {
	m := s.member
	log := logf.FromContext(ctx)
	if !controllerutil.ContainsFinalizer(m, meshv1.Finalizer) {
		return ctrl.Result{}, nil
	}
	nsName := MemberNamespace(m.Name)
	if err := r.Client.DeleteAllOf(ctx, &meshv1.TunnelGateway{}, client.InNamespace(nsName)); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("delete gateways of member %s: %w", m.Name, err)
	}
	for _, obj := range []client.Object{
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: memberClusterRoleBinding(m.Name)}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: memberRoleName, Namespace: nsName}},
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: memberRoleName, Namespace: nsName}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: MemberServiceAccount, Namespace: nsName}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName}},
	} {
		if err := r.Client.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("delete %T %s of member %s: %w", obj, obj.GetName(), m.Name, err)
		}
	}

	// Peers drop a member as soon as it is marked for deletion; wait until
	// their gateways no longer report a tunnel to it, so no route to its
	// range is left anywhere when the range goes back to the pool.
	if waiting, err := r.peersStillRouting(ctx, m); err != nil {
		return ctrl.Result{}, err
	} else if len(waiting) > 0 {
		if time.Since(m.DeletionTimestamp.Time) < r.PeerDrainTimeout {
			log.Info("Waiting for peers to drop the member", "member", klog.KObj(m), "peers", waiting)
			return ctrl.Result{RequeueAfter: 2 * time.Second}, nil
		}
		log.Info("Peers did not drop the member in time, releasing its ranges into quarantine", "member", klog.KObj(m), "peers", waiting)
	}

	var cs *meshv1.ClusterSet
	got := &meshv1.ClusterSet{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: m.Spec.ClusterSet}, got); err == nil {
		cs = got
	} else if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("get clusterset %s: %w", m.Spec.ClusterSet, err)
	}
	if err := r.Ledger.Release(ctx, m.Spec.ClusterSet, cs, m); err != nil {
		return ctrl.Result{}, err
	}
	patch := client.MergeFrom(m.DeepCopy())
	controllerutil.RemoveFinalizer(m, meshv1.Finalizer)
	if err := r.Client.Patch(ctx, m, patch); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("remove finalizer of member %s: %w", m.Name, err)
	}
	log.Info("Member removed, ranges released", "member", klog.KObj(m), "podCIDRs", m.Status.PodCIDRs)
	return ctrl.Result{}, nil
}

// peersStillRouting lists the other members whose active gateway still
// reports a tunnel to m.
func (r *MemberClusterReconciler) peersStillRouting(ctx context.Context, m *meshv1.MemberCluster) ([]string, error) {
	var peers meshv1.MemberClusterList
	if err := r.Client.List(ctx, &peers, client.MatchingFields{IndexClusterSet: m.Spec.ClusterSet}, readOnly); err != nil {
		return nil, fmt.Errorf("list members of clusterset %s: %w", m.Spec.ClusterSet, err)
	}
	var out []string
	for i := range peers.Items {
		p := &peers.Items[i]
		if p.Name == m.Name {
			continue
		}
		var gws meshv1.TunnelGatewayList
		if err := r.Client.List(ctx, &gws, client.InNamespace(MemberNamespace(p.Name))); err != nil {
			return nil, fmt.Errorf("list gateways of member %s: %w", p.Name, err)
		}
		for j := range gws.Items {
			if gws.Items[j].Spec.Active && slices.ContainsFunc(gws.Items[j].Status.Peers, func(ps meshv1.TunnelGatewayPeerStatus) bool { return ps.Cluster == m.Name }) {
				out = append(out, p.Name)
				break
			}
		}
	}
	return out, nil
}

// SetupWithManager registers the reconciler and its watches.
func (r *MemberClusterReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if r.Client == nil || r.Ledger == nil || r.Recorder == nil {
		return errors.New("member cluster reconciler needs a client, a ledger and an event recorder")
	}
	if r.PeerDrainTimeout <= 0 {
		r.PeerDrainTimeout = time.Minute
	}
	if r.MaxConcurrentReconciles <= 0 {
		r.MaxConcurrentReconciles = 4
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &meshv1.MemberCluster{}, IndexClusterSet, func(o client.Object) []string {
		return []string{o.(*meshv1.MemberCluster).Spec.ClusterSet}
	}); err != nil {
		return fmt.Errorf("index memberclusters by clusterset: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &meshv1.TunnelGateway{}, IndexPublicKey, indexPublicKey); err != nil {
		return fmt.Errorf("index tunnelgateways by public key: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &meshv1.MemberCluster{}, IndexPublishedKey, indexPublishedKey); err != nil {
		return fmt.Errorf("index memberclusters by published key: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&meshv1.MemberCluster{}).
		Watches(&meshv1.ClusterSet{}, handler.EnqueueRequestsFromMapFunc(r.pendingMembersOfSet)).
		Watches(&meshv1.TunnelGateway{}, r.gatewayEvents()).
		Watches(&meshv1.MemberCluster{}, r.publishedKeyEvents()).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(memberOfLabel),
			builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetLabels()[meshv1.LabelMember] != "" }))).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.MaxConcurrentReconciles}).
		Named("membercluster").
		Complete(r)
}

// pendingMembersOfSet enqueues the members of a set that a change of the set
// can help: those not yet accepted or without ranges. Members that hold their
// ranges are not touched, so a busy set does not reconcile every member on
// every status change.
func (r *MemberClusterReconciler) pendingMembersOfSet(ctx context.Context, o client.Object) []reconcile.Request {
	var members meshv1.MemberClusterList
	if err := r.Client.List(ctx, &members, client.MatchingFields{IndexClusterSet: o.GetName()}, readOnly); err != nil {
		logf.FromContext(ctx).Error(err, "List members of clusterset", "clusterset", o.GetName())
		return nil
	}
	var out []reconcile.Request
	for i := range members.Items {
		m := &members.Items[i]
		cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated)
		if cond == nil || cond.Status != metav1.ConditionTrue || !meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.MemberAccepted) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: m.Name}})
		}
	}
	return out
}

func (r *MemberClusterReconciler) memberOfNamespacedObject(ctx context.Context, o client.Object) []reconcile.Request {
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: o.GetNamespace()}, ns); err != nil {
		return nil
	}
	return memberOfLabel(ctx, ns)
}

// gatewayEvents enqueues the member of a changed gateway and the members of
// every other gateway with the same public key (before and after the
// change): whether their gateways hold the key may have changed with it.
func (r *MemberClusterReconciler) gatewayEvents() handler.EventHandler {
	enqueue := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request], objs ...client.Object) {
		keys := map[string]bool{}
		for _, o := range objs {
			for _, req := range r.memberOfNamespacedObject(ctx, o) {
				q.Add(req)
			}
			if gw, ok := o.(*meshv1.TunnelGateway); ok && gw.Spec.PublicKey != "" {
				keys[gw.Spec.PublicKey] = true
			}
		}
		r.enqueueKeySharers(ctx, q, keys)
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q, e.Object)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q, e.ObjectOld, e.ObjectNew)
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q, e.Object)
		},
		GenericFunc: func(ctx context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, q, e.Object)
		},
	}
}

// publishedKeyEvents enqueues, when a member starts or stops giving a key
// to peers, the members of the other gateways with that key: a refused
// copy becomes valid when its holder gives the key up.
func (r *MemberClusterReconciler) publishedKeyEvents() handler.EventHandler {
	changed := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request], before, after map[string]bool) {
		keys := map[string]bool{}
		for k := range before {
			if !after[k] {
				keys[k] = true
			}
		}
		for k := range after {
			if !before[k] {
				keys[k] = true
			}
		}
		r.enqueueKeySharers(ctx, q, keys)
	}
	return handler.Funcs{
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			changed(ctx, q, publishedKeys(e.ObjectOld.(*meshv1.MemberCluster)), publishedKeys(e.ObjectNew.(*meshv1.MemberCluster)))
		},
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if m, ok := e.Object.(*meshv1.MemberCluster); ok {
				changed(ctx, q, publishedKeys(m), nil)
			}
		},
	}
}

// enqueueKeySharers enqueues the members of every gateway that publishes one of keys.
func (r *MemberClusterReconciler) enqueueKeySharers(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request], keys map[string]bool) {
	for key := range keys {
		var sharing meshv1.TunnelGatewayList
		if err := r.Client.List(ctx, &sharing, client.MatchingFields{IndexPublicKey: key}, readOnly); err != nil {
			logf.FromContext(ctx).Error(err, "List gateways with a public key")
			continue
		}
		for i := range sharing.Items {
			if m := r.memberOfNamespace(ctx, sharing.Items[i].Namespace); m != "" {
				q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: m}})
			}
		}
	}
}

func memberOfLabel(_ context.Context, o client.Object) []reconcile.Request {
	if name := o.GetLabels()[meshv1.LabelMember]; name != "" {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: name}}}
	}
	return nil
}
