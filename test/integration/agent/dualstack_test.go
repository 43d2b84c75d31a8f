package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/agent/controlplane"
	dpfake "github.com/archipelago-mesh/archipelago/agent/dataplane/fake"
	"github.com/archipelago-mesh/archipelago/agent/desired"
	"github.com/archipelago-mesh/archipelago/agent/plan"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// A dual-stack member routes each family of the remote ranges via
// the gateway's address of that family (a next hop per family in the
// membership status), and says which ranges cannot be reached when the
// gateway loses its IPv6 address. Its own hub and member apiservers: the
// shared member holds TestAgentJoinsAndPeers' membership.
func TestAgentDualStack(t *testing.T) {
	needAPIServers(t)
	var hubAPI, memberAPI *framework.APIServer
	for _, p := range []**framework.APIServer{&hubAPI, &memberAPI} {
		s, why, err := framework.StartAPIServer()
		if err != nil || s == nil {
			t.Fatalf("start apiserver: %v %s", err, why)
		}
		t.Cleanup(func() { _ = s.Stop() })
		*p = s
	}
	framework.StartHub(t, hubAPI.Config, controllers.Options{})
	ctx := context.Background()
	hc, mc := hubAPI.Client, memberAPI.Client

	if err := hc.Create(ctx, framework.NewClusterSet("ds", []string{"10.64.0.0/12", "fd00:64::/40"})); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*meshv1.MemberCluster{
		framework.NewMember("a", "ds", framework.WithPodCIDRs("10.64.0.0/16", "fd00:64:0:1::/64")),
		framework.NewMember("b", "ds", framework.WithPodCIDRs("10.65.0.0/16", "fd00:64:0:2::/64")),
		// The hub gives every member a block of each family of the set.
		framework.NewMember("six", "ds", framework.WithPodCIDRs("10.66.0.0/16", "fd00:64:0:6::/64")),
	} {
		if err := hc.Create(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "member namespaces", func() (bool, string) {
		for _, m := range []string{"b", "six"} {
			if err := hc.Get(ctx, client.ObjectKey{Name: controllers.MemberNamespace(m)}, &corev1.Namespace{}); err != nil {
				return false, err.Error()
			}
		}
		return true, ""
	})
	for name, ep := range map[string]string{"b": "192.0.2.2:51820", "six": "[2001:db8::6]:51820"} {
		k, _ := wgtypes.GeneratePrivateKey()
		gw := &meshv1.TunnelGateway{ObjectMeta: metav1.ObjectMeta{Name: name + "-gw", Namespace: controllers.MemberNamespace(name)},
			Spec: meshv1.TunnelGatewaySpec{NodeName: name + "-gw", PublicKey: k.PublicKey().String(), Endpoints: []string{ep}, Active: true}}
		if err := hc.Create(ctx, gw); err != nil {
			t.Fatal(err)
		}
	}

	dualNode := func(name, ip4, ip6, cidr4, cidr6 string, candidate bool) *corev1.Node {
		n := node(name, ip4, cidr4, candidate)
		n.Spec.PodCIDRs = []string{cidr4, cidr6}
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip6})
		return n
	}
	createNode(t, mc, dualNode("gw", "172.18.0.2", "fd00:ffff::2", "10.64.1.0/24", "fd00:64:0:1:1::/80", true))
	createNode(t, mc, dualNode("w1", "172.18.0.4", "fd00:ffff::4", "10.64.3.0/24", "fd00:64:0:1:3::/80", false))
	// w2 sits on another subnet: its kernel's route to the gateway has a
	// router as next hop, so it reaches the gateway through the VXLAN.
	createNode(t, mc, dualNode("w2", "172.18.1.5", "fd00:ffff:1::5", "10.64.4.0/24", "fd00:64:0:1:4::/80", false))
	framework.JoinMember(t, mc, hubAPI.Config, "a", "ds", framework.MemberHubTokenTTL(t, hubAPI.Config, "a", tokenTTL))
	auto := func(c *controlplane.Config) { c.Encapsulation = plan.EncapAuto }
	agents := map[string]*runningAgent{}
	for _, n := range []string{"gw", "w1", "w2"} {
		k := dpfake.NewKernel()
		if n == "w2" {
			k.Netlink.AddAddr("eth0", netip.MustParsePrefix("172.18.1.5/24"), 1500)
			eth0, _ := k.Netlink.LinkByName("eth0")
			_, sub, _ := net.ParseCIDR("172.18.1.0/24")
			k.Netlink.Seed(netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: sub})
			k.Netlink.Seed(netlink.Route{LinkIndex: eth0.Attrs().Index, Family: netlink.FAMILY_V4, Gw: net.ParseIP("172.18.1.1")})
		}
		agents[n] = startAgentIn(t, memberAPI.Config, n, k, filepath.Join(t.TempDir(), "key-"+n), auto)
	}

	getMS := func() meshv1.ClusterSetMembershipStatus {
		var ms meshv1.ClusterSetMembership
		_ = mc.Get(ctx, client.ObjectKey{Name: framework.MembershipName}, &ms)
		return ms.Status
	}
	eventually(t, "status with a next hop per family", func() (bool, string) {
		st := getMS()
		return st.ActiveGateway == "gw" && slices.Equal(st.ActiveGatewayIPs, []string{"172.18.0.2", "fd00:ffff::2"}) && len(st.Peers) == 2 &&
			len(st.CannotRoute) == 0, fmt.Sprintf("%+v", st)
	})
	routesOf := func(ra *runningAgent) []string {
		var out []string
		for _, r := range forwarding(ra) {
			out = append(out, r.Dst.String()+" via "+r.Gw.String())
		}
		slices.Sort(out)
		return out
	}
	eventually(t, "worker routes each family via the gateway's address of that family", func() (bool, string) {
		got := routesOf(agents["w1"])
		return slices.Equal(got, []string{"10.65.0.0/16 via 172.18.0.2", "10.66.0.0/16 via 172.18.0.2", "fd00:64:0:2::/64 via fd00:ffff::2", "fd00:64:0:6::/64 via fd00:ffff::2"}), fmt.Sprint(got)
	})
	vxRoutes := func(ra *runningAgent) []string {
		var out []string
		for _, r := range forwarding(ra) {
			l, _ := ra.kernel.Netlink.LinkByName(desired.DefaultOverlayInterface)
			if l != nil && r.LinkIndex == l.Attrs().Index {
				out = append(out, r.Dst.String()+" via "+r.Gw.String())
			}
		}
		slices.Sort(out)
		return out
	}
	wantVX := []string{"10.65.0.0/16 via 169.254.167.1", "10.66.0.0/16 via 169.254.167.1", "fd00:64:0:2::/64 via fe80::a7c", "fd00:64:0:6::/64 via fe80::a7c"}
	eventually(t, "off-link worker routes every remote range through the VXLAN to the gateway", func() (bool, string) {
		dev, ok := agents["w2"].kernel.Overlay.Device(desired.DefaultOverlayInterface)
		if !ok || dev.Group.String() != "172.18.0.2" || dev.SrcAddr.String() != "172.18.1.5" || dev.MTU != 1450 || dev.VxlanId != desired.DefaultOverlayVNI {
			return false, fmt.Sprintf("device %+v (exists %v)", dev, ok)
		}
		got := vxRoutes(agents["w2"])
		return slices.Equal(got, wantVX), fmt.Sprint(got)
	})
	if dev, ok := agents["gw"].kernel.Overlay.Device(desired.DefaultOverlayInterface); !ok || len(dev.Group) != 0 || dev.HardwareAddr.String() != "02:a7:c0:00:0a:7c" {
		t.Errorf("gateway's receiving side %+v (exists %v)", dev, ok)
	}
	if _, ok := agents["w1"].kernel.Overlay.Device(desired.DefaultOverlayInterface); ok {
		t.Error("the on-link worker made a VXLAN device")
	}
	report := func(name string) meshv1.NodeReport {
		n := &corev1.Node{}
		_ = mc.Get(ctx, client.ObjectKey{Name: name}, n)
		var r meshv1.NodeReport
		_ = json.Unmarshal([]byte(n.Annotations[meshv1.AnnotationDatapath]), &r)
		return r
	}
	eventually(t, "worker report with both next hops", func() (bool, string) {
		r := report("w1")
		return slices.Equal(r.NextHops, []string{"172.18.0.2", "fd00:ffff::2"}) && r.Routes == 4 && len(r.CannotRoute) == 0, fmt.Sprintf("%+v", r)
	})

	// The gateway loses its IPv6 address: the worker keeps IPv4, the IPv6
	// ranges fall to their unreachable routes, and both the node and the
	// membership say why.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n := &corev1.Node{}
		if err := mc.Get(ctx, client.ObjectKey{Name: "gw"}, n); err != nil {
			return err
		}
		n.Status.Addresses = n.Status.Addresses[:1]
		return mc.Status().Update(ctx, n)
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "worker routes IPv4 only", func() (bool, string) {
		got, un := routesOf(agents["w1"]), unreachable(agents["w1"])
		return slices.Equal(got, []string{"10.65.0.0/16 via 172.18.0.2", "10.66.0.0/16 via 172.18.0.2"}) && len(un) == 4, fmt.Sprintf("routes %v unreachable %v", got, un)
	})
	// Over the VXLAN the outer packets need only the gateway's IPv4
	// address: the off-link worker keeps routing the IPv6 ranges.
	eventually(t, "off-link worker keeps both families", func() (bool, string) {
		got, r := vxRoutes(agents["w2"]), report("w2")
		return slices.Equal(got, wantVX) && len(r.CannotRoute) == 0 && strings.HasPrefix(r.Encapsulation, "vxlan archipelago-vx to 172.18.0.2"),
			fmt.Sprintf("routes %v report %+v", got, r)
	})
	eventually(t, "worker report and membership say what cannot be routed", func() (bool, string) {
		r, st := report("w1"), getMS()
		want := []string{"fd00:64:0:2::/64", "fd00:64:0:6::/64"}
		var fromReport, fromStatus []string
		for _, u := range r.CannotRoute {
			if strings.Contains(u.Reason, "no IPv6 InternalIP") {
				fromReport = append(fromReport, u.CIDR)
			}
		}
		for _, u := range st.CannotRoute {
			if strings.Contains(u.Reason, "gw has no IPv6 InternalIP") {
				fromStatus = append(fromStatus, u.CIDR)
			}
		}
		return slices.Equal(fromReport, want) && slices.Equal(fromStatus, want) && slices.Equal(st.ActiveGatewayIPs, []string{"172.18.0.2"}),
			fmt.Sprintf("report %+v; status %+v %v", r.CannotRoute, st.CannotRoute, st.ActiveGatewayIPs)
	})
}
