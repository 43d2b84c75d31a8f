package imports

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
)

// +kubebuilder:rbac:groups=multicluster.x-k8s.io,resources=serviceimports,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=multicluster.x-k8s.io,resources=serviceimports/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch;create;update;patch;delete;deletecollection

// waitForFirstMerge is how often a ServiceImport seen at start is looked at
// again until the first merge arrives.
const waitForFirstMerge = 2 * time.Second

// Reconciler keeps the imports of this member.
type Reconciler struct {
	Client client.Client

	mu      sync.Mutex
	synced  bool // SetImports was called at least once since the start
	imports map[mcs.Key]*mcs.Import
	trigger chan event.TypedGenericEvent[*mcsv1beta1.ServiceImport]
}

func managed(o client.Object) bool { return o.GetLabels()[mcs.LabelManagedBy] == mcs.ManagedByValue }

// SetupWithManager registers the controller.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Client == nil {
		return errors.New("import reconciler needs a client")
	}
	r.imports = map[mcs.Key]*mcs.Import{}
	r.trigger = make(chan event.TypedGenericEvent[*mcsv1beta1.ServiceImport], 4096)
	return ctrl.NewControllerManagedBy(mgr).
		For(&mcsv1beta1.ServiceImport{}, builder.WithPredicates(predicate.NewPredicateFuncs(managed))).
		Owns(&corev1.Service{}, builder.WithPredicates(predicate.NewPredicateFuncs(managed))).
		Owns(&discoveryv1.EndpointSlice{}, builder.WithPredicates(predicate.NewPredicateFuncs(managed))).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.importsOfNamespace)).
		WatchesRawSource(source.Channel(r.trigger, &handler.TypedEnqueueRequestForObject[*mcsv1beta1.ServiceImport]{})).
		Named("mcs-import").
		Complete(r)
}

// SetImports hands over the merge of the ClusterSet's exports; the services
// whose import changed are reconciled. ServiceImports that exist at a start
// are reconciled (and removed if nobody exports them) once the first merge
// has arrived. It may be called before the manager starts, with at most
// 4096 changed services.
func (r *Reconciler) SetImports(res mcs.Result) {
	r.mu.Lock()
	changed := map[mcs.Key]bool{}
	for k, im := range res.Imports {
		if old, ok := r.imports[k]; !ok || !reflect.DeepEqual(old, im) {
			changed[k] = true
		}
	}
	for k := range r.imports {
		if _, ok := res.Imports[k]; !ok {
			changed[k] = true
		}
	}
	r.imports, r.synced = maps.Clone(res.Imports), true
	r.mu.Unlock()
	for k := range changed {
		r.enqueue(k)
	}
}

func (r *Reconciler) enqueue(k mcs.Key) {
	r.trigger <- event.TypedGenericEvent[*mcsv1beta1.ServiceImport]{Object: &mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Namespace: k.Namespace, Name: k.Name}}}
}

func (r *Reconciler) importsOfNamespace(_ context.Context, o client.Object) []reconcile.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []reconcile.Request
	for k := range r.imports {
		if k.Namespace == o.GetName() {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: k.Namespace, Name: k.Name}})
		}
	}
	return out
}

func (r *Reconciler) desired(k mcs.Key) (*mcs.Import, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.imports[k], r.synced
}

// Reconcile makes the ServiceImport of one service, its derived Service and
// its EndpointSlices match the merged import.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	k := mcs.Key{Namespace: req.Namespace, Name: req.Name}
	im, synced := r.desired(k)
	if !synced {
		// Until the first merge arrives nothing is known to be stale: look
		// again later (the watch delivered every existing ServiceImport).
		return ctrl.Result{RequeueAfter: waitForFirstMerge}, nil
	}
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, types.NamespacedName{Name: k.Namespace}, ns); err != nil {
		// A namespace created later gets its imports from the namespace watch.
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !ns.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	if im == nil {
		return ctrl.Result{}, r.remove(ctx, k)
	}

	si, err := r.ensureServiceImport(ctx, im)
	if err != nil {
		return ctrl.Result{}, err
	}
	ips, err := r.ensureDerivedService(ctx, si, im)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.ensureIPs(ctx, si, ips); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.ensureSlices(ctx, si, im); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, r.ensureStatus(ctx, si, im)
}

