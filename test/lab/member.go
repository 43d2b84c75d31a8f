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
	// RoutedWorkers are extra workers on a subnet of their own behind a
	// router namespace (no shared L2 with the gateway).
	RoutedWorkers int
	// IPFamily of the member's pods ("": the lab's). A member of another
	// family than the lab's joins with "join --ip-family"; in a dual lab
	// an IPv6 member's nodes have only IPv6 InternalIPs and podCIDRs.
	IPFamily string
}

// Member is one member cluster of the lab.
type Member struct {
	Name   string
	Index  int
	NAT    bool
	WANMTU int // 0: 1500
	// Family is the member's pod families: IPv4, IPv6 or Dual.
	Family  string
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

	lanNS, natNS string
	// routedNS is the bridge of the routed subnet, routerNS the router
	// between it and the LAN ("" when the member has no routed workers).
	routedNS, routerNS string
	agentKubeconfig    string
	// gatewayKubeconfig is the gateway candidates' (ServiceAccount archipelago-gateway).
	gatewayKubeconfig string
	mu                sync.Mutex
}

// Node is a node of a member: a namespace on the member's LAN.
type Node struct {
	Name      string // the Node object's name
	NS        string
	LANIP     string
	LANIP6    string // IPv6 and dual labs
	WANIP     string // gateway candidates only
	WANIP6    string // gateway candidates of IPv6 labs
	Candidate bool
	// Routed nodes sit on the routed subnet (172.31.<member>.0/24), a
	// router away from the LAN and its gateways.
	Routed   bool
	Iface    string // WireGuard interface name (unique in the lab)
	StateDir string
	Endpoint string       // --public-endpoint
	PodCIDR  netip.Prefix // the node's first podCIDR (IPv4 unless the lab is IPv6-only)
	PodCIDR6 netip.Prefix // its IPv6 podCIDR in a dual lab
	Pods     []*Pod
	Member   *Member

	agent *Proc
}

// Pod is a pod: a namespace with a veth to its node and an address from
// each of the node's podCIDRs. It runs a TCP echo server (port EchoPort)
// that first writes the source address it saw.
type Pod struct {
	Name string
	NS   string
	// IP is the pod's first address (IPv4 unless the lab is IPv6-only);
	// IPs are all of them, IPv4 first. Probes go to IP: As gives the
	// pod with IP of another family.
	IP   netip.Addr
	IPs  []netip.Addr
	Node *Node
	ln   net.Listener
	udp  net.PacketConn
}

// Addr returns the pod's address of family f (invalid when it has none).
func (p *Pod) Addr(f Family) netip.Addr {
	for _, a := range p.IPs {
		if a.Is4() == (f == Family4) {
			return a
		}
	}
	return netip.Addr{}
}

// As returns the pod seen through its address of family f (IP set to
// it), or nil when the pod has no address of that family. It is the same
// pod: probes, streams and the matrix use IP.
func (p *Pod) As(f Family) *Pod {
	a := p.Addr(f)
	if !a.IsValid() {
		return nil
	}
	q := *p
	q.IP = a
	return &q
}

// Has4 reports whether the member's pods have IPv4 addresses.
func (m *Member) Has4() bool { return m.Family != IPv6 }

