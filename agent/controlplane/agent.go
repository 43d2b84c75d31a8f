package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/agent/dataplane"
	"github.com/archipelago-mesh/archipelago/agent/plan"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/hubtoken"
	"github.com/archipelago-mesh/archipelago/internal/mcs/imports"
)

// Member-side RBAC of the agent (config/agent/rbac, generated).
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=clustersetmemberships,verbs=get;list;watch
// +kubebuilder:rbac:groups=mesh.archipelago.dev,resources=clustersetmemberships/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=archipelago-system,resources=leases,verbs=get;list;watch
// Writing the gateway Lease is not generated here either: only the
// candidates' ServiceAccount may (config/agent/rbac/gateway-lease.yaml);
// workers follow it. Node patches are confined to the agent's own node's
// archipelago.dev/* annotations by config/agent/node-policy.yaml.
// The hub Secret (get, and update for renewals) is not generated here: only
// the gateway candidates' ServiceAccount may read it (config/agent/rbac/hub-secret.yaml).

// Defaults.
const (
	DefaultNamespace      = "archipelago-system"
	DefaultLeaseName      = "archipelago-gateway"
	DefaultMembershipName = "membership"
	// EndpointNone as --public-endpoint marks a node behind NAT that only
	// dials out.
	EndpointNone = "none"
	// handshakeFresh is how recent a handshake must be for a peer to count
	// as up: WireGuard rekeys every 2 minutes and gives up on a session
	// after 3 (REJECT_AFTER_TIME).
	handshakeFresh = 3 * time.Minute
)

// Datapath is what the control plane needs of the data path;
// *dataplane.Dataplane implements it.
type Datapath interface {
	Apply(ctx context.Context, p plan.NodePlan) (dataplane.Result, error)
	TunnelState() (*wgtypes.Device, error)
	Report() meshv1.NodeReport
	// Cleanup removes everything the data path made (the member left).
	Cleanup(ctx context.Context) error
}

// peerRestarter is a Datapath that can restart WireGuard sessions
// (*dataplane.Dataplane is one).
type peerRestarter interface {
	RestartPeers(keys []wgtypes.Key) error
}

// Config configures an Agent.
type Config struct {
	// NodeName is this node.
	NodeName string
	// Member is the member cluster's API.
	Member *rest.Config
	// Namespace holds the Lease (and, by convention, the hub Secret).
	Namespace string
	// LeaseName is the gateway election's Lease.
	LeaseName string
	// MembershipName is the ClusterSetMembership to follow.
	MembershipName string
	// LeaseDuration, RenewDeadline and RetryPeriod tune the election:
	// the leader renews every RetryPeriod and steps down when it could not
	// for RenewDeadline; standbys try every RetryPeriod.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// TakeoverGrace is how long past its expiry a Lease whose holder still
	// answers liveness probes (its agent restarts, its device forwards) is
	// left alone (default 30s).
	TakeoverGrace time.Duration
	// ProbePort is the UDP port of the liveness responder on candidate
	// nodes (it runs in the WireGuard device process); 0 turns probing
	// off, and failover waits for the Lease to expire.
	ProbePort int
	// ProbeInterval and ProbeMisses: a holder that answered before is dead
	// after ProbeMisses probes in a row, one every ProbeInterval, went
	// unanswered (defaults 200ms and 5).
	ProbeInterval time.Duration
	ProbeMisses   int
	// KeySecret names the Secret (in Namespace) with the member's shared
	// WireGuard private key (default archipelago-wireguard).
	KeySecret string
	// TunnelInterface is the WireGuard interface name on this node.
	TunnelInterface string
	// PublicEndpoint is host:port published for this node when it is a
	// candidate; "" means InternalIP and the ClusterSet's port, EndpointNone
	// means behind NAT.
	PublicEndpoint string
	// Key returns the key that seeds the shared key Secret when a candidate
	// finds none (this node's existing key when upgrading from per-node
	// keys); nil or a zero key means a new random key.
	Key func() (wgtypes.Key, error)
	// Datapath applies plans.
	Datapath Datapath
	// Encapsulation of worker → gateway traffic: plan.EncapAuto (VXLAN
	// when the gateway is off-link), plan.EncapVXLAN, or plan.EncapDirect
	// ("" is direct).
	Encapsulation string
	// Resync is the period of full passes without events (default 30s).
	Resync time.Duration
	// ReportInterval bounds how often unchanged reports (NodeReport
	// lastReconcile, Gateway lastSeen) are rewritten (default 1m): the
	// heartbeat by which the CLI tells a stopped agent (stale after 5m).
	ReportInterval time.Duration
	// HubConfig builds the hub client config from the membership and its
	// Secret; the default uses spec.hub.server, "token" and "ca.crt".
	HubConfig func(m *meshv1.ClusterSetMembership, secret *corev1.Secret) (*rest.Config, error)
	// TokenRenewFraction is the share of the hub token's lifetime after
	// which the elected agent renews it (default hubtoken.RenewFraction).
	TokenRenewFraction float64
	Log                logr.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Clock drives the election (real clock when nil).
	Clock clock.Clock
}

