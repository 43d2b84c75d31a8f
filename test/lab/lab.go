package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/netns"
)

// Addresses of the lab. Nothing outside these ranges is ever used.
const (
	// WANPrefix is the shared segment the gateways (and the hub) sit on.
	WANPrefix = "198.18.0.0/24"
	// HubIP is the hub apiserver's address on the WAN.
	HubIP = "198.18.0.2"
	// WANPrefix6 is the WAN's IPv6 prefix (tunnel endpoints of an IPv6 lab).
	WANPrefix6 = "fd18::/64"
	// Pool is the ClusterSet's IPv4 pod address pool.
	Pool = "10.96.0.0/12"
	// Pool6 is the ClusterSet's IPv6 pod address pool.
	Pool6 = "fd96::/48"
	// ClusterSetName is the lab's ClusterSet.
	ClusterSetName = "lab"
	// HubContext is the hub's context in the lab kubeconfig.
	HubContext = "hub"
	// TunnelPort is the ClusterSet's WireGuard port.
	TunnelPort = 51820
)

// IP families of a lab (Config.IPFamily).
const (
	// IPv4 (the default): IPv4 pod ranges, nodes and tunnel endpoints.
	IPv4 = "ipv4"
	// IPv6: IPv6 pod ranges, Node InternalIPs and tunnel endpoints (the
	// apiservers stay on IPv4).
	IPv6 = "ipv6"
	// Dual: pods and nodes of both families; tunnel endpoints on IPv4.
	Dual = "dual"
)

// MemberNames are the names members get, in order.
var MemberNames = []string{"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "oscar"}

// Config describes a lab.
type Config struct {
	// Members is how many members Up joins (default 3).
	Members int
	// Candidates is the number of gateway candidates of each member, by
	// member index; missing entries mean 1.
	Candidates []int
	// WANMTU is the MTU of each member's WAN links (its gateways' and its
	// NAT's), by member index; missing entries and 0 mean 1500.
	WANMTU []int
	// Workers is the number of worker nodes per member (default 1).
	Workers int
	// RoutedWorkers is the number of extra workers of each member, by
	// member index, on a subnet of their own behind a router namespace (no
	// shared L2 with the gateway); missing entries mean 0.
	RoutedWorkers []int
	// IPFamily is IPv4 (default), IPv6 or Dual.
	IPFamily string
	// PodsPerNode is the number of pods on every node (default 1).
	PodsPerNode int
	// NATMember is the index of the member whose gateways sit behind a
	// NAT; -1 for none. Default: the last of the initial members.
	NATMember *int
	// QuarantineSeconds of the lab's ClusterSet (default 15).
	QuarantineSeconds int32
	// LeaseDuration of the agents' gateway election (default 4s).
	LeaseDuration time.Duration
	// PeerDrainTimeout of the hub (default 20s).
	PeerDrainTimeout time.Duration
	// Root is the repository (default: found from the working directory).
	Root string
	// BinDir holds archipelago-hub, archipelago-agent, kubectl-archipelago
	// (default Root/bin); K8sDir holds kube-apiserver, etcd, kubectl
	// (default BinDir/k8s).
	BinDir, K8sDir string
	// Keep leaves the work directory (logs, kubeconfig) after Close.
	Keep bool
	// Progress receives one line per step (nil: silent).
	Progress io.Writer
}

// Lab is a running archipelago.
type Lab struct {
	Config
	// Dir is the lab's work directory (logs, kubeconfig, state dirs).
	Dir string
	// Kubeconfig has a context per cluster ("hub" and each member's name);
	// its servers are proxies on 127.0.0.1 that live as long as the lab.
	Kubeconfig string
	Hub        *Cluster
	HubCtl     *Proc

	reg     registry
	mu      sync.Mutex
	members []*Member
	closers []func()
	hubArgs []string
	wanNS   string
	used    map[int]bool
}

// FindRoot returns the repository root above the working directory.
func FindRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/archipelago-mesh/archipelago\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run the lab inside the archipelago repository (go.mod not found)")
		}
		dir = parent
	}
}

