package export

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
)

// maxConditionMessage is metav1.Condition's message limit.
const maxConditionMessage = 32768

// Publisher carries export records to the hub.
type Publisher interface {
	// Publish creates or replaces the record of spec's namespace/name.
	Publish(ctx context.Context, spec *meshv1.ExportedServiceSpec) error
	// Withdraw deletes the record of k; withdrawing a missing record is no error.
	Withdraw(ctx context.Context, k mcs.Key) error
	// Published lists the records this member has on the hub, so that a
	// ServiceExport deleted while the controller was down is withdrawn.
	Published(ctx context.Context) ([]mcs.Key, error)
}

// Conflict is the merge's verdict on one export, fed back by SetConflicts.
type Conflict struct {
	// Reason is NoConflicts or the MCS API's conflict reasons joined by commas.
	Reason  string
	Message string
}

// +kubebuilder:rbac:groups=multicluster.x-k8s.io,resources=serviceexports,verbs=get;list;watch
// +kubebuilder:rbac:groups=multicluster.x-k8s.io,resources=serviceexports/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch

// Reconciler exports the Services named by ServiceExports.
type Reconciler struct {
	Client    client.Client
	Publisher Publisher
	// ClusterName is this member's name in the ClusterSet.
	ClusterName string

	mu        sync.Mutex
	published map[mcs.Key]*meshv1.ExportedServiceSpec // what the hub holds, as last published
	withdrawn map[mcs.Key]bool                        // withdrawn by this run, not published since
	conflicts map[mcs.Key]Conflict
	trigger   chan event.TypedGenericEvent[*mcsv1beta1.ServiceExport]
}

// SetupWithManager registers the controller and the start-up sweep of
// records whose ServiceExport is gone.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil || r.Publisher == nil {
		return errors.New("export reconciler needs a client and a publisher")
	}
	if r.ClusterName == "" {
		return errors.New("export reconciler needs the member's cluster name")
	}
	r.published = map[mcs.Key]*meshv1.ExportedServiceSpec{}
	r.withdrawn = map[mcs.Key]bool{}
	r.conflicts = map[mcs.Key]Conflict{}
	r.trigger = make(chan event.TypedGenericEvent[*mcsv1beta1.ServiceExport], 1024)
	if err := mgr.Add(manager.RunnableFunc(r.sweep)); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&mcsv1beta1.ServiceExport{}).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(sameName)).
		Watches(&discoveryv1.EndpointSlice{}, handler.EnqueueRequestsFromMapFunc(serviceOfSlice)).
		WatchesRawSource(source.Channel(r.trigger, &handler.TypedEnqueueRequestForObject[*mcsv1beta1.ServiceExport]{})).
		Named("mcs-export").
		Complete(r)
}

func sameName(_ context.Context, o client.Object) []reconcile.Request {
	return []reconcile.Request{{NamespacedName: client.ObjectKeyFromObject(o)}}
}

func serviceOfSlice(_ context.Context, o client.Object) []reconcile.Request {
	l := o.GetLabels()
	if l[discoveryv1.LabelManagedBy] == mcs.EndpointSliceManager || l[discoveryv1.LabelServiceName] == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: l[discoveryv1.LabelServiceName]}}}
}

// SetConflicts feeds the merge's verdicts back: the exports whose verdict
// changed are reconciled to update their Conflict condition. Exports absent
// from the map have no verdict yet (no Conflict condition).
func (r *Reconciler) SetConflicts(verdicts map[mcs.Key]Conflict) {
	r.mu.Lock()
	var changed []mcs.Key
	for k, v := range verdicts {
		if old, ok := r.conflicts[k]; !ok || old != v {
			changed = append(changed, k)
		}
	}
	for k := range r.conflicts {
		if _, ok := verdicts[k]; !ok {
			changed = append(changed, k)
		}
	}
	r.conflicts = maps.Clone(verdicts)
	r.mu.Unlock()
	for _, k := range changed {
		r.trigger <- event.TypedGenericEvent[*mcsv1beta1.ServiceExport]{Object: &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name}}}
	}
}

