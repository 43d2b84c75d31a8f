package controlplane

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"net/http"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/agent/plan"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/hubtoken"
	archscheme "github.com/archipelago-mesh/archipelago/internal/scheme"
)

func newScheme() *kruntime.Scheme { return archscheme.New() }

// hubConn is the elected agent's connection to the hub: a cache of its own
// MemberCluster and ClusterSet (each watched by name) and of its set's peer
// directory (the ClusterSetPeers in the set's namespace) and the hub's copies
// of the set's ExportedServices (same namespace), so hub load is four
// watches per member cluster, and a direct client for TunnelGateways and the
// member's own ExportedServices.
type hubConn struct {
	id     [32]byte
	reader client.Reader
	client client.Client
	kube   kubernetes.Interface
	cancel context.CancelFunc
	// token is what every request to the hub authenticates with; a renewal
	// replaces it in place.
	token atomic.Pointer[string]
	// secret is the member's hub Secret as last read, and claims (or
	// claimsErr) what its token says.
	secret    *corev1.Secret
	claims    hubtoken.Claims
	claimsErr error
	// degraded is set when a call to the hub failed. The watches behind
	// reader then sit in client-go's reconnect backoff (up to 30 s), so once
	// the hub answers again the connection is started afresh.
	degraded bool
}

// directory is what the elected agent last read from the hub.
type directory struct {
	clusterName string
	namespace   string
	local       []netip.Prefix
	localRaw    []string
	peers       []plan.Peer
	invalid     []plan.InvalidPeer
	// withdrawn are peers being deleted: left out of the plan, and
	// acknowledged in the TunnelGateway's status.droppedPeers.
	withdrawn []string
	tunnel    plan.Tunnel
	settings  meshv1.TunnelSettings
}

func (a *Agent) currentDirectory() *directory {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.directory
}