// Missing returns a reason the lab cannot run here, or "".
func Missing(cfg Config) string {
	if os.Geteuid() != 0 {
		return "the lab needs root (network namespaces, nftables, TUN)"
	}
	cfg.defaults()
	for _, tool := range []string{"ip", "nft", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s is not installed (run hack/install-packages.sh)", tool)
		}
	}
	for _, b := range []string{"archipelago-hub", "archipelago-agent", "kubectl-archipelago"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return fmt.Sprintf("no %s in %s (run 'make lab-binaries')", b, cfg.BinDir)
		}
	}
	for _, b := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(cfg.K8sDir, b)); err != nil {
			return fmt.Sprintf("no %s in %s (run 'make test-binaries')", b, cfg.K8sDir)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return "no /dev/net/tun"
	}
	return ""
}

func (c *Config) defaults() {
	if c.Members == 0 {
		c.Members = 3
	}
	if c.Workers == 0 {
		c.Workers = 1
	}
	if c.IPFamily == "" {
		c.IPFamily = IPv4
	}
	if c.PodsPerNode == 0 {
		c.PodsPerNode = 1
	}
	if c.NATMember == nil {
		c.NATMember = ptr.To(c.Members - 1)
	}
	if c.QuarantineSeconds == 0 {
		c.QuarantineSeconds = 15
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = 4 * time.Second
	}
	if c.PeerDrainTimeout == 0 {
		c.PeerDrainTimeout = 20 * time.Second
	}
	if c.Root == "" {
		c.Root, _ = FindRoot()
	}
	if c.BinDir == "" {
		c.BinDir = filepath.Join(c.Root, "bin")
	}
	if c.K8sDir == "" {
		c.K8sDir = filepath.Join(c.BinDir, "k8s")
	}
}

func (l *Lab) progress(format string, args ...any) {
	if l.Progress != nil {
		fmt.Fprintf(l.Progress, "==> "+format+"\n", args...)
	}
}

// LogDir is where every process of the lab logs.
func (l *Lab) LogDir() string { return filepath.Join(l.Dir, "logs") }

func (l *Lab) bin(name string) string { return filepath.Join(l.BinDir, name) }

func (l *Lab) addCloser(f func()) {
	l.mu.Lock()
	l.closers = append(l.closers, f)
	l.mu.Unlock()
}

// Up builds the lab: WAN, hub, and cfg.Members members joined and with
// their agents running. On error everything made so far is removed.
func Up(ctx context.Context, cfg Config) (l *Lab, err error) {
	cfg.defaults()
	if why := Missing(cfg); why != "" {
		return nil, errors.New(why)
	}
	if cfg.IPFamily != IPv4 && cfg.IPFamily != IPv6 && cfg.IPFamily != Dual {
		return nil, fmt.Errorf("IP family %q: want %s, %s or %s", cfg.IPFamily, IPv4, IPv6, Dual)
	}
	// The lab's own clients log nothing (controller-runtime would warn
	// with a stack trace that no logger is set).
	crlog.SetLogger(logr.Discard())
	// Descriptors this process inherited (a caller's flock on a lock
	// file) are not passed on to what the lab starts: a device process
	// left behind by a crash must not hold the caller's lock.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return nil, fmt.Errorf("mark inherited descriptors close-on-exec: %w", err)
	}
	l = &Lab{Config: cfg, used: map[int]bool{}}
	l.Dir, err = os.MkdirTemp("", "archipelago-lab-")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(l.LogDir(), 0o700); err != nil {
		return nil, err
	}
	if err := l.reg.acquire(l.Dir, l.bin("archipelago-agent")); err != nil {
		_ = os.RemoveAll(l.Dir)
		return nil, err
	}
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	l.Kubeconfig = filepath.Join(l.Dir, "kubeconfig")
	start := time.Now()

	l.progress("WAN segment %s (namespace %swan)", WANPrefix, NSPrefix)
	l.wanNS = NSPrefix + "wan"
	if err := addBridgeNS(l.wanNS); err != nil {
		return l, err
	}
	if err := l.startHub(ctx); err != nil {
		return l, err
	}
	l.progress("Hub ready at %s (%.1fs)", l.Hub.InternalURL(), time.Since(start).Seconds())

	// Members come up in parallel: their apiservers take a few seconds
	// each, mostly waiting.
	errs := make(chan error, cfg.Members)
	for i := 0; i < cfg.Members; i++ {
		cand := 1
		if i < len(cfg.Candidates) && cfg.Candidates[i] > 0 {
			cand = cfg.Candidates[i]
		}
		spec := MemberSpec{Name: MemberNames[i], Candidates: cand, Workers: cfg.Workers, NAT: i == *cfg.NATMember}
		if i < len(cfg.WANMTU) {
			spec.WANMTU = cfg.WANMTU[i]
		}
		if i < len(cfg.RoutedWorkers) {
			spec.RoutedWorkers = cfg.RoutedWorkers[i]
		}
		go func() {
			_, err := l.AddMember(ctx, spec)
			errs <- err
		}()
	}
	var all []error
	for i := 0; i < cfg.Members; i++ {
		all = append(all, <-errs)
	}
	if err := errors.Join(all...); err != nil {
		return l, err
	}
	l.progress("Lab up: hub and %d members (%.1fs)", cfg.Members, time.Since(start).Seconds())
	return l, nil
}