// Has6 reports whether the member's pods have IPv6 addresses.
func (m *Member) Has6() bool { return m.Family == IPv6 || m.Family == Dual }

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
	m := &Member{Name: spec.Name, Index: idx, NAT: spec.NAT, WANMTU: spec.WANMTU, Family: spec.IPFamily, lanNS: NSPrefix + spec.Name + "-lan"}
	if m.Family == "" {
		m.Family = l.IPFamily
	}
	if (m.Has6() && !l.Has6()) || (m.Has4() && !l.Has4()) {
		return nil, fmt.Errorf("member %s: family %s needs a lab with that family (the lab is %s)", m.Name, m.Family, l.IPFamily)
	}
	l.mu.Lock()
	l.members = append(l.members, m)
	l.mu.Unlock()
	lan := fmt.Sprintf("172.30.%d.", n)
	l.progress("%s: LAN %s0/24, kube-apiserver + etcd at %s2", m.Name, lan, lan)
	if err := addBridgeNS(m.lanNS); err != nil {
		return m, err
	}
	cpNS := NSPrefix + m.Name + "-cp"
	if err := l.addNS(cpNS); err != nil {
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
		node, err := l.addNode(m, fmt.Sprintf("gw%d", j), 10+j, true, j, false)
		if err != nil {
			return m, err
		}
		m.Nodes = append(m.Nodes, node)
	}
	for k := 1; k <= spec.Workers; k++ {
		node, err := l.addNode(m, fmt.Sprintf("w%d", k), 20+k, false, 0, false)
		if err != nil {
			return m, err
		}
		m.Nodes = append(m.Nodes, node)
	}
	if spec.RoutedWorkers > 0 {
		if err := l.addRouter(m, cpNS); err != nil {
			return m, err
		}
	}
	for k := 1; k <= spec.RoutedWorkers; k++ {
		node, err := l.addNode(m, fmt.Sprintf("r%d", k), 20+k, false, 0, true)
		if err != nil {
			return m, err
		}
		m.Nodes = append(m.Nodes, node)
	}
	for _, node := range m.Nodes {
		if err := ipBatch(node.NS, l.subnetRoutes(node)); err != nil {
			return m, err
		}
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
	var wan6 string
	inside := []string{fmt.Sprintf("addr add 198.19.%d.1/24 dev br0", n)}
	if l.IPFamily == IPv6 {
		wan6 = fmt.Sprintf("fd18::%d/64", 16*n)
		inside = append(inside, fmt.Sprintf("addr add fd19:%d::1/64 dev br0 nodad", n))
	}
	if err := l.plugIntoBridge(l.wanNS, "nat-"+m.Name, m.natNS, "wan0", fmt.Sprintf("198.18.0.%d/24", 16*n), wan6); err != nil {
		return err
	}
	if err := l.setWANMTU(m, "nat-"+m.Name, m.natNS); err != nil {
		return err
	}
	if err := ipBatch(m.natNS, inside); err != nil {
		return err
	}
	if err := l.forwarding(m.natNS); err != nil {
		return err
	}
	return nft(m.natNS, `table inet lab-nat {
	chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade; }
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		iifname "br0" oifname "wan0" accept
	}
}
`)
}

// addNode makes node short of member m at host number host of the LAN
// (or of the routed subnet): a namespace with eth0 on the member's bridge,
// and for a gateway candidate wan0 on the WAN (or behind the NAT).
func (l *Lab) addNode(m *Member, short string, host int, candidate bool, j int, routed bool) (*Node, error) {
	n := m.Index + 1
	node := &Node{
		Name: m.Name + "-" + short, NS: NSPrefix + m.Name + "-" + short, Candidate: candidate, Routed: routed,
		Iface: NSPrefix + m.Name + "-" + short, Member: m,
		StateDir: filepath.Join(l.Dir, m.Name, "nodes", short),
	}
	subnet, bridge := 30, m.lanNS
	if routed {
		subnet, bridge = 31, m.routedNS
	}
	node.LANIP = fmt.Sprintf("172.%d.%d.%d", subnet, n, host)
	cidrs := []string{node.LANIP + "/24"}
	if l.Has6() {
		node.LANIP6 = fmt.Sprintf("fd%d:%d::%d", subnet, n, host)
		cidrs = append(cidrs, node.LANIP6+"/64")
	}
	if err := os.MkdirAll(node.StateDir, 0o700); err != nil {
		return nil, err
	}
	if err := l.addNS(node.NS); err != nil {
		return nil, err
	}
	if err := l.plugIntoBridge(bridge, short, node.NS, "eth0", cidrs...); err != nil {
		return nil, err
	}
	if err := l.forwarding(node.NS); err != nil {
		return nil, err
	}
	if !candidate {
		return node, nil
	}
	l.reg.addDevice(device{NS: node.NS, Iface: node.Iface, StateDir: node.StateDir})
	if m.NAT {
		node.WANIP = fmt.Sprintf("198.19.%d.%d", n, 10+j)
		node.Endpoint = "none"
		var wan6 string
		if l.IPFamily == IPv6 {
			node.WANIP6 = fmt.Sprintf("fd19:%d::%d", n, 10+j)
			wan6 = node.WANIP6 + "/64"
		}
		if err := l.plugIntoBridge(m.natNS, short, node.NS, "wan0", node.WANIP+"/24", wan6); err != nil {
			return nil, err
		}
		// Only the lab's WAN is reachable through the NAT: no default route.
		return node, ipBatch(node.NS, l.natRoutes(node))
	}
	node.WANIP = fmt.Sprintf("198.18.0.%d", 16*n+j)
	node.Endpoint = fmt.Sprintf("%s:%d", node.WANIP, TunnelPort)
	var wan6 string
	if l.IPFamily == IPv6 {
		node.WANIP6 = fmt.Sprintf("fd18::%d", 16*n+j)
		node.Endpoint = fmt.Sprintf("[%s]:%d", node.WANIP6, TunnelPort)
		wan6 = node.WANIP6 + "/64"
	}
	if err := l.plugIntoBridge(l.wanNS, m.Name+"-"+short, node.NS, "wan0", node.WANIP+"/24", wan6); err != nil {
		return nil, err
	}
	return node, l.setWANMTU(m, m.Name+"-"+short, node.NS)
}

