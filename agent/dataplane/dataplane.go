package dataplane

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	"github.com/archipelago-mesh/archipelago/agent/plan"
	"github.com/archipelago-mesh/archipelago/agent/routing"
	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// Tunnel is an open WireGuard device. *wireguard.Device implements it.
type Tunnel interface {
	Apply(plan wireguard.TunnelPlan) (wireguard.Changes, error)
	State() (*wgtypes.Device, error)
	Kind() wireguard.Kind
	Close() error
}

var _ Tunnel = (*wireguard.Device)(nil)

// TunnelDriver opens and removes the WireGuard device.
type TunnelDriver interface {
	// Open finds or creates the device (kernel or userspace, chosen once)
	// and brings it up with mtu.
	Open(ctx context.Context, name string, mtu int) (Tunnel, error)
	// Teardown deletes the device and stops a userspace device process.
	// A missing device is not an error and causes no write.
	Teardown(ctx context.Context, name string) error
}

// Options configure New.
type Options struct {
	Tunnels TunnelDriver
	Netlink routing.Netlink
	Filter  netfilter.Conn
	Sysctl  routing.Sysctl
	// TunnelInterface is the device name Cleanup removes.
	TunnelInterface string
	Log             logr.Logger
	// Now is the clock of reports; time.Now when nil.
	Now func() time.Time
}

// Result says what one Apply pass wrote.
type Result struct {
	TunnelOpened  bool
	TunnelRemoved bool
	Tunnel        wireguard.Changes
	Routes        routing.Changes
	FilterChanged bool
	HostSettings  []string
	Duration      time.Duration
}

// Empty reports whether the pass wrote nothing.
func (r Result) Empty() bool {
	return !r.TunnelOpened && !r.TunnelRemoved && r.Tunnel.Empty() && r.Routes.Empty() &&
		!r.FilterChanged && len(r.HostSettings) == 0
}

// PeersTouched is the number of WireGuard peers the pass configured.
func (r Result) PeersTouched() int {
	return len(r.Tunnel.Added) + len(r.Tunnel.Updated) + len(r.Tunnel.Removed)
}

// Dataplane applies NodePlans to one node. It is safe for concurrent use.
type Dataplane struct {
	o Options

	mu           sync.Mutex
	tunnel       Tunnel
	tunnelName   string
	staleChecked bool
	last         *plan.NodePlan
	lastResult   Result
	lastErr      error
	lastApplied  time.Time
}

// New returns a Dataplane. It touches nothing until the first Apply.
func New(o Options) *Dataplane {
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Dataplane{o: o}
}

// Apply makes the node match p. Errors of one step do not stop the others;
// they are returned joined.
func (d *Dataplane) Apply(ctx context.Context, p plan.NodePlan) (Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.apply(ctx, p)
}

func (d *Dataplane) apply(ctx context.Context, p plan.NodePlan) (Result, error) {
	start := time.Now()
	var (
		res  Result
		errs []error
	)
	if p.Tunnel != nil {
		if err := d.applyTunnel(ctx, p, &res); err != nil {
			errs = append(errs, err)
		}
	}
	changed, err := routing.EnsureHostSettings(d.o.Sysctl, p.Host)
	res.HostSettings = changed
	if err != nil {
		errs = append(errs, fmt.Errorf("host settings: %w", err))
	}
	if p.Tunnel != nil && d.tunnel == nil {
		// Without the device, rules and routes naming it cannot be made;
		// keep the filter without the tunnel part and no routes, so that
		// nothing half-works.
		p.Filter.TunnelInterface, p.Filter.MSSClamp = "", false
		p.Routes.Routes = nil
	}
	fc, err := netfilter.Apply(d.o.Filter, p.Filter)
	res.FilterChanged = fc
	if err != nil {
		errs = append(errs, fmt.Errorf("packet filter: %w", err))
	}
	rc, err := routing.Apply(d.o.Netlink, p.Routes)
	res.Routes = rc
	if err != nil {
		errs = append(errs, fmt.Errorf("routes: %w", err))
	}
	if p.Tunnel == nil {
		// After the routes moved off the device: tear it down.
		if err := d.removeTunnel(ctx, p.TunnelInterface, &res); err != nil {
			errs = append(errs, err)
		}
	}
	res.Duration = time.Since(start)
	err = errors.Join(errs...)
	pc := p
	d.last, d.lastResult, d.lastErr, d.lastApplied = &pc, res, err, d.o.Now()
	if !res.Empty() {
		d.o.Log.Info("Applied data path plan", "role", p.Role, "tunnelOpened", res.TunnelOpened,
			"tunnelRemoved", res.TunnelRemoved, "peersTouched", res.PeersTouched(),
			"routesAdded", len(res.Routes.Added), "routesUpdated", len(res.Routes.Updated),
			"routesDeleted", len(res.Routes.Deleted), "filterChanged", res.FilterChanged,
			"hostSettings", res.HostSettings, "duration", res.Duration)
	}
	return res, err
}

