package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
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
	"github.com/archipelago-mesh/archipelago/internal/ipam"
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
	// HeartbeatStaleAfter is how old the newest heartbeat (TunnelGateway
	// status.lastSeen) of a member's gateways may be before the member's
	// agent counts as gone: AgentConnected=False (HeartbeatStale), and its
	// peers' drains stop waiting for it.
	HeartbeatStaleAfter time.Duration
	// MaxConcurrentReconciles is how many members are reconciled at once.
	MaxConcurrentReconciles int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

func (r *MemberClusterReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// memberScope is what one pass reads and writes.
type memberScope struct {
	member *meshv1.MemberCluster
	// persisted is the member as read at the start of the pass: what the
	// API server holds, before this pass's status patch.
	persisted  *meshv1.MemberCluster
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
// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=clustersetpeers,verbs=get;list;watch;create;update;patch;delete
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
	s := &memberScope{member: m, persisted: before}

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
		r.reconcileFamilies,
		r.reconcileNamespace,
		r.reconcileGateways,
		r.reconcileConnectivity,
		r.reconcilePeer,
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
		if cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated); cond != nil && cond.Status == metav1.ConditionTrue &&
			(cond.Reason == meshv1.ReasonAllocated || cond.Reason == meshv1.ReasonAdopted) {
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
		if extra := familiesNotListed(m); extra != "" {
			// Like a podCIDRs edit: reported, not applied. Taking a range
			// from a live member would cut its pods off without a drain.
			a.Message = "assigned " + strings.Join(a.PodCIDRs, ", ") + "; spec.ipFamilies no longer lists the family of " + extra +
				", but an assigned range never changes while the member exists: it stays routed to this member; delete and re-create the member to give it up"
			a.Reason = meshv1.ReasonFamiliesDiffer
		}
	} else if len(m.Status.PodCIDRs) > 0 {
		// Never take an assigned range away; report why the rest failed.
		a.PodCIDRs = m.Status.PodCIDRs
	}
	setCIDRAllocatedCondition(m, a)
	return ctrl.Result{}, nil
}