// natRoutes are a NATed gateway's routes to the WAN through its NAT.
func (l *Lab) natRoutes(node *Node) []string {
	n := node.Member.Index + 1
	lines := []string{fmt.Sprintf("route replace %s via 198.19.%d.1", WANPrefix, n)}
	if node.WANIP6 != "" {
		lines = append(lines, fmt.Sprintf("route replace %s via fd19:%d::1", WANPrefix6, n))
	}
	return lines
}

// addNS makes a namespace. In a lab with IPv6, its interfaces skip
// duplicate address detection (addresses are usable at once; the lab's are
// unique by construction) and keep their IPv6 addresses while down, as
// IPv4 ones are kept: a node that lost power comes back with its
// addresses, as a real one does from its configuration.
func (l *Lab) addNS(ns string) error {
	if err := netns.Add(ns); err != nil {
		return err
	}
	if !l.Has6() {
		return nil
	}
	for _, key := range []string{"accept_dad", "keep_addr_on_down"} {
		value := "0"
		if key == "keep_addr_on_down" {
			value = "1"
		}
		for _, scope := range []string{"all", "default"} {
			if err := sysctl(ns, "net.ipv6.conf."+scope+"."+key, value); err != nil {
				return err
			}
		}
	}
	return nil
}

// forwarding turns on IP forwarding in ns (IPv6 too when the lab has it).
func (l *Lab) forwarding(ns string) error {
	if err := sysctl(ns, "net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	if l.Has6() {
		return sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
	}
	return nil
}

// addRouter makes the routed subnet of m (bridge 172.31.<n>.0/24) and the
// router between it and the LAN (172.30.<n>.254 and 172.31.<n>.1; with
// IPv6 fd30:<n>::fe and fd31:<n>::1), like a cloud's VPC router between
// two zones' subnets. Pod ranges get routes in its table when they exist
// (wireCNI): the cloud's route table.
func (l *Lab) addRouter(m *Member, cpNS string) error {
	n := m.Index + 1
	m.routedNS, m.routerNS = NSPrefix+m.Name+"-lan2", NSPrefix+m.Name+"-rt"
	l.progress("%s: routed subnet 172.31.%d.0/24 behind router %s", m.Name, n, m.routerNS)
	if err := addBridgeNS(m.routedNS); err != nil {
		return err
	}
	if err := l.addNS(m.routerNS); err != nil {
		return err
	}
	lan4, lan6 := routerHop(m, false)
	routed4, routed6 := routerHop(m, true)
	lan, routed := []string{lan4 + "/24"}, []string{routed4 + "/24"}
	if l.Has6() {
		lan, routed = append(lan, lan6+"/64"), append(routed, routed6+"/64")
	}
	if err := l.plugIntoBridge(m.lanNS, "rt", m.routerNS, "eth0", lan...); err != nil {
		return err
	}
	if err := l.plugIntoBridge(m.routedNS, "rt", m.routerNS, "eth1", routed...); err != nil {
		return err
	}
	if err := l.forwarding(m.routerNS); err != nil {
		return err
	}
	// The control plane answers the routed workers' agents.
	return ipBatch(cpNS, []string{fmt.Sprintf("route replace 172.31.%d.0/24 via %s", n, lan4)})
}

// routerHop is the router's address on the LAN (routed false) or on the
// routed subnet of member m, IPv4 and IPv6.
func routerHop(m *Member, routed bool) (v4, v6 string) {
	n := m.Index + 1
	if routed {
		return fmt.Sprintf("172.31.%d.1", n), fmt.Sprintf("fd31:%d::1", n)
	}
	return fmt.Sprintf("172.30.%d.254", n), fmt.Sprintf("fd30:%d::fe", n)
}

