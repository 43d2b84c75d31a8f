package hub

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	yamlutil "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// Every bad spec we can think of is refused by the API server (server-side
// dry run, as `kubectl apply --dry-run=server` does) with a message that
// names the field.
func TestBadSpecsAreRejected(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	dry := client.DryRunAll

	cases := []struct {
		name string
		obj  client.Object
		want []string // every part must be in the error
	}{
		{"pool is not a CIDR", framework.NewClusterSet("bad", []string{"10.0.0.0"}), []string{"spec.podCIDRPools[0]", "must be a CIDR"}},
		{"pool is garbage", framework.NewClusterSet("bad", []string{"ten-dot-zero"}), []string{"spec.podCIDRPools[0]", "must be a CIDR"}},
		{"pool has host bits", framework.NewClusterSet("bad", []string{"10.1.2.3/16"}), []string{"spec.podCIDRPools[0]", "canonical"}},
		{"IPv6 pool not canonical", framework.NewClusterSet("bad", []string{"FD00:0:0::/48"}), []string{"spec.podCIDRPools[0]", "canonical"}},
		{"pools overlap", framework.NewClusterSet("bad", []string{"10.0.0.0/8", "10.1.0.0/16"}), []string{"spec.podCIDRPools", "must not overlap"}},
		{"pool listed twice", framework.NewClusterSet("bad", []string{"10.0.0.0/8", "10.0.0.0/8"}), []string{"spec.podCIDRPools[1]", "Duplicate"}},
		{"no pool", framework.NewClusterSet("bad", nil), []string{"spec.podCIDRPools"}},
		{"IPv4 block larger than its pool", framework.NewClusterSet("bad", []string{"10.0.0.0/16"}, framework.WithBlockSize(8, 0)), []string{"spec.blockSize.ipv4", "fit inside"}},
		{"IPv6 block larger than its pool", framework.NewClusterSet("bad", []string{"fd00::/64"}, framework.WithBlockSize(0, 48)), []string{"spec.blockSize.ipv6", "fit inside"}},
		{"IPv4 block longer than 32", framework.NewClusterSet("bad", []string{"10.0.0.0/8"}, framework.WithBlockSize(33, 0)), []string{"spec.blockSize.ipv4", "less than or equal to 32"}},
		{"tunnel MTU too small", withTunnel(framework.NewClusterSet("bad", []string{"10.0.0.0/8"}), meshv1.TunnelSettings{MTU: 576}), []string{"spec.tunnel.mtu", "greater than or equal to 1280"}},
		{"tunnel port out of range", withTunnel(framework.NewClusterSet("bad", []string{"10.0.0.0/8"}), meshv1.TunnelSettings{Port: 70000}), []string{"spec.tunnel.port"}},
		{"negative quarantine", framework.NewClusterSet("bad", []string{"10.0.0.0/8"}, framework.WithQuarantine(-1)), []string{"spec.quarantineSeconds"}},
		{"clusterset name not a DNS label", framework.NewClusterSet("bad.name", []string{"10.0.0.0/8"}), []string{"metadata.name", "DNS label"}},

		{"member without clusterset", framework.NewMember("bad", ""), []string{"spec.clusterSet"}},
		{"member name not a DNS label", framework.NewMember("a.b", "prod"), []string{"metadata.name", "DNS label"}},
		{"member name too long", framework.NewMember(strings.Repeat("a", 64), "prod"), []string{"metadata.name", "at most 63"}},
		{"member podCIDR not a CIDR", framework.NewMember("bad", "prod", framework.WithPodCIDRs("10.1.0.0")), []string{"spec.podCIDRs[0]", "must be a CIDR"}},
		{"member podCIDR host bits", framework.NewMember("bad", "prod", framework.WithPodCIDRs("10.1.0.1/16")), []string{"spec.podCIDRs[0]", "canonical"}},
		{"member two IPv4 ranges", framework.NewMember("bad", "prod", framework.WithPodCIDRs("10.1.0.0/16", "10.2.0.0/16")), []string{"spec.podCIDRs", "one range per IP family"}},
		{"member family listed twice", framework.NewMember("bad", "prod", framework.WithIPFamilies(meshv1.IPv4, meshv1.IPv4)), []string{"spec.ipFamilies", "at most once"}},
		{"member unknown family", framework.NewMember("bad", "prod", framework.WithIPFamilies("IPv5")), []string{"spec.ipFamilies[0]", "IPv4", "IPv6"}},
		{"member three families", framework.NewMember("bad", "prod", framework.WithIPFamilies(meshv1.IPv4, meshv1.IPv6, meshv1.IPv4)), []string{"spec.ipFamilies"}},
		{"member adopts a range of an unlisted family", framework.NewMember("bad", "prod", framework.WithIPFamilies(meshv1.IPv6), framework.WithPodCIDRs("10.1.0.0/16")),
			[]string{"spec.podCIDRs", "spec.ipFamilies does not list"}},

		{"gateway key too long", &meshv1.TunnelGateway{ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: "default"}, Spec: meshv1.TunnelGatewaySpec{NodeName: "n", PublicKey: strings.Repeat("A", 65)}}, []string{"spec.publicKey"}},
		{"gateway without node", &meshv1.TunnelGateway{ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: "default"}, Spec: meshv1.TunnelGatewaySpec{PublicKey: "x"}}, []string{"spec.nodeName"}},

		{"membership hub not https", membership("a", "http://hub.example:6443"), []string{"spec.hub.server", "https"}},
		{"membership cluster name not a label", membership("A_B", "https://hub.example:6443"), []string{"spec.clusterName", "DNS label"}},
		{"membership with another name", renamed(membership("a", "https://hub.example:6443"), "second"), []string{"metadata.name", "must be 'membership'"}},
		{"membership clusterset not a label", inSet(membership("a", "https://hub.example:6443"), "prod.eu"), []string{"spec.clusterSet", "DNS label"}},
		{"member clusterset not a label", framework.NewMember("bad", "Prod_EU"), []string{"spec.clusterSet", "DNS label"}},
		{"member clusterset too long", framework.NewMember("bad", strings.Repeat("p", 64)), []string{"spec.clusterSet", "63"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Create(ctx, tc.obj, dry)
			if err == nil {
				t.Fatalf("accepted; want an error naming %v", tc.want)
			}
			t.Logf("refused: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}

	// Immutable fields are refused on update.
	cs := framework.NewClusterSet("immutable", []string{"10.0.0.0/8"})
	create(t, c, cs)
	m := framework.NewMember("immutable-a", "immutable")
	create(t, c, m)
	updates := []struct {
		name   string
		obj    client.Object
		mutate func()
		want   string
	}{
		{"member moved to another set", m, func() { m.Spec.ClusterSet = "other" }, "spec.clusterSet is immutable"},
		{"block size changed", cs, func() { cs.Spec.BlockSize.IPv4 = 24 }, "spec.blockSize is immutable"},
	}
	for _, u := range updates {
		t.Run(u.name, func(t *testing.T) {
			if err := c.Get(ctx, client.ObjectKeyFromObject(u.obj), u.obj); err != nil {
				t.Fatal(err)
			}
			u.mutate()
			err := c.Update(ctx, u.obj, dry)
			if err == nil || !strings.Contains(err.Error(), u.want) {
				t.Errorf("update: got %v, want an error containing %q", err, u.want)
			}
		})
	}

	// Defaults land where a user reads them. The MTU has none: unset,
	// every gateway derives it from its underlay.
	if err := c.Get(ctx, client.ObjectKeyFromObject(cs), cs); err != nil {
		t.Fatal(err)
	}
	if cs.Spec.BlockSize.IPv4 != 16 || cs.Spec.BlockSize.IPv6 != 64 || cs.Spec.Tunnel.MTU != 0 || cs.Spec.Tunnel.Port != 51820 ||
		cs.Spec.Quarantine().Seconds() != 300 || cs.Spec.Tunnel.Keepalive().Seconds() != 25 {
		t.Errorf("defaults not applied: %+v", cs.Spec)
	}
}

func withTunnel(cs *meshv1.ClusterSet, tun meshv1.TunnelSettings) *meshv1.ClusterSet {
	cs.Spec.Tunnel = tun
	return cs
}

func renamed(m *meshv1.ClusterSetMembership, name string) *meshv1.ClusterSetMembership {
	m.Name = name
	return m
}

func inSet(m *meshv1.ClusterSetMembership, set string) *meshv1.ClusterSetMembership {
	m.Spec.ClusterSet = set
	return m
}

func membership(cluster, server string) *meshv1.ClusterSetMembership {
	return &meshv1.ClusterSetMembership{
		ObjectMeta: metav1.ObjectMeta{Name: "membership"},
		Spec: meshv1.ClusterSetMembershipSpec{
			ClusterName: cluster, ClusterSet: "prod",
			Hub: meshv1.HubConnection{Server: server, SecretRef: meshv1.SecretReference{Name: "hub", Namespace: "archipelago-system"}},
		},
	}
}

// The manifests users apply are accepted by the API server as they are.
func TestSampleManifestsAreValid(t *testing.T) {
	c := needAPI(t)
	for _, file := range []string{"config/samples/clusterset.yaml", "config/samples/memberclusters.yaml", "config/agent/samples/membership.yaml"} {
		data, err := os.ReadFile(filepath.Join(framework.RepoRoot(), file))
		if err != nil {
			t.Fatal(err)
		}
		dec := yamlutil.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		n := 0
		for {
			var u unstructured.Unstructured
			if err := dec.Decode(&u.Object); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("%s: %v", file, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			n++
			if u.GetNamespace() != "" {
				ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: u.GetNamespace()}}
				_ = c.Create(context.Background(), ns)
			}
			if err := c.Create(context.Background(), &u, client.DryRunAll); err != nil {
				t.Errorf("%s: %s %s refused: %v", file, u.GetKind(), u.GetName(), err)
			}
		}
		if n == 0 {
			t.Errorf("%s holds no object", file)
		}
	}
}
