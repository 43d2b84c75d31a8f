package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	aboutv1beta1 "github.com/archipelago-mesh/archipelago/api/about/v1beta1"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
	"github.com/archipelago-mesh/archipelago/internal/mcs/export"
	"github.com/archipelago-mesh/archipelago/internal/mcs/imports"
	"github.com/archipelago-mesh/archipelago/internal/mcs/records"
)

// The elected agent reads the member's ClusterProperties; the export and
// import controllers' own RBAC is config/mcs/rbac.
// +kubebuilder:rbac:groups=about.k8s.io,resources=clusterproperties,verbs=get;list;watch

// Reasons of the membership's MultiClusterServices condition.
const (
	ReasonServicesRunning         = "Running"
	ReasonClusterPropertyMismatch = "ClusterPropertyMismatch"
	ReasonServicesUnavailable     = "CRDsMissing"
)

// servicesState is the MultiClusterServices condition's input.
type servicesState struct {
	ok      bool
	reason  string
	message string
}

// services runs multi-cluster services on the elected agent: the export
// and import controllers in a manager on the member cluster, and the merge
// of the set's exports (the hub's copies in the set's namespace, watched by
// the hub connection) with the members' liveness and ranges.
type services struct {
	mu  sync.Mutex
	run *servicesRun
}

// servicesRun is one run of the services for one membership.
type servicesRun struct {
	key     servicesKey
	exp     *export.Reconciler
	imp     *imports.Reconciler
	cancel  context.CancelFunc
	done    chan struct{}
	trigger chan struct{}
}

// servicesKey is what a run is bound to: a change restarts it.
type servicesKey struct{ cluster, set, hubNamespace string }

// triggerMerge asks the running merge loop for a merge soon.
func (sv *services) triggerMerge() {
	sv.mu.Lock()
	r := sv.run
	sv.mu.Unlock()
	if r == nil {
		return
	}
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

func (sv *services) stop() {
	sv.mu.Lock()
	r := sv.run
	sv.run = nil
	sv.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
}

// servicesSync is the elected agent's phase for multi-cluster services:
// check the ClusterProperties against the membership, then make sure the
// controllers and the merge run for this membership (and stop them on any
// other role).
func (a *Agent) servicesSync(ctx context.Context, s *scope) error {
	if s.role != meshv1.RoleGateway || s.dir == nil || !s.join.ok {
		if s.role != meshv1.RoleGateway {
			a.services.stop()
		}
		return nil
	}
	key := servicesKey{cluster: s.dir.clusterName, set: s.membership.Spec.ClusterSet, hubNamespace: s.dir.namespace}
	props := &aboutv1beta1.ClusterPropertyList{}
	if err := a.direct.List(ctx, props); err != nil {
		if meta.IsNoMatchError(err) {
			a.services.stop()
			s.svc = &servicesState{reason: ReasonServicesUnavailable,
				message: "the multi-cluster services CRDs (ClusterProperty, ServiceExport, ServiceImport) are not installed: run 'kubectl archipelago join' again"}
			return nil
		}
		s.errs = append(s.errs, fmt.Errorf("list ClusterProperties: %w", err))
		return nil
	}
	if err := mcs.CheckClusterProperties(props.Items, key.cluster, key.set); err != nil {
		a.services.stop()
		s.svc = &servicesState{reason: ReasonClusterPropertyMismatch, message: err.Error()}
		return nil
	}
	if err := a.startServices(ctx, key); err != nil {
		s.svc = &servicesState{reason: ReasonServicesUnavailable, message: err.Error()}
		s.errs = append(s.errs, err)
		return nil
	}
	s.svc = &servicesState{ok: true, reason: ReasonServicesRunning,
		message: fmt.Sprintf("exporting to hub namespace %s, importing the exports of ClusterSet %s", key.hubNamespace, key.set)}
	return nil
}

func (a *Agent) startServices(ctx context.Context, key servicesKey) error {
	sv := &a.services
	sv.mu.Lock()
	cur := sv.run
	sv.mu.Unlock()
	if cur != nil && cur.key == key {
		return nil
	}
	sv.stop()
	mgr, err := ctrl.NewManager(a.cfg.Member, ctrl.Options{
		Scheme: newScheme(), Logger: a.log.WithName("services"),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		// A new manager starts at every election this process wins; its
		// controllers have the same names as the last one's.
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		return fmt.Errorf("multi-cluster services manager: %w", err)
	}
	r := &servicesRun{key: key, done: make(chan struct{}), trigger: make(chan struct{}, 1)}
	r.exp = &export.Reconciler{Client: mgr.GetClient(), Publisher: &hubPublisher{a: a, namespace: key.hubNamespace}, ClusterName: key.cluster}
	r.imp = &imports.Reconciler{Client: mgr.GetClient()}
	if err := r.exp.SetupWithManager(mgr); err != nil {
		return err
	}
	if err := r.imp.SetupWithManager(mgr); err != nil {
		return err
	}
	// The run outlives this pass: it ends with stop (role change, leave) or
	// with the agent.
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel = cancel
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := mgr.Start(rctx); err != nil {
			a.log.Error(err, "Multi-cluster services manager stopped")
		}
	}()
	go func() {
		defer wg.Done()
		a.mergeLoop(rctx, r)
	}()
	go func() { wg.Wait(); close(r.done) }()
	sv.mu.Lock()
	sv.run = r
	sv.mu.Unlock()
	r.trigger <- struct{}{}
	a.log.Info("Multi-cluster services started", "cluster", key.cluster, "clusterSet", key.set, "hubNamespace", key.hubNamespace)
	return nil
}

// mergeLoop merges the set's exports whenever the hub's copies or the peer
// directory change, and again when a member's endpoints are due to be
// withdrawn (Result.RecheckAt).
func (a *Agent) mergeLoop(ctx context.Context, r *servicesRun) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.trigger:
		case <-timer.C:
		}
		// Fold a burst of record events into one merge.
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
		select {
		case <-r.trigger:
		default:
		}
		next, err := a.merge(ctx, r)
		if err != nil {
			a.log.Error(err, "Merge of the set's exports failed; retrying")
			next = a.cfg.Now().Add(hubRetry)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(a.cfg.Now()), 100*time.Millisecond)
		}
		timer.Reset(wait)
	}
}