func (c *Config) defaults() {
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.LeaseName == "" {
		c.LeaseName = DefaultLeaseName
	}
	if c.MembershipName == "" {
		c.MembershipName = DefaultMembershipName
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = 4 * time.Second
	}
	if c.RenewDeadline == 0 {
		c.RenewDeadline = c.LeaseDuration * 3 / 4
	}
	if c.RetryPeriod == 0 {
		c.RetryPeriod = c.LeaseDuration / 4
	}
	if c.TakeoverGrace == 0 {
		c.TakeoverGrace = 30 * time.Second
	}
	if c.KeySecret == "" {
		c.KeySecret = DefaultKeySecret
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.Resync == 0 {
		c.Resync = 30 * time.Second
	}
	if c.ReportInterval == 0 {
		c.ReportInterval = time.Minute
	}
	if c.HubConfig == nil {
		c.HubConfig = DefaultHubConfig
	}
	if c.TokenRenewFraction <= 0 || c.TokenRenewFraction >= 1 {
		c.TokenRenewFraction = hubtoken.RenewFraction
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// DefaultHubConfig is the hub connection the kubectl plugin's join sets up:
// spec.hub.server, with the Secret's "token" and "ca.crt". A Secret without
// a token or a CA is refused (*SecretError); the hub is never verified with
// the system's roots.
func DefaultHubConfig(m *meshv1.ClusterSetMembership, s *corev1.Secret) (*rest.Config, error) {
	if err := checkHubSecret(s); err != nil {
		return nil, err
	}
	token, ca := s.Data[secretKeyToken], s.Data[secretKeyCA]
	return &rest.Config{
		Host:            m.Spec.Hub.Server,
		BearerToken:     string(token),
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		QPS:             20, Burst: 40,
		UserAgent: "archipelago-agent",
	}, nil
}

// Agent is one node's control loop.
type Agent struct {
	cfg    Config
	log    logr.Logger
	member client.Client // cached reads of Nodes and memberships
	direct client.Client // uncached (Secret)
	kube   kubernetes.Interface

	trigger chan struct{}
	// hubRetryPending is true while a retry pass for a failing hub is scheduled.
	hubRetryPending atomic.Bool
	// hubConnecting is true while a hub connection is set up in the
	// background; hubErr is how the last attempt failed.
	hubConnecting atomic.Bool
	hubErr        error

	// renewal is the hub token's renewal schedule (elected agent only).
	renewal tokenRenewal

	mu        sync.Mutex
	elect     *election
	resolver  *endpointResolver
	roaming   map[string]roamed
	hub       *hubConn
	directory *directory // last good hub read, kept through hub outages
	// overlaySenders are the node addresses last read for the gateway's
	// VXLAN port (kept when a read fails).
	overlaySenders []netip.Addr
	// services runs multi-cluster services while this agent is elected.
	services services
	key      wgtypes.Key
	lastGW   time.Time
	// wroteStatus is the membership status this agent last wrote, so that
	// its own write does not wake its next pass.
	wroteStatus *meshv1.ClusterSetMembershipStatus
	// lastReport is when this agent last wrote its NodeReport;
	// reportPending is true while a pass is scheduled to write a change
	// held back by the debounce.
	lastReport    time.Time
	reportPending atomic.Bool
	// underlayRead is the last read of the interface under the tunnel.
	underlayRead underlayCache
	// peerClusters names the tunnel's peers (the last plan's), for metrics.
	peerClusters map[wgtypes.Key]string
	// left is true once the data path was removed after the membership
	// went away (leave), until a membership appears again.
	left      bool
	firstPass bool
	lastPass  time.Time
	lastErr   error
}

// New returns an Agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	cfg.defaults()
	if cfg.NodeName == "" {
		return nil, errors.New("node name is empty: set NODE_NAME or --node-name")
	}
	if cfg.Member == nil || cfg.Datapath == nil {
		return nil, errors.New("member config and data path are required")
	}
	kube, err := kubernetes.NewForConfig(cfg.Member)
	if err != nil {
		return nil, fmt.Errorf("member client: %w", err)
	}
	if cfg.RenewDeadline >= cfg.LeaseDuration {
		return nil, fmt.Errorf("renew deadline %s must be shorter than the lease duration %s", cfg.RenewDeadline, cfg.LeaseDuration)
	}
	a := &Agent{cfg: cfg, log: cfg.Log.WithValues("node", cfg.NodeName), kube: kube, trigger: make(chan struct{}, 1),
		renewal: tokenRenewal{fraction: cfg.TokenRenewFraction}}
	a.resolver = newEndpointResolver(a.Trigger)
	return a, nil
}

// Trigger asks for a pass soon.
func (a *Agent) Trigger() {
	select {
	case a.trigger <- struct{}{}:
	default:
	}
}

// Ready is nil once a pass applied a plan (or found nothing to do yet).
func (a *Agent) Ready() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.firstPass {
		return errors.New("no pass completed yet")
	}
	return nil
}

// Healthy is nil while the loop keeps running.
func (a *Agent) Healthy() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.lastPass.IsZero() {
		return nil
	}
	if age := a.cfg.Now().Sub(a.lastPass); age > 3*a.cfg.Resync+time.Minute {
		return fmt.Errorf("last pass %s ago", age.Round(time.Second))
	}
	return nil
}