func importSpec(im *mcs.Import) mcsv1beta1.ServiceImportSpec {
	spec := mcsv1beta1.ServiceImportSpec{
		// Required by the CRD even when empty (a headless Service may have no ports).
		Ports:               []mcsv1beta1.ServicePort{},
		Type:                mcsv1beta1.ServiceImportType(im.Type),
		SessionAffinity:     corev1.ServiceAffinity(im.SessionAffinity),
		TrafficDistribution: im.TrafficDistribution,
	}
	for _, p := range im.Ports {
		spec.Ports = append(spec.Ports, mcsv1beta1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), Port: p.Port, AppProtocol: p.AppProtocol})
	}
	for _, f := range im.IPFamilies {
		spec.IPFamilies = append(spec.IPFamilies, corev1.IPFamily(f))
	}
	if c := im.SessionAffinityConfig; c != nil && c.ClientIP != nil {
		spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: c.ClientIP.TimeoutSeconds}}
	}
	if im.InternalTrafficPolicy != nil {
		p := corev1.ServiceInternalTrafficPolicy(*im.InternalTrafficPolicy)
		spec.InternalTrafficPolicy = &p
	}
	return spec
}

func importLabels(im *mcs.Import) map[string]string {
	l := maps.Clone(im.Labels)
	if l == nil {
		l = map[string]string{}
	}
	l[mcs.LabelManagedBy] = mcs.ManagedByValue
	return l
}

func (r *Reconciler) ensureServiceImport(ctx context.Context, im *mcs.Import) (*mcsv1beta1.ServiceImport, error) {
	si := &mcsv1beta1.ServiceImport{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: im.Namespace, Name: im.Name}, si)
	spec := importSpec(im)
	switch {
	case apierrors.IsNotFound(err):
		si = &mcsv1beta1.ServiceImport{
			ObjectMeta: metav1.ObjectMeta{Namespace: im.Namespace, Name: im.Name, Labels: importLabels(im), Annotations: maps.Clone(im.Annotations)},
			Spec:       spec,
		}
		if err := r.Client.Create(ctx, si); err != nil {
			return nil, fmt.Errorf("create serviceimport %s: %w", im.Key, err)
		}
		log.FromContext(ctx).Info("Created ServiceImport", "serviceimport", im.Key.String(), "type", im.Type)
		return si, nil
	case err != nil:
		return nil, err
	case !managed(si):
		return nil, fmt.Errorf("serviceimport %s exists and was not created by archipelago: delete it to import the service", im.Key)
	}
	spec.IPs = si.Spec.IPs // ensureIPs owns them
	if spec.Type == mcsv1beta1.Headless {
		spec.IPs = nil
	}
	labels := importLabels(im)
	annotations := maps.Clone(im.Annotations)
	if equality.Semantic.DeepEqual(si.Spec, spec) && maps.Equal(si.Labels, labels) && maps.Equal(si.Annotations, annotations) {
		return si, nil
	}
	si.Spec, si.Labels, si.Annotations = spec, labels, annotations
	if err := r.Client.Update(ctx, si); err != nil {
		return nil, fmt.Errorf("update serviceimport %s: %w", im.Key, err)
	}
	return si, nil
}