// sweep withdraws, once the cache is up, records of exports that no longer
// exist (deleted while no controller ran). It retries until the hub answers.
func (r *Reconciler) sweep(ctx context.Context) error {
	delay := time.Second
	for {
		keys, err := r.Publisher.Published(ctx)
		if err == nil {
			for _, k := range keys {
				se := &mcsv1beta1.ServiceExport{}
				if err := r.Client.Get(ctx, types.NamespacedName{Namespace: k.Namespace, Name: k.Name}, se); apierrors.IsNotFound(err) {
					if err := r.withdraw(ctx, k); err != nil {
						log.FromContext(ctx).Error(err, "Withdraw stale export", "service", k.String())
					}
				}
			}
			return nil
		}
		log.FromContext(ctx).Error(err, "List published exports; retrying", "after", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Minute)
	}
}

// Reconcile exports one ServiceExport's Service.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	k := mcs.Key{Namespace: req.Namespace, Name: req.Name}
	se := &mcsv1beta1.ServiceExport{}
	if err := r.Client.Get(ctx, req.NamespacedName, se); err != nil {
		if apierrors.IsNotFound(err) {
			// Every Service event lands here too: only a record this run
			// published is withdrawn (older ones are the sweep's).
			return ctrl.Result{}, r.withdrawIfPublished(ctx, k)
		}
		return ctrl.Result{}, err
	}
	if !se.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.withdraw(ctx, k)
	}
	before := se.DeepCopy()

	spec, err := r.build(ctx, se)
	var pubErr error
	switch {
	case err != nil:
		return ctrl.Result{}, err
	case spec == nil: // not exportable: the Valid condition says why
		pubErr = r.withdraw(ctx, k)
		setReady(se, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonPending, "the export is not valid")
	default:
		setValid(se, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonValid, "")
		switch pubErr = r.publish(ctx, k, spec); {
		case apierrors.IsInvalid(pubErr):
			// The hub refuses the record itself: retrying the same one cannot help.
			setReady(se, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonFailed, "the hub refused the export: "+pubErr.Error())
			pubErr = nil
		case pubErr != nil:
			setReady(se, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonPending, "publishing to the hub: "+pubErr.Error())
		default:
			setReady(se, metav1.ConditionTrue, mcsv1beta1.ServiceExportReasonExported, readyMessage(spec))
		}
	}
	r.setConflict(se, k, spec != nil)

	if !equality.Semantic.DeepEqual(before.Status, se.Status) {
		if err := r.Client.Status().Patch(ctx, se, client.MergeFrom(before)); err != nil {
			return ctrl.Result{}, errors.Join(pubErr, fmt.Errorf("patch status of serviceexport %s: %w", k, err))
		}
	}
	return ctrl.Result{}, pubErr
}

func (r *Reconciler) publish(ctx context.Context, k mcs.Key, spec *meshv1.ExportedServiceSpec) error {
	r.mu.Lock()
	same := equality.Semantic.DeepEqual(r.published[k], spec)
	r.mu.Unlock()
	if same {
		return nil
	}
	if err := r.Publisher.Publish(ctx, spec); err != nil {
		return err
	}
	r.mu.Lock()
	r.published[k] = spec
	delete(r.withdrawn, k)
	r.mu.Unlock()
	log.FromContext(ctx).V(1).Info("Published export", "service", k.String())
	return nil
}

func (r *Reconciler) withdrawIfPublished(ctx context.Context, k mcs.Key) error {
	r.mu.Lock()
	_, had := r.published[k]
	r.mu.Unlock()
	if !had {
		return nil
	}
	return r.withdraw(ctx, k)
}

func (r *Reconciler) withdraw(ctx context.Context, k mcs.Key) error {
	r.mu.Lock()
	_, had := r.published[k]
	done := r.withdrawn[k]
	r.mu.Unlock()
	// What the hub holds is unknown for a key this run has not seen (the
	// record may predate a restart): withdraw it once; after that only when
	// this run published it.
	if done && !had {
		return nil
	}
	if err := r.Publisher.Withdraw(ctx, k); err != nil {
		return fmt.Errorf("withdraw export %s: %w", k, err)
	}
	r.mu.Lock()
	delete(r.published, k)
	r.withdrawn[k] = true
	r.mu.Unlock()
	if had {
		log.FromContext(ctx).V(1).Info("Withdrew export", "service", k.String())
	}
	return nil
}