// Run runs the agent until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	scheme := newScheme()
	// The gateway Lease is watched by every agent (workers take their
	// next hop from its holder); RBAC allows it in one namespace only.
	c, err := cache.New(a.cfg.Member, cache.Options{Scheme: scheme, ByObject: map[client.Object]cache.ByObject{
		&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{a.cfg.Namespace: {}}},
	}})
	if err != nil {
		return fmt.Errorf("member cache: %w", err)
	}
	for _, obj := range []client.Object{&corev1.Node{}, &meshv1.ClusterSetMembership{}, &coordinationv1.Lease{}} {
		inf, err := c.GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("member informer: %w", err)
		}
		h := a.handler()
		if _, ok := obj.(*coordinationv1.Lease); ok {
			h = a.leaseHandler()
		}
		if _, err := inf.AddEventHandler(h); err != nil {
			return err
		}
	}
	a.registerTunnelCollector()
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		return errors.New("member cache did not sync")
	}
	direct, err := client.New(a.cfg.Member, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	a.member, a.direct = &cachedClient{Reader: c, Client: direct}, direct
	a.log.Info("Agent started", "interface", a.cfg.TunnelInterface)

	tick := time.NewTicker(a.cfg.Resync)
	defer tick.Stop()
	a.Trigger()
	for {
		select {
		case <-ctx.Done():
			a.services.stop()
			// A planned stop (SIGTERM, a rollout) keeps the Lease: the
			// next agent on this node takes it back, the gateway stays.
			a.stopElection(context.Background(), false)
			a.stopHub()
			return nil
		case <-a.trigger:
		case <-tick.C:
		}
		// Coalesce bursts of events into one pass.
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			continue
		}
		select {
		case <-a.trigger:
		default:
		}
		err := a.Pass(ctx)
		a.mu.Lock()
		a.lastPass, a.lastErr = a.cfg.Now(), err
		a.mu.Unlock()
		if err != nil {
			reconcileErrors.Inc()
			a.log.Error(err, "Pass failed")
		}
	}
}