// ensureDerivedService keeps the selectorless Service of a ClusterSetIP
// import and returns its cluster IPs; a Headless import has none.
func (r *Reconciler) ensureDerivedService(ctx context.Context, si *mcsv1beta1.ServiceImport, im *mcs.Import) ([]string, error) {
	name := mcs.DerivedServiceName(im.Key)
	svc := &corev1.Service{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: im.Namespace, Name: name}, svc)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, err
	}
	exists := err == nil
	if exists && !metav1.IsControlledBy(svc, si) {
		return nil, fmt.Errorf("service %s/%s exists and is not the derived Service of serviceimport %s: rename or delete it", im.Namespace, name, im.Key)
	}
	if im.Type == meshv1.ExportedHeadless {
		if exists {
			return nil, client.IgnoreNotFound(r.Client.Delete(ctx, svc, client.Preconditions{UID: &svc.UID}))
		}
		return nil, nil
	}
	want := derivedServiceSpec(im)
	if exists && !slices.Equal(svc.Spec.IPFamilies, want.IPFamilies) {
		// A Service's primary family cannot change: only this Service is
		// replaced, the ServiceImport stays.
		if err := r.Client.Delete(ctx, svc, client.Preconditions{UID: &svc.UID}); client.IgnoreNotFound(err) != nil {
			return nil, err
		}
		exists = false
	}
	if !exists {
		svc = &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: im.Namespace, Name: name,
			Labels: map[string]string{mcs.LabelManagedBy: mcs.ManagedByValue, mcsv1beta1.LabelServiceName: im.Name}}, Spec: want}
		if err := controllerutil.SetControllerReference(si, svc, r.Client.Scheme()); err != nil {
			return nil, err
		}
		if err := r.Client.Create(ctx, svc); err != nil {
			return nil, fmt.Errorf("create derived service %s/%s: %w", im.Namespace, name, err)
		}
		return svc.Spec.ClusterIPs, nil
	}
	before := svc.DeepCopy()
	svc.Spec.Ports = want.Ports
	svc.Spec.SessionAffinity = want.SessionAffinity
	svc.Spec.SessionAffinityConfig = want.SessionAffinityConfig
	svc.Spec.InternalTrafficPolicy = want.InternalTrafficPolicy
	svc.Spec.TrafficDistribution = want.TrafficDistribution
	if want.InternalTrafficPolicy == nil {
		svc.Spec.InternalTrafficPolicy = before.Spec.InternalTrafficPolicy // the API server's default
	}
	if want.SessionAffinityConfig == nil && want.SessionAffinity == corev1.ServiceAffinityClientIP {
		svc.Spec.SessionAffinityConfig = before.Spec.SessionAffinityConfig
	}
	if !equality.Semantic.DeepEqual(before.Spec, svc.Spec) {
		if err := r.Client.Update(ctx, svc); err != nil {
			return nil, fmt.Errorf("update derived service %s/%s: %w", im.Namespace, name, err)
		}
	}
	return svc.Spec.ClusterIPs, nil
}

func derivedServiceSpec(im *mcs.Import) corev1.ServiceSpec {
	spec := importSpec(im)
	policy := corev1.IPFamilyPolicySingleStack
	if len(spec.IPFamilies) == 2 {
		policy = corev1.IPFamilyPolicyRequireDualStack
	}
	s := corev1.ServiceSpec{
		Type:                  corev1.ServiceTypeClusterIP,
		IPFamilies:            spec.IPFamilies,
		IPFamilyPolicy:        &policy,
		SessionAffinity:       spec.SessionAffinity,
		SessionAffinityConfig: spec.SessionAffinityConfig,
		InternalTrafficPolicy: spec.InternalTrafficPolicy,
		TrafficDistribution:   spec.TrafficDistribution,
	}
	for _, p := range spec.Ports {
		s.Ports = append(s.Ports, corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, AppProtocol: p.AppProtocol, TargetPort: intstr.FromInt32(p.Port)})
	}
	return s
}

func (r *Reconciler) ensureIPs(ctx context.Context, si *mcsv1beta1.ServiceImport, ips []string) error {
	if slices.Equal(si.Spec.IPs, ips) {
		return nil
	}
	si.Spec.IPs = ips
	if err := r.Client.Update(ctx, si); err != nil {
		return fmt.Errorf("set ips of serviceimport %s/%s: %w", si.Namespace, si.Name, err)
	}
	return nil
}

// sliceName names the slice of one cluster's endpoint group: a pure
// function of service, cluster, family and position, so a change updates
// the same slice in place.
func sliceName(k mcs.Key, cluster, family string, i int) string {
	return fmt.Sprintf("%s-%s-%s-%d", mcs.DerivedServiceName(k), cluster, strings.ToLower(family), i)
}

