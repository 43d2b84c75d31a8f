package agent_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/agent/controlplane"
	dpfake "github.com/archipelago-mesh/archipelago/agent/dataplane/fake"
	"github.com/archipelago-mesh/archipelago/agent/routing"
	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/internal/hubtoken"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

var (
	hub, member *framework.APIServer
	// skipReason is set when the apiservers cannot run here; every test
	// then skips with it (go test reports the skips, never a silent pass).
	skipReason string
)

// needAPIServers skips t when TestMain could not start the apiservers.
func needAPIServers(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if _, why := framework.AssetsDir(); why != "" {
		skipReason = "agent integration tests need envtest binaries: " + why
		return m.Run()
	}
	for _, p := range []**framework.APIServer{&hub, &member} {
		s, why, err := framework.StartAPIServer()
		if err != nil || s == nil {
			fmt.Fprintln(os.Stderr, "start apiserver:", err, why)
			return 1
		}
		defer s.Stop()
		*p = s
	}
	return m.Run()
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	last := ""
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 45*time.Second, true, func(context.Context) (bool, error) {
		ok, msg := cond()
		last = msg
		return ok, nil
	})
	if err != nil {
		t.Fatalf("%s: %v; last: %s", what, err, last)
	}
}

func node(name string, ip string, podCIDR string, candidate bool) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}},
		Spec: corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}}}
	if candidate {
		n.Labels[meshv1.LabelGatewayCandidate] = ""
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	return n
}

func createNode(t *testing.T, c client.Client, n *corev1.Node) {
	t.Helper()
	ctx := context.Background()
	st := n.Status
	if err := c.Create(ctx, n); err != nil {
		t.Fatal(err)
	}
	n.Status = st
	if err := c.Status().Update(ctx, n); err != nil {
		t.Fatal(err)
	}
}

// runningAgent is one node's agent on a fake kernel.
type runningAgent struct {
	kernel *dpfake.Kernel
	agent  *controlplane.Agent
	keyDir string
	stop   func()
}

// hubUnreachable makes every hub connection an agent sets up from now on
// point at a closed port (the hub is "down" for agents that connect anew).
var hubUnreachable atomic.Bool

// startAgentOn starts an agent of the shared member on a fake kernel (an
// existing one for a restart).
func startAgentOn(t *testing.T, nodeName string, kernel *dpfake.Kernel, keyDir string) *runningAgent {
	t.Helper()
	return startAgentIn(t, member.Config, nodeName, kernel, keyDir)
}

// startAgentIn starts an agent of the member cluster memberCfg.
func startAgentIn(t *testing.T, memberCfg *rest.Config, nodeName string, kernel *dpfake.Kernel, keyDir string, opts ...func(*controlplane.Config)) *runningAgent {
	t.Helper()
	ra := &runningAgent{kernel: kernel, keyDir: keyDir}
	dp := ra.kernel.Dataplane("arch0", testr.New(t))
	cfg := controlplane.Config{
		NodeName: nodeName, Member: memberCfg, TunnelInterface: "arch0",
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond,
		Key:      func() (wgtypes.Key, error) { return wireguard.LoadOrCreateKey(ra.keyDir) },
		Datapath: dp, Resync: time.Second, ReportInterval: 5 * time.Second,
		// Renew after 5 % of the token's lifetime (30 s of the 10 minutes
		// below) instead of 75 %, so that the test sees renewals.
		TokenRenewFraction: 0.05,
		HubConfig: func(m *meshv1.ClusterSetMembership, s *corev1.Secret) (*rest.Config, error) {
			c, err := controlplane.DefaultHubConfig(m, s)
			if err == nil && hubUnreachable.Load() {
				c.Host = "https://127.0.0.1:1"
			}
			return c, err
		},
		Log: testr.NewWithOptions(t, testr.Options{Verbosity: 0}).WithValues("agent", nodeName),
	}
	for _, o := range opts {
		o(&cfg)
	}
	a, err := controlplane.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ra.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			t.Errorf("agent %s: %v", nodeName, err)
		}
	}()
	var once sync.Once
	ra.stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(ra.stop)
	return ra
}