type cachedClient struct {
	client.Reader
	client.Client
}

func (c *cachedClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	return c.Reader.Get(ctx, key, obj, opts...)
}

func (c *cachedClient) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	return c.Reader.List(ctx, list, opts...)
}

func (a *Agent) handler() toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { a.Trigger() },
		UpdateFunc: func(o, n any) {
			if a.wakes(o, n) {
				a.Trigger()
			}
		},
		DeleteFunc: func(any) { a.Trigger() },
	}
}

// Pass is one reconcile: read, plan, apply, publish.
func (a *Agent) Pass(ctx context.Context) error {
	s := &scope{agent: a, now: a.cfg.Now()}
	for _, phase := range []func(context.Context, *scope) error{
		a.readNode,
		a.publishCandidate,
		a.readMembership,
		a.election,
		a.gatewaySync,
		a.servicesSync,
		a.readStatus,
		a.applyPlan,
		a.publishHub,
		a.publishStatus,
		a.publishReport,
	} {
		if err := phase(ctx, s); err != nil {
			if errors.Is(err, errStop) {
				break
			}
			return err
		}
	}
	a.mu.Lock()
	a.firstPass = true
	a.mu.Unlock()
	return errors.Join(s.errs...)
}

var errStop = errors.New("nothing more to do in this pass")

// scope is what one pass reads and decides.
type scope struct {
	agent      *Agent
	now        time.Time
	node       *corev1.Node
	candidate  bool
	membership *meshv1.ClusterSetMembership
	role       string
	holder     string        // the Lease holder the election saw
	restart    []wgtypes.Key // peers whose sessions to restart after the apply
	dir        *directory
	plan       plan.NodePlan
	applied    bool
	applyErr   error
	join       joinState
	svc        *servicesState
	cred       *credState
	ownGateway *meshv1.TunnelGateway
	hub        *hubConn   // the hub connection this pass read from
	hubDir     *directory // what it read (nil when the hub was not read)
	hold       string
	cidrsOK    bool
	cidrsMsg   string
	errs       []error
}

func (a *Agent) readNode(ctx context.Context, s *scope) error {
	s.node = &corev1.Node{}
	if err := a.member.Get(ctx, client.ObjectKey{Name: a.cfg.NodeName}, s.node); err != nil {
		return fmt.Errorf("read own node %s: %w", a.cfg.NodeName, err)
	}
	_, s.candidate = s.node.Labels[meshv1.LabelGatewayCandidate]
	return nil
}

func (a *Agent) readMembership(ctx context.Context, s *scope) error {
	m := &meshv1.ClusterSetMembership{}
	if err := a.member.Get(ctx, client.ObjectKey{Name: a.cfg.MembershipName}, m); err != nil {
		if apierrors.IsNotFound(err) {
			a.log.V(1).Info("No ClusterSetMembership yet; run 'kubectl archipelago join'", "name", a.cfg.MembershipName)
			return a.leave(ctx, s)
		}
		return fmt.Errorf("read ClusterSetMembership %s: %w", a.cfg.MembershipName, err)
	}
	s.membership = m
	a.mu.Lock()
	a.left = false
	a.mu.Unlock()
	return nil
}

// leave removes the data path once the membership is gone: while joined
// the agent fails closed (remote ranges unreachable rather than routed
// along the main table), and only leaving (or uninstalling) lifts that.
// On a node that never joined it writes nothing.
func (a *Agent) leave(ctx context.Context, s *scope) error {
	a.mu.Lock()
	done := a.left
	a.mu.Unlock()
	if done {
		return errStop
	}
	a.services.stop()
	// Imports point at other members' pods, which are not routed any more.
	// Gateway candidates (whose ServiceAccount may) remove them.
	if s.candidate {
		if err := imports.RemoveAll(ctx, a.direct); err != nil {
			return fmt.Errorf("membership %s is gone: remove the multi-cluster service imports: %w", a.cfg.MembershipName, err)
		}
	}
	if err := a.cfg.Datapath.Cleanup(ctx); err != nil {
		return fmt.Errorf("membership %s is gone: remove the data path: %w", a.cfg.MembershipName, err)
	}
	a.log.Info("No ClusterSetMembership: data path removed", "membership", a.cfg.MembershipName)
	a.mu.Lock()
	a.left = true
	a.mu.Unlock()
	return errStop
}

