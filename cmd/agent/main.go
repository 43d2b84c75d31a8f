// Command archipelago-agent is the node agent of a member cluster: it joins
// the cluster to the hub (on the elected gateway), builds the node's data
// path (WireGuard on the active gateway, routes to it on every other node,
// no SNAT between pod ranges) and reports it.
//
// Subcommands:
//
//	run               the agent (default)
//	wireguard-device  the long-lived userspace WireGuard device process
//	cleanup           remove every interface, route, rule and table the agent made
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/archipelago-mesh/archipelago/agent/controlplane"
	"github.com/archipelago-mesh/archipelago/agent/dataplane"
	"github.com/archipelago-mesh/archipelago/agent/liveness"
	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	"github.com/archipelago-mesh/archipelago/agent/plan"
	"github.com/archipelago-mesh/archipelago/agent/routing"
	"github.com/archipelago-mesh/archipelago/agent/wireguard"
)

const (
	defaultInterface = "archipelago0"
	defaultStateDir  = "/var/lib/archipelago"
)

func main() {
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runAgent(args)
	case "wireguard-device":
		err = runDevice(args)
	case "cleanup":
		err = runCleanup(args)
	case "help":
		fmt.Println("Usage: archipelago-agent [run|wireguard-device|cleanup] [flags]; '<subcommand> -h' lists flags.")
	default:
		err = fmt.Errorf("unknown subcommand %q (want run, wireguard-device or cleanup)", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "archipelago-agent:", err)
		os.Exit(1)
	}
}