func addBridgeNS(ns string) error {
	if err := netns.Add(ns); err != nil {
		return err
	}
	return ipBatch(ns, []string{"link add br0 type bridge", "link set br0 up"})
}

func (l *Lab) startHub(ctx context.Context) error {
	ns := NSPrefix + "hub"
	l.progress("Hub: kube-apiserver + etcd in namespace %s at %s", ns, HubIP)
	if err := netns.Add(ns); err != nil {
		return err
	}
	if err := l.plugIntoBridge(l.wanNS, "hub", ns, "eth0", HubIP+"/24"); err != nil {
		return err
	}
	hub, err := l.startCluster(ctx, HubContext, ns, HubIP)
	if err != nil {
		return err
	}
	l.Hub = hub
	if err := l.writeKubeconfig(); err != nil {
		return err
	}
	if err := l.applyCRDs(ctx, HubContext); err != nil {
		return err
	}
	var pools []meshv1.CIDR
	if l.Has4() {
		pools = append(pools, Pool)
	}
	if l.Has6() {
		pools = append(pools, Pool6)
	}
	cs := &meshv1.ClusterSet{
		ObjectMeta: metav1.ObjectMeta{Name: ClusterSetName},
		Spec: meshv1.ClusterSetSpec{
			PodCIDRPools: pools,
			BlockSize:    meshv1.BlockSize{IPv4: 16, IPv6: 56},
			// No MTU: every gateway derives its own from its WAN.
			Tunnel:            meshv1.TunnelSettings{Port: TunnelPort, PersistentKeepaliveSeconds: ptr.To[int32](25)},
			QuarantineSeconds: ptr.To(l.QuarantineSeconds),
		},
	}
	if err := hub.Client.Create(ctx, cs); err != nil {
		return fmt.Errorf("create ClusterSet: %w", err)
	}
	// The hub controller talks to its apiserver on the namespace's
	// loopback, like a pod on the control-plane node would, as its
	// ServiceAccount under the RBAC and admission policy of config/.
	token, err := l.applyHubIdentity(ctx)
	if err != nil {
		return err
	}
	kc := filepath.Join(hub.dir, "hub.kubeconfig")
	if err := writeClientKubeconfig(kc, "https://127.0.0.1:6443", hub.pki.CAPEM, nil, nil, token); err != nil {
		return err
	}
	l.hubArgs = []string{l.bin("archipelago-hub"), "--kubeconfig=" + kc, "--leader-elect=false",
		"--metrics-bind-address=0", "--health-probe-bind-address=127.0.0.1:8081",
		"--peer-drain-timeout=" + l.PeerDrainTimeout.String()}
	return l.StartHubController()
}

