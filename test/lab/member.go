package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/netns"
)

// MemberSpec is what AddMember builds.
type MemberSpec struct {
	Name       string
	Candidates int  // gateway candidates (default 1)
	Workers    int  // worker nodes (default 1)
	NAT        bool // gateways behind a NAT namespace
	Pods       int  // pods per node (default: the lab's PodsPerNode)
	WANMTU     int  // MTU of the member's WAN links (default 1500)
}

// Member is one member cluster of the lab.
type Member struct {
	Name    string
	Index   int
	NAT     bool
	WANMTU  int // 0: 1500
	Cluster *Cluster
	// PodCIDRs are the ranges the hub assigned.
	PodCIDRs []string
	Nodes    []*Node
	// JoinStarted is when "kubectl archipelago join" was started (it
	// creates the MemberCluster right after its checks); Joined is when it
	// returned.
	JoinStarted, Joined time.Time
	// JoinOutput is what the join command printed.
	JoinOutput string

	lanNS, natNS    string
	agentKubeconfig string
	// gatewayKubeconfig is the gateway candidates' (ServiceAccount archipelago-gateway).
	gatewayKubeconfig string
	mu                sync.Mutex
}

// Node is a node of a member: a namespace on the member's LAN.
type Node struct {
	Name      string // the Node object's name
	NS        string
	LANIP     string
	WANIP     string // gateway candidates only
	Candidate bool
	Iface     string // WireGuard interface name (unique in the lab)
	StateDir  string
	Endpoint  string // --public-endpoint
	PodCIDR   netip.Prefix
	Pods      []*Pod
	Member    *Member

	agent *Proc
}

// Pod is a pod: a namespace with a veth to its node and an address from
// the node's podCIDR. It runs a TCP echo server (port EchoPort) that first
// writes the source address it saw.
type Pod struct {
	Name string
	NS   string
	IP   netip.Addr
	Node *Node
	ln   net.Listener
	udp  net.PacketConn
}

// Pods returns the member's pods.
func (m *Member) Pods() []*Pod {
	var out []*Pod
	for _, n := range m.Nodes {
		out = append(out, n.Pods...)
	}
	return out
}

// Candidates returns the gateway candidate nodes.
func (m *Member) Candidates() []*Node {
	var out []*Node
	for _, n := range m.Nodes {
		if n.Candidate {
			out = append(out, n)
		}
	}
	return out
}

// Node returns the node whose name ends in short ("gw1", "w1").
func (m *Member) Node(short string) *Node {
	for _, n := range m.Nodes {
		if n.Name == m.Name+"-"+short {
			return n
		}
	}
	return nil
}

// AgentRunning reports whether the node's agent runs.
func (n *Node) AgentRunning() bool { return n.agent != nil && n.agent.Running() }

// AgentLog is the agent's log file.
func (n *Node) AgentLog() string {
	if n.agent == nil {
		return ""
	}
	return n.agent.Log
}

// AddMember builds a member cluster (LAN, apiserver, nodes), joins it with
// "kubectl archipelago join", gives its nodes podCIDRs from the assigned
// range, creates its pods and starts the agents.
func (l *Lab) AddMember(ctx context.Context, spec MemberSpec) (*Member, error) {
	m, err := l.PrepareMember(ctx, spec)
	if err != nil {
		return m, err
	}
	return m, l.JoinMember(ctx, m)
}