func TestAgentJoinsAndPeers(t *testing.T) {
	needAPIServers(t)
	// Agents restarted inside a subtest live on after it: they belong to
	// the whole test (its cleanup stops them, its log takes their lines).
	parent := t
	// A long drain timeout: a deleted peer must be released by the agent's
	// acknowledgement, not by the timeout.
	framework.StartHub(t, hub.Config, controllers.Options{PeerDrainTimeout: 2 * time.Minute})
	ctx := context.Background()
	hc, mc := hub.Client, member.Client
	// The hub's policy on members' token requests: renewals must pass it.
	for _, u := range readObjects(t, filepath.Join(framework.RepoRoot(), "config", "hub", "member-token-policy.yaml")) {
		if err := hc.Create(ctx, u); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}

	// The hub: a ClusterSet with members a (us), b (valid peer), c (its
	// only gateway is invalid) and d (no range: it asks for one outside
	// the pool, so it is not in the peer directory at all); and another
	// set's member x, which a must never see.
	for _, cs := range []*meshv1.ClusterSet{framework.NewClusterSet("demo", []string{"10.64.0.0/12"}), framework.NewClusterSet("other", []string{"10.80.0.0/12"})} {
		if err := hc.Create(ctx, cs); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []*meshv1.MemberCluster{
		framework.NewMember("a", "demo", framework.WithPodCIDRs("10.64.0.0/16")),
		framework.NewMember("b", "demo", framework.WithPodCIDRs("10.65.0.0/16")),
		framework.NewMember("c", "demo", framework.WithPodCIDRs("10.66.0.0/16")),
		framework.NewMember("d", "demo", framework.WithPodCIDRs("192.168.0.0/16")),
		framework.NewMember("x", "other", framework.WithPodCIDRs("10.80.0.0/16")),
	} {
		if err := hc.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	bKey, _ := wgtypes.GeneratePrivateKey()
	xKey, _ := wgtypes.GeneratePrivateKey()
	eventually(t, "member namespaces", func() (bool, string) {
		for _, m := range []string{"b", "c", "x"} {
			ns := &corev1.Namespace{}
			if err := hc.Get(ctx, client.ObjectKey{Name: controllers.MemberNamespace(m)}, ns); err != nil {
				return false, err.Error()
			}
		}
		return true, ""
	})
	for _, gw := range []*meshv1.TunnelGateway{
		{ObjectMeta: metav1.ObjectMeta{Name: "b-gw", Namespace: controllers.MemberNamespace("b")},
			Spec: meshv1.TunnelGatewaySpec{NodeName: "b-gw", PublicKey: bKey.PublicKey().String(), Endpoints: []string{"192.0.2.2:51820"}, Active: true}},
		{ObjectMeta: metav1.ObjectMeta{Name: "c-gw", Namespace: controllers.MemberNamespace("c")},
			Spec: meshv1.TunnelGatewaySpec{NodeName: "c-gw", PublicKey: "bm90LWEta2V5", Endpoints: []string{"192.0.2.3:51820"}, Active: true}},
		{ObjectMeta: metav1.ObjectMeta{Name: "x-gw", Namespace: controllers.MemberNamespace("x")},
			Spec: meshv1.TunnelGatewaySpec{NodeName: "x-gw", PublicKey: xKey.PublicKey().String(), Endpoints: []string{"192.0.2.9:51820"}, Active: true}},
	} {
		if err := hc.Create(ctx, gw); err != nil {
			t.Fatal(err)
		}
	}

	// The member: two gateway candidates and a worker, joined as the
	// kubectl plugin does.
	createNode(t, mc, node("n1", "172.18.0.2", "10.64.1.0/24", true))
	createNode(t, mc, node("n2", "172.18.0.3", "10.64.2.0/24", true))
	createNode(t, mc, node("n3", "172.18.0.4", "10.64.3.0/24", false))
	token := framework.MemberHubTokenTTL(t, hub.Config, "a", tokenTTL)
	framework.JoinMember(t, mc, hub.Config, "a", "demo", token)

	agents := map[string]*runningAgent{}
	for _, n := range []struct{ name, ip string }{{"n1", "172.18.0.2"}, {"n2", "172.18.0.3"}, {"n3", "172.18.0.4"}} {
		// Each node: its InternalIP on eth0 (1500 bytes), and the way to
		// the other members over a WAN of 1400 bytes.
		k := dpfake.NewKernel()
		k.Netlink.AddAddr("eth0", netip.MustParsePrefix(n.ip+"/24"), 1500)
		wan := k.Netlink.AddLink("wan")
		k.Netlink.SetLinkMTU("wan", 1400)
		k.Netlink.Seed(netlink.Route{LinkIndex: wan, Family: netlink.FAMILY_V4})
		agents[n.name] = startAgentOn(t, n.name, k, filepath.Join(t.TempDir(), "key"))
	}

	var ms meshv1.ClusterSetMembership
	getMS := func() *meshv1.ClusterSetMembership {
		_ = mc.Get(ctx, client.ObjectKey{Name: framework.MembershipName}, &ms)
		return &ms
	}
	eventually(t, "membership joined with peers", func() (bool, string) {
		m := getMS()
		st := m.Status
		if !meta.IsStatusConditionTrue(st.Conditions, meshv1.MembershipJoined) || len(st.PodCIDRs) != 1 || st.PodCIDRs[0] != "10.64.0.0/16" ||
			st.HubNamespace != controllers.MemberNamespace("a") || st.ActiveGateway == "" || len(st.Peers) != 2 || st.Tunnel == nil {
			b, _ := json.Marshal(st)
			return false, string(b)
		}
		return true, ""
	})
	st := getMS().Status
	active := st.ActiveGateway
	t.Logf("active gateway %s (%s), peers %d/%d up", active, st.ActiveGatewayIP, st.ReadyPeers, st.TotalPeers)
	if !meta.IsStatusConditionTrue(st.Conditions, meshv1.MembershipCIDRsMatch) {
		t.Errorf("CIDRsMatch not True: %+v", st.Conditions)
	}
	byName := map[string]meshv1.MembershipPeer{}
	for _, p := range st.Peers {
		byName[p.Cluster] = p
	}
	if p := byName["b"]; p.State == meshv1.PeerInvalid || p.Gateway != "b-gw" || p.PodCIDRs[0] != "10.65.0.0/16" || p.Endpoint != "192.0.2.2:51820" {
		t.Errorf("peer b = %+v", p)
	}
	if p := byName["c"]; p.State != meshv1.PeerInvalid || p.Message == "" {
		t.Errorf("peer c = %+v, want Invalid with a message", p)
	}
	for _, c := range []string{"d", "x"} {
		if p, ok := byName[c]; ok {
			t.Errorf("peer %s = %+v: a member without a range, or of another set, is in the directory", c, p)
		}
	}

	t.Run("gateways published from node annotations", func(t *testing.T) {
		eventually(t, "TunnelGateway objects and MemberCluster status", func() (bool, string) {
			gws := &meshv1.TunnelGatewayList{}
			if err := hc.List(ctx, gws, client.InNamespace(controllers.MemberNamespace("a"))); err != nil {
				return false, err.Error()
			}
			if len(gws.Items) != 2 {
				return false, fmt.Sprintf("%d gateways", len(gws.Items))
			}
			for _, gw := range gws.Items {
				n := &corev1.Node{}
				if err := mc.Get(ctx, client.ObjectKey{Name: gw.Spec.NodeName}, n); err != nil {
					return false, err.Error()
				}
				if gw.Spec.PublicKey != n.Annotations[meshv1.AnnotationPublicKey] || gw.Spec.Active != (gw.Name == active) ||
					len(gw.Spec.Endpoints) != 1 || gw.Spec.Endpoints[0] != n.Annotations[meshv1.AnnotationEndpoint] {
					return false, fmt.Sprintf("gateway %+v vs node annotations %v", gw.Spec, n.Annotations)
				}
			}
			mcA := &meshv1.MemberCluster{}
			if err := hc.Get(ctx, client.ObjectKey{Name: "a"}, mcA); err != nil {
				return false, err.Error()
			}
			if len(mcA.Status.Gateways) != 2 || mcA.Status.ActiveGateway != active {
				return false, fmt.Sprintf("member a gateways %+v active %q", mcA.Status.Gateways, mcA.Status.ActiveGateway)
			}
			return true, ""
		})
		n := &corev1.Node{}
		_ = mc.Get(ctx, client.ObjectKey{Name: active}, n)
		if ep := n.Annotations[meshv1.AnnotationEndpoint]; ep != st.ActiveGatewayIP+":51820" {
			t.Errorf("endpoint annotation %q", ep)
		}
	})

	t.Run("data path on gateway and worker", func(t *testing.T) {
		gw := agents[active]
		eventually(t, "gateway device has peer b only", func() (bool, string) {
			dev, err := gw.kernel.WG.Device("arch0")
			if err != nil {
				return false, err.Error()
			}
			if len(dev.Peers) != 1 || dev.Peers[0].PublicKey != bKey.PublicKey() {
				return false, fmt.Sprintf("%d peers", len(dev.Peers))
			}
			return true, ""
		})
		eventually(t, "worker routes b's range via the gateway", func() (bool, string) {
			rs := forwarding(agents["n3"])
			if len(rs) != 1 || rs[0].Dst.String() != "10.65.0.0/16" || rs[0].Gw.String() != st.ActiveGatewayIP {
				return false, fmt.Sprintf("%v", rs)
			}
			return true, ""
		})
		if agents["n3"].kernel.WG.HasDevice("arch0") {
			t.Error("worker has a WireGuard device")
		}
		// A handshake makes b Up, in the membership and in the Gateway's
		// status, which the hub turns into Connected.
		gw.kernel.WG.Handshake("arch0", bKey.PublicKey(), time.Now())
		eventually(t, "peer b up", func() (bool, string) {
			for _, p := range getMS().Status.Peers {
				if p.Cluster == "b" {
					return p.State == meshv1.PeerUp && p.LatestHandshake != nil, fmt.Sprintf("%+v", p)
				}
			}
			return false, "no b"
		})
		// The hub sees a summary, not one entry per peer: b up, c down
		// (its gateway is invalid), and a heartbeat.
		eventually(t, "gateway status and Connected on the hub", func() (bool, string) {
			tgw := &meshv1.TunnelGateway{}
			if err := hc.Get(ctx, client.ObjectKey{Namespace: controllers.MemberNamespace("a"), Name: active}, tgw); err != nil {
				return false, err.Error()
			}
			if tgw.Status.PeersUp != 1 || len(tgw.Status.DownPeers) != 1 || tgw.Status.DownPeers[0] != "c" || tgw.Status.LastSeen == nil {
				return false, fmt.Sprintf("gateway status %+v", tgw.Status)
			}
			mcA := &meshv1.MemberCluster{}
			if err := hc.Get(ctx, client.ObjectKey{Name: "a"}, mcA); err != nil {
				return false, err.Error()
			}
			if mcA.Status.ConnectedPeers != 1 || mcA.Status.TotalPeers != 2 || !meta.IsStatusConditionTrue(mcA.Status.Conditions, meshv1.MemberAgentConnected) {
				return false, fmt.Sprintf("member a: connected %d/%d conditions %+v", mcA.Status.ConnectedPeers, mcA.Status.TotalPeers, mcA.Status.Conditions)
			}
			return true, ""
		})
		eventually(t, "NodeReports", func() (bool, string) {
			for name, want := range map[string]string{active: meshv1.RoleGateway, "n3": meshv1.RoleWorker} {
				n := &corev1.Node{}
				if err := mc.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
					return false, err.Error()
				}
				var r meshv1.NodeReport
				if err := json.Unmarshal([]byte(n.Annotations[meshv1.AnnotationDatapath]), &r); err != nil {
					return false, name + ": " + err.Error()
				}
				if r.Role != want || r.Routes != 1 || !r.NoSNAT {
					return false, fmt.Sprintf("%s: %+v", name, r)
				}
			}
			return true, ""
		})
	})

	// The tunnel MTU follows the path to the peers (the WAN of
	// 1400 bytes less WireGuard's 60 over IPv4), in the status, the device
	// and the NodeReport; the ClusterSet's spec.tunnel.mtu overrides it.
	t.Run("tunnel MTU derived from the underlay", func(t *testing.T) {
		gw := agents[active]
		check := func(want int32, source string) {
			t.Helper()
			eventually(t, fmt.Sprintf("tunnel MTU %d from %s", want, source), func() (bool, string) {
				m := getMS().Status.TunnelMTU
				if m == nil || m.Effective != want || m.Source != source || m.UnderlayInterface != "wan" || m.UnderlayMTU != 1400 {
					return false, fmt.Sprintf("status %+v", m)
				}
				if l, ok := gw.kernel.Links.Get("arch0"); !ok || l.MTU != int(want) {
					return false, fmt.Sprintf("device %+v", l)
				}
				n := &corev1.Node{}
				if err := mc.Get(ctx, client.ObjectKey{Name: active}, n); err != nil {
					return false, err.Error()
				}
				var r meshv1.NodeReport
				_ = json.Unmarshal([]byte(n.Annotations[meshv1.AnnotationDatapath]), &r)
				if r.MTU != int(want) || r.MTUSource != source || r.UnderlayInterface != "wan" {
					return false, fmt.Sprintf("report %+v", r)
				}
				return true, ""
			})
		}
		check(1340, "Underlay")
		m := getMS().Status.TunnelMTU
		t.Logf("Tunnel MTU %d (%s): %s", m.Effective, m.Source, m.Message)
		setMTU := func(mtu int32) {
			t.Helper()
			if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
				cs := &meshv1.ClusterSet{}
				if err := hc.Get(ctx, client.ObjectKey{Name: "demo"}, cs); err != nil {
					return err
				}
				cs.Spec.Tunnel.MTU = mtu
				return hc.Update(ctx, cs)
			}); err != nil {
				t.Fatal(err)
			}
		}
		setMTU(1300)
		check(1300, "ClusterSet")
		setMTU(0)
		check(1340, "Underlay")
	})

	// The member's API writes do not depend on tunnel traffic.
	// With byte counters in the NodeReport every pass under traffic wrote
	// the gateway's Node, and that write woke the next pass.
	t.Run("API writes independent of tunnel traffic", func(t *testing.T) {
		gw := agents[active]
		const window = 6 * time.Second
		idle := countWrites(t, window, nil)
		busy := countWrites(t, window, func() { gw.kernel.WG.Transfer("arch0", bKey.PublicKey(), 1<<20, 1<<20) })
		t.Logf("member writes of Nodes and memberships in %s: idle %d, under traffic %d", window, idle, busy)
		if limit := 2*idle + 6; busy > limit {
			t.Errorf("under traffic the agents wrote %d times in %s (idle %d): want at most %d", busy, window, idle, limit)
		}
	})

	t.Run("CIDRsMatch false stops routing", func(t *testing.T) {
		createNode(t, mc, node("n4", "172.18.0.5", "10.99.0.0/24", false))
		eventually(t, "CIDRsMatch False", func() (bool, string) {
			c := meta.FindStatusCondition(getMS().Status.Conditions, meshv1.MembershipCIDRsMatch)
			return c != nil && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, "n4"), fmt.Sprintf("%+v", c)
		})
		// Fail closed: no forwarding route, but b's range stays in the
		// agent's table as unreachable, so it cannot follow the main table.
		eventually(t, "no forwarding routes on the worker, b's range unreachable", func() (bool, string) {
			rs, un := forwarding(agents["n3"]), unreachable(agents["n3"])
			return len(rs) == 0 && len(un) == 1 && un[0] == "10.65.0.0/16", fmt.Sprintf("forwarding %v, unreachable %v", rs, un)
		})
		if err := mc.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n4"}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "CIDRsMatch True again", func() (bool, string) {
			return meta.IsStatusConditionTrue(getMS().Status.Conditions, meshv1.MembershipCIDRsMatch), ""
		})
	})

	t.Run("the elected agent renews its hub token before it expires", func(t *testing.T) {
		first := hubSecret(t)
		c0 := claimsOf(t, first)
		if c0.BoundSecret == "" {
			t.Fatal("the test's token is not bound to a credential Secret")
		}
		var renewed *corev1.Secret
		eventually(t, "a renewed token in the member's hub Secret", func() (bool, string) {
			renewed = hubSecret(t)
			c := claimsOf(t, renewed)
			return c.Expires.After(c0.Expires), fmt.Sprintf("token expires %s, first one %s", c.Expires, c0.Expires)
		})
		c := claimsOf(t, renewed)
		if c.BoundSecret != c0.BoundSecret || c.BoundSecretUID != c0.BoundSecretUID || c.Lifetime() != c0.Lifetime() {
			t.Errorf("renewed token bound to %s (%s), lifetime %s; want %s (%s), %s", c.BoundSecret, c.BoundSecretUID, c.Lifetime(),
				c0.BoundSecret, c0.BoundSecretUID, c0.Lifetime())
		}
		if got := renewed.Annotations[tokenExpiresAnnotation]; got != c.Expires.Format(time.RFC3339) {
			t.Errorf("annotation %s = %q, want %s", tokenExpiresAnnotation, got, c.Expires.Format(time.RFC3339))
		}
		if err := askHub(string(renewed.Data["token"])); err != nil {
			t.Errorf("the hub refuses the renewed token: %v", err)
		}
		eventually(t, "HubCredentials condition True", func() (bool, string) {
			cond := meta.FindStatusCondition(getMS().Status.Conditions, meshv1.MembershipHubCredentials)
			return cond != nil && cond.Status == metav1.ConditionTrue && strings.Contains(cond.Message, c0.BoundSecret), fmt.Sprintf("%+v", cond)
		})
		// Renewing keeps the connection: the agent still publishes.
		eventually(t, "Joined stays True", func() (bool, string) {
			return meta.IsStatusConditionTrue(getMS().Status.Conditions, meshv1.MembershipJoined), fmt.Sprintf("%+v", getMS().Status.Conditions)
		})
	})

	t.Run("a hub Secret without a CA is refused", func(t *testing.T) {
		var ca []byte
		editHubSecret(t, func(s *corev1.Secret) { ca = s.Data["ca.crt"]; delete(s.Data, "ca.crt") })
		eventually(t, "Joined False naming the missing CA", func() (bool, string) {
			cond := meta.FindStatusCondition(getMS().Status.Conditions, meshv1.MembershipJoined)
			return cond != nil && cond.Status == metav1.ConditionFalse && cond.Reason == "HubSecretInvalid" &&
				strings.Contains(cond.Message, `"ca.crt"`), fmt.Sprintf("%+v", cond)
		})
		editHubSecret(t, func(s *corev1.Secret) { s.Data["ca.crt"] = ca })
		eventually(t, "Joined True again", func() (bool, string) {
			return meta.IsStatusConditionTrue(getMS().Status.Conditions, meshv1.MembershipJoined), fmt.Sprintf("%+v", getMS().Status.Conditions)
		})
	})

	t.Run("standbys hold the peer directory and the shared key", func(t *testing.T) {
		var b meshv1.MembershipPeer
		for _, p := range getMS().Status.Peers {
			if p.Cluster == "b" {
				b = p
			}
		}
		if b.PublicKey != bKey.PublicKey().String() || b.DirectoryEndpoint != "192.0.2.2:51820" {
			t.Errorf("peer b in the membership status: key %q endpoint %q, want b's key and 192.0.2.2:51820", b.PublicKey, b.DirectoryEndpoint)
		}
		keys := map[string]string{}
		for _, name := range []string{"n1", "n2"} {
			n := &corev1.Node{}
			if err := mc.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
				t.Fatal(err)
			}
			keys[name] = n.Annotations[meshv1.AnnotationPublicKey]
		}
		if keys["n1"] == "" || keys["n1"] != keys["n2"] {
			t.Errorf("candidates publish public keys %v, want one shared key", keys)
		}
	})

	t.Run("restart of the active agent keeps the gateway", func(t *testing.T) {
		lease := func() (string, int32) {
			l := &coordinationv1.Lease{}
			if err := mc.Get(ctx, client.ObjectKey{Namespace: controlplane.DefaultNamespace, Name: controlplane.DefaultLeaseName}, l); err != nil {
				t.Fatal(err)
			}
			return ptr.Deref(l.Spec.HolderIdentity, ""), ptr.Deref(l.Spec.LeaseTransitions, 0)
		}
		holder, transitions := lease()
		if holder != active {
			t.Fatalf("Lease holder %q, status says %q", holder, active)
		}
		old := agents[active]
		old.stop() // SIGTERM: the Lease is not released
		if h, _ := lease(); h != active {
			t.Fatalf("Lease holder after the stop: %q, want %q (not released)", h, active)
		}
		agents[active] = startAgentOn(parent, active, old.kernel, old.keyDir)
		// Longer than the Lease: the new agent renews it, nobody takes over.
		time.Sleep(4 * time.Second)
		if h, n := lease(); h != active || n != transitions {
			t.Errorf("after the restart: holder %q transitions %d, want %q and %d", h, n, active, transitions)
		}
		dev, err := old.kernel.WG.Device("arch0")
		if err != nil || len(dev.Peers) != 1 {
			t.Errorf("device after the restart: %v %v", dev, err)
		}
	})

	t.Run("takeover while the hub is unreachable", func(t *testing.T) {
		hubUnreachable.Store(true)
		defer hubUnreachable.Store(false)
		standby := "n1"
		if active == "n1" {
			standby = "n2"
		}
		start := time.Now()
		agents[active].stop() // the node dies: no renewals, no release
		eventually(t, "standby's device has peer b from the local directory", func() (bool, string) {
			dev, err := agents[standby].kernel.WG.Device("arch0")
			if err != nil {
				return false, err.Error()
			}
			if len(dev.Peers) != 1 || dev.Peers[0].PublicKey != bKey.PublicKey() || dev.Peers[0].Endpoint == nil || dev.Peers[0].Endpoint.String() != "192.0.2.2:51820" {
				return false, fmt.Sprintf("%+v", dev.Peers)
			}
			return true, ""
		})
		took := time.Since(start)
		var standbyIP string
		n := &corev1.Node{}
		_ = mc.Get(ctx, client.ObjectKey{Name: standby}, n)
		for _, a := range n.Status.Addresses {
			standbyIP = a.Address
		}
		eventually(t, "worker routes via the new gateway", func() (bool, string) {
			rs := agents["n3"].kernel.Netlink.Routes(routing.DefaultTable)
			via := 0
			for _, r := range rs {
				if r.Gw != nil {
					if r.Gw.String() != standbyIP {
						return false, fmt.Sprintf("%v", rs)
					}
					via++
				}
			}
			return via == 1, fmt.Sprintf("%v", rs)
		})
		t.Logf("takeover without the hub: %s's tunnel up %.1fs after %s stopped (lease 3s, no probes)", standby, took.Seconds(), active)
		// The old gateway comes back: it finds another holder and keeps its
		// device without peers (a standby sends nothing with the shared
		// key).
		old := agents[active]
		agents[active] = startAgentOn(parent, active, old.kernel, old.keyDir)
		eventually(t, "old gateway stands by with a device without peers", func() (bool, string) {
			dev, err := old.kernel.WG.Device("arch0")
			if err != nil {
				return false, err.Error()
			}
			return len(dev.Peers) == 0, fmt.Sprintf("%d peers", len(dev.Peers))
		})
		active = standby
	})

	t.Run("the shared private key is in one member Secret only", func(t *testing.T) {
		sec := &corev1.Secret{}
		if err := mc.Get(ctx, client.ObjectKey{Namespace: controlplane.DefaultNamespace, Name: controlplane.DefaultKeySecret}, sec); err != nil {
			t.Fatal(err)
		}
		s := strings.TrimSpace(string(sec.Data[controlplane.KeySecretKey]))
		if _, err := wgtypes.ParseKey(s); err != nil {
			t.Fatalf("key Secret: %v", err)
		}
		raw, _ := base64.StdEncoding.DecodeString(s)
		secrets := []string{s, base64.StdEncoding.EncodeToString([]byte(s)), fmt.Sprintf("%x", raw)}
		hubHits, n := scanAll(t, hub.Config, secrets)
		t.Logf("hub: scanned %d objects", n)
		if len(hubHits) != 0 {
			t.Errorf("the hub holds the private key in %v", hubHits)
		}
		memberHits, n := scanAll(t, member.Config, secrets)
		t.Logf("member: scanned %d objects", n)
		want := "secrets " + controlplane.DefaultNamespace + "/" + controlplane.DefaultKeySecret
		if len(memberHits) != 1 || memberHits[0] != want {
			t.Errorf("the member holds the private key in %v, want only %s", memberHits, want)
		}
	})

	t.Run("a deleted peer is dropped, acknowledged, then released", func(t *testing.T) {
		if err := hc.Delete(ctx, &meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "b"}}); err != nil {
			t.Fatal(err)
		}
		gw := agents[active]
		eventually(t, "gateway device without b, worker without b's route", func() (bool, string) {
			dev, err := gw.kernel.WG.Device("arch0")
			if err != nil {
				return false, err.Error()
			}
			rs := agents["n3"].kernel.Netlink.Routes(routing.DefaultTable)
			return len(dev.Peers) == 0 && len(rs) == 0, fmt.Sprintf("%d peers, routes %v", len(dev.Peers), rs)
		})
		// Well before the 2-minute drain timeout: a's acknowledgement
		// released b.
		eventually(t, "member b gone from the hub", func() (bool, string) {
			err := hc.Get(ctx, client.ObjectKey{Name: "b"}, &meshv1.MemberCluster{})
			return apierrors.IsNotFound(err), fmt.Sprintf("%v", err)
		})
		eventually(t, "b cleared from droppedPeers once its entry is gone", func() (bool, string) {
			tgw := &meshv1.TunnelGateway{}
			if err := hc.Get(ctx, client.ObjectKey{Namespace: controllers.MemberNamespace("a"), Name: active}, tgw); err != nil {
				return false, err.Error()
			}
			return len(tgw.Status.DroppedPeers) == 0, fmt.Sprintf("%+v", tgw.Status)
		})
	})

	// Last: leave. Only leaving lifts fail-closed: the membership goes,
	// and every node removes its routes, rule, table and device.
	t.Run("leave removes the data path", func(t *testing.T) {
		if err := mc.Delete(ctx, getMS()); err != nil {
			t.Fatal(err)
		}
		eventually(t, "no agent state left on any node", func() (bool, string) {
			for name, ra := range agents {
				if rs := ra.kernel.Netlink.Routes(routing.DefaultTable); len(rs) != 0 {
					return false, fmt.Sprintf("%s: routes %v", name, rs)
				}
				for _, r := range ra.kernel.Netlink.Rules() {
					if r.Table == routing.DefaultTable {
						return false, fmt.Sprintf("%s: rule %v", name, r)
					}
				}
				if ra.kernel.WG.HasDevice("arch0") {
					return false, name + ": WireGuard device"
				}
			}
			return true, ""
		})
	})
}

