package plan_test

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/archipelago-mesh/archipelago/agent/desired"
	"github.com/archipelago-mesh/archipelago/agent/plan"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

func pfx(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, x := range s {
		out[i] = netip.MustParsePrefix(x)
	}
	return out
}

func key(t testing.TB) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestCompute(t *testing.T) {
	self, kb, kc := key(t), key(t), key(t)
	b := plan.Peer{Cluster: "b", PodCIDRs: pfx("10.2.0.0/16"), Gateway: "b-gw", PublicKey: kb.PublicKey(),
		Endpoint: netip.MustParseAddrPort("192.0.2.2:51820")}
	c := plan.Peer{Cluster: "c", PodCIDRs: pfx("10.3.0.0/16", "fd00:3::/64"), Gateway: "c-gw", PublicKey: kc.PublicKey()}
	tun := plan.Tunnel{Interface: "wg0", Port: 51820, MTU: 1400, Keepalive: 25 * time.Second}
	gwIP := netip.MustParseAddr("172.18.0.2")

	for _, tc := range []struct {
		name       string
		in         plan.Inputs
		wantPeers  []string // cluster names in the tunnel, nil = no tunnel
		wantRoutes []desired.Route
		wantRemote []string
		// wantClosed are the ranges with an unreachable route: every
		// usable remote range, routed or not (fail closed).
		wantClosed  []string
		wantSkipped []string
		wantHold    bool
		wantMSS     bool
	}{{
		name:       "gateway routes remote ranges into the tunnel",
		in:         plan.Inputs{Role: plan.RoleGateway, LocalPodCIDRs: pfx("10.1.0.0/16"), Peers: []plan.Peer{c, b}, Tunnel: tun, PrivateKey: self},
		wantPeers:  []string{"b", "c"},
		wantRoutes: []desired.Route{{Dst: pfx("10.2.0.0/16")[0], Dev: "wg0"}, {Dst: pfx("10.3.0.0/16")[0], Dev: "wg0"}, {Dst: pfx("fd00:3::/64")[0], Dev: "wg0"}},
		wantRemote: []string{"10.2.0.0/16", "10.3.0.0/16", "fd00:3::/64"},
		wantClosed: []string{"10.2.0.0/16", "10.3.0.0/16", "fd00:3::/64"},
		wantMSS:    true,
	}, {
		name:       "worker routes remote ranges of its family via the gateway",
		in:         plan.Inputs{Role: plan.RoleWorker, LocalPodCIDRs: pfx("10.1.0.0/16"), Peers: []plan.Peer{b, c}, ActiveGatewayIP: gwIP, Tunnel: tun},
		wantRoutes: []desired.Route{{Dst: pfx("10.2.0.0/16")[0], Via: gwIP}, {Dst: pfx("10.3.0.0/16")[0], Via: gwIP}},
		wantRemote: []string{"10.2.0.0/16", "10.3.0.0/16"},
		// The IPv6 range has no next hop here, but must not leave by the
		// main table either.
		wantClosed: []string{"10.2.0.0/16", "10.3.0.0/16", "fd00:3::/64"},
	}, {
		name:       "standby is a worker",
		in:         plan.Inputs{Role: plan.RoleStandby, LocalPodCIDRs: pfx("10.1.0.0/16"), Peers: []plan.Peer{b}, ActiveGatewayIP: gwIP, Tunnel: tun},
		wantRoutes: []desired.Route{{Dst: pfx("10.2.0.0/16")[0], Via: gwIP}},
		wantRemote: []string{"10.2.0.0/16"},
		wantClosed: []string{"10.2.0.0/16"},
	}, {
		// Fail closed: no route via a gateway, but the ranges stay in the
		// agent's table (unreachable) and in the no-SNAT sets.
		name:       "worker without active gateway holds, closed",
		in:         plan.Inputs{Role: plan.RoleWorker, LocalPodCIDRs: pfx("10.1.0.0/16"), Peers: []plan.Peer{b, c}, Tunnel: tun},
		wantHold:   true,
		wantRemote: []string{"10.2.0.0/16", "10.3.0.0/16", "fd00:3::/64"},
		wantClosed: []string{"10.2.0.0/16", "10.3.0.0/16", "fd00:3::/64"},
	}, {
		name:       "gateway on hold keeps the device without peers, closed",
		in:         plan.Inputs{Role: plan.RoleGateway, LocalPodCIDRs: pfx("10.1.0.0/16"), Peers: []plan.Peer{b}, Tunnel: tun, PrivateKey: self, Hold: "node n1 podCIDR outside"},
		wantPeers:  []string{},
		wantHold:   true,
		wantMSS:    true,
		wantRemote: []string{"10.2.0.0/16"},
		wantClosed: []string{"10.2.0.0/16"},
	}, {
		name:       "worker on hold, closed",
		in:         plan.Inputs{Role: plan.RoleWorker, LocalPodCIDRs: pfx("10.1.0.0/16"), Peers: []plan.Peer{b}, ActiveGatewayIP: gwIP, Tunnel: tun, Hold: "cidrs"},
		wantHold:   true,
		wantRemote: []string{"10.2.0.0/16"},
		wantClosed: []string{"10.2.0.0/16"},
	}, {
		name: "bad peers are skipped, the others stay",
		in: plan.Inputs{Role: plan.RoleGateway, LocalPodCIDRs: pfx("10.1.0.0/16"), Tunnel: tun, PrivateKey: self, Peers: []plan.Peer{
			b,
			{Cluster: "norange", PublicKey: key(t).PublicKey()},
			{Cluster: "nokey", PodCIDRs: pfx("10.5.0.0/16")},
			{Cluster: "ownkey", PodCIDRs: pfx("10.6.0.0/16"), PublicKey: self.PublicKey()},
			{Cluster: "overlapslocal", PodCIDRs: pfx("10.1.128.0/17"), PublicKey: key(t).PublicKey()},
			{Cluster: "overlapsb", PodCIDRs: pfx("10.0.0.0/8"), PublicKey: key(t).PublicKey()},
			{Cluster: "samekey", PodCIDRs: pfx("10.7.0.0/16"), PublicKey: kb.PublicKey()},
		}},
		wantPeers:   []string{"b"},
		wantRoutes:  []desired.Route{{Dst: pfx("10.2.0.0/16")[0], Dev: "wg0"}},
		wantRemote:  []string{"10.2.0.0/16"},
		wantClosed:  []string{"10.2.0.0/16"},
		wantSkipped: []string{"nokey", "norange", "overlapsb", "overlapslocal", "ownkey", "samekey"},
		wantMSS:     true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			p := plan.Compute(tc.in)
			if (p.Hold != "") != tc.wantHold {
				t.Errorf("hold = %q, want hold %v", p.Hold, tc.wantHold)
			}
			if tc.wantPeers == nil {
				if p.Tunnel != nil {
					t.Errorf("tunnel planned on %s", tc.in.Role)
				}
			} else {
				if p.Tunnel == nil {
					t.Fatal("no tunnel planned on the gateway")
				}
				if err := p.Tunnel.Validate(); err != nil {
					t.Errorf("tunnel plan invalid: %v", err)
				}
				got := []string{}
				for _, peer := range p.Tunnel.Peers {
					got = append(got, p.PeerClusters[peer.PublicKey])
					if peer.PersistentKeepalive != tun.Keepalive {
						t.Errorf("keepalive %s", peer.PersistentKeepalive)
					}
				}
				if !reflect.DeepEqual(got, tc.wantPeers) {
					t.Errorf("tunnel peers %v, want %v", got, tc.wantPeers)
				}
				if p.Tunnel.MTU != 1400 || p.Tunnel.ListenPort != 51820 {
					t.Errorf("tunnel MTU/port %d/%d", p.Tunnel.MTU, p.Tunnel.ListenPort)
				}
			}
			if !reflect.DeepEqual(p.Routes.Routes, tc.wantRoutes) {
				t.Errorf("routes %+v, want %+v", p.Routes.Routes, tc.wantRoutes)
			}
			var remote []string
			for _, r := range p.Filter.RemotePodCIDRs {
				remote = append(remote, r.String())
			}
			if !reflect.DeepEqual(remote, tc.wantRemote) {
				t.Errorf("filter remote %v, want %v", remote, tc.wantRemote)
			}
			var closed []string
			for _, r := range p.Routes.Unreachable {
				closed = append(closed, r.String())
			}
			if !reflect.DeepEqual(closed, tc.wantClosed) {
				t.Errorf("unreachable routes %v, want %v", closed, tc.wantClosed)
			}
			if p.Filter.MSSClamp != tc.wantMSS {
				t.Errorf("MSS clamp %v", p.Filter.MSSClamp)
			}
			var skipped []string
			for _, s := range p.Skipped {
				skipped = append(skipped, s.Cluster)
				if s.Message == "" {
					t.Errorf("skipped %s without message", s.Cluster)
				}
			}
			if !reflect.DeepEqual(skipped, tc.wantSkipped) {
				t.Errorf("skipped %v, want %v", skipped, tc.wantSkipped)
			}
			if !p.Host.IPv4 {
				t.Error("IPv4 forwarding not planned")
			}
			// Pure: the same inputs in another order give the same plan.
			rev := tc.in
			rev.Peers = append([]plan.Peer(nil), tc.in.Peers...)
			for i, j := 0, len(rev.Peers)-1; i < j; i, j = i+1, j-1 {
				rev.Peers[i], rev.Peers[j] = rev.Peers[j], rev.Peers[i]
			}
			if p2 := plan.Compute(rev); !reflect.DeepEqual(p, p2) {
				t.Error("plan depends on peer order")
			}
		})
	}
}