// subnetRoutes are a node's routes to the other subnet of its member
// through the router (none without routed workers).
func (l *Lab) subnetRoutes(node *Node) []string {
	m := node.Member
	if m.routerNS == "" {
		return nil
	}
	n := m.Index + 1
	via, via6 := routerHop(m, node.Routed)
	dst, dst6 := fmt.Sprintf("172.31.%d.0/24", n), fmt.Sprintf("fd31:%d::/64", n)
	if node.Routed {
		dst, dst6 = fmt.Sprintf("172.30.%d.0/24", n), fmt.Sprintf("fd30:%d::/64", n)
	}
	lines := []string{fmt.Sprintf("route replace %s via %s dev eth0", dst, via)}
	if node.LANIP6 != "" {
		lines = append(lines, fmt.Sprintf("route replace %s via %s dev eth0", dst6, via6))
	}
	return lines
}

// podRoutes are what the CNI routes on node: every other node's podCIDRs
// via that node, or via the router when it is on the other subnet.
func (l *Lab) podRoutes(node *Node) []string {
	var lines []string
	for _, other := range node.Member.Nodes {
		if other == node || !other.PodCIDR.IsValid() {
			continue
		}
		via4, via6 := other.LANIP, other.LANIP6
		if other.Routed != node.Routed {
			via4, via6 = routerHop(node.Member, node.Routed)
		}
		for _, pc := range []netip.Prefix{other.PodCIDR, other.PodCIDR6} {
			if !pc.IsValid() {
				continue
			}
			via := via4
			if pc.Addr().Is6() {
				via = via6
			}
			lines = append(lines, fmt.Sprintf("route replace %s via %s dev eth0", pc, via))
		}
	}
	return lines
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
	args := []string{"join", m.Name, "--clusterset", ClusterSetName, "--hub-context", HubContext,
		"--context", m.Name, "--hub-server", l.Hub.InternalURL(), "--timeout", "60s"}
	if m.Family != l.IPFamily {
		args = append(args, "--ip-family", m.Family)
	}
	out, code, err := l.CLI(ctx, args...)
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
	var rng4, rng6 netip.Prefix
	for _, s := range m.PodCIDRs {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			rng4 = p
		} else if err == nil {
			rng6 = p
		}
	}
	if m.Has4() && (!rng4.IsValid() || rng4.Bits() > 22) {
		return fmt.Errorf("member %s: no usable IPv4 range assigned (%v)", m.Name, m.PodCIDRs)
	}
	if m.Has6() && (!rng6.IsValid() || rng6.Bits() > 60) {
		return fmt.Errorf("member %s: no usable IPv6 range assigned (%v)", m.Name, m.PodCIDRs)
	}
	// Node IPAM stand-in: node i gets the i-th /24 of the member's IPv4
	// range and the i-th /64 of its IPv6 range; pod k of a node gets host
	// 10+k of each.
	for i, node := range m.Nodes {
		var cidrs []netip.Prefix
		if rng4.IsValid() && m.Has4() {
			a := rng4.Addr().As4()
			a[2] += byte(i)
			cidrs = append(cidrs, netip.PrefixFrom(netip.AddrFrom4(a), 24))
		}
		if rng6.IsValid() && m.Has6() {
			a := rng6.Addr().As16()
			a[7] += byte(i)
			cidrs = append(cidrs, netip.PrefixFrom(netip.AddrFrom16(a), 64))
		}
		node.PodCIDR = cidrs[0]
		if len(cidrs) > 1 {
			node.PodCIDR6 = cidrs[1]
		}
		for k, p := range node.Pods {
			p.IPs = nil
			for _, c := range cidrs {
				if c.Addr().Is4() {
					a := c.Addr().As4()
					a[3] = byte(10 + k)
					p.IPs = append(p.IPs, netip.AddrFrom4(a))
				} else {
					a := c.Addr().As16()
					a[15] = byte(10 + k)
					p.IPs = append(p.IPs, netip.AddrFrom16(a))
				}
			}
			p.IP = p.IPs[0]
		}
	}
	if err := l.createNodes(ctx, m); err != nil {
		return err
	}
	if err := l.wireCNI(m, rng4, rng6); err != nil {
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
		cidrs := []string{n.PodCIDR.String()}
		if n.PodCIDR6.IsValid() {
			cidrs = append(cidrs, n.PodCIDR6.String())
		}
		obj := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels},
			Spec:       corev1.NodeSpec{PodCIDR: cidrs[0], PodCIDRs: cidrs},
		}
		if err := m.Cluster.Client.Create(ctx, obj); err != nil {
			return fmt.Errorf("create Node %s: %w", n.Name, err)
		}
		// InternalIPs of the families the lab's data path uses: an IPv6
		// lab's nodes have only the IPv6 one (their IPv4 LAN address
		// carries only the control plane).
		var addrs []corev1.NodeAddress
		if m.Has4() {
			addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: n.LANIP})
		}
		if n.LANIP6 != "" && m.Has6() {
			addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: n.LANIP6})
		}
		obj.Status = corev1.NodeStatus{
			Addresses: append(addrs, corev1.NodeAddress{Type: corev1.NodeHostName, Address: n.Name}),
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
		}
		if err := m.Cluster.Client.Status().Update(ctx, obj); err != nil {
			return fmt.Errorf("update Node %s status: %w", n.Name, err)
		}
	}
	return nil
}