// StartHubController starts the archipelago-hub process.
func (l *Lab) StartHubController() error {
	p, err := l.reg.start("hub/archipelago-hub", l.Hub.NS, filepath.Join(l.LogDir(), "hub-controller.log"), nil, l.hubArgs...)
	if err != nil {
		return err
	}
	l.HubCtl = p
	return nil
}

// StartProcess starts a process of the lab's own inside namespace ns (it is
// stopped with the lab).
func (l *Lab) StartProcess(name, ns string, argv ...string) (*Proc, error) {
	return l.reg.start(name, ns, filepath.Join(l.LogDir(), strings.ReplaceAll(name, "/", "-")+".log"), nil, argv...)
}

// Bin is the path of one of the project's binaries the lab runs.
func (l *Lab) Bin(name string) string { return l.bin(name) }

// StopHub stops the hub controller and the hub's apiserver (etcd stays).
func (l *Lab) StopHub() {
	l.HubCtl.Stop(5 * time.Second)
	l.Hub.StopAPIServer()
}

// StartHub starts the hub's apiserver and controller again.
func (l *Lab) StartHub(ctx context.Context) error {
	if err := l.Hub.StartAPIServer(ctx, l); err != nil {
		return err
	}
	return l.StartHubController()
}

// Has4 reports whether the lab's pods have IPv4 addresses.
func (c *Config) Has4() bool { return c.IPFamily != IPv6 }

// Has6 reports whether the lab's pods have IPv6 addresses.
func (c *Config) Has6() bool { return c.IPFamily == IPv6 || c.IPFamily == Dual }

// Families are the lab's pod address families, IPv4 first.
func (c *Config) Families() []Family {
	var out []Family
	if c.Has4() {
		out = append(out, Family4)
	}
	if c.Has6() {
		out = append(out, Family6)
	}
	return out
}

// plugIntoBridge connects namespace ns (interface ifname, addresses cidrs)
// to the bridge br0 of namespace brNS through a veth whose bridge end is
// port. IPv6 addresses skip duplicate address detection (usable at once).
func (l *Lab) plugIntoBridge(brNS, port, ns, ifname string, cidrs ...string) error {
	if err := ipBatch(brNS, []string{
		fmt.Sprintf("link add %s type veth peer name %s netns %s", port, ifname, ns),
		fmt.Sprintf("link set %s master br0 up", port),
	}); err != nil {
		return err
	}
	var lines []string
	for _, cidr := range cidrs {
		if cidr == "" {
			continue
		}
		line := fmt.Sprintf("addr add %s dev %s", cidr, ifname)
		if strings.Contains(cidr, ":") {
			line += " nodad"
		}
		lines = append(lines, line)
	}
	return ipBatch(ns, append(lines, fmt.Sprintf("link set %s up", ifname)))
}

func (l *Lab) kubectl(ctx context.Context, context string, args ...string) (string, error) {
	full := append([]string{filepath.Join(l.K8sDir, "kubectl"), "--kubeconfig", l.Kubeconfig, "--context", context}, args...)
	return shCtx(ctx, full...)
}