func newLogger(fs *flag.FlagSet) func() logr.Logger {
	o := zap.Options{}
	o.BindFlags(fs)
	return func() logr.Logger {
		l := zap.New(zap.UseFlagOptions(&o))
		ctrl.SetLogger(l)
		return l
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// requestPath is the file a supervising device container watches.
func requestPath(stateDir, name string) string { return filepath.Join(stateDir, name+".wanted") }

func runAgent(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var (
		nodeName       = fs.String("node-name", os.Getenv("NODE_NAME"), "This node's name (default $NODE_NAME).")
		kubeconfig     = fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "Kubeconfig of the member cluster; empty means in-cluster.")
		namespace      = fs.String("namespace", controlplane.DefaultNamespace, "Namespace of the gateway election Lease.")
		leaseName      = fs.String("lease-name", controlplane.DefaultLeaseName, "Name of the gateway election Lease.")
		leaseDuration  = fs.Duration("lease-duration", 4*time.Second, "How long the active gateway's Lease is valid without renewal (failover time when liveness probes cannot tell).")
		renewDeadline  = fs.Duration("renew-deadline", 3*time.Second, "How long the active gateway retries renewing before it steps down (shorter than --lease-duration).")
		retryPeriod    = fs.Duration("retry-period", time.Second, "How often the active gateway renews its Lease and standbys look at it.")
		grace          = fs.Duration("takeover-grace", 30*time.Second, "How long past its expiry a Lease whose holder still answers liveness probes (its agent restarts, its device forwards) is left alone.")
		probePort      = fs.Int("probe-port", liveness.DefaultPort, "UDP port of the gateway liveness probes between candidates (the responder runs in the WireGuard device process); 0 turns probing off.")
		probeInterval  = fs.Duration("probe-interval", 200*time.Millisecond, "Period of the liveness probes a standby sends to the active gateway's node.")
		probeMisses    = fs.Int("probe-misses", 5, "Probes in a row the active gateway's node may miss before a standby takes over.")
		iface          = fs.String("interface", defaultInterface, "WireGuard interface name (at most 15 bytes); must be unique per UAPI socket directory.")
		stateDir       = fs.String("state-dir", defaultStateDir, "Host directory for the private key (private.key, mode 0600) and device logs.")
		encap          = fs.String("worker-encapsulation", plan.EncapAuto, "How workers reach the active gateway: auto (VXLAN when its InternalIP is not on-link, else routed directly), vxlan or direct.")
		endpoint       = fs.String("public-endpoint", "", "host:port other clusters send tunnel traffic to when this node is the gateway; empty: InternalIP and the ClusterSet's port; \"none\": behind NAT, dial out only.")
		wgKind         = fs.String("wireguard", "auto", "WireGuard implementation: auto (kernel if the module exists, else userspace), kernel or userspace.")
		deviceMode     = fs.String("userspace-device", "detached", "How the userspace device runs: detached (the agent starts 'wireguard-device' in its own session) or supervised (a 'wireguard-device --supervise' process of its own, e.g. the archipelago-device DaemonSet, starts it on request; 'sidecar' is the same).")
		resync         = fs.Duration("resync", 30*time.Second, "Period of full passes and of the data path resync that repairs drift.")
		reportInterval = fs.Duration("report-interval", time.Minute, "Minimum period between rewrites of unchanged reports (Node annotation, Gateway lastSeen): the heartbeat the CLI reads (stale after 5m).")
		metricsAddr    = fs.String("metrics-bind-address", ":9473", "Address of the Prometheus /metrics endpoint; \"0\" turns it off.")
		probeAddr      = fs.String("health-probe-bind-address", ":9474", "Address of /healthz and /readyz; \"0\" turns them off.")
	)
	logger := newLogger(fs)
	fs.Usage = usage(fs, "run", "Runs the node agent.")
	_ = fs.Parse(args)
	log := logger()
	if *nodeName == "" {
		return errors.New("no node name: set NODE_NAME or --node-name")
	}
	kind, err := parseKind(*wgKind)
	if err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("member cluster config: %w", err)
	}
	cfg.UserAgent = "archipelago-agent"

	ctx, cancel := signalContext()
	defer cancel()

	switch *encap {
	case plan.EncapAuto, plan.EncapVXLAN, plan.EncapDirect:
	default:
		return fmt.Errorf("--worker-encapsulation=%q: want auto, vxlan or direct", *encap)
	}
	driver, err := newDriver(kind, *deviceMode, *stateDir, *probePort, log)
	if err != nil {
		return err
	}
	dp, closeDP, err := newDataplane(driver, *iface, log)
	if err != nil {
		return err
	}
	defer closeDP()
	go dp.RunResync(ctx, *resync)

	controlplane.RegisterMetrics()
	agent, err := controlplane.New(controlplane.Config{
		NodeName: *nodeName, Member: cfg, Namespace: *namespace, LeaseName: *leaseName,
		MembershipName: controlplane.DefaultMembershipName, LeaseDuration: *leaseDuration, RenewDeadline: *renewDeadline,
		RetryPeriod: *retryPeriod, TakeoverGrace: *grace, ProbePort: *probePort,
		ProbeInterval: *probeInterval, ProbeMisses: *probeMisses,
		TunnelInterface: *iface, PublicEndpoint: *endpoint, Encapsulation: *encap,
		// The node key of an earlier version seeds the shared key, so that
		// an upgrade keeps the identity remotes know.
		Key:      func() (wgtypes.Key, error) { return existingKey(*stateDir) },
		Datapath: dp, Resync: *resync, ReportInterval: *reportInterval, Log: log,
	})
	if err != nil {
		return err
	}
	serve(ctx, *metricsAddr, "/metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}), log)
	if *probeAddr != "0" {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", probe(agent.Healthy))
		mux.HandleFunc("/readyz", probe(agent.Ready))
		serve(ctx, *probeAddr, "/", mux, log)
	}
	return agent.Run(ctx)
}

func usage(fs *flag.FlagSet, name, what string) func() {
	return func() {
		fmt.Fprintf(fs.Output(), "Usage: archipelago-agent %s [flags]\n\n%s\n\nFlags:\n", name, what)
		fs.PrintDefaults()
	}
}

func parseKind(s string) (wireguard.Kind, error) {
	switch s {
	case "auto", "":
		return wireguard.KindAuto, nil
	case "kernel":
		return wireguard.KindKernel, nil
	case "userspace":
		return wireguard.KindUserspace, nil
	}
	return "", fmt.Errorf("--wireguard=%q: want auto, kernel or userspace", s)
}

// existingKey is the node key an earlier version kept in the state
// directory, or the zero key when there is none.
func existingKey(stateDir string) (wgtypes.Key, error) {
	if _, err := os.Stat(filepath.Join(stateDir, wireguard.KeyFileName)); errors.Is(err, fs.ErrNotExist) {
		return wgtypes.Key{}, nil
	}
	return wireguard.LoadOrCreateKey(stateDir)
}

func newDriver(kind wireguard.Kind, mode, stateDir string, probePort int, log logr.Logger) (*dataplane.WireGuardDriver, error) {
	d := &dataplane.WireGuardDriver{Kind: kind, Log: log}
	switch mode {
	case "detached":
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		d.Userspace = func(name string, mtu int) wireguard.UserspaceProcess {
			// The device process answers the liveness probes: it outlives
			// agent restarts, so a restart is not taken for a dead node.
			return wireguard.UserspaceProcess{
				Path:    exe,
				Args:    []string{"wireguard-device", "--name", name, "--mtu", strconv.Itoa(mtu), "--probe-port", strconv.Itoa(probePort)},
				LogPath: filepath.Join(stateDir, name+".log"),
			}
		}
	case "sidecar", "supervised":
		d.Userspace = func(name string, mtu int) wireguard.UserspaceProcess {
			return wireguard.UserspaceProcess{
				StartTimeout: 30 * time.Second,
				Request: func() error {
					if err := os.MkdirAll(stateDir, 0o700); err != nil {
						return err
					}
					return os.WriteFile(requestPath(stateDir, name), []byte(strconv.Itoa(mtu)+"\n"), 0o600)
				},
			}
		}
		d.BeforeTeardown = func(name string) error {
			if err := os.Remove(requestPath(stateDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			return nil
		}
	default:
		return nil, fmt.Errorf("--userspace-device=%q: want detached, supervised or sidecar", mode)
	}
	return d, nil
}

func newDataplane(driver *dataplane.WireGuardDriver, iface string, log logr.Logger) (*dataplane.Dataplane, func(), error) {
	nl, err := routing.New()
	if err != nil {
		return nil, nil, err
	}
	nft, err := netfilter.New()
	if err != nil {
		nl.Close()
		return nil, nil, err
	}
	dp := dataplane.New(dataplane.Options{
		Tunnels: driver, Netlink: nl, Links: nl, Overlay: nl, Filter: nft, Sysctl: routing.ProcSys{},
		TunnelInterface: iface, Log: log.WithName("dataplane"),
	})
	return dp, func() {
		// Handles only: the device, routes and rules stay for the next agent.
		_ = dp.Close()
		nl.Close()
		_ = nft.CloseLasting()
	}, nil
}

func serve(ctx context.Context, addr, path string, h http.Handler, log logr.Logger) {
	if addr == "0" || addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.Handle(path, h)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(err, "HTTP server failed", "addr", addr)
		}
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
}

func probe(check func() error) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		if err := check(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	}
}

func runDevice(args []string) error {
	fs := flag.NewFlagSet("wireguard-device", flag.ExitOnError)
	var (
		name       = fs.String("name", defaultInterface, "Interface name of the device (its UAPI socket is "+wireguard.SocketDir+"/<name>.sock).")
		mtu        = fs.Int("mtu", wireguard.DefaultMTU, "MTU of the TUN interface (the agent sets the ClusterSet's MTU afterwards).")
		supervise  = fs.Bool("supervise", false, "Run as a sidecar: start the device whenever the agent requests it (<state-dir>/<name>.wanted exists), again after it is torn down, until terminated.")
		stateDir   = fs.String("state-dir", defaultStateDir, "Directory shared with the agent (with --supervise).")
		noOffloads = fs.Bool("no-offloads", false, "Create the TUN without GSO/GRO offloads (for comparisons only).")
		probePort  = fs.Int("probe-port", 0, "Answer gateway liveness probes on this UDP port (all addresses) while the process runs; 0: do not.")
	)
	logger := newLogger(fs)
	fs.Usage = usage(fs, "wireguard-device", "Runs a userspace WireGuard (wireguard-go) device until its interface is deleted or the process is terminated.")
	_ = fs.Parse(args)
	log := logger()
	ctx, cancel := signalContext()
	defer cancel()
	if *probePort > 0 {
		go func() {
			if err := liveness.Serve(ctx, net.JoinHostPort("", strconv.Itoa(*probePort)), log); err != nil {
				log.Error(err, "Liveness responder stopped")
			}
		}()
	}
	var opts []wireguard.DeviceOption
	if *noOffloads {
		opts = append(opts, wireguard.WithoutOffloads())
	}
	if !*supervise {
		return wireguard.RunUserspaceDevice(ctx, *name, *mtu, log, opts...)
	}
	for ctx.Err() == nil {
		raw, err := os.ReadFile(requestPath(*stateDir, *name))
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		m := *mtu
		if v, err := strconv.Atoi(string(trimSpace(raw))); err == nil && v > 0 {
			m = v
		}
		if err := wireguard.RunUserspaceDevice(ctx, *name, m, log, opts...); err != nil {
			log.Error(err, "Device stopped")
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func runCleanup(args []string) error {
	fs := flag.NewFlagSet("cleanup", flag.ExitOnError)
	var (
		iface    = fs.String("interface", defaultInterface, "WireGuard interface to delete.")
		stateDir = fs.String("state-dir", defaultStateDir, "State directory (a pending sidecar device request is withdrawn). The private key is kept; delete it by hand to retire the node's identity.")
	)
	logger := newLogger(fs)
	fs.Usage = usage(fs, "cleanup", "Removes every interface, route, rule and nftables table the agent made on this node (uninstall).")
	_ = fs.Parse(args)
	log := logger()
	ctx, cancel := signalContext()
	defer cancel()
	driver, err := newDriver(wireguard.KindAuto, "supervised", *stateDir, 0, log)
	if err != nil {
		return err
	}
	dp, closeDP, err := newDataplane(driver, *iface, log)
	if err != nil {
		return err
	}
	defer closeDP()
	if err := dp.Cleanup(ctx); err != nil {
		return err
	}
	log.Info("Removed the agent's interface, routes, rules and nftables table", "interface", *iface)
	return nil
}