// merge runs one merge on the hub connection's cache. It does nothing
// until a connection with a synced cache exists: the import controller
// removes nothing before its first merge, and that merge must see every
// record of the set.
func (a *Agent) merge(ctx context.Context, r *servicesRun) (time.Time, error) {
	a.mu.Lock()
	hub := a.hub
	a.mu.Unlock()
	if hub == nil {
		return a.cfg.Now().Add(hubRetry), nil
	}
	setNS := meshv1.ClusterSetNamespace(r.key.set)
	peers := &meshv1.ClusterSetPeerList{}
	if err := hub.reader.List(ctx, peers, client.InNamespace(setNS)); err != nil {
		return time.Time{}, fmt.Errorf("list the peer directory of ClusterSet %s: %w", r.key.set, err)
	}
	recs := &meshv1.ExportedServiceList{}
	if err := hub.reader.List(ctx, recs, client.InNamespace(setNS)); err != nil {
		return time.Time{}, fmt.Errorf("list the exported services of ClusterSet %s: %w", r.key.set, err)
	}
	now := a.cfg.Now()
	members := MergeMembers(peers.Items, now)
	exports := make([]meshv1.ExportedServiceSpec, 0, len(recs.Items))
	for i := range recs.Items {
		rec := &recs.Items[i]
		// The hub copies only records a member wrote as itself; a record
		// without that label is not the hub's copy.
		if rec.Labels[meshv1.LabelMember] == rec.Spec.Cluster {
			exports = append(exports, rec.Spec)
		}
	}
	res := mcs.Merge(exports, members, mcs.Options{Now: now, LocalCluster: r.key.cluster})
	r.imp.SetImports(res)
	r.exp.SetConflicts(export.ConflictsOf(res, r.key.cluster))
	return res.RecheckAt, nil
}

// MergeMembers turns the peer directory into the merge's members: a
// withdrawn member (leaving) is out; a member whose agent the hub does not
// see as connected keeps its place as an exporter but its endpoints are
// withdrawn (never seen); the others count as seen now. A range that does
// not parse is left out, so no endpoint is taken inside it.
func MergeMembers(peers []meshv1.ClusterSetPeer, now time.Time) []mcs.Member {
	out := make([]mcs.Member, 0, len(peers))
	for i := range peers {
		p := &peers[i]
		if p.Spec.Withdrawn {
			continue
		}
		m := mcs.Member{Name: p.Name}
		if p.Spec.AgentConnected {
			m.LastSeen = now
		}
		for _, c := range p.Spec.PodCIDRs {
			if pfx, err := netip.ParsePrefix(c); err == nil {
				m.PodCIDRs = append(m.PodCIDRs, pfx.Masked())
			}
		}
		out = append(out, m)
	}
	return out
}

// hubPublisher writes the member's records with the current hub connection.
type hubPublisher struct {
	a         *Agent
	namespace string
}

var errNoHub = errors.New("not connected to the hub")

func (p *hubPublisher) publisher() (*records.Publisher, error) {
	p.a.mu.Lock()
	hub := p.a.hub
	p.a.mu.Unlock()
	if hub == nil {
		return nil, errNoHub
	}
	return &records.Publisher{Client: hub.client, Namespace: p.namespace}, nil
}

func (p *hubPublisher) Publish(ctx context.Context, spec *meshv1.ExportedServiceSpec) error {
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	return pub.Publish(ctx, spec)
}

func (p *hubPublisher) Withdraw(ctx context.Context, k mcs.Key) error {
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	return pub.Withdraw(ctx, k)
}

func (p *hubPublisher) Published(ctx context.Context) ([]mcs.Key, error) {
	pub, err := p.publisher()
	if err != nil {
		return nil, err
	}
	return pub.Published(ctx)
}