// countWrites counts the updates of Nodes and ClusterSetMemberships the
// member's apiserver stores over window, calling tick every 50 ms when not
// nil (traffic through the tunnel).
func countWrites(t *testing.T, window time.Duration, tick func()) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), window+10*time.Second)
	defer cancel()
	wc, err := client.NewWithWatch(member.Config, client.Options{Scheme: member.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	var watches []watch.Interface
	for _, l := range []client.ObjectList{&corev1.NodeList{}, &meshv1.ClusterSetMembershipList{}} {
		// From the current state on: only the writes of the window.
		if err := wc.List(ctx, l); err != nil {
			t.Fatal(err)
		}
		w, err := wc.Watch(ctx, l, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: l.(metav1.ListInterface).GetResourceVersion()}})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		watches = append(watches, w)
	}
	n := 0
	end := time.After(window)
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-end:
			return n
		case <-ticker.C:
			if tick != nil {
				tick()
			}
		case ev := <-watches[0].ResultChan():
			if ev.Type == watch.Modified {
				n++
			}
		case ev := <-watches[1].ResultChan():
			if ev.Type == watch.Modified {
				n++
			}
		}
	}
}

// forwarding returns the forwarding routes in the agent's table of ra's
// node (the unreachable routes under them left out).
func forwarding(ra *runningAgent) []netlink.Route {
	var out []netlink.Route
	for _, r := range ra.kernel.Netlink.Routes(routing.DefaultTable) {
		if r.Type != unix.RTN_UNREACHABLE {
			out = append(out, r)
		}
	}
	return out
}