// build returns the record for se, or nil (with the Valid condition set)
// when its Service cannot be exported.
func (r *Reconciler) build(ctx context.Context, se *mcsv1beta1.ServiceExport) (*meshv1.ExportedServiceSpec, error) {
	svc := &corev1.Service{}
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(se), svc); err != nil {
		if apierrors.IsNotFound(err) {
			setValid(se, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonNoService, fmt.Sprintf("there is no Service %s in namespace %s: create it, or delete this ServiceExport", se.Name, se.Namespace))
			return nil, nil
		}
		return nil, err
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		setValid(se, metav1.ConditionFalse, mcsv1beta1.ServiceExportReasonInvalidServiceType, "Service "+svc.Name+" is of type ExternalName, which cannot be exported")
		return nil, nil
	}
	var slices discoveryv1.EndpointSliceList
	if err := r.Client.List(ctx, &slices, client.InNamespace(svc.Namespace), client.MatchingLabels{discoveryv1.LabelServiceName: svc.Name}); err != nil {
		return nil, fmt.Errorf("list endpointslices of service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return Record(r.ClusterName, se, svc, slices.Items), nil
}

// Record builds the ExportedService spec of se from its Service and the
// Service's EndpointSlices: only ready endpoints, grouped by address type and
// ports, at most meshv1.MaxExportedEndpoints of them (in address order).
func Record(cluster string, se *mcsv1beta1.ServiceExport, svc *corev1.Service, eps []discoveryv1.EndpointSlice) *meshv1.ExportedServiceSpec {
	spec := &meshv1.ExportedServiceSpec{
		Cluster:                 cluster,
		Namespace:               svc.Namespace,
		Name:                    svc.Name,
		ExportCreationTimestamp: se.CreationTimestamp,
		Type:                    meshv1.ExportedClusterSetIP,
		SessionAffinity:         string(svc.Spec.SessionAffinity),
		ExportedLabels:          maps.Clone(se.Spec.ExportedLabels),
		ExportedAnnotations:     maps.Clone(se.Spec.ExportedAnnotations),
		TrafficDistribution:     svc.Spec.TrafficDistribution,
	}
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		spec.Type = meshv1.ExportedHeadless
	}
	if spec.SessionAffinity == "" {
		spec.SessionAffinity = string(corev1.ServiceAffinityNone)
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP && svc.Spec.SessionAffinityConfig != nil && svc.Spec.SessionAffinityConfig.ClientIP != nil {
		spec.SessionAffinityConfig = &meshv1.SessionAffinityConfig{ClientIP: &meshv1.ClientIPConfig{TimeoutSeconds: svc.Spec.SessionAffinityConfig.ClientIP.TimeoutSeconds}}
	}
	if svc.Spec.InternalTrafficPolicy != nil {
		p := string(*svc.Spec.InternalTrafficPolicy)
		spec.InternalTrafficPolicy = &p
	}
	for _, f := range svc.Spec.IPFamilies {
		spec.IPFamilies = append(spec.IPFamilies, string(f))
	}
	if len(spec.IPFamilies) == 0 {
		spec.IPFamilies = []string{string(corev1.IPv4Protocol)}
	}
	for _, p := range svc.Spec.Ports {
		spec.Ports = append(spec.Ports, meshv1.ExportedServicePort{Name: p.Name, Protocol: string(p.Protocol), Port: p.Port, AppProtocol: p.AppProtocol})
	}
	spec.EndpointGroups = endpointGroups(eps, spec.IPFamilies)
	return spec
}

type groupKey struct {
	addressType string
	ports       string
}

func endpointGroups(eps []discoveryv1.EndpointSlice, families []string) []meshv1.ExportedEndpointGroup {
	type group struct {
		ports []meshv1.ExportedEndpointPort
		byIP  map[string]meshv1.ExportedEndpoint
	}
	groups := map[groupKey]*group{}
	for i := range eps {
		s := &eps[i]
		if s.Labels[discoveryv1.LabelManagedBy] == mcs.EndpointSliceManager || !slices.Contains(families, string(s.AddressType)) {
			continue
		}
		var ports []meshv1.ExportedEndpointPort
		for _, p := range s.Ports {
			if p.Port == nil {
				continue
			}
			ports = append(ports, meshv1.ExportedEndpointPort{Name: ptrOr(p.Name, ""), Protocol: string(ptrOr(p.Protocol, corev1.ProtocolTCP)), Port: *p.Port})
		}
		slices.SortFunc(ports, func(a, b meshv1.ExportedEndpointPort) int { return cmp.Compare(a.Name, b.Name) })
		gk := groupKey{string(s.AddressType), fmt.Sprint(ports)}
		g := groups[gk]
		if g == nil {
			g = &group{ports: ports, byIP: map[string]meshv1.ExportedEndpoint{}}
			groups[gk] = g
		}
		for _, e := range s.Endpoints {
			if !ptrOr(e.Conditions.Ready, true) || ptrOr(e.Conditions.Terminating, false) || len(e.Addresses) == 0 {
				continue
			}
			g.byIP[e.Addresses[0]] = meshv1.ExportedEndpoint{Address: e.Addresses[0], Hostname: ptrOr(e.Hostname, ""), Zone: ptrOr(e.Zone, "")}
		}
	}
	keys := slices.SortedFunc(maps.Keys(groups), func(a, b groupKey) int {
		return cmp.Or(cmp.Compare(a.addressType, b.addressType), cmp.Compare(a.ports, b.ports))
	})
	var out []meshv1.ExportedEndpointGroup
	total := 0
	for _, gk := range keys {
		g := groups[gk]
		for _, ip := range slices.Sorted(maps.Keys(g.byIP)) {
			if total == meshv1.MaxExportedEndpoints {
				return out
			}
			if len(out) == 0 || out[len(out)-1].AddressType != gk.addressType || fmt.Sprint(out[len(out)-1].Ports) != gk.ports || len(out[len(out)-1].Endpoints) == meshv1.MaxEndpointsPerExportGroup {
				if len(out) == meshv1.MaxExportedEndpointGroups {
					return out
				}
				out = append(out, meshv1.ExportedEndpointGroup{AddressType: gk.addressType, Ports: slices.Clone(g.ports)})
			}
			last := &out[len(out)-1]
			last.Endpoints = append(last.Endpoints, g.byIP[ip])
			total++
		}
	}
	return out
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func readyMessage(spec *meshv1.ExportedServiceSpec) string {
	n := 0
	for _, g := range spec.EndpointGroups {
		n += len(g.Endpoints)
	}
	if n == meshv1.MaxExportedEndpoints {
		return fmt.Sprintf("exported with the first %d ready endpoints (the most one export carries)", n)
	}
	return fmt.Sprintf("exported with %d ready endpoints", n)
}

func setValid(se *mcsv1beta1.ServiceExport, s metav1.ConditionStatus, reason mcsv1beta1.ServiceExportConditionReason, msg string) {
	if msg == "" {
		msg = "the Service can be exported"
	}
	meta.SetStatusCondition(&se.Status.Conditions, metav1.Condition{Type: string(mcsv1beta1.ServiceExportConditionValid), Status: s, Reason: string(reason), Message: msg, ObservedGeneration: se.Generation})
}

func setReady(se *mcsv1beta1.ServiceExport, s metav1.ConditionStatus, reason mcsv1beta1.ServiceExportConditionReason, msg string) {
	meta.SetStatusCondition(&se.Status.Conditions, metav1.Condition{Type: string(mcsv1beta1.ServiceExportConditionReady), Status: s, Reason: string(reason), Message: msg, ObservedGeneration: se.Generation})
}

// setConflict sets Conflict from the merge's verdict; without a verdict (or
// for an export that is not published) there is no Conflict condition.
func (r *Reconciler) setConflict(se *mcsv1beta1.ServiceExport, k mcs.Key, published bool) {
	r.mu.Lock()
	v, ok := r.conflicts[k]
	r.mu.Unlock()
	if !ok || !published {
		meta.RemoveStatusCondition(&se.Status.Conditions, string(mcsv1beta1.ServiceExportConditionConflict))
		return
	}
	s := metav1.ConditionTrue
	if v.Reason == string(mcsv1beta1.ServiceExportReasonNoConflicts) {
		s = metav1.ConditionFalse
	}
	msg := v.Message
	if len(msg) > maxConditionMessage {
		msg = msg[:maxConditionMessage-3] + "..."
	}
	meta.SetStatusCondition(&se.Status.Conditions, metav1.Condition{Type: string(mcsv1beta1.ServiceExportConditionConflict), Status: s, Reason: v.Reason, Message: msg, ObservedGeneration: se.Generation})
}

// ConflictsOf turns a merge result into the verdicts for this member's
// exports (SetConflicts' input).
func ConflictsOf(res mcs.Result, cluster string) map[mcs.Key]Conflict {
	out := map[mcs.Key]Conflict{}
	for k, im := range res.Imports {
		if slices.ContainsFunc(im.Clusters, func(c mcs.ClusterImport) bool { return c.Cluster == cluster }) {
			out[k] = Conflict{Reason: im.ConflictReason(), Message: im.ConflictMessage()}
		}
	}
	return out
}