// CLI runs kubectl-archipelago with the lab kubeconfig and returns its
// combined output and exit code.
func (l *Lab) CLI(ctx context.Context, args ...string) (string, int, error) {
	cmd := exec.CommandContext(ctx, l.bin("kubectl-archipelago"), append([]string{"--kubeconfig", l.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode(), nil
	}
	if err != nil {
		return string(out), -1, err
	}
	return string(out), 0, nil
}

func (l *Lab) applyCRDs(ctx context.Context, context string) error {
	if _, err := l.kubectl(ctx, context, "apply", "--server-side", "-f", filepath.Join(l.Root, "config", "crd", "bases")); err != nil {
		return err
	}
	_, err := l.kubectl(ctx, context, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
	return err
}

// applyHubIdentity applies what `kubectl apply -k config/hub` gives the hub
// (its namespace, ServiceAccount, ClusterRole, Lease Role and admission
// policy) and returns a token of that ServiceAccount.
func (l *Lab) applyHubIdentity(ctx context.Context) (string, error) {
	hubDir := filepath.Join(l.Root, "config", "hub")
	if _, err := l.kubectl(ctx, HubContext, "apply", "-f", filepath.Join(hubDir, "namespace.yaml"), "-f", filepath.Join(hubDir, "serviceaccount.yaml")); err != nil {
		return "", err
	}
	if _, err := l.kubectl(ctx, HubContext, "apply", "-k", filepath.Join(l.Root, "config", "rbac")); err != nil {
		return "", err
	}
	token, err := l.kubectl(ctx, HubContext, "create", "token", "archipelago-hub", "--namespace=archipelago-system", "--duration=48h")
	if err != nil {
		return "", fmt.Errorf("token for the hub's ServiceAccount: %w", err)
	}
	// The token is the last line (kubectl writes warnings before it).
	lines := strings.Split(strings.TrimSpace(token), "\n")
	return lines[len(lines)-1], nil
}

// writeKubeconfig writes the lab kubeconfig: one context per cluster, each
// through its proxy on 127.0.0.1.
func (l *Lab) writeKubeconfig() error {
	l.mu.Lock()
	clusters := []*Cluster{l.Hub}
	for _, m := range l.members {
		if m.Cluster != nil {
			clusters = append(clusters, m.Cluster)
		}
	}
	l.mu.Unlock()
	cfg := clientcmdapi.NewConfig()
	for _, c := range clusters {
		cfg.Clusters[c.Name] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthorityData: c.pki.CAPEM}
		cfg.AuthInfos[c.Name] = &clientcmdapi.AuthInfo{ClientCertificateData: c.pki.AdminCert, ClientKeyData: c.pki.AdminKey}
		cfg.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: c.Name}
	}
	cfg.CurrentContext = HubContext
	tmp := l.Kubeconfig + ".tmp"
	if err := clientcmd.WriteToFile(*cfg, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, l.Kubeconfig)
}

func writeClientKubeconfig(path, server string, ca, cert, key []byte, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos["c"] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key, Token: token}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "c"}
	cfg.CurrentContext = "c"
	return clientcmd.WriteToFile(*cfg, path)
}

// Members returns the members, in the order they were added.
func (l *Lab) Members() []*Member {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append([]*Member(nil), l.members...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// Member returns the member called name, or nil.
func (l *Lab) Member(name string) *Member {
	for _, m := range l.Members() {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// Pods returns every pod of every member.
func (l *Lab) Pods() []*Pod {
	var pods []*Pod
	for _, m := range l.Members() {
		pods = append(pods, m.Pods()...)
	}
	return pods
}

// NextMemberName returns the first member name not used yet in this lab.
func (l *Lab) NextMemberName() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, n := range MemberNames {
		if !l.used[i] {
			return n
		}
	}
	return ""
}

// Close removes everything the lab made: agents, WireGuard devices,
// apiservers, etcds, namespaces, listeners, the work directory.
func (l *Lab) Close() {
	if l == nil {
		return
	}
	l.progress("Tearing the lab down")
	var wg sync.WaitGroup
	for _, m := range l.Members() {
		wg.Add(1)
		go func() { defer wg.Done(); m.teardown(l) }()
	}
	wg.Wait()
	if l.HubCtl != nil {
		l.HubCtl.Stop(5 * time.Second)
	}
	if l.Hub != nil {
		l.Hub.stop()
	}
	l.mu.Lock()
	closers := l.closers
	procs := l.reg.procs
	l.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	for _, p := range procs {
		p.Stop(3 * time.Second)
	}
	removeLeftovers(state{Devices: l.reg.st.Devices, AgentBin: l.bin("archipelago-agent")})
	if !l.Keep {
		_ = os.RemoveAll(l.Dir)
	} else {
		l.progress("Kept %s (logs, kubeconfig)", l.Dir)
	}
	l.reg.release()
}

// memberIndex allocates the lowest free member index.
func (l *Lab) memberIndex(name string) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, n := range MemberNames {
		if n == name {
			if l.used[i] {
				return 0, fmt.Errorf("member %s exists", name)
			}
			l.used[i] = true
			return i, nil
		}
	}
	return 0, fmt.Errorf("unknown member name %s (the lab names members %s)", name, strings.Join(MemberNames, ", "))
}