// familiesNotListed names the assigned ranges of a family that a non-empty
// spec.ipFamilies does not list.
func familiesNotListed(m *meshv1.MemberCluster) string {
	if len(m.Spec.IPFamilies) == 0 {
		return ""
	}
	var out []string
	for _, c := range m.Status.PodCIDRs {
		p, err := netip.ParsePrefix(c)
		if err == nil && !slices.Contains(m.Spec.IPFamilies, apiFamily(ipam.FamilyOf(p.Addr()))) {
			out = append(out, c)
		}
	}
	return strings.Join(out, ", ")
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
// the RBAC that confines it: TunnelGateways in its own namespace, read access
// to its own MemberCluster and ClusterSet and to its set's ClusterSetPeers,
// nothing else (never MemberCluster status, never another set's directory);
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
	cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: memberClusterRoleBinding(m.Name)}}
	crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: memberClusterRoleBinding(m.Name)}}
	quota := &corev1.ResourceQuota{ObjectMeta: metav1.ObjectMeta{Name: memberRoleName, Namespace: nsName}}
	wantRoleRef := func(kind, name string) rbacv1.RoleRef {
		return rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: name}
	}
	ensures := []ensured{
		{&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: MemberServiceAccount, Namespace: nsName}}, labels, nil},
		{role, labels, func() error { role.Rules = memberNamespaceRules(); return nil }},
		{rb, labels, func() error {
			return setBinding(&rb.RoleRef, &rb.Subjects, wantRoleRef("Role", memberRoleName), subject)
		}},
		{cr, labels, func() error { cr.Rules = memberClusterRules(m); return nil }},
		{crb, labels, func() error {
			return setBinding(&crb.RoleRef, &crb.Subjects, wantRoleRef("ClusterRole", cr.Name), subject)
		}},
		// What the member writes on the hub is bounded; its Role does not let
		// it change the quota.
		{quota, labels, func() error {
			quota.Spec.Hard = corev1.ResourceList{
				GatewayQuotaResource:         *resource.NewQuantity(MaxGatewaysPerMember, resource.DecimalSI),
				ExportedServiceQuotaResource: *resource.NewQuantity(MaxExportedServicesPerMember, resource.DecimalSI),
			}
			return nil
		}},
	}
	if s.clusterSet != nil {
		// The set's peer directory: its namespace, the Role that reads it,
		// and this member's binding to that Role.
		setNS := SetNamespace(s.clusterSet.Name)
		setLabels := map[string]string{meshv1.LabelClusterSet: s.clusterSet.Name, labelManagedBy: managedByHub}
		sns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: setNS}}
		if err := r.ensure(ctx, sns, setLabels, func() error {
			if owner := sns.Labels[meshv1.LabelClusterSet]; owner != "" && owner != s.clusterSet.Name {
				return fmt.Errorf("namespace %s belongs to ClusterSet %q", setNS, owner)
			}
			return nil
		}); err != nil {
			return ctrl.Result{}, err
		}
		if !sns.DeletionTimestamp.IsZero() {
			// A set of the same name was deleted a moment ago.
			return ctrl.Result{RequeueAfter: 2 * time.Second}, errStop
		}
		reader := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: peerReaderRole, Namespace: setNS}}
		srb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: memberClusterRoleBinding(m.Name), Namespace: setNS}}
		ensures = append(ensures,
			ensured{reader, setLabels, func() error { reader.Rules = peerReaderRules(); return nil }},
			ensured{srb, mergeLabels(map[string]string{meshv1.LabelClusterSet: s.clusterSet.Name}, labels), func() error {
				return setBinding(&srb.RoleRef, &srb.Subjects, wantRoleRef("Role", peerReaderRole), subject)
			}})
	}
	for _, e := range ensures {
		err := r.ensure(ctx, e.obj, e.labels, e.mutate)
		if errors.Is(err, errRoleRefChanged) {
			// A binding's roleRef is immutable: replace the binding (one an
			// older hub made to the shared ClusterRole).
			if err := r.Client.Delete(ctx, e.obj); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, fmt.Errorf("replace %s: %w", client.ObjectKeyFromObject(e.obj), err)
			}
			return ctrl.Result{RequeueAfter: time.Second}, errStop
		}
		if err != nil {
			return ctrl.Result{}, err
		}
	}
	res, err := r.refreshUncountedQuota(ctx, quota)
	if err != nil {
		return ctrl.Result{}, err
	}
	m.Status.Namespace = nsName
	m.Status.ServiceAccount = MemberServiceAccount
	return res, nil
}

// quotaUncountedAfter is how long a gateway quota may stay without usage
// before the hub makes the quota controller look at it again, and how long
// it waits between two such nudges.
const quotaUncountedAfter = 20 * time.Second

// annotationQuotaNudged records when the hub last nudged a quota.
const annotationQuotaNudged = "archipelago.dev/quota-nudged"