func (d *Dataplane) applyTunnel(ctx context.Context, p plan.NodePlan, res *Result) error {
	if d.tunnel != nil && d.tunnelName != p.TunnelInterface {
		if err := d.removeTunnel(ctx, d.tunnelName, res); err != nil {
			return err
		}
	}
	if d.tunnel == nil {
		t, err := d.o.Tunnels.Open(ctx, p.TunnelInterface, p.Tunnel.MTU)
		if err != nil {
			return fmt.Errorf("open WireGuard device %s: %w", p.TunnelInterface, err)
		}
		d.tunnel, d.tunnelName, d.staleChecked = t, p.TunnelInterface, true
		res.TunnelOpened = true
	}
	ch, err := d.tunnel.Apply(*p.Tunnel)
	res.Tunnel = ch
	if err != nil {
		return fmt.Errorf("WireGuard: %w", err)
	}
	return nil
}

// removeTunnel closes and deletes the device when this Dataplane opened it,
// and once after start also when an earlier agent left one (the node was a
// gateway before the restart and is not any more).
func (d *Dataplane) removeTunnel(ctx context.Context, name string, res *Result) error {
	if d.tunnel == nil && d.staleChecked {
		return nil
	}
	had := d.tunnel != nil
	if had {
		_ = d.tunnel.Close()
		d.tunnel = nil
	}
	if name == "" {
		name = d.o.TunnelInterface
	}
	if name == "" {
		d.staleChecked = true
		return nil
	}
	if err := d.o.Tunnels.Teardown(ctx, name); err != nil {
		return fmt.Errorf("tear down WireGuard device %s: %w", name, err)
	}
	d.staleChecked = true
	res.TunnelRemoved = had
	return nil
}

// RunResync re-applies the last plan every period until ctx is done, so that
// drift (a route or rule deleted by hand, a peer removed with wg) is
// repaired. Passes with nothing to repair write nothing.
func (d *Dataplane) RunResync(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		if d.last != nil {
			if res, err := d.apply(ctx, *d.last); err != nil {
				d.o.Log.Error(err, "Resync of the data path failed")
			} else if !res.Empty() {
				d.o.Log.Info("Resync repaired drift")
			}
		}
		d.mu.Unlock()
	}
}

// TunnelState reads the device (peers, handshakes, counters); nil when this
// node holds no tunnel.
func (d *Dataplane) TunnelState() (*wgtypes.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tunnel == nil {
		return nil, nil
	}
	return d.tunnel.State()
}

// LastPlan returns the last applied plan, if any.
func (d *Dataplane) LastPlan() (plan.NodePlan, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last == nil {
		return plan.NodePlan{}, false
	}
	return *d.last, true
}

// Close releases handles; the device and all kernel state stay (agent
// restart or shutdown).
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tunnel == nil {
		return nil
	}
	err := d.tunnel.Close()
	d.tunnel = nil
	d.staleChecked = false
	return err
}

