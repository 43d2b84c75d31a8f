package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/archipelago-mesh/archipelago/agent/desired"
	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	"github.com/archipelago-mesh/archipelago/agent/overlay"
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

// PeerConfigurer is a Tunnel that can also send one WireGuard configuration
// as it is. Event-driven passes use it to configure only the peers that
// differ from the last applied plan, without reading the device first; a
// Tunnel without it is diffed against the device on every pass.
type PeerConfigurer interface {
	Configure(cfg wgtypes.Config) error
}

// NewTunnel returns dev as a Tunnel that is also a PeerConfigurer, sending
// configurations through client, which must be the client dev was opened
// with (wireguard.Options.Client).
func NewTunnel(dev *wireguard.Device, client wireguard.Client) Tunnel {
	return &deltaTunnel{Device: dev, client: client}
}

type deltaTunnel struct {
	*wireguard.Device
	client wireguard.Client
}

func (t *deltaTunnel) Configure(cfg wgtypes.Config) error {
	return t.client.ConfigureDevice(t.Name(), cfg)
}

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
	// Links finds the interface under the tunnel (Underlay); optional.
	Links routing.Links
	// Overlay makes the VXLAN device of plans with an Overlay; optional
	// (nil: such plans fail, and no device is looked for).
	Overlay overlay.Links
	// TunnelInterface is the device name Cleanup removes.
	TunnelInterface string
	Log             logr.Logger
	// Now is the clock of reports; time.Now when nil.
	Now func() time.Time
}

// Result says what one Apply pass wrote.
type Result struct {
	// Full is true when the pass read and diffed every layer of the kernel
	// (the first pass, ApplyFull, Resync); false when layers whose part of
	// the plan had not changed since the last successful pass were skipped.
	Full          bool
	TunnelOpened  bool
	TunnelRemoved bool
	Tunnel        wireguard.Changes
	Routes        routing.Changes
	FilterChanged bool
	// OverlayChanged is true when the VXLAN device was made, changed or
	// removed.
	OverlayChanged bool
	HostSettings   []string
	Duration       time.Duration
}

// Empty reports whether the pass wrote nothing.
func (r Result) Empty() bool {
	return !r.TunnelOpened && !r.TunnelRemoved && r.Tunnel.Empty() && r.Routes.Empty() &&
		!r.FilterChanged && !r.OverlayChanged && len(r.HostSettings) == 0
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
	// mem is what the last passes made the kernel hold, per layer.
	mem         applied
	last        *plan.NodePlan
	lastResult  Result
	lastErr     error
	lastApplied time.Time
}

// New returns a Dataplane. It touches nothing until the first Apply.
func New(o Options) *Dataplane {
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Dataplane{o: o}
}

// applied is what the kernel holds as far as this Dataplane's own
// successful passes know, per layer: the part of the plan that layer last
// converged to. A nil layer is unknown, and the next pass reads the kernel
// for it. Drift made by others (a route deleted by hand) is not seen here;
// full passes (Resync) find and repair it.
type applied struct {
	host   *routing.HostSettings
	filter *netfilter.FilterPlan
	routes *routing.RoutePlan
	tunnel *wireguard.TunnelPlan
	// overlay is set once the overlay layer converged; its plan may be nil
	// (no device).
	overlay *overlayMem
}

type overlayMem struct{ plan *desired.OverlayPlan }

func sameOverlay(a, b *desired.OverlayPlan) bool {
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}

// Apply makes the node match p. It is the event-driven pass: a layer whose
// part of p equals what the last successful pass applied is skipped without
// reading the kernel, and of the tunnel only the peers that differ are
// configured. The first pass, and every layer after an error in it, is
// diffed against the kernel. Errors of one step do not stop the others; they
// are returned joined.
//
// p is kept (for Resync and comparison with the next plan): its slices must
// not be modified afterwards.
func (d *Dataplane) Apply(ctx context.Context, p plan.NodePlan) (Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.apply(ctx, p, false)
}

// ApplyFull is Apply that reads and diffs every layer of the kernel,
// repairing drift.
func (d *Dataplane) ApplyFull(ctx context.Context, p plan.NodePlan) (Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.apply(ctx, p, true)
}

// Resync applies the last plan again with ApplyFull. Without a plan it does
// nothing.
func (d *Dataplane) Resync(ctx context.Context) (Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.last == nil {
		return Result{}, nil
	}
	return d.apply(ctx, *d.last, true)
}

