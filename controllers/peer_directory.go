package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// DefaultHeartbeatStaleAfter is three heartbeats of an agent (it refreshes
// its active gateway's lastSeen every minute).
const DefaultHeartbeatStaleAfter = 3 * time.Minute

// drainRecheck is how often a deleted member's drain is looked at without
// an event (acknowledgements wake it at once; a peer turning stale does not).
const drainRecheck = 5 * time.Second

// drainAckDelay folds the acknowledgements that arrive together into one drain pass.
const drainAckDelay = 250 * time.Millisecond

// reconcilePeer keeps the member's entry in its set's peer directory: the
// ranges the persisted status holds and the active validated gateway. The
// object is written only when one of those changes.
func (r *MemberClusterReconciler) reconcilePeer(ctx context.Context, s *memberScope) (ctrl.Result, error) {
	m := s.member
	if s.clusterSet == nil || len(m.Status.PodCIDRs) == 0 {
		return ctrl.Result{}, nil
	}
	// Publish only ranges the API server already holds in the member's
	// status: a status write that fails must not leave a range announced
	// to peers that the status does not carry. The status write of this
	// pass wakes the next one.
	if !slices.Equal(s.persisted.Status.PodCIDRs, m.Status.PodCIDRs) {
		return ctrl.Result{}, nil
	}
	want := meshv1.ClusterSetPeerSpec{PodCIDRs: slices.Clone(m.Status.PodCIDRs),
		AgentConnected: meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.MemberAgentConnected)}
	for _, g := range m.Status.Gateways {
		if g.Active {
			want.Gateway = &meshv1.PeerGateway{Node: g.Node, PublicKey: g.PublicKey, Endpoints: slices.Clone(g.Endpoints), MTU: g.MTU}
			break
		}
	}
	csp := &meshv1.ClusterSetPeer{ObjectMeta: metav1.ObjectMeta{Name: m.Name, Namespace: SetNamespace(s.clusterSet.Name)}}
	labels := map[string]string{meshv1.LabelMember: m.Name, meshv1.LabelClusterSet: s.clusterSet.Name, labelManagedBy: managedByHub}
	if err := r.ensure(ctx, csp, labels, func() error {
		if equality.Semantic.DeepEqual(csp.Spec, want) {
			return nil // keep the stored slices: CreateOrPatch compares them
		}
		csp.Spec = want
		return nil
	}); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, nil
}

// reconcileDelete removes what the hub made for the member, withdraws it
// from the peer directory, waits until every live peer acknowledged that it
// dropped the member, and only then releases its ranges (into quarantine).
func (r *MemberClusterReconciler) reconcileDelete(ctx context.Context, s *memberScope) (ctrl.Result, error) {
	m := s.member
	log := logf.FromContext(ctx)
	if !controllerutil.ContainsFinalizer(m, meshv1.Finalizer) {
		return ctrl.Result{}, nil
	}
	nsName := MemberNamespace(m.Name)
	setNS := SetNamespace(m.Spec.ClusterSet)
	if err := r.Client.DeleteAllOf(ctx, &meshv1.TunnelGateway{}, client.InNamespace(nsName)); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("delete gateways of member %s: %w", m.Name, err)
	}
	// The member's exports leave the set's directory first: importers drop
	// its endpoints at once rather than when its namespace is gone.
	if err := r.Client.DeleteAllOf(ctx, &meshv1.ExportedService{}, client.InNamespace(setNS),
		client.MatchingLabels{meshv1.LabelMember: m.Name, labelManagedBy: managedByHub}); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("delete the exported services of member %s from the directory of set %s: %w", m.Name, m.Spec.ClusterSet, err)
	}
	for _, obj := range []client.Object{
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: memberClusterRoleBinding(m.Name), Namespace: setNS}},
		&rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: memberClusterRoleBinding(m.Name)}},
		&rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: memberClusterRoleBinding(m.Name)}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: memberRoleName, Namespace: nsName}},
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: memberRoleName, Namespace: nsName}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: MemberServiceAccount, Namespace: nsName}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName}},
	} {
		if err := r.Client.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("delete %T %s of member %s: %w", obj, obj.GetName(), m.Name, err)
		}
	}

	csp := &meshv1.ClusterSetPeer{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: setNS, Name: m.Name}, csp)
	switch {
	case apierrors.IsNotFound(err):
		csp = nil
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("get peer %s/%s: %w", setNS, m.Name, err)
	}
	if csp != nil {
		if !csp.Spec.Withdrawn {
			patch := client.MergeFrom(csp.DeepCopy())
			csp.Spec.Withdrawn = true
			if err := r.Client.Patch(ctx, csp, patch); err != nil {
				return ctrl.Result{}, fmt.Errorf("withdraw peer %s/%s: %w", setNS, m.Name, err)
			}
			log.Info("Member withdrawn from the peer directory", "member", klog.KObj(m))
		}
		d, err := r.drainState(ctx, m)
		if err != nil {
			return ctrl.Result{}, err
		}
		if len(d.waiting) > 0 {
			if left := r.PeerDrainTimeout - r.now().Sub(m.DeletionTimestamp.Time); left > 0 {
				log.Info("Waiting for live peers to drop the member", "member", klog.KObj(m),
					"waitingFor", d.waiting, "dropped", d.dropped, "notWaitedFor", d.stale)
				return ctrl.Result{RequeueAfter: min(left, drainRecheck)}, nil
			}
			log.Info("Live peers did not drop the member within the drain timeout, releasing its ranges into quarantine anyway",
				"member", klog.KObj(m), "timeout", r.PeerDrainTimeout, "notDropped", d.waiting)
			r.Recorder.Eventf(m, nil, corev1.EventTypeWarning, "DrainTimeout", "Release",
				"Peers %s did not drop the member within %s; releasing its ranges anyway", strings.Join(d.waiting, ", "), r.PeerDrainTimeout)
		} else {
			msg := "no live peer held a tunnel to it"
			if len(d.dropped) > 0 {
				msg = "dropped by " + strings.Join(d.dropped, ", ")
			}
			if len(d.stale) > 0 {
				msg += "; not waited for (heartbeat stale): " + strings.Join(d.stale, ", ")
			}
			log.Info("Peers dropped the member", "member", klog.KObj(m), "dropped", d.dropped, "notWaitedFor", d.stale)
			r.Recorder.Eventf(m, nil, corev1.EventTypeNormal, "Drained", "Release", "Member drained: %s", msg)
		}
		// Peers clear the member from their droppedPeers once its entry is gone.
		if err := r.Client.Delete(ctx, csp, client.Preconditions{UID: &csp.UID}); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("delete peer %s/%s: %w", setNS, m.Name, err)
		}
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