// unreachable returns the destinations of the unreachable routes in the
// agent's table of ra's node.
func unreachable(ra *runningAgent) []string {
	var out []string
	for _, r := range ra.kernel.Netlink.Routes(routing.DefaultTable) {
		if r.Type == unix.RTN_UNREACHABLE {
			out = append(out, r.Dst.String())
		}
	}
	return out
}

// tokenTTL is the lifetime of the test's hub token: the TokenRequest API's minimum.
const tokenTTL = 10 * time.Minute

// tokenExpiresAnnotation is the hub Secret's annotation with the token's expiry.
const tokenExpiresAnnotation = "archipelago.dev/token-expires"

func hubSecret(t *testing.T) *corev1.Secret {
	t.Helper()
	s := &corev1.Secret{}
	if err := member.Client.Get(context.Background(), client.ObjectKey{Namespace: framework.MemberSystemNamespace, Name: framework.MemberHubSecret}, s); err != nil {
		t.Fatalf("get hub Secret: %v", err)
	}
	return s
}

// editHubSecret changes the member's hub Secret, retrying on conflicts with
// the agent's own writes (renewals).
func editHubSecret(t *testing.T, edit func(*corev1.Secret)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		s := hubSecret(t)
		edit(s)
		return member.Client.Update(context.Background(), s)
	})
	if err != nil {
		t.Fatalf("update hub Secret: %v", err)
	}
}