// PrepareMember builds what does not depend on the assigned range: the
// LAN, the member's apiserver, the node namespaces and their links.
func (l *Lab) PrepareMember(ctx context.Context, spec MemberSpec) (*Member, error) {
	if spec.Candidates == 0 {
		spec.Candidates = 1
	}
	if spec.Workers == 0 {
		spec.Workers = 1
	}
	if spec.Pods == 0 {
		spec.Pods = l.PodsPerNode
	}
	idx, err := l.memberIndex(spec.Name)
	if err != nil {
		return nil, err
	}
	n := idx + 1
	m := &Member{Name: spec.Name, Index: idx, NAT: spec.NAT, WANMTU: spec.WANMTU, lanNS: NSPrefix + spec.Name + "-lan"}
	l.mu.Lock()
	l.members = append(l.members, m)
	l.mu.Unlock()
	lan := fmt.Sprintf("172.30.%d.", n)
	l.progress("%s: LAN %s0/24, kube-apiserver + etcd at %s2", m.Name, lan, lan)
	if err := addBridgeNS(m.lanNS); err != nil {
		return m, err
	}
	cpNS := NSPrefix + m.Name + "-cp"
	if err := netns.Add(cpNS); err != nil {
		return m, err
	}
	if err := l.plugIntoBridge(m.lanNS, "cp", cpNS, "eth0", lan+"2/24"); err != nil {
		return m, err
	}
	if m.NAT {
		if err := l.addNAT(m); err != nil {
			return m, err
		}
	}
	for j := 1; j <= spec.Candidates; j++ {
		node, err := l.addNode(m, fmt.Sprintf("gw%d", j), fmt.Sprintf("%s%d", lan, 10+j), true, j)
		if err != nil {
			return m, err
		}
		m.Nodes = append(m.Nodes, node)
	}
	for k := 1; k <= spec.Workers; k++ {
		node, err := l.addNode(m, fmt.Sprintf("w%d", k), fmt.Sprintf("%s%d", lan, 20+k), false, 0)
		if err != nil {
			return m, err
		}
		m.Nodes = append(m.Nodes, node)
	}
	for _, node := range m.Nodes {
		for k := 1; k <= spec.Pods; k++ {
			node.Pods = append(node.Pods, &Pod{Name: fmt.Sprintf("%s-p%d", node.Name, k), NS: fmt.Sprintf("%s-p%d", node.NS, k), Node: node})
		}
	}

	c, err := l.startCluster(ctx, m.Name, cpNS, lan+"2")
	if err != nil {
		return m, err
	}
	m.Cluster = c
	if err := l.writeKubeconfig(); err != nil {
		return m, err
	}
	if err := l.applyCRDs(ctx, m.Name); err != nil {
		return m, err
	}
	// The agents authenticate the way the DaemonSets' do: workers with a
	// token of the archipelago-agent ServiceAccount, gateway candidates
	// with one of archipelago-gateway (the only one that may read the hub
	// Secret), with the project's RBAC.
	agentDir := filepath.Join(l.Root, "config", "agent")
	if _, err := l.kubectl(ctx, m.Name, "apply", "-f", filepath.Join(agentDir, "namespace.yaml"),
		"-f", filepath.Join(agentDir, "serviceaccount.yaml"), "-f", filepath.Join(agentDir, "rbac")); err != nil {
		return m, err
	}
	for sa, path := range map[string]*string{"archipelago-agent": &m.agentKubeconfig, "archipelago-gateway": &m.gatewayKubeconfig} {
		token, err := l.kubectl(ctx, m.Name, "create", "token", sa, "-n", "archipelago-system", "--duration=48h")
		if err != nil {
			return m, err
		}
		*path = filepath.Join(c.dir, sa+".kubeconfig")
		if err := writeClientKubeconfig(*path, c.InternalURL(), c.pki.CAPEM, nil, nil, strings.TrimSpace(token)); err != nil {
			return m, err
		}
	}
	return m, nil
}