// drain is where a withdrawn member's peers stand.
type drain struct {
	// waiting: live peers whose active gateway has not listed the member in
	// status.droppedPeers yet.
	waiting []string
	// dropped: live peers that acknowledged.
	dropped []string
	// stale: peers whose heartbeat is stale (or never came): not waited for.
	stale []string
}

// drainState looks at every other peer of the member's set: its active
// gateway, that gateway's heartbeat and its droppedPeers. Peers without an
// active gateway never held a tunnel to the member and are not counted.
func (r *MemberClusterReconciler) drainState(ctx context.Context, m *meshv1.MemberCluster) (drain, error) {
	var d drain
	var peers meshv1.ClusterSetPeerList
	if err := r.Client.List(ctx, &peers, client.InNamespace(SetNamespace(m.Spec.ClusterSet)), readOnly); err != nil {
		return d, fmt.Errorf("list peers of clusterset %s: %w", m.Spec.ClusterSet, err)
	}
	now := r.now()
	for i := range peers.Items {
		p := &peers.Items[i]
		if p.Name == m.Name || p.Spec.Gateway == nil {
			continue
		}
		var gws meshv1.TunnelGatewayList
		if err := r.Client.List(ctx, &gws, client.InNamespace(MemberNamespace(p.Name)), readOnly); err != nil {
			return d, fmt.Errorf("list gateways of member %s: %w", p.Name, err)
		}
		var active *meshv1.TunnelGateway
		for j := range gws.Items {
			if gws.Items[j].Spec.Active && gws.Items[j].Spec.NodeName == p.Spec.Gateway.Node {
				active = &gws.Items[j]
				break
			}
		}
		switch {
		case active == nil:
			// The peer's gateway is gone (the peer is leaving too).
		case !heartbeatFresh(active.Status.LastSeen, now, r.HeartbeatStaleAfter):
			d.stale = append(d.stale, p.Name)
		case slices.Contains(active.Status.DroppedPeers, m.Name):
			d.dropped = append(d.dropped, p.Name)
		default:
			d.waiting = append(d.waiting, p.Name)
		}
	}
	return d, nil
}

func heartbeatFresh(seen *metav1.Time, now time.Time, staleAfter time.Duration) bool {
	return seen != nil && now.Sub(seen.Time) <= staleAfter
}