func claimsOf(t *testing.T, s *corev1.Secret) hubtoken.Claims {
	t.Helper()
	c, err := hubtoken.Parse(string(s.Data["token"]))
	if err != nil {
		t.Fatalf("hub token: %v", err)
	}
	return c
}

// askHub lists the peer directory with token, as the agent does.
func askHub(token string) error {
	c, err := client.New(&rest.Config{Host: hub.Config.Host, BearerToken: token,
		TLSClientConfig: rest.TLSClientConfig{CAData: hub.Config.CAData}}, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		return err
	}
	// A member may read its own MemberCluster (member "a"), not the list of all.
	return c.Get(context.Background(), client.ObjectKey{Name: "a"}, &meshv1.MemberCluster{})
}

// scanAll lists every object of every listable resource and returns those
// ("resource namespace/name") that contain any of secrets, and how many
// objects it scanned.
func scanAll(t *testing.T, cfg *rest.Config, secrets []string) ([]string, int) {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, lists, err := dc.ServerGroupsAndResources()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var hits []string
	for _, l := range lists {
		gv, err := schema.ParseGroupVersion(l.GroupVersion)
		if err != nil {
			continue
		}
		for _, r := range l.APIResources {
			if strings.Contains(r.Name, "/") || !contains(r.Verbs, "list") {
				continue
			}
			objs, err := dyn.Resource(gv.WithResource(r.Name)).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				continue
			}
			for _, o := range objs.Items {
				n++
				b, _ := json.Marshal(o.Object)
				for _, s := range secrets {
					if strings.Contains(string(b), s) {
						hits = append(hits, fmt.Sprintf("%s %s/%s", r.Name, o.GetNamespace(), o.GetName()))
						break
					}
				}
			}
		}
	}
	if n == 0 {
		t.Error("scanned nothing")
	}
	return hits, n
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