func desiredSlices(si *mcsv1beta1.ServiceImport, im *mcs.Import) map[string]*discoveryv1.EndpointSlice {
	out := map[string]*discoveryv1.EndpointSlice{}
	for _, c := range im.Clusters {
		perFamily := map[string]int{}
		for _, g := range c.EndpointGroups {
			i := perFamily[g.AddressType]
			perFamily[g.AddressType]++
			s := &discoveryv1.EndpointSlice{
				ObjectMeta: metav1.ObjectMeta{
					Namespace: im.Namespace, Name: sliceName(im.Key, c.Cluster, g.AddressType, i),
					Labels: map[string]string{
						mcs.LabelManagedBy:            mcs.ManagedByValue,
						discoveryv1.LabelManagedBy:    mcs.EndpointSliceManager,
						discoveryv1.LabelServiceName:  mcs.DerivedServiceName(im.Key),
						mcsv1beta1.LabelServiceName:   im.Name,
						mcsv1beta1.LabelSourceCluster: c.Cluster,
					},
				},
				AddressType: discoveryv1.AddressType(g.AddressType),
			}
			for _, p := range g.Ports {
				s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptrTo(p.Name), Protocol: ptrTo(corev1.Protocol(p.Protocol)), Port: ptrTo(p.Port)})
			}
			for _, e := range g.Endpoints {
				ep := discoveryv1.Endpoint{Addresses: []string{e.Address}, Conditions: discoveryv1.EndpointConditions{Ready: ptrTo(true), Serving: ptrTo(true), Terminating: ptrTo(false)}}
				if e.Hostname != "" {
					ep.Hostname = ptrTo(e.Hostname)
				}
				if e.Zone != "" {
					ep.Zone = ptrTo(e.Zone)
				}
				s.Endpoints = append(s.Endpoints, ep)
			}
			out[s.Name] = s
		}
	}
	return out
}

func ptrTo[T any](v T) *T { return &v }