// gatewayEvents maps TunnelGateway events to reconcile requests: the
// gateway's own member and the members of other gateways with its public
// key, for changes other than a heartbeat (and for a heartbeat that revives
// a stale gateway); and the members a gateway newly lists as dropped, whose
// drains wait for that acknowledgement.
func (r *MemberClusterReconciler) gatewayEvents() handler.EventHandler {
	type queue = workqueue.TypedRateLimitingInterface[reconcile.Request]
	owner := func(ctx context.Context, o client.Object, q queue) {
		for _, req := range r.memberOfNamespacedObject(ctx, o) {
			q.Add(req)
		}
		r.keySharerEvents(ctx, q, o)
	}
	return handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, q queue) { owner(ctx, e.Object, q) },
		DeleteFunc: func(ctx context.Context, e event.DeleteEvent, q queue) { owner(ctx, e.Object, q) },
		GenericFunc: func(ctx context.Context, e event.GenericEvent, q queue) {
			owner(ctx, e.Object, q)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q queue) {
			old, okOld := e.ObjectOld.(*meshv1.TunnelGateway)
			gw, okNew := e.ObjectNew.(*meshv1.TunnelGateway)
			if !okOld || !okNew {
				return
			}
			if gatewayChangeMatters(old, gw, r.now(), r.HeartbeatStaleAfter) {
				owner(ctx, gw, q)
				if old.Spec.PublicKey != gw.Spec.PublicKey {
					r.keySharerEvents(ctx, q, old)
				}
			}
			// Acknowledgements of one withdrawal arrive from every peer
			// at about the same time: a short delay lets the queue fold
			// them into a few drain passes (each reads every peer's
			// gateway) instead of one per peer.
			var newly []string
			for _, name := range gw.Status.DroppedPeers {
				if !slices.Contains(old.Status.DroppedPeers, name) {
					newly = append(newly, name)
				}
			}
			for _, name := range r.drainsAcknowledged(ctx, gw, newly) {
				q.AddAfter(reconcile.Request{NamespacedName: types.NamespacedName{Name: name}}, drainAckDelay)
			}
		},
	}
}

// drainsAcknowledged keeps of names (a gateway's newly dropped peers) the
// members whose drain can wait for that gateway: members being deleted, in
// the ClusterSet of the gateway's own member. A member writes its
// gateways' status itself, so a list of other names (every member of every
// set, flipped a few times a second) must not make the hub reconcile them.
func (r *MemberClusterReconciler) drainsAcknowledged(ctx context.Context, gw *meshv1.TunnelGateway, names []string) []string {
	if len(names) == 0 {
		return nil
	}
	owners := r.memberOfNamespacedObject(ctx, gw)
	if len(owners) != 1 {
		return nil
	}
	owner := &meshv1.MemberCluster{}
	if err := r.Client.Get(ctx, owners[0].NamespacedName, owner); err != nil {
		return nil
	}
	var out []string
	for _, name := range names {
		m := &meshv1.MemberCluster{}
		if err := r.Client.Get(ctx, types.NamespacedName{Name: name}, m); err != nil {
			continue
		}
		if !m.DeletionTimestamp.IsZero() && m.Spec.ClusterSet == owner.Spec.ClusterSet {
			out = append(out, name)
		}
	}
	return out
}

// gatewayChangeMatters is false for a heartbeat alone (only status.lastSeen
// moved) of a gateway that was alive: those are most of all TunnelGateway
// writes, and the member's pass would find nothing to do. The staleness
// timer of the pass (RequeueAfter) covers the heartbeats that stop.
func gatewayChangeMatters(old, gw *meshv1.TunnelGateway, now time.Time, staleAfter time.Duration) bool {
	if old.Generation != gw.Generation || !equality.Semantic.DeepEqual(old.Spec, gw.Spec) ||
		!old.DeletionTimestamp.Equal(gw.DeletionTimestamp) || !equality.Semantic.DeepEqual(old.Labels, gw.Labels) {
		return true
	}
	o, n := &old.Status, &gw.Status
	if o.PeersUp != n.PeersUp || !slices.Equal(o.DownPeers, n.DownPeers) || !slices.Equal(o.DroppedPeers, n.DroppedPeers) ||
		!equality.Semantic.DeepEqual(o.Conditions, n.Conditions) {
		return true
	}
	if n.LastSeen.Equal(o.LastSeen) {
		return false
	}
	// A heartbeat after silence: the member may be stale now and live again.
	return !heartbeatFresh(o.LastSeen, now, staleAfter)
}

// clusterSetChangeForMembers passes the ClusterSet events that can help a
// pending member: a new set, a spec change, a deletion, a change of its block
// counts or conditions. Its ObservedGeneration alone does not.
func clusterSetChangeForMembers() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			old, okOld := e.ObjectOld.(*meshv1.ClusterSet)
			cs, okNew := e.ObjectNew.(*meshv1.ClusterSet)
			if !okOld || !okNew {
				return true
			}
			return old.Generation != cs.Generation || !old.DeletionTimestamp.Equal(cs.DeletionTimestamp) ||
				!equality.Semantic.DeepEqual(old.Status.Families, cs.Status.Families) ||
				!equality.Semantic.DeepEqual(old.Status.Conditions, cs.Status.Conditions)
		},
	}
}