func (a *Agent) ensureHub(ctx context.Context, m *meshv1.ClusterSetMembership) (*hubConn, error) {
	ref := m.Spec.Hub.SecretRef
	secret := &corev1.Secret{}
	if err := a.direct.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, secret); err != nil {
		return nil, fmt.Errorf("read hub credentials %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	if err := checkHubSecret(secret); err != nil {
		return nil, err
	}
	rc, err := a.cfg.HubConfig(m, secret)
	if err != nil {
		return nil, err
	}
	token := rc.BearerToken
	claims, claimsErr := hubtoken.Parse(token)
	// A renewed token is bound to the same credential Secret and keeps the
	// connection (its token is swapped in place); a new credential (join
	// rotated it) or another hub or CA starts a new one.
	credential := token
	if claimsErr == nil && claims.BoundSecretUID != "" {
		credential = "bound:" + claims.BoundSecretUID
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00%s\x00", rc.Host, credential, rc.CAData, m.Spec.ClusterName, m.Spec.ClusterSet)
	var id [32]byte
	copy(id[:], h.Sum(nil))

	a.mu.Lock()
	cur := a.hub
	a.mu.Unlock()
	if cur != nil && cur.id == id {
		cur.setToken(secret, token)
		return cur, nil
	}
	a.stopHub()

	conn := &hubConn{id: id}
	conn.setToken(secret, token)
	rc = rest.CopyConfig(rc)
	rc.BearerToken, rc.BearerTokenFile = "", ""
	rc.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return &bearerToken{next: rt, token: &conn.token} }

	scheme := newScheme()
	// The member may read its own MemberCluster and ClusterSet (by name:
	// RBAC resourceNames, which list and watch meet with a metadata.name
	// field selector) and the peers of its own set, nothing more.
	byName := func(name string) cache.ByObject {
		return cache.ByObject{Field: fields.OneTermEqualSelector("metadata.name", name)}
	}
	hc, err := cache.New(rc, cache.Options{Scheme: scheme, ByObject: map[client.Object]cache.ByObject{
		&meshv1.MemberCluster{}:  byName(m.Spec.ClusterName),
		&meshv1.ClusterSet{}:     byName(m.Spec.ClusterSet),
		&meshv1.ClusterSetPeer{}: {Namespaces: map[string]cache.Config{meshv1.ClusterSetNamespace(m.Spec.ClusterSet): {}}},
		// The hub's copies of the set's exported services (multi-cluster
		// services), next to the directory.
		&meshv1.ExportedService{}: {Namespaces: map[string]cache.Config{meshv1.ClusterSetNamespace(m.Spec.ClusterSet): {}}},
	}})
	if err != nil {
		return nil, fmt.Errorf("hub cache: %w", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	merge := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { a.services.triggerMerge() },
		UpdateFunc: func(any, any) { a.services.triggerMerge() },
		DeleteFunc: func(any) { a.services.triggerMerge() },
	}
	for _, obj := range []client.Object{&meshv1.MemberCluster{}, &meshv1.ClusterSet{}, &meshv1.ClusterSetPeer{}, &meshv1.ExportedService{}} {
		inf, err := hc.GetInformer(cctx, obj, cache.BlockUntilSynced(false))
		if err != nil {
			cancel()
			return nil, fmt.Errorf("hub informer: %w", err)
		}
		h := a.handler()
		switch obj.(type) {
		case *meshv1.ExportedService:
			h = merge // the data path does not depend on exports
		case *meshv1.ClusterSetPeer:
			if _, err := inf.AddEventHandler(merge); err != nil {
				cancel()
				return nil, err
			}
		}
		if _, err := inf.AddEventHandler(h); err != nil {
			cancel()
			return nil, err
		}
	}
	go func() { _ = hc.Start(cctx) }()
	sctx, scancel := context.WithTimeout(cctx, 15*time.Second)
	defer scancel()
	if !hc.WaitForCacheSync(sctx) {
		cancel()
		return nil, fmt.Errorf("hub %s: watch of the MemberCluster, ClusterSet, peer directory and exported services did not sync (unreachable, or credentials refused)", rc.Host)
	}
	// Bound every direct call: a hub that is unreachable must fail a pass,
	// not hang it (the data path is applied in the same pass).
	drc := rest.CopyConfig(rc)
	if drc.Timeout == 0 {
		drc.Timeout = 10 * time.Second
	}
	direct, err := client.New(drc, client.Options{Scheme: scheme})
	if err != nil {
		cancel()
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(drc)
	if err != nil {
		cancel()
		return nil, err
	}
	conn.reader, conn.client, conn.kube, conn.cancel = hc, direct, kube, cancel
	a.mu.Lock()
	a.hub = conn
	a.mu.Unlock()
	a.services.triggerMerge()
	a.log.Info("Connected to the hub", "server", rc.Host)
	return conn, nil
}

// setToken makes token (from secret) the one the connection uses.
func (h *hubConn) setToken(secret *corev1.Secret, token string) {
	h.token.Store(&token)
	h.secret = secret
	h.claims, h.claimsErr = hubtoken.Parse(token)
}

func (a *Agent) stopHub() {
	a.mu.Lock()
	h := a.hub
	a.hub = nil
	a.mu.Unlock()
	if h != nil {
		h.cancel()
	}
}

// joinState is the Joined condition's input.
type joinState struct {
	ok      bool
	reason  string
	message string
}

// gatewaySync is the elected agent's hub phase: read the directory,
// publish the TunnelGateways. A hub that cannot be read leaves the last directory
// in use (the data path keeps forwarding through hub outages).
func (a *Agent) gatewaySync(ctx context.Context, s *scope) error {
	if s.role != meshv1.RoleGateway {
		a.stopHub()
		return nil
	}
	// Connecting (and reconnecting) runs beside the pass: the data path
	// of a new active gateway must not wait for a hub that may be down.
	hub, err := a.connectHub(ctx, s.membership)
	var secretErr *SecretError
	if errors.As(err, &secretErr) {
		// Keep what works (the last directory, a connection made with the
		// Secret as it was) and say what is wrong with the Secret.
		s.join = joinState{reason: "HubSecretInvalid", message: err.Error()}
		s.cred = &credState{reason: "HubSecretInvalid", message: err.Error()}
		s.errs = append(s.errs, err)
		s.dir = a.currentDirectory()
		return nil
	}
	if err == nil {
		a.renewToken(ctx, hub, s)
	}
	if err == nil {
		var dir *directory
		dir, s.join, err = a.readDirectory(ctx, hub, s.membership)
		if err == nil && dir != nil {
			a.mu.Lock()
			a.directory = dir
			a.mu.Unlock()
			s.hub, s.hubDir = hub, dir
		}
	}
	if err != nil && !errors.Is(err, errHubConnecting) {
		s.join = joinState{reason: "HubUnreachable", message: err.Error()}
		s.errs = append(s.errs, err)
		if hub != nil && hubDown(err) {
			hub.degraded = true
		}
	}
	if hub == nil || hub.degraded {
		// Come back soon rather than at the next resync: the directory
		// should catch up within seconds of the hub's return. One retry at
		// a time: passes started by other events must not each add another
		// chain of retries.
		if a.hubRetryPending.CompareAndSwap(false, true) {
			time.AfterFunc(hubRetry, func() {
				a.hubRetryPending.Store(false)
				a.Trigger()
			})
		}
	}
	s.dir = a.currentDirectory()
	return nil
}

// hubDown tells a hub that does not answer (or answers that it cannot serve)
// from one that refused a request.
func hubDown(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return true
	}
	return apierrors.IsServiceUnavailable(err) || apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) ||
		apierrors.IsInternalError(err) || apierrors.IsTooManyRequests(err)
}