// addNAT makes the NAT namespace of member m: its "public" side on the WAN,
// an inside bridge for the member's gateway candidates; it masquerades what
// leaves and forwards nothing that starts outside.
func (l *Lab) addNAT(m *Member) error {
	n := m.Index + 1
	m.natNS = NSPrefix + m.Name + "-nat"
	if err := addBridgeNS(m.natNS); err != nil {
		return err
	}
	if err := l.plugIntoBridge(l.wanNS, "nat-"+m.Name, m.natNS, "wan0", fmt.Sprintf("198.18.0.%d/24", 16*n)); err != nil {
		return err
	}
	if err := l.setWANMTU(m, "nat-"+m.Name, m.natNS); err != nil {
		return err
	}
	if err := ipBatch(m.natNS, []string{fmt.Sprintf("addr add 198.19.%d.1/24 dev br0", n)}); err != nil {
		return err
	}
	if err := sysctl(m.natNS, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	return nft(m.natNS, `table ip lab-nat {
	chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade; }
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "br0" oifname "wan0" accept
	}
}
`)
}

func (l *Lab) addNode(m *Member, short, lanIP string, candidate bool, j int) (*Node, error) {
	n := m.Index + 1
	node := &Node{
		Name: m.Name + "-" + short, NS: NSPrefix + m.Name + "-" + short, LANIP: lanIP, Candidate: candidate,
		Iface: NSPrefix + m.Name + "-" + short, Member: m,
		StateDir: filepath.Join(l.Dir, m.Name, "nodes", short),
	}
	if err := os.MkdirAll(node.StateDir, 0o700); err != nil {
		return nil, err
	}
	if err := netns.Add(node.NS); err != nil {
		return nil, err
	}
	if err := l.plugIntoBridge(m.lanNS, short, node.NS, "eth0", lanIP+"/24"); err != nil {
		return nil, err
	}
	if err := sysctl(node.NS, "net.ipv4.ip_forward", "1"); err != nil {
		return nil, err
	}
	if !candidate {
		return node, nil
	}
	l.reg.addDevice(device{NS: node.NS, Iface: node.Iface, StateDir: node.StateDir})
	if m.NAT {
		node.WANIP = fmt.Sprintf("198.19.%d.%d", n, 10+j)
		node.Endpoint = "none"
		if err := l.plugIntoBridge(m.natNS, short, node.NS, "wan0", node.WANIP+"/24"); err != nil {
			return nil, err
		}
		// Only the lab's WAN is reachable through the NAT: no default route.
		return node, ipn(node.NS, "route", "add", WANPrefix, "via", fmt.Sprintf("198.19.%d.1", n))
	}
	node.WANIP = fmt.Sprintf("198.18.0.%d", 16*n+j)
	node.Endpoint = fmt.Sprintf("%s:%d", node.WANIP, TunnelPort)
	if err := l.plugIntoBridge(l.wanNS, m.Name+"-"+short, node.NS, "wan0", node.WANIP+"/24"); err != nil {
		return nil, err
	}
	return node, l.setWANMTU(m, m.Name+"-"+short, node.NS)
}

// setWANMTU gives both ends of a WAN link of m (port on the WAN bridge,
// wan0 in ns) the member's WAN MTU: frames larger than it are dropped on
// the way in and out, as on a real link with a smaller MTU.
func (l *Lab) setWANMTU(m *Member, port, ns string) error {
	if m.WANMTU == 0 {
		return nil
	}
	if err := ipn(l.wanNS, "link", "set", port, "mtu", fmt.Sprint(m.WANMTU)); err != nil {
		return err
	}
	return ipn(ns, "link", "set", "wan0", "mtu", fmt.Sprint(m.WANMTU))
}

// JoinMember joins a prepared member with "kubectl archipelago join", then
// plays kube-controller-manager's node IPAM (podCIDRs for the Nodes, carved
// from the assigned range) and a simple CNI (pods, routes, masquerade), and
// starts the agents.
func (l *Lab) JoinMember(ctx context.Context, m *Member) error {
	l.progress("%s: kubectl archipelago join %s --clusterset %s", m.Name, m.Name, ClusterSetName)
	m.JoinStarted = time.Now()
	out, code, err := l.CLI(ctx, "join", m.Name, "--clusterset", ClusterSetName, "--hub-context", HubContext,
		"--context", m.Name, "--hub-server", l.Hub.InternalURL(), "--timeout", "60s")
	m.JoinOutput = out
	if err != nil || code != 0 {
		return fmt.Errorf("join %s: exit %d %v: %s", m.Name, code, err, out)
	}
	m.Joined = time.Now()
	var mc meshv1.MemberCluster
	if err := l.Hub.Client.Get(ctx, types.NamespacedName{Name: m.Name}, &mc); err != nil {
		return fmt.Errorf("read MemberCluster %s: %w", m.Name, err)
	}
	m.PodCIDRs = mc.Status.PodCIDRs
	var rng netip.Prefix
	for _, s := range m.PodCIDRs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			rng = p
		}
	}
	if !rng.IsValid() || rng.Bits() > 22 {
		return fmt.Errorf("member %s: no usable IPv4 range assigned (%v)", m.Name, m.PodCIDRs)
	}
	// Node IPAM stand-in: node i gets the i-th /24 of the member's range.
	base := rng.Addr().As4()
	for i, node := range m.Nodes {
		a := base
		a[2] += byte(i)
		node.PodCIDR = netip.PrefixFrom(netip.AddrFrom4(a), 24)
		for k, p := range node.Pods {
			pa := a
			pa[3] = byte(10 + k)
			p.IP = netip.AddrFrom4(pa)
		}
	}
	if err := l.createNodes(ctx, m); err != nil {
		return err
	}
	if err := l.wireCNI(m, rng); err != nil {
		return err
	}
	for _, node := range m.Nodes {
		if err := l.StartAgent(node); err != nil {
			return err
		}
	}
	l.progress("%s: joined, range %s, %d nodes, agents started (%.1fs after join)", m.Name, strings.Join(m.PodCIDRs, ","), len(m.Nodes), time.Since(m.JoinStarted).Seconds())
	return nil
}