func (d *Dataplane) apply(ctx context.Context, p plan.NodePlan, full bool) (Result, error) {
	start := time.Now()
	var (
		res  Result
		errs []error
	)
	orig := p
	if full {
		d.mem = applied{}
	}
	// Full until a layer is skipped or configured from memory.
	res.Full = true
	if p.Tunnel != nil {
		if err := d.applyTunnel(ctx, p, &res); err != nil {
			errs = append(errs, err)
		}
	}
	if m := d.mem.host; m != nil && *m == p.Host {
		res.Full = false
	} else {
		changed, err := routing.EnsureHostSettings(d.o.Sysctl, p.Host)
		res.HostSettings = changed
		d.mem.host = nil
		if err != nil {
			errs = append(errs, fmt.Errorf("host settings: %w", err))
		} else {
			h := p.Host
			d.mem.host = &h
		}
	}
	if p.Tunnel != nil && d.tunnel == nil {
		// Without the device, rules and routes naming it cannot be made;
		// keep the filter without the tunnel part and no forwarding routes.
		// The remote ranges stay unreachable in the agent's table and in
		// the no-SNAT sets (fail closed).
		p.Filter.TunnelInterface, p.Filter.MSSClamp = "", false
		p.Routes.Routes = nil
	}
	if m := d.mem.filter; m != nil && sameFilter(*m, p.Filter) {
		res.Full = false
	} else {
		fc, err := netfilter.Apply(d.o.Filter, p.Filter)
		res.FilterChanged = fc
		d.mem.filter = nil
		if err != nil {
			errs = append(errs, fmt.Errorf("packet filter: %w", err))
		} else {
			f := p.Filter
			d.mem.filter = &f
		}
	}
	if err := d.applyOverlay(p, &res); err != nil {
		errs = append(errs, err)
	}
	if m := d.mem.routes; m != nil && sameRoutes(*m, p.Routes) {
		res.Full = false
	} else {
		rc, err := routing.Apply(d.o.Netlink, p.Routes)
		res.Routes = rc
		d.mem.routes = nil
		if err != nil {
			errs = append(errs, fmt.Errorf("routes: %w", err))
		} else {
			r := p.Routes
			d.mem.routes = &r
		}
	}
	if p.Tunnel == nil {
		// After the routes moved off the device: tear it down.
		if err := d.removeTunnel(ctx, p.TunnelInterface, &res); err != nil {
			errs = append(errs, err)
		}
	}
	res.Duration = time.Since(start)
	err := errors.Join(errs...)
	// The plan as given, not as cut down for a missing device: a resync
	// that manages to open the device must apply the routes too.
	pc := orig
	d.last, d.lastResult, d.lastErr, d.lastApplied = &pc, res, err, d.o.Now()
	if !res.Empty() {
		d.o.Log.Info("Applied data path plan", "role", p.Role, "full", res.Full, "tunnelOpened", res.TunnelOpened,
			"tunnelRemoved", res.TunnelRemoved, "peersTouched", res.PeersTouched(),
			"routesAdded", len(res.Routes.Added), "routesUpdated", len(res.Routes.Updated),
			"routesDeleted", len(res.Routes.Deleted), "filterChanged", res.FilterChanged,
			"hostSettings", res.HostSettings, "duration", res.Duration)
	}
	return res, err
}

// applyOverlay makes the VXLAN device match p.Overlay (before the routes
// that name it), or removes the agent's device when p has none.
func (d *Dataplane) applyOverlay(p plan.NodePlan, res *Result) error {
	if d.o.Overlay == nil {
		if p.Overlay != nil {
			return fmt.Errorf("overlay %s: the data path has no link handle for VXLAN devices", p.Overlay.Interface)
		}
		return nil
	}
	if m := d.mem.overlay; m != nil && sameOverlay(m.plan, p.Overlay) {
		res.Full = false
		return nil
	}
	d.mem.overlay = nil
	changed, err := overlay.Apply(d.o.Overlay, desired.DefaultOverlayInterface, p.Overlay)
	res.OverlayChanged = changed
	if err != nil {
		return fmt.Errorf("overlay: %w", err)
	}
	d.mem.overlay = &overlayMem{plan: p.Overlay}
	return nil
}

func (d *Dataplane) applyTunnel(ctx context.Context, p plan.NodePlan, res *Result) error {
	err := d.applyTunnelOnce(ctx, p, res)
	if err == nil || d.tunnel == nil || res.TunnelOpened {
		return err
	}
	// The device may be gone (deleted by hand, or its userspace process
	// died): drop the handle and open it again, which starts a new device
	// with the same key, then apply the plan in full.
	d.o.Log.Info("Tunnel apply failed, opening the device again", "interface", d.tunnelName, "error", err.Error())
	_ = d.tunnel.Close()
	d.tunnel = nil
	d.mem = applied{}
	return d.applyTunnelOnce(ctx, p, res)
}

func (d *Dataplane) applyTunnelOnce(ctx context.Context, p plan.NodePlan, res *Result) error {
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
		// A new (or newly found) device: what was remembered about it, and
		// about the settings and routes that name it (rp_filter, link
		// index), may not hold any more.
		d.mem = applied{}
	}
	want := *p.Tunnel
	last := d.mem.tunnel
	d.mem.tunnel = nil
	if pc, ok := d.tunnel.(PeerConfigurer); ok && last != nil && wireguard.SameDevice(*last, want) {
		// Only the peers that differ from the last applied plan, without
		// reading the device.
		res.Full = false
		cfg, ch, err := wireguard.Delta(*last, want)
		if err == nil && !ch.Empty() {
			if err = pc.Configure(cfg); err != nil {
				err = fmt.Errorf("configure (%s): %w", ch, err)
				ch = wireguard.Changes{}
			}
		}
		res.Tunnel = ch
		if err != nil {
			return fmt.Errorf("WireGuard device %s: %w", d.tunnelName, err)
		}
	} else {
		ch, err := d.tunnel.Apply(want)
		res.Tunnel = ch
		if err != nil {
			return fmt.Errorf("WireGuard: %w", err)
		}
	}
	d.mem.tunnel = &want
	return nil
}