// publishCandidate writes the public key and endpoint annotations of a
// gateway candidate (and removes them when the label went away).
func (a *Agent) publishCandidate(ctx context.Context, s *scope) error {
	want := map[string]*string{meshv1.AnnotationPublicKey: nil, meshv1.AnnotationEndpoint: nil}
	if s.candidate {
		key, err := a.loadKey(ctx)
		if err != nil {
			return err
		}
		pub := key.PublicKey().String()
		ep, err := a.endpoint(ctx, s.node)
		if err != nil {
			s.errs = append(s.errs, err)
		}
		want[meshv1.AnnotationPublicKey] = &pub
		want[meshv1.AnnotationEndpoint] = &ep
	}
	return a.patchNodeAnnotations(ctx, s.node, want)
}

func (a *Agent) endpoint(ctx context.Context, node *corev1.Node) (string, error) {
	switch a.cfg.PublicEndpoint {
	case EndpointNone:
		return "", nil
	case "":
	default:
		return a.cfg.PublicEndpoint, nil
	}
	ip := nodeIP(node)
	if !ip.IsValid() {
		return "", fmt.Errorf("node %s has no InternalIP; set --public-endpoint", node.Name)
	}
	port := plan.DefaultPort
	m := &meshv1.ClusterSetMembership{}
	if err := a.member.Get(ctx, client.ObjectKey{Name: a.cfg.MembershipName}, m); err == nil && m.Status.Tunnel != nil && m.Status.Tunnel.Port != 0 {
		port = int(m.Status.Tunnel.Port)
	}
	if d := a.currentDirectory(); d != nil && d.tunnel.Port != 0 {
		port = d.tunnel.Port
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(port)), nil
}

func (a *Agent) patchNodeAnnotations(ctx context.Context, node *corev1.Node, want map[string]*string) error {
	patch := map[string]any{}
	for k, v := range want {
		cur, has := node.Annotations[k]
		switch {
		case v == nil && has:
			patch[k] = nil
		case v != nil && (!has || cur != *v):
			patch[k] = *v
		}
	}
	if len(patch) == 0 {
		return nil
	}
	return a.mergePatchNode(ctx, node, patch)
}

// nodeIPs are a Node's InternalIPs, the first of each family, IPv4 first.
func nodeIPs(n *corev1.Node) []netip.Addr {
	var all []netip.Addr
	for _, addr := range n.Status.Addresses {
		if addr.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(addr.Address); err == nil {
			all = append(all, ip.Unmap())
		}
	}
	return firstPerFamily(all)
}

// firstPerFamily keeps the first IPv4 and the first IPv6 address of ips,
// IPv4 first.
func firstPerFamily(ips []netip.Addr) []netip.Addr {
	var v4, v6 netip.Addr
	for _, ip := range ips {
		switch ip = ip.Unmap(); {
		case ip.Is4() && !v4.IsValid():
			v4 = ip
		case ip.Is6() && !v6.IsValid():
			v6 = ip
		}
	}
	var out []netip.Addr
	for _, ip := range []netip.Addr{v4, v6} {
		if ip.IsValid() {
			out = append(out, ip)
		}
	}
	return out
}

func nodeIP(n *corev1.Node) netip.Addr {
	var v6 netip.Addr
	for _, addr := range n.Status.Addresses {
		if addr.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(addr.Address)
		if err != nil {
			continue
		}
		if ip.Unmap().Is4() {
			return ip.Unmap()
		}
		if !v6.IsValid() {
			v6 = ip
		}
	}
	return v6
}