func (l *Lab) createNodes(ctx context.Context, m *Member) error {
	for _, n := range m.Nodes {
		labels := map[string]string{"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux"}
		if n.Candidate {
			labels[meshv1.LabelGatewayCandidate] = "true"
		}
		obj := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels},
			Spec:       corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
		}
		if err := m.Cluster.Client.Create(ctx, obj); err != nil {
			return fmt.Errorf("create Node %s: %w", n.Name, err)
		}
		obj.Status = corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.LANIP}, {Type: corev1.NodeHostName, Address: n.Name}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
		}
		if err := m.Cluster.Client.Status().Update(ctx, obj); err != nil {
			return fmt.Errorf("update Node %s status: %w", n.Name, err)
		}
	}
	return nil
}

// wireCNI does what a simple ptp CNI plus kindnet do: a veth per pod with a
// /32 and a host route, routes to the other nodes' podCIDRs via their LAN
// addresses, and masquerade of pod traffic leaving the cluster's range.
func (l *Lab) wireCNI(m *Member, rng netip.Prefix) error {
	for _, node := range m.Nodes {
		var lines []string
		for _, other := range m.Nodes {
			if other != node {
				lines = append(lines, fmt.Sprintf("route add %s via %s dev eth0", other.PodCIDR, other.LANIP))
			}
		}
		for k, p := range node.Pods {
			if err := netns.Add(p.NS); err != nil {
				return err
			}
			veth := fmt.Sprintf("p%d", k+1)
			lines = append(lines,
				fmt.Sprintf("link add %s type veth peer name eth0 netns %s", veth, p.NS),
				fmt.Sprintf("addr add 169.254.1.1/32 dev %s", veth),
				fmt.Sprintf("link set %s up", veth),
				fmt.Sprintf("route add %s/32 dev %s scope link", p.IP, veth))
		}
		if err := ipBatch(node.NS, lines); err != nil {
			return err
		}
		for _, p := range node.Pods {
			// Pods route only the ClusterSet's pool to their node: no
			// default route, nothing outside the lab is reachable.
			if err := ipBatch(p.NS, []string{
				fmt.Sprintf("addr add %s/32 dev eth0", p.IP),
				"link set eth0 up",
				"route add 169.254.1.1/32 dev eth0 scope link",
				fmt.Sprintf("route add %s via 169.254.1.1 dev eth0 onlink", Pool),
			}); err != nil {
				return err
			}
			if err := p.serve(); err != nil {
				return err
			}
			if err := p.serveUDP(); err != nil {
				return err
			}
		}
		// kindnet's masquerade: pod traffic to anything outside the
		// cluster's pod range leaves with the node's address unless the
		// agent's no-SNAT rule keeps the source.
		if err := nft(node.NS, fmt.Sprintf(`table ip lab-kindnet {
	chain postrouting { type nat hook postrouting priority srcnat; policy accept; ip saddr %s ip daddr != %s counter masquerade; }
}
`, rng, rng)); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) agentArgs(n *Node) []string {
	kubeconfig := n.Member.agentKubeconfig
	if n.Candidate {
		kubeconfig = n.Member.gatewayKubeconfig
	}
	args := []string{l.bin("archipelago-agent"), "run",
		"--node-name=" + n.Name, "--kubeconfig=" + kubeconfig,
		"--interface=" + n.Iface, "--state-dir=" + n.StateDir,
		"--lease-duration=" + l.LeaseDuration.String(),
		"--renew-deadline=" + (l.LeaseDuration * 3 / 4).String(),
		"--retry-period=" + (l.LeaseDuration / 4).String(),
		"--resync=10s", "--report-interval=5s",
		"--metrics-bind-address=0", "--health-probe-bind-address=0",
	}
	if n.Endpoint != "" {
		args = append(args, "--public-endpoint="+n.Endpoint)
	}
	return args
}

// StartAgent starts the node's agent (inside the node's namespace).
func (l *Lab) StartAgent(n *Node) error {
	if n.AgentRunning() {
		return nil
	}
	p, err := l.reg.start(n.Name+"/agent", n.NS, filepath.Join(l.LogDir(), "agent-"+n.Name+".log"), nil, l.agentArgs(n)...)
	if err != nil {
		return err
	}
	n.agent = p
	return nil
}

// StopAgent stops the node's agent with SIGTERM (the device stays).
func (l *Lab) StopAgent(n *Node) {
	if n.agent != nil {
		n.agent.Stop(10 * time.Second)
	}
}

// KillAgent kills the node's agent with SIGKILL.
func (l *Lab) KillAgent(n *Node) {
	if n.agent != nil {
		n.agent.Kill()
	}
}

// RemoveTunnel runs "archipelago-agent cleanup" on the node: its WireGuard
// device (and device process), routes, rules and nftables table go away.
func (l *Lab) RemoveTunnel(n *Node) error {
	_, err := nsRun(n.NS, l.bin("archipelago-agent"), "cleanup", "--interface", n.Iface, "--state-dir", n.StateDir)
	return err
}

// SetLinks sets every link of the node's namespace (but lo) up or down.
func (l *Lab) SetLinks(n *Node, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	var lines []string
	for _, ifc := range []string{"eth0", "wan0"} {
		if n.Candidate || ifc == "eth0" {
			lines = append(lines, "link set "+ifc+" "+state)
		}
	}
	if err := ipBatch(n.NS, lines); err != nil {
		return err
	}
	if !up {
		return nil
	}
	// The kernel flushed the routes via the links when they went down: put
	// back what the CNI made (routes to the other nodes' podCIDRs) and the
	// route to the WAN through the NAT.
	lines = nil
	for _, other := range n.Member.Nodes {
		if other != n && other.PodCIDR.IsValid() {
			lines = append(lines, fmt.Sprintf("route replace %s via %s dev eth0", other.PodCIDR, other.LANIP))
		}
	}
	if n.Member.NAT && n.Candidate {
		lines = append(lines, fmt.Sprintf("route replace %s via 198.19.%d.1", WANPrefix, n.Member.Index+1))
	}
	return ipBatch(n.NS, lines)
}

// ActiveGateway returns the member's active gateway: the holder of its
// gateway Lease (nil when none).
func (l *Lab) ActiveGateway(ctx context.Context, m *Member) (*Node, error) {
	holder, err := l.LeaseHolder(ctx, m)
	if err != nil {
		return nil, err
	}
	for _, n := range m.Nodes {
		if n.Name == holder {
			return n, nil
		}
	}
	return nil, nil
}

// PowerOff is a node losing power: its links go down first (nothing leaves
// it any more), then its agent and its WireGuard device process die.
func (l *Lab) PowerOff(n *Node) error {
	if err := l.SetLinks(n, false); err != nil {
		return err
	}
	l.KillAgent(n)
	if n.Candidate {
		return l.RemoveTunnel(n)
	}
	return nil
}

// PowerOn brings a node back: links up, agent started.
func (l *Lab) PowerOn(n *Node) error {
	if err := l.SetLinks(n, true); err != nil {
		return err
	}
	return l.StartAgent(n)
}

// RemoveMember makes the member leave with "kubectl archipelago leave"
// (hub and member side) and then removes it from the lab.
func (l *Lab) RemoveMember(ctx context.Context, m *Member) (string, error) {
	out, code, err := l.CLI(ctx, "leave", m.Name, "--hub-context", HubContext, "--context", m.Name, "--timeout", "2m")
	if err != nil || code != 0 {
		return out, fmt.Errorf("leave %s: exit %d %v: %s", m.Name, code, err, out)
	}
	m.teardown(l)
	l.mu.Lock()
	for i, x := range l.members {
		if x == m {
			l.members = append(l.members[:i], l.members[i+1:]...)
			break
		}
	}
	l.mu.Unlock()
	return out, l.writeKubeconfig()
}

// teardown stops the member's agents, removes its WireGuard devices, stops
// its apiserver and etcd and deletes its namespaces.
func (m *Member) teardown(l *Lab) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range m.Nodes {
		if n.agent != nil {
			n.agent.Stop(5 * time.Second)
		}
	}
	for _, n := range m.Nodes {
		if n.Candidate {
			removeDevice(device{NS: n.NS, Iface: n.Iface, StateDir: n.StateDir}, l.bin("archipelago-agent"))
		}
		for _, p := range n.Pods {
			if p.ln != nil {
				_ = p.ln.Close()
			}
			if p.udp != nil {
				_ = p.udp.Close()
			}
		}
	}
	if m.Cluster != nil {
		m.Cluster.stop()
	}
	for _, ns := range netns.List() {
		if strings.HasPrefix(ns, NSPrefix+m.Name+"-") {
			_ = netns.Delete(ns)
		}
	}
	// The WAN ports of the member's gateways (and NAT) vanish with their
	// peers' namespaces.
}
