package wireguard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Kind is the implementation behind a Device. It is for logs and metrics
// only: nothing downstream of New may branch on it.
type Kind string

const (
	// KindAuto probes: kernel if the module is there, else userspace.
	KindAuto Kind = ""
	// KindKernel is the kernel module, driven through netlink.
	KindKernel Kind = "kernel"
	// KindUserspace is wireguard-go on a TUN device with a UAPI socket.
	KindUserspace Kind = "userspace"
)

// Options configure New.
type Options struct {
	// Name of the interface, at most 15 bytes.
	Name string
	// MTU of the interface; DefaultMTU when 0.
	MTU int
	// Kind forces an implementation; KindAuto (the default) probes.
	Kind Kind
	// Userspace starts the device process when the userspace device is
	// needed and not running.
	Userspace UserspaceProcess
	// Links defaults to NetlinkLinks in the caller's network namespace.
	Links LinkOps
	// Client defaults to a wgctrl client.
	Client Client
	Log    logr.Logger
}

// Device is the gateway's WireGuard interface, kernel or userspace; both are
// read and configured the same way, through Client (wgctrl) and LinkOps.
type Device struct {
	name   string
	kind   Kind
	mtu    int
	client Client
	links  LinkOps
	log    logr.Logger
}

// New finds or creates the WireGuard interface. The choice between kernel and
// userspace is made here, once, by probing (an existing interface keeps its
// kind, so an agent restart never swaps a running userspace device for a
// kernel one and drops the tunnels):
//   - an existing kernel WireGuard link is reused;
//   - an existing TUN link or an answering UAPI socket means a userspace
//     device is running and is reused;
//   - otherwise a kernel link is created; if the kernel has no WireGuard
//     (EOPNOTSUPP, "Unknown device type"), the userspace device process is
//     started.
//
// The interface is then set to the MTU and up.
func New(ctx context.Context, o Options) (*Device, error) {
	if o.Name == "" || len(o.Name) > 15 {
		return nil, fmt.Errorf("WireGuard interface name %q must be 1-15 bytes", o.Name)
	}
	if o.MTU == 0 {
		o.MTU = DefaultMTU
	}
	log := o.Log.WithValues("device", o.Name)
	links := o.Links
	if links == nil {
		nl, err := NewNetlinkLinks(netns.None())
		if err != nil {
			return nil, err
		}
		links = nl
	}

	kind, err := probe(ctx, o, links, log)
	if err != nil {
		return nil, err
	}

	client := o.Client
	if client == nil {
		if client, err = NewClient(); err != nil {
			return nil, err
		}
	}
	d := &Device{name: o.Name, kind: kind, mtu: o.MTU, client: client, links: links, log: log}
	if err := links.SetMTU(o.Name, o.MTU); err != nil {
		client.Close()
		return nil, err
	}
	if err := links.SetUp(o.Name); err != nil {
		client.Close()
		return nil, err
	}
	if _, err := client.Device(o.Name); err != nil {
		client.Close()
		return nil, fmt.Errorf("read WireGuard device %s after setup (%s): %w", o.Name, kind, err)
	}
	log.Info("WireGuard device ready", "kind", kind, "mtu", o.MTU)
	return d, nil
}

func probe(ctx context.Context, o Options, links LinkOps, log logr.Logger) (Kind, error) {
	existing, err := links.Kind(o.Name)
	if err != nil {
		return "", err
	}
	switch existing {
	case LinkOther:
		return "", fmt.Errorf("interface %s exists and is neither WireGuard nor TUN; delete it or choose another name", o.Name)
	case LinkWireGuard:
		if o.Kind == KindUserspace {
			return "", fmt.Errorf("interface %s is a kernel WireGuard link but userspace was requested; delete it first", o.Name)
		}
		log.Info("Reusing kernel WireGuard interface")
		return KindKernel, nil
	case LinkTUN:
		if o.Kind == KindKernel {
			return "", fmt.Errorf("interface %s is a userspace (TUN) device but kernel was requested; delete it first", o.Name)
		}
		// A TUN lives only as long as its process holds the file
		// descriptor, so a TUN with our name means the device process runs;
		// EnsureUserspaceDevice finds it through its socket.
		if _, err := EnsureUserspaceDevice(ctx, o.Name, o.Userspace, o.Log); err != nil {
			return "", err
		}
		return KindUserspace, nil
	}

	if o.Kind != KindUserspace {
		err := links.AddWireGuard(o.Name, o.MTU)
		if err == nil {
			log.Info("Created kernel WireGuard interface")
			return KindKernel, nil
		}
		if o.Kind == KindKernel || !errors.Is(err, ErrKernelUnsupported) {
			return "", err
		}
		log.Info("Kernel WireGuard unavailable, using userspace wireguard-go", "reason", err.Error())
	}
	if _, err := EnsureUserspaceDevice(ctx, o.Name, o.Userspace, o.Log); err != nil {
		return "", err
	}
	return KindUserspace, nil
}

// Name is the interface name.
func (d *Device) Name() string { return d.name }

// Kind is for logs and metrics only.
func (d *Device) Kind() Kind { return d.kind }

// State reads the device's current WireGuard state (peers, handshakes,
// transfer counters).
func (d *Device) State() (*wgtypes.Device, error) {
	dev, err := d.client.Device(d.name)
	if err != nil {
		return nil, fmt.Errorf("read WireGuard device %s: %w", d.name, err)
	}
	return dev, nil
}

// Apply makes the device match plan: the MTU through LinkOps (only if it
// differs), the rest through Apply. A no-change pass changes nothing.
func (d *Device) Apply(plan TunnelPlan) (Changes, error) {
	if plan.MTU != 0 {
		if err := d.links.SetMTU(d.name, plan.MTU); err != nil {
			return Changes{}, err
		}
	}
	changes, err := Apply(d.client, d.name, plan)
	if err != nil {
		return changes, err
	}
	if !changes.Empty() {
		d.log.Info("Applied WireGuard plan", "added", len(changes.Added), "updated", len(changes.Updated),
			"removed", len(changes.Removed), "deviceChanged", changes.DeviceChanged, "changes", changes.String())
	}
	return changes, nil
}

// SetAddresses makes the interface's addresses exactly addrs.
func (d *Device) SetAddresses(addrs []netip.Prefix) error {
	return d.links.ReplaceAddrs(d.name, addrs)
}

// Close releases the agent's handles. The interface, its keys, peers and
// sessions stay: this is what an agent restart or shutdown does.
func (d *Device) Close() error {
	if err := d.client.Close(); err != nil {
		return fmt.Errorf("close WireGuard client: %w", err)
	}
	return nil
}

// Teardown deletes the WireGuard interface name, kernel or userspace: it
// deletes the link (a userspace device process exits when its TUN goes away),
// waits for the device process to exit, signals it by PID if it does not, and
// removes a stale UAPI socket. Nothing of the device is left behind. It is
// for uninstall and tests, never for an agent restart.
func Teardown(ctx context.Context, name string, links LinkOps, log logr.Logger) error {
	if links == nil {
		nl, err := NewNetlinkLinks(netns.None())
		if err != nil {
			return err
		}
		defer nl.Close()
		links = nl
	}
	if err := links.Delete(name); err != nil {
		return fmt.Errorf("teardown %s: %w", name, err)
	}
	if err := stopUserspaceDevice(ctx, name, log.WithValues("device", name)); err != nil {
		return fmt.Errorf("teardown %s: %w", name, err)
	}
	return nil
}