func TestPeersFromDirectory(t *testing.T) {
	kb := key(t).PublicKey().String()
	peer := func(name string, cidrs []string, gw *meshv1.PeerGateway) meshv1.ClusterSetPeer {
		return meshv1.ClusterSetPeer{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: meshv1.ClusterSetPeerSpec{PodCIDRs: cidrs, Gateway: gw}}
	}
	gone := peer("gone", []string{"10.9.0.0/16"}, &meshv1.PeerGateway{Node: "g", PublicKey: kb})
	gone.Spec.Withdrawn = true
	dir := []meshv1.ClusterSetPeer{
		peer("a", []string{"10.1.0.0/16"}, nil),
		peer("b", []string{"10.2.0.0/16"}, &meshv1.PeerGateway{Node: "b1", PublicKey: kb, Endpoints: []string{"192.0.2.2:51820"}}),
		peer("nat", []string{"10.3.0.0/16"}, &meshv1.PeerGateway{Node: "n1", PublicKey: key(t).PublicKey().String()}),
		peer("norange", nil, &meshv1.PeerGateway{Node: "x", PublicKey: key(t).PublicKey().String()}),
		peer("noactive", []string{"10.4.0.0/16"}, nil),
		peer("badkey", []string{"10.5.0.0/16"}, &meshv1.PeerGateway{Node: "z", PublicKey: "not-a-key"}),
		peer("badep", []string{"10.6.0.0/16"}, &meshv1.PeerGateway{Node: "w", PublicKey: key(t).PublicKey().String(), Endpoints: []string{"gw.example:51820"}}),
		gone,
	}
	peers, invalid, withdrawn := plan.PeersFromDirectory("a", dir, nil)
	if len(peers) != 2 || peers[0].Cluster != "b" || peers[1].Cluster != "nat" {
		t.Fatalf("peers %+v, want b and nat", peers)
	}
	if peers[0].Endpoint.String() != "192.0.2.2:51820" || peers[0].Gateway != "b1" || peers[1].Endpoint.IsValid() {
		t.Errorf("endpoints %v %v", peers[0].Endpoint, peers[1].Endpoint)
	}
	if len(withdrawn) != 1 || withdrawn[0] != "gone" {
		t.Errorf("withdrawn %v, want [gone]", withdrawn)
	}
	var got []string
	for _, inv := range invalid {
		got = append(got, inv.Cluster+": "+inv.Message)
	}
	want := []string{"badep", "badkey", "noactive", "norange"}
	if len(got) != len(want) {
		t.Fatalf("invalid %v, want %v", got, want)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]+": ") {
			t.Errorf("invalid[%d] = %q, want %s", i, got[i], want[i])
		}
	}
	// With a resolver the DNS endpoint works.
	peers, _, _ = plan.PeersFromDirectory("a", dir, func(string) (netip.Addr, error) { return netip.MustParseAddr("192.0.2.9"), nil })
	if len(peers) != 3 || peers[1].Endpoint.String() != "192.0.2.9:51820" {
		t.Errorf("resolved peers %+v", peers)
	}
}

func TestInside(t *testing.T) {
	if _, ok := plan.Inside(pfx("10.1.2.0/24", "10.1.0.0/16"), pfx("10.1.0.0/16")); !ok {
		t.Error("inside ranges reported outside")
	}
	if r, ok := plan.Inside(pfx("10.1.2.0/24", "10.0.0.0/8"), pfx("10.1.0.0/16")); ok || r.String() != "10.0.0.0/8" {
		t.Errorf("got %v %v", r, ok)
	}
}

func TestWorkerNeedsNoKeys(t *testing.T) {
	p := plan.Compute(plan.Inputs{Role: plan.RoleWorker, LocalPodCIDRs: pfx("10.1.0.0/16"),
		ActiveGatewayIP: netip.MustParseAddr("172.18.0.2"),
		Peers:           []plan.Peer{{Cluster: "b", PodCIDRs: pfx("10.2.0.0/16")}, {Cluster: "c", PodCIDRs: pfx("10.3.0.0/16")}}})
	if len(p.Routes.Routes) != 2 || len(p.Skipped) != 0 {
		t.Errorf("routes %v skipped %v", p.Routes.Routes, p.Skipped)
	}
}