// refreshUncountedQuota makes the quota controller count a gateway quota it
// took in but cannot count. The controller counts a custom resource only
// once it watches it, and it discovers new resources every 30 s; a quota it
// first saw before then has the limit in status.hard but no status.used, and
// it does not look at that quota again until its full resync (5 minutes by
// default). Meanwhile the API server refuses every TunnelGateway create
// ("status unknown for quota"): a member that joins a freshly installed hub
// would wait minutes for its first gateway. The controller recounts a quota
// whose spec.hard changed, so the hub lowers the limit by one and the next
// pass (ensure) restores it: two changes, each stricter than or equal to
// the limit, so the quota is enforced throughout.
func (r *MemberClusterReconciler) refreshUncountedQuota(ctx context.Context, quota *corev1.ResourceQuota) (ctrl.Result, error) {
	if _, limited := quota.Status.Hard[GatewayQuotaResource]; !limited {
		// Not taken in yet, or no quota controller runs at all: the API
		// server does not enforce a quota without status.
		return ctrl.Result{}, nil
	}
	if _, counted := quota.Status.Used[GatewayQuotaResource]; counted {
		return ctrl.Result{}, nil
	}
	since := quota.CreationTimestamp.Time
	if t, err := time.Parse(time.RFC3339, quota.Annotations[annotationQuotaNudged]); err == nil && t.After(since) {
		since = t
	}
	if wait := since.Add(quotaUncountedAfter).Sub(r.now()); wait > 0 {
		return ctrl.Result{RequeueAfter: wait + time.Second}, nil
	}
	nudged := quota.DeepCopy()
	nudged.Spec.Hard = corev1.ResourceList{GatewayQuotaResource: *resource.NewQuantity(MaxGatewaysPerMember-1, resource.DecimalSI)}
	if nudged.Annotations == nil {
		nudged.Annotations = map[string]string{}
	}
	nudged.Annotations[annotationQuotaNudged] = r.now().UTC().Format(time.RFC3339)
	// Update carries the resourceVersion read: a quota changed meanwhile is
	// left for the next pass.
	if err := r.Client.Update(ctx, nudged); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return ctrl.Result{}, fmt.Errorf("nudge the uncounted quota %s: %w", client.ObjectKeyFromObject(quota), err)
	}
	logf.FromContext(ctx).Info("Nudged a gateway quota the quota controller did not count", "quota", client.ObjectKeyFromObject(quota))
	// The next pass restores the limit.
	return ctrl.Result{RequeueAfter: time.Second}, nil
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

// ensured is one object reconcileNamespace keeps in shape.
type ensured struct {
	obj    client.Object
	labels map[string]string
	mutate func() error
}

// errRoleRefChanged says a binding exists with another roleRef.
var errRoleRefChanged = errors.New("binding refers to another role")

func setBinding(ref *rbacv1.RoleRef, subjects *[]rbacv1.Subject, want rbacv1.RoleRef, subject []rbacv1.Subject) error {
	if ref.Name != "" && *ref != want {
		return errRoleRefChanged
	}
	*ref = want
	*subjects = subject
	return nil
}

// memberClusterRules is what a member may read of the cluster-scoped kinds:
// its own MemberCluster and its own ClusterSet, by name. List and watch work
// with a metadata.name field selector (the API server authorizes such a
// request against resourceNames); a list of all is refused.
func memberClusterRules(m *meshv1.MemberCluster) []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{
			APIGroups:     []string{meshv1.GroupVersion.Group},
			Resources:     []string{"memberclusters"},
			ResourceNames: []string{m.Name},
			Verbs:         []string{"get", "list", "watch"},
		},
		{
			APIGroups:     []string{meshv1.GroupVersion.Group},
			Resources:     []string{"clustersets"},
			ResourceNames: []string{m.Spec.ClusterSet},
			Verbs:         []string{"get", "list", "watch"},
		},
	}
}

// peerReaderRules let the members of a set read its peer directory and the
// hub's copies of the set's exported services (never write them).
func peerReaderRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{{
		APIGroups: []string{meshv1.GroupVersion.Group},
		Resources: []string{"clustersetpeers", "exportedservices"},
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
			// The member's own exports of multi-cluster services; the hub
			// copies them into the set's namespace for the other members.
			APIGroups: []string{meshv1.GroupVersion.Group},
			Resources: []string{"exportedservices"},
			Verbs:     []string{"get", "list", "watch", "create", "update", "patch", "delete"},
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
				Endpoints: gw.Spec.Endpoints, Active: gw.Spec.Active, MTU: gw.Spec.MTU,
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

	// Liveness: the agent refreshes its active gateway's lastSeen. The
	// reconciler is not woken by heartbeats (see gatewayChangeMatters), so
	// it comes back when the newest heartbeat would turn stale.
	accepted := map[string]bool{}
	for _, g := range valid {
		accepted[g.Name] = true
	}
	var newest *metav1.Time
	for i := range list.Items {
		gw := &list.Items[i]
		if seen := gw.Status.LastSeen; seen != nil && accepted[gw.Name] && (newest == nil || seen.After(newest.Time)) {
			newest = seen
		}
	}
	var res ctrl.Result
	wasConnected := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberAgentConnected)
	if next := setAgentConnectedCondition(m, len(valid), newest, r.now(), r.HeartbeatStaleAfter); next > 0 {
		res.RequeueAfter = next
	}
	logLiveness(logf.FromContext(ctx), m, wasConnected, newest)
	return res, kerrors.NewAggregate(errs)
}