// hubRetry is how often a pass runs while the hub is failing.
const hubRetry = 2 * time.Second

// reconnectHub probes a degraded hub with one direct read. When it answers,
// the watches are started afresh (an immediate re-list instead of waiting
// out their reconnect backoff).
func (a *Agent) reconnectHub(ctx context.Context, hub *hubConn, m *meshv1.ClusterSetMembership) (*hubConn, error) {
	if err := hub.client.Get(ctx, client.ObjectKey{Name: m.Spec.ClusterName}, &meshv1.MemberCluster{}); err != nil && !apierrors.IsNotFound(err) {
		return hub, fmt.Errorf("hub still unreachable: %w", err)
	}
	a.log.Info("Hub answers again, restarting its watches")
	a.stopHub()
	return a.ensureHub(ctx, m)
}

func (a *Agent) readDirectory(ctx context.Context, hub *hubConn, m *meshv1.ClusterSetMembership) (*directory, joinState, error) {
	self := &meshv1.MemberCluster{}
	if err := hub.reader.Get(ctx, client.ObjectKey{Name: m.Spec.ClusterName}, self); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, joinState{reason: "MemberClusterNotFound",
				message: fmt.Sprintf("the hub has no MemberCluster %q; create it on the hub (kubectl archipelago join does)", m.Spec.ClusterName)}, nil
		}
		return nil, joinState{}, fmt.Errorf("read MemberCluster %s: %w", m.Spec.ClusterName, err)
	}
	if len(self.Status.PodCIDRs) == 0 || self.Status.Namespace == "" {
		return nil, joinState{reason: "Pending", message: "the hub has not assigned a pod range or namespace yet: see 'kubectl get membercluster " + self.Name + " -o yaml' on the hub"}, nil
	}
	local, err := plan.ParsePrefixes(self.Status.PodCIDRs)
	if err != nil {
		return nil, joinState{}, err
	}
	cs := &meshv1.ClusterSet{}
	settings := meshv1.TunnelSettings{}
	if err := hub.reader.Get(ctx, client.ObjectKey{Name: self.Spec.ClusterSet}, cs); err == nil {
		settings = cs.Spec.Tunnel
	} else if !apierrors.IsNotFound(err) {
		return nil, joinState{}, fmt.Errorf("read ClusterSet %s: %w", self.Spec.ClusterSet, err)
	}
	if self.Spec.ClusterSet != m.Spec.ClusterSet {
		return nil, joinState{reason: "ClusterSetMismatch",
			message: fmt.Sprintf("the hub's MemberCluster %s belongs to ClusterSet %q, this membership names %q: join again with the right set", self.Name, self.Spec.ClusterSet, m.Spec.ClusterSet)}, nil
	}
	list := &meshv1.ClusterSetPeerList{}
	if err := hub.reader.List(ctx, list, client.InNamespace(meshv1.ClusterSetNamespace(m.Spec.ClusterSet))); err != nil {
		return nil, joinState{}, fmt.Errorf("list the peer directory of ClusterSet %s: %w", m.Spec.ClusterSet, err)
	}
	peers, invalid, withdrawn := plan.PeersFromDirectory(self.Name, list.Items, a.resolver.Lookup)
	d := &directory{
		clusterName: self.Name, namespace: self.Status.Namespace,
		local: local, localRaw: slices.Clone(self.Status.PodCIDRs),
		peers: peers, invalid: invalid, withdrawn: withdrawn, settings: settings,
		tunnel: plan.Tunnel{Interface: a.cfg.TunnelInterface, Port: plan.DefaultPort, Keepalive: plan.DefaultKeepalive},
	}
	if settings.Port != 0 {
		d.tunnel.Port = int(settings.Port)
	}
	if settings.MTU != 0 {
		d.tunnel.MTU = int(settings.MTU)
	}
	if settings.PersistentKeepaliveSeconds != nil {
		d.tunnel.Keepalive = settings.Keepalive()
	}
	return d, joinState{ok: true, reason: "Joined",
		message: fmt.Sprintf("member %s of ClusterSet %s, hub namespace %s", self.Name, self.Spec.ClusterSet, self.Status.Namespace)}, nil
}