func (r *Reconciler) ensureSlices(ctx context.Context, si *mcsv1beta1.ServiceImport, im *mcs.Import) error {
	want := desiredSlices(si, im)
	var have discoveryv1.EndpointSliceList
	if err := r.Client.List(ctx, &have, client.InNamespace(im.Namespace), client.MatchingLabels{
		discoveryv1.LabelManagedBy: mcs.EndpointSliceManager, mcsv1beta1.LabelServiceName: im.Name,
	}); err != nil {
		return fmt.Errorf("list endpointslices of %s: %w", im.Key, err)
	}
	var errs []error
	for i := range have.Items {
		s := &have.Items[i]
		w, ok := want[s.Name]
		delete(want, s.Name)
		if !ok || w.AddressType != s.AddressType {
			// A cluster that stopped exporting or was withdrawn.
			errs = append(errs, client.IgnoreNotFound(r.Client.Delete(ctx, s, client.Preconditions{UID: &s.UID})))
			if ok {
				want[w.Name] = w
			}
			continue
		}
		if maps.Equal(s.Labels, w.Labels) && equality.Semantic.DeepEqual(s.Ports, w.Ports) && equality.Semantic.DeepEqual(s.Endpoints, w.Endpoints) && metav1.IsControlledBy(s, si) {
			continue
		}
		s.Labels, s.Ports, s.Endpoints = w.Labels, w.Ports, w.Endpoints
		if err := controllerutil.SetControllerReference(si, s, r.Client.Scheme()); err != nil {
			return err
		}
		if err := r.Client.Update(ctx, s); err != nil {
			errs = append(errs, fmt.Errorf("update endpointslice %s/%s: %w", s.Namespace, s.Name, err))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		s := want[name]
		if err := controllerutil.SetControllerReference(si, s, r.Client.Scheme()); err != nil {
			return err
		}
		if err := r.Client.Create(ctx, s); err != nil {
			errs = append(errs, fmt.Errorf("create endpointslice %s/%s: %w", s.Namespace, s.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (r *Reconciler) ensureStatus(ctx context.Context, si *mcsv1beta1.ServiceImport, im *mcs.Import) error {
	before := si.DeepCopy()
	si.Status.Clusters = nil
	present := false
	for _, c := range im.Clusters {
		si.Status.Clusters = append(si.Status.Clusters, mcsv1beta1.ClusterStatus{Cluster: c.Cluster})
		present = present || len(c.EndpointGroups) > 0
	}
	si.Status.EndpointSliceObjects = mcsv1beta1.EndpointSliceObjectsAbsent
	if present {
		si.Status.EndpointSliceObjects = mcsv1beta1.EndpointSliceObjectsPresent
	}
	if equality.Semantic.DeepEqual(before.Status, si.Status) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, si, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("patch status of serviceimport %s: %w", im.Key, err)
	}
	return nil
}

// remove deletes the import of a service nobody exports any more: its
// slices, its derived Service and the ServiceImport (owner references would
// collect the first two; deleting them here does not wait for the garbage
// collector).
func (r *Reconciler) remove(ctx context.Context, k mcs.Key) error {
	if err := r.Client.DeleteAllOf(ctx, &discoveryv1.EndpointSlice{}, client.InNamespace(k.Namespace), client.MatchingLabels{
		discoveryv1.LabelManagedBy: mcs.EndpointSliceManager, mcsv1beta1.LabelServiceName: k.Name,
	}); err != nil {
		return fmt.Errorf("delete endpointslices of %s: %w", k, err)
	}
	svc := &corev1.Service{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: k.Namespace, Name: mcs.DerivedServiceName(k)}, svc); err == nil && managed(svc) {
		if err := client.IgnoreNotFound(r.Client.Delete(ctx, svc, client.Preconditions{UID: &svc.UID})); err != nil {
			return err
		}
	}
	si := &mcsv1beta1.ServiceImport{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: k.Namespace, Name: k.Name}, si); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !managed(si) {
		return nil
	}
	if err := client.IgnoreNotFound(r.Client.Delete(ctx, si, client.Preconditions{UID: &si.UID})); err != nil {
		return err
	}
	log.FromContext(ctx).Info("Deleted ServiceImport: no cluster exports it", "serviceimport", k.String())
	return nil
}

// RemoveAll deletes every import archipelago made in the member: its
// ServiceImports, derived Services and EndpointSlices (the member left the
// ClusterSet, so none of them routes any more). Objects without
// archipelago's labels are left alone. A member without the MCS CRDs has
// nothing to remove.
func RemoveAll(ctx context.Context, c client.Client) error {
	var errs []error
	del := func(o client.Object) {
		if err := c.Delete(ctx, o); client.IgnoreNotFound(err) != nil {
			errs = append(errs, fmt.Errorf("delete %T %s/%s: %w", o, o.GetNamespace(), o.GetName(), err))
		}
	}
	var sis mcsv1beta1.ServiceImportList
	switch err := c.List(ctx, &sis, client.MatchingLabels{mcs.LabelManagedBy: mcs.ManagedByValue}); {
	case meta.IsNoMatchError(err):
		return nil
	case err != nil:
		return fmt.Errorf("list ServiceImports: %w", err)
	}
	for i := range sis.Items {
		del(&sis.Items[i])
	}
	var svcs corev1.ServiceList
	if err := c.List(ctx, &svcs, client.MatchingLabels{mcs.LabelManagedBy: mcs.ManagedByValue}); err != nil {
		return fmt.Errorf("list derived Services: %w", err)
	}
	for i := range svcs.Items {
		del(&svcs.Items[i])
	}
	var eps discoveryv1.EndpointSliceList
	if err := c.List(ctx, &eps, client.MatchingLabels{discoveryv1.LabelManagedBy: mcs.EndpointSliceManager}); err != nil {
		return fmt.Errorf("list imported EndpointSlices: %w", err)
	}
	for i := range eps.Items {
		del(&eps.Items[i])
	}
	return errors.Join(errs...)
}