// logLiveness logs a member's agent turning stale and coming back (the
// status says so too; the log tells when the hub saw it).
func logLiveness(log logr.Logger, m *meshv1.MemberCluster, was *metav1.Condition, lastSeen *metav1.Time) {
	now := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberAgentConnected)
	if was == nil || now == nil || was.Status == now.Status {
		return
	}
	switch {
	case now.Reason == meshv1.ReasonHeartbeatStale:
		log.Info("Member's agent heartbeat is stale", "member", klog.KObj(m), "lastSeen", lastSeen)
	case was.Reason == meshv1.ReasonHeartbeatStale && now.Status == metav1.ConditionTrue:
		log.Info("Member's agent heartbeat is fresh again", "member", klog.KObj(m), "lastSeen", lastSeen)
	}
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

// reconcileConnectivity takes k of n peers up from the active gateway's own
// summary (status.peersUp and downPeers): no pass reads the other members.
func (r *MemberClusterReconciler) reconcileConnectivity(_ context.Context, s *memberScope) (ctrl.Result, error) {
	m := s.member
	if s.clusterSet == nil {
		return ctrl.Result{}, nil
	}
	active := activeGatewayObject(m, s.gateways)
	if active == nil {
		setNoGatewayConnectedCondition(m)
		return ctrl.Result{}, nil
	}
	up := int(active.Status.PeersUp)
	setConnectedCondition(m, up, up+len(active.Status.DownPeers), active.Status.DownPeers)
	return ctrl.Result{}, nil
}

// activeGatewayObject is the TunnelGateway behind the member's active gateway.
func activeGatewayObject(m *meshv1.MemberCluster, gws []meshv1.TunnelGateway) *meshv1.TunnelGateway {
	if m.Status.ActiveGateway == "" {
		return nil
	}
	for i := range gws {
		if gws[i].Spec.Active && gws[i].Spec.NodeName == m.Status.ActiveGateway {
			return &gws[i]
		}
	}
	return nil
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
	if r.HeartbeatStaleAfter <= 0 {
		r.HeartbeatStaleAfter = DefaultHeartbeatStaleAfter
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
		Watches(&meshv1.ClusterSet{}, handler.EnqueueRequestsFromMapFunc(r.pendingMembersOfSet),
			builder.WithPredicates(clusterSetChangeForMembers())).
		Watches(&meshv1.ClusterSet{}, r.familyGroupEvents()).
		Watches(&meshv1.TunnelGateway{}, r.gatewayEvents()).
		Watches(&meshv1.MemberCluster{}, r.publishedKeyEvents()).
		// The hub's own writes of the directory wake the member once (a
		// pass without writes); an edit or deletion by anyone else is repaired.
		Watches(&meshv1.ClusterSetPeer{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: o.GetName()}}}
		})).
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
		// A member that holds ranges but waits for a family (its pool is
		// exhausted or missing) is pending too.
		if cond == nil || cond.Status != metav1.ConditionTrue || cond.Reason == meshv1.ReasonPoolExhausted || cond.Reason == meshv1.ReasonNoPoolForFamily ||
			!meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.MemberAccepted) {
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

// keySharerEvents enqueues the members of every other gateway with the
// public key of objs (before and after a change): whether their gateways
// hold the key may have changed with it.
func (r *MemberClusterReconciler) keySharerEvents(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request], objs ...client.Object) {
	keys := map[string]bool{}
	for _, o := range objs {
		if gw, ok := o.(*meshv1.TunnelGateway); ok && gw.Spec.PublicKey != "" {
			keys[gw.Spec.PublicKey] = true
		}
	}
	r.enqueueKeySharers(ctx, q, keys)
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