// Cleanup removes everything the agent made on this node: the WireGuard
// device (and its device process), the routes in the agent's table and its
// rules, and the nftables table. Sysctls (forwarding) are left as they are:
// other software on the node may rely on them.
func (d *Dataplane) Cleanup(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if err := routing.Cleanup(d.o.Netlink, 0, 0); err != nil {
		errs = append(errs, fmt.Errorf("routes: %w", err))
	}
	if err := netfilter.Cleanup(d.o.Filter); err != nil {
		errs = append(errs, fmt.Errorf("packet filter: %w", err))
	}
	name := d.tunnelName
	if name == "" {
		name = d.o.TunnelInterface
	}
	if d.tunnel != nil {
		_ = d.tunnel.Close()
		d.tunnel = nil
	}
	if name != "" {
		if err := d.o.Tunnels.Teardown(ctx, name); err != nil {
			errs = append(errs, fmt.Errorf("WireGuard device %s: %w", name, err))
		}
	}
	d.last = nil
	return errors.Join(errs...)
}

// Report describes the node's data path after the last pass, as published in
// the Node annotation archipelago.dev/datapath.
func (d *Dataplane) Report() meshv1.NodeReport {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := meshv1.NodeReport{Role: meshv1.RoleWorker}
	if d.last == nil {
		r.LastError = "no plan applied yet"
		return r
	}
	p := d.last
	r.Role = p.Role
	r.LastReconcile = metav1.NewTime(d.lastApplied.Truncate(time.Second))
	if d.lastErr != nil {
		r.LastError = d.lastErr.Error()
	} else if p.Hold != "" {
		r.LastError = "not routing: " + p.Hold
	}
	if p.NextHop.IsValid() {
		r.NextHop = p.NextHop.String()
	}
	if d.lastErr == nil {
		r.Routes = len(p.Routes.Routes)
		r.NoSNAT = len(p.Filter.LocalPodCIDRs) > 0 && len(p.Filter.RemotePodCIDRs) > 0
	}
	r.IPForwarding = d.forwarding(p.Host)
	if p.Tunnel == nil {
		return r
	}
	r.Interface = p.TunnelInterface
	r.MTU = p.Tunnel.MTU
	if d.tunnel == nil {
		return r
	}
	r.MSSClamp = d.lastErr == nil && p.Filter.MSSClamp
	r.WireGuard = string(d.tunnel.Kind())
	st, err := d.tunnel.State()
	if err != nil {
		return r
	}
	r.InterfaceUp = true
	r.ListenPort = st.ListenPort
	for _, peer := range st.Peers {
		pr := meshv1.NodePeerReport{Cluster: p.PeerClusters[peer.PublicKey], RxBytes: peer.ReceiveBytes, TxBytes: peer.TransmitBytes}
		if pr.Cluster == "" {
			pr.Cluster = "unknown:" + peer.PublicKey.String()[:8]
		}
		if peer.Endpoint != nil {
			pr.Endpoint = peer.Endpoint.String()
		}
		if !peer.LastHandshakeTime.IsZero() {
			hs := metav1.NewTime(peer.LastHandshakeTime.Truncate(time.Second))
			pr.LatestHandshake = &hs
		}
		r.Peers = append(r.Peers, pr)
	}
	slices.SortFunc(r.Peers, func(a, b meshv1.NodePeerReport) int {
		switch {
		case a.Cluster < b.Cluster:
			return -1
		case a.Cluster > b.Cluster:
			return 1
		}
		return 0
	})
	return r
}

func (d *Dataplane) forwarding(h routing.HostSettings) bool {
	ok := true
	if h.IPv4 {
		v, err := d.o.Sysctl.Get("net.ipv4.ip_forward")
		ok = ok && err == nil && v == "1"
	}
	if h.IPv6 {
		v, err := d.o.Sysctl.Get("net.ipv6.conf.all.forwarding")
		ok = ok && err == nil && v == "1"
	}
	return ok && (h.IPv4 || h.IPv6)
}