// publishGateways makes the TunnelGateway objects in the hub namespace match the
// candidate nodes: one per candidate that published a public key, active
// only on this node. Objects of nodes that are no candidates any more go.
func (a *Agent) publishGateways(ctx context.Context, hub *hubConn, s *scope, dir *directory) error {
	nodes := &corev1.NodeList{}
	if err := a.member.List(ctx, nodes, client.HasLabels{meshv1.LabelGatewayCandidate}); err != nil {
		return fmt.Errorf("list gateway candidates: %w", err)
	}
	want := map[string]meshv1.TunnelGatewaySpec{}
	for _, n := range nodes.Items {
		key := n.Annotations[meshv1.AnnotationPublicKey]
		if key == "" {
			continue
		}
		spec := meshv1.TunnelGatewaySpec{NodeName: n.Name, PublicKey: key, Active: n.Name == a.cfg.NodeName}
		if spec.Active && s.applied && s.applyErr == nil && s.plan.Tunnel != nil {
			// Only the active gateway knows its tunnel MTU for sure; a
			// candidate that takes over publishes its own.
			spec.MTU = int32(s.plan.Tunnel.MTU)
		}
		if ep := n.Annotations[meshv1.AnnotationEndpoint]; ep != "" && ep != EndpointNone {
			spec.Endpoints = []string{ep}
		}
		want[n.Name] = spec
	}
	have := &meshv1.TunnelGatewayList{}
	if err := hub.client.List(ctx, have, client.InNamespace(dir.namespace)); err != nil {
		return fmt.Errorf("list TunnelGateways in hub namespace %s: %w", dir.namespace, err)
	}
	var errs []error
	// Deactivate before activating, so that the hub never sees two active
	// gateways of this member.
	slices.SortFunc(have.Items, func(x, y meshv1.TunnelGateway) int {
		if x.Spec.Active != y.Spec.Active {
			if x.Spec.Active {
				return -1
			}
			return 1
		}
		return 0
	})
	for i := range have.Items {
		gw := &have.Items[i]
		spec, ok := want[gw.Name]
		if !ok {
			if err := hub.client.Delete(ctx, gw); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete Gateway %s/%s: %w", gw.Namespace, gw.Name, err))
			}
			continue
		}
		delete(want, gw.Name)
		if spec.Active && spec.MTU == 0 {
			spec.MTU = gw.Spec.MTU // not applied this pass: keep what was published
		}
		if equality.Semantic.DeepEqual(gw.Spec, spec) {
			if spec.Active {
				s.ownGateway = gw
			}
			continue
		}
		gw.Spec = spec
		if err := hub.client.Update(ctx, gw); err != nil {
			errs = append(errs, fmt.Errorf("update Gateway %s/%s: %w", gw.Namespace, gw.Name, err))
			continue
		}
		if spec.Active {
			s.ownGateway = gw
		}
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		gw := &meshv1.TunnelGateway{
			ObjectMeta: metav1.ObjectMeta{Name: n, Namespace: dir.namespace,
				Labels: map[string]string{meshv1.LabelMember: dir.clusterName}},
			Spec: want[n],
		}
		if err := hub.client.Create(ctx, gw); err != nil {
			errs = append(errs, fmt.Errorf("create Gateway %s/%s: %w", gw.Namespace, gw.Name, err))
			continue
		}
		if gw.Spec.Active {
			s.ownGateway = gw
		}
	}
	return errors.Join(errs...)
}