// wireCNI does what a simple ptp CNI plus kindnet do: a veth per pod with
// a /32 (and /128) and host routes, routes to the other nodes' podCIDRs
// via their LAN addresses (via the router for the other subnet, whose
// table gets every podCIDR: a cloud's route table), and masquerade of pod
// traffic leaving the cluster's range.
func (l *Lab) wireCNI(m *Member, rng4, rng6 netip.Prefix) error {
	var router []string
	for _, node := range m.Nodes {
		for _, pc := range []netip.Prefix{node.PodCIDR, node.PodCIDR6} {
			if !pc.IsValid() {
				continue
			}
			via := node.LANIP
			if pc.Addr().Is6() {
				via = node.LANIP6
			}
			dev := "eth0"
			if node.Routed {
				dev = "eth1"
			}
			router = append(router, fmt.Sprintf("route replace %s via %s dev %s", pc, via, dev))
		}
	}
	if m.routerNS != "" {
		if err := ipBatch(m.routerNS, router); err != nil {
			return err
		}
	}
	for _, node := range m.Nodes {
		lines := l.podRoutes(node)
		for k, p := range node.Pods {
			if err := l.addNS(p.NS); err != nil {
				return err
			}
			veth := fmt.Sprintf("p%d", k+1)
			lines = append(lines,
				fmt.Sprintf("link add %s type veth peer name eth0 netns %s", veth, p.NS),
				fmt.Sprintf("addr add 169.254.1.1/32 dev %s", veth))
			if l.Has6() {
				lines = append(lines, fmt.Sprintf("addr add fe80::1/64 dev %s nodad", veth))
			}
			lines = append(lines, fmt.Sprintf("link set %s up", veth))
			for _, a := range p.IPs {
				lines = append(lines, fmt.Sprintf("route add %s dev %s scope link", netip.PrefixFrom(a, a.BitLen()), veth))
			}
		}
		if err := ipBatch(node.NS, lines); err != nil {
			return err
		}
		for _, p := range node.Pods {
			// Pods route only the ClusterSet's pools to their node: no
			// default route, nothing outside the lab is reachable.
			var pl []string
			for _, a := range p.IPs {
				if a.Is4() {
					pl = append(pl, fmt.Sprintf("addr add %s/32 dev eth0", a))
				} else {
					pl = append(pl, fmt.Sprintf("addr add %s/128 dev eth0 nodad", a))
				}
			}
			pl = append(pl, "link set eth0 up", "route add 169.254.1.1/32 dev eth0 scope link")
			if p.Addr(Family4).IsValid() {
				pl = append(pl, fmt.Sprintf("route add %s via 169.254.1.1 dev eth0 onlink", Pool))
			}
			if p.Addr(Family6).IsValid() {
				pl = append(pl, fmt.Sprintf("route add %s via fe80::1 dev eth0", Pool6))
			}
			if err := ipBatch(p.NS, pl); err != nil {
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
		var rules []string
		if rng4.IsValid() && m.Has4() {
			rules = append(rules, fmt.Sprintf("ip saddr %s ip daddr != %s counter masquerade", rng4, rng4))
		}
		if rng6.IsValid() && m.Has6() {
			rules = append(rules, fmt.Sprintf("ip6 saddr %s ip6 daddr != %s counter masquerade", rng6, rng6))
		}
		if err := nft(node.NS, fmt.Sprintf(`table inet lab-kindnet {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		%s
	}
}
`, strings.Join(rules, "\n\t\t"))); err != nil {
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
	// back the routes to the other subnet, what the CNI made (routes to
	// the other nodes' podCIDRs) and the route to the WAN through the NAT.
	lines = append(l.subnetRoutes(n), l.podRoutes(n)...)
	if n.Member.NAT && n.Candidate {
		lines = append(lines, l.natRoutes(n)...)
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