func sameFilter(a, b netfilter.FilterPlan) bool {
	return a.TunnelInterface == b.TunnelInterface && a.MSSClamp == b.MSSClamp && a.MTU == b.MTU &&
		slices.Equal(a.LocalPodCIDRs, b.LocalPodCIDRs) && slices.Equal(a.RemotePodCIDRs, b.RemotePodCIDRs)
}

func sameRoutes(a, b routing.RoutePlan) bool {
	return a.Table == b.Table && a.RulePriority == b.RulePriority && slices.Equal(a.Routes, b.Routes) &&
		slices.Equal(a.Unreachable, b.Unreachable)
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
	d.mem.tunnel = nil
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

// Underlay finds the interface under the tunnel, the input of the derived
// tunnel MTU: of the paths to the peers' endpoints (route lookups, no
// packets), the one that leaves the least room for WireGuard; with no
// endpoint to look up, the interface that holds local (the node's address).
// Endpoints whose lookup fails are left out.
func (d *Dataplane) Underlay(local netip.Addr, endpoints []netip.Addr) (plan.Underlay, error) {
	if d.o.Links == nil {
		return plan.Underlay{}, errors.New("the data path reads no links")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var (
		best plan.Underlay
		errs []error
	)
	for _, ep := range endpoints {
		name, mtu, err := routing.PathTo(d.o.Links, ep)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		u := plan.Underlay{Interface: name, MTU: mtu, IPv6: ep.Unmap().Is6()}
		if best.MTU == 0 || u.MTU-plan.WireGuardOverhead(u.IPv6) < best.MTU-plan.WireGuardOverhead(best.IPv6) {
			best = u
		}
	}
	if best.MTU > 0 {
		return best, nil
	}
	name, mtu, err := routing.Underlay(d.o.Links, local)
	if err != nil {
		return plan.Underlay{}, errors.Join(append(errs, err)...)
	}
	return plan.Underlay{Interface: name, MTU: mtu, IPv6: local.Unmap().Is6()}, nil
}

// OnLink reports whether ip (the active gateway's address) is on one of
// the node's links, for the automatic choice of the overlay.
func (d *Dataplane) OnLink(ip netip.Addr) (bool, error) {
	if d.o.Links == nil {
		return false, errors.New("the data path reads no links")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return routing.OnLink(d.o.Links, ip)
}

// RunResync runs Resync every period until ctx is done, so that drift (a
// route or rule deleted by hand, a peer removed with wg), which event-driven
// passes do not look for, is repaired. Passes with nothing to repair write
// nothing.
func (d *Dataplane) RunResync(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if res, err := d.Resync(ctx); err != nil {
			d.o.Log.Error(err, "Resync of the data path failed")
		} else if !res.Empty() {
			d.o.Log.Info("Resync repaired drift")
		}
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
	d.mem = applied{}
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
	if d.o.Overlay != nil {
		if _, err := overlay.Apply(d.o.Overlay, desired.DefaultOverlayInterface, nil); err != nil {
			errs = append(errs, err)
		}
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
	d.mem = applied{}
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
	for _, h := range p.NextHops {
		r.NextHops = append(r.NextHops, h.String())
	}
	if o := p.Overlay; o != nil && o.Remote.IsValid() {
		r.Encapsulation = fmt.Sprintf("vxlan %s to %s", o.Interface, o.Remote)
	}
	for _, u := range p.CannotRoute {
		r.CannotRoute = append(r.CannotRoute, meshv1.UnroutableRange{CIDR: u.Prefix.String(), Cluster: u.Cluster, Reason: u.Reason})
	}
	if d.lastErr == nil {
		r.Routes = len(p.Routes.Routes)
		r.NoSNAT = len(p.Filter.LocalPodCIDRs) > 0 && len(p.Filter.RemotePodCIDRs) > 0
	}
	fwd := len(p.Routes.Routes)
	if d.lastErr != nil || (p.Tunnel != nil && d.tunnel == nil) {
		fwd = 0
	}
	// Compute routes a subset of the unreachable ranges.
	r.Unreachable = max(len(p.Routes.Unreachable)-fwd, 0)
	r.IPForwarding = d.forwarding(p.Host)
	if p.Tunnel == nil {
		return r
	}
	r.Interface = p.TunnelInterface
	r.MTU = p.Tunnel.MTU
	r.MTUSource = p.MTU.Source
	r.UnderlayInterface, r.UnderlayMTU = p.MTU.Underlay.Interface, p.MTU.Underlay.MTU
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
		pr := meshv1.NodePeerReport{Cluster: p.PeerClusters[peer.PublicKey]}
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
