package cli_test

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	aboutv1beta1 "github.com/archipelago-mesh/archipelago/api/about/v1beta1"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/internal/cli"
	"github.com/archipelago-mesh/archipelago/internal/hubtoken"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
	"github.com/archipelago-mesh/archipelago/internal/mcs/coredns"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

const set = "demo"

// TestJoinLeave walks one hub and two members through the join contract.
// The subtests share the hub's state and run in order.
func TestJoinLeave(t *testing.T) {
	needAPIServers(t)
	framework.StartHub(t, hub.Config, controllers.Options{})
	ctx := context.Background()
	applyFile(t, hub, "config/hub/member-token-policy.yaml")
	cs := &meshv1.ClusterSet{
		ObjectMeta: metav1.ObjectMeta{Name: set},
		Spec:       meshv1.ClusterSetSpec{PodCIDRPools: []meshv1.CIDR{"10.0.0.0/8"}},
	}
	if err := hub.Client.Create(ctx, cs); err != nil {
		t.Fatalf("create ClusterSet: %v", err)
	}

	// Member A runs kubeadm's CoreDNS: its Corefile (kind's) and Deployment.
	corefile := installCoreDNS(t, memberA)

	t.Run("unreachable hub fails before writing anything", func(t *testing.T) {
		r := kubectlArchipelago(t, "join", "a", "--clusterset", set, "--hub-context", "unreachable", "--context", "member-a")
		wantFailure(t, r, cli.ExitError, "cannot ask the cluster", "127.0.0.1:1")
		assertNothingMade(t, "a", memberA)
	})

	t.Run("unknown ClusterSet fails before writing anything", func(t *testing.T) {
		r := kubectlArchipelago(t, "join", "a", "--clusterset", "nope", "--hub-context", "hub", "--context", "member-a")
		wantFailure(t, r, cli.ExitFinding, `ClusterSet "nope" does not exist`)
		assertNothingMade(t, "a", memberA)
	})

	t.Run("an IP family the ClusterSet has no pool of fails before writing anything", func(t *testing.T) {
		r := kubectlArchipelago(t, "join", "a", "--clusterset", set, "--hub-context", "hub", "--context", "member-a", "--ip-family", "ipv6")
		wantFailure(t, r, cli.ExitFinding, "has no IPv6 pool", "--ip-family ipv6")
		assertNothingMade(t, "a", memberA)
	})

	var rangeA string
	t.Run("join writes exactly the expected objects on both sides", func(t *testing.T) {
		r := kubectlArchipelago(t, "join", "a", "--clusterset", set, "--hub-context", "hub", "--context", "member-a")
		if r.code != 0 {
			t.Fatalf("join failed: %s", r)
		}
		mc := &meshv1.MemberCluster{}
		if err := hub.Client.Get(ctx, types.NamespacedName{Name: "a"}, mc); err != nil {
			t.Fatalf("get MemberCluster a: %v", err)
		}
		if mc.Spec.ClusterSet != set || len(mc.Status.PodCIDRs) != 1 {
			t.Fatalf("MemberCluster a: spec %+v status.podCIDRs %v", mc.Spec, mc.Status.PodCIDRs)
		}
		rangeA = mc.Status.PodCIDRs[0]
		if p := netip.MustParsePrefix(rangeA); p.Bits() != 16 || !netip.MustParsePrefix("10.0.0.0/8").Contains(p.Addr()) {
			t.Fatalf("range %s is not a /16 of the pool", rangeA)
		}
		if !strings.Contains(r.stdout, rangeA) {
			t.Errorf("join did not print the assigned range %s", rangeA)
		}
		if _, ok := mc.Annotations[cli.AnnotationAwaitingMember]; ok {
			t.Errorf("a delivered member is still marked %s", cli.AnnotationAwaitingMember)
		}

		secret := getSecret(t, memberA)
		if secret == nil {
			t.Fatal("no hub Secret in member A")
		}
		if len(secret.Data[cli.SecretKeyToken]) == 0 || !bytes.Equal(secret.Data[cli.SecretKeyCA], hub.Config.CAData) {
			t.Fatalf("Secret keys %v: want a token and the hub's CA", keys(secret.Data))
		}
		m := getMembership(t, memberA)
		if m == nil {
			t.Fatal("no ClusterSetMembership in member A")
		}
		want := meshv1.ClusterSetMembershipSpec{ClusterName: "a", ClusterSet: set, Hub: meshv1.HubConnection{
			Server: hub.Config.Host, SecretRef: meshv1.SecretReference{Name: cli.HubSecretName, Namespace: cli.SystemNamespace},
		}}
		if m.Spec != want {
			t.Fatalf("membership spec %+v, want %+v", m.Spec, want)
		}
		assertMemberEmpty(t, memberB)
	})

	t.Run("join prepares multi-cluster services", func(t *testing.T) {
		assertServices(t, memberA, "a", set, corefile)
	})

	t.Run("the token is short-lived and bound to a hub credential Secret", func(t *testing.T) {
		claims := tokenClaims(t, getSecret(t, memberA))
		if claims.Lifetime() != 24*time.Hour {
			t.Errorf("token lifetime %s (exp %s), want the default 24h", claims.Lifetime(), claims.Expires)
		}
		ns := controllers.MemberNamespace("a")
		if claims.Namespace != ns || claims.ServiceAccount != controllers.MemberServiceAccount {
			t.Errorf("token of %s/%s, want %s/%s", claims.Namespace, claims.ServiceAccount, ns, controllers.MemberServiceAccount)
		}
		if !strings.HasPrefix(claims.BoundSecret, hubtoken.CredentialPrefix) {
			t.Fatalf("token bound to Secret %q, want one named %s*", claims.BoundSecret, hubtoken.CredentialPrefix)
		}
		if got := credentialSecrets(t, ns); len(got) != 1 || got[0] != claims.BoundSecret {
			t.Errorf("hub credential Secrets in %s: %v, want only %s", ns, got, claims.BoundSecret)
		}
		if exp := getSecret(t, memberA).Annotations[cli.AnnotationTokenExpires]; exp != claims.Expires.Format(time.RFC3339) {
			t.Errorf("annotation %s = %q, want the token's exp %s", cli.AnnotationTokenExpires, exp, claims.Expires.Format(time.RFC3339))
		}
	})

	t.Run("the member's token can do only what RBAC allows", func(t *testing.T) {
		// A second member, so that there is another namespace to be refused in.
		other := &meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "other"}, Spec: meshv1.MemberClusterSpec{ClusterSet: set}}
		if err := hub.Client.Create(ctx, other); err != nil {
			t.Fatalf("create MemberCluster other: %v", err)
		}
		eventually(t, "namespace of member other", func(ctx context.Context) (bool, error) {
			err := hub.Client.Get(ctx, types.NamespacedName{Name: "other"}, other)
			return err == nil && other.Status.Namespace != "", nil
		})
		secret := getSecret(t, memberA)
		c, err := client.New(&rest.Config{
			Host:            hub.Config.Host,
			BearerToken:     string(secret.Data[cli.SecretKeyToken]),
			TLSClientConfig: rest.TLSClientConfig{CAData: secret.Data[cli.SecretKeyCA]},
		}, client.Options{Scheme: framework.Scheme()})
		if err != nil {
			t.Fatalf("client from the member's token: %v", err)
		}
		gw := func(ns string) *meshv1.TunnelGateway {
			return &meshv1.TunnelGateway{
				ObjectMeta: metav1.ObjectMeta{Name: "gw", Namespace: ns},
				Spec:       meshv1.TunnelGatewaySpec{NodeName: "node-1", PublicKey: "mH3ZsoTjPCnfYHG2+d5ugeOEOsH5Jw1dhb7sZtFvUHM="},
			}
		}
		if err := c.Create(ctx, gw(controllers.MemberNamespace("a"))); err != nil {
			t.Errorf("create Gateway in its own hub namespace: %v", err)
		}
		if err := c.Create(ctx, gw(other.Status.Namespace)); !apierrors.IsForbidden(err) {
			t.Errorf("create Gateway in member other's namespace: got %v, want Forbidden", err)
		}
		var peers meshv1.ClusterSetPeerList
		if err := c.List(ctx, &peers, client.InNamespace(meshv1.ClusterSetNamespace(set))); err != nil {
			t.Errorf("list its set's peer directory: %v", err)
		}
		if err := c.List(ctx, &meshv1.MemberClusterList{}); !apierrors.IsForbidden(err) {
			t.Errorf("list all MemberClusters: got %v, want Forbidden (members read their set's directory only)", err)
		}
		mc := &meshv1.MemberCluster{}
		if err := c.Get(ctx, types.NamespacedName{Name: "a"}, mc); err != nil {
			t.Fatalf("get own MemberCluster: %v", err)
		}
		patch := client.MergeFrom(mc.DeepCopy())
		mc.Status.PodCIDRs = []string{"10.99.0.0/16"}
		if err := c.Status().Patch(ctx, mc, patch); !apierrors.IsForbidden(err) {
			t.Errorf("patch MemberCluster status: got %v, want Forbidden", err)
		}
		if err := c.Patch(ctx, mc, patch); !apierrors.IsForbidden(err) {
			t.Errorf("patch MemberCluster: got %v, want Forbidden", err)
		}
		if err := hub.Client.Delete(ctx, other); err != nil {
			t.Fatalf("delete MemberCluster other: %v", err)
		}
		waitGone(t, hub, &meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "other"}})
	})

	t.Run("the member's token renews itself but mints no other token", func(t *testing.T) {
		secret := getSecret(t, memberA)
		claims := tokenClaims(t, secret)
		kube, err := kubernetes.NewForConfig(&rest.Config{Host: hub.Config.Host, BearerToken: string(secret.Data[cli.SecretKeyToken]),
			TLSClientConfig: rest.TLSClientConfig{CAData: hub.Config.CAData}})
		if err != nil {
			t.Fatal(err)
		}
		request := func(sa string, seconds int64, bound *authenticationv1.BoundObjectReference) error {
			_, err := kube.CoreV1().ServiceAccounts(claims.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
				Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds, BoundObjectRef: bound}}, metav1.CreateOptions{})
			return err
		}
		own := &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: claims.BoundSecret, UID: types.UID(claims.BoundSecretUID)}
		day := int64(24 * 3600)
		// The policy takes a moment to be enforced after it is created.
		var last error
		eventually(t, "an unbound token is refused", func(context.Context) (bool, error) {
			last = request(controllers.MemberServiceAccount, day, nil)
			return apierrors.IsForbidden(last) && strings.Contains(last.Error(), "hub credential Secret"), nil
		})
		t.Logf("unbound token: %v", last)
		if err := request(controllers.MemberServiceAccount, day, own); err != nil {
			t.Errorf("renewal bound to its own credential: %v", err)
		}
		if err := request(controllers.MemberServiceAccount, 100*day, own); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "30 days") {
			t.Errorf("a 100-day token: got %v, want Forbidden naming the 30-day limit", err)
		}
		if err := request("default", day, own); !apierrors.IsForbidden(err) {
			t.Errorf("a token of another ServiceAccount: got %v, want Forbidden", err)
		}
		other := &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: "not-a-credential"}
		if err := request(controllers.MemberServiceAccount, day, other); !apierrors.IsForbidden(err) {
			t.Errorf("a token bound to another Secret: got %v, want Forbidden", err)
		}
	})

	t.Run("join of an existing name from another cluster fails", func(t *testing.T) {
		before := &meshv1.MemberCluster{}
		if err := hub.Client.Get(ctx, types.NamespacedName{Name: "a"}, before); err != nil {
			t.Fatal(err)
		}
		r := kubectlArchipelago(t, "join", "a", "--clusterset", set, "--hub-context", "hub", "--context", "member-b")
		wantFailure(t, r, cli.ExitFinding, `a member named "a" already exists`)
		assertMemberEmpty(t, memberB)
		after := &meshv1.MemberCluster{}
		if err := hub.Client.Get(ctx, types.NamespacedName{Name: "a"}, after); err != nil || after.UID != before.UID || after.DeletionTimestamp != nil {
			t.Fatalf("MemberCluster a was touched: %v %+v", err, after.ObjectMeta)
		}
	})

	t.Run("join again from the same member rotates the token and revokes the old one", func(t *testing.T) {
		old := getSecret(t, memberA).Data[cli.SecretKeyToken]
		oldBound := tokenClaims(t, getSecret(t, memberA)).BoundSecret
		tokenAccepted(t, string(old))
		r := kubectlArchipelago(t, "join", "a", "--clusterset", set, "--hub-context", "hub", "--context", "member-a", "--token-ttl", "2h")
		if r.code != 0 {
			t.Fatalf("rejoin failed: %s", r)
		}
		fresh := getSecret(t, memberA)
		if bytes.Equal(fresh.Data[cli.SecretKeyToken], old) {
			t.Fatal("the token did not change")
		}
		claims := tokenClaims(t, fresh)
		if claims.Lifetime() != 2*time.Hour {
			t.Errorf("token lifetime %s, want --token-ttl 2h", claims.Lifetime())
		}
		if claims.BoundSecret == oldBound {
			t.Errorf("the new token is bound to the old credential %s", oldBound)
		}
		if got := credentialSecrets(t, controllers.MemberNamespace("a")); len(got) != 1 || got[0] != claims.BoundSecret {
			t.Errorf("hub credential Secrets after rotation: %v, want only %s", got, claims.BoundSecret)
		}
		tokenRefused(t, string(old))
		tokenAccepted(t, string(fresh.Data[cli.SecretKeyToken]))
		// The services part is idempotent: the same properties, CoreDNS
		// not edited (nor restarted) again.
		cm, d := coreDNS(t, memberA)
		assertServices(t, memberA, "a", set, corefile)
		cm2, d2 := coreDNS(t, memberA)
		if cm2.ResourceVersion != cm.ResourceVersion || d2.ResourceVersion != d.ResourceVersion {
			t.Error("a rejoin edited or restarted CoreDNS again")
		}
	})

	t.Run("join refuses a ClusterProperty that names another cluster", func(t *testing.T) {
		stale := &aboutv1beta1.ClusterProperty{ObjectMeta: metav1.ObjectMeta{Name: aboutv1beta1.ClusterIDProperty},
			Spec: aboutv1beta1.ClusterPropertySpec{Value: "elsewhere"}}
		if err := memberB.Client.Create(ctx, stale); err != nil {
			t.Fatal(err)
		}
		r := kubectlArchipelago(t, "join", "b", "--clusterset", set, "--hub-context", "hub", "--context", "member-b")
		wantFailure(t, r, cli.ExitFinding, "ClusterProperty cluster.clusterset.k8s.io", `"elsewhere"`)
		assertNothingMade(t, "b", memberB)
		if err := memberB.Client.Get(ctx, client.ObjectKeyFromObject(stale), stale); err != nil || stale.Spec.Value != "elsewhere" {
			t.Errorf("the user's ClusterProperty was touched: %v %+v", err, stale.Spec)
		}
		if err := memberB.Client.Delete(ctx, stale); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("join with a taken pod-cidr fails and removes its MemberCluster", func(t *testing.T) {
		r := kubectlArchipelago(t, "join", "b", "--clusterset", set, "--hub-context", "hub", "--context", "member-b", "--pod-cidr", rangeA)
		wantFailure(t, r, cli.ExitFinding, "refused a pod range", meshv1.ReasonConflict)
		assertNothingMade(t, "b", memberB)
	})

	t.Run("print-only creates nothing in the member", func(t *testing.T) {
		r := kubectlArchipelago(t, "join", "c", "--clusterset", set, "--hub-context", "hub", "--context", "member-b", "--print-only")
		if r.code != 0 {
			t.Fatalf("join --print-only failed: %s", r)
		}
		for _, want := range []string{"kind: ClusterSetMembership", "clusterName: c", "kind: Secret", "name: " + cli.HubSecretName, "ca.crt:", "token:", "kind: Namespace"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("manifests lack %q", want)
			}
		}
		assertMemberEmpty(t, memberB)
		mc := &meshv1.MemberCluster{}
		if err := hub.Client.Get(ctx, types.NamespacedName{Name: "c"}, mc); err != nil || mc.Annotations[cli.AnnotationAwaitingMember] == "" {
			t.Fatalf("MemberCluster c: %v, annotations %v", err, mc.Annotations)
		}
	})

	t.Run("a later join from the member completes a print-only join", func(t *testing.T) {
		r := kubectlArchipelago(t, "join", "c", "--clusterset", set, "--hub-context", "hub", "--context", "member-b")
		if r.code != 0 {
			t.Fatalf("join failed: %s", r)
		}
		if m := getMembership(t, memberB); m == nil || m.Spec.ClusterName != "c" {
			t.Fatalf("membership in member B: %+v", m)
		}
		r = kubectlArchipelago(t, "leave", "c", "--hub-context", "hub", "--context", "member-b")
		if r.code != 0 {
			t.Fatalf("leave failed: %s", r)
		}
		assertNothingMade(t, "c", memberB)
	})

	t.Run("kind-config carries the assigned podSubnet", func(t *testing.T) {
		before := getMembership(t, memberA)
		r := kubectlArchipelago(t, "join", "d", "--clusterset", set, "--hub-context", "hub", "--kind-config")
		if r.code != 0 {
			t.Fatalf("join --kind-config failed: %s", r)
		}
		mc := &meshv1.MemberCluster{}
		if err := hub.Client.Get(ctx, types.NamespacedName{Name: "d"}, mc); err != nil || len(mc.Status.PodCIDRs) != 1 {
			t.Fatalf("MemberCluster d: %v %v", err, mc.Status.PodCIDRs)
		}
		for _, want := range []string{"apiVersion: kind.x-k8s.io/v1alpha4", "kind: Cluster", `podSubnet: "` + mc.Status.PodCIDRs[0] + `"`, "serviceSubnet:"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("kind config lacks %q", want)
			}
		}
		// Not even the current context (member A) was touched.
		if after := getMembership(t, memberA); after == nil || after.ResourceVersion != before.ResourceVersion {
			t.Errorf("membership in the current context changed: %+v", after)
		}
		assertMemberEmpty(t, memberB)
		r = kubectlArchipelago(t, "leave", "d", "--hub-context", "hub")
		if r.code != 0 {
			t.Fatalf("leave d failed: %s", r)
		}
		waitGone(t, hub, &meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "d"}})
	})

	t.Run("leave removes both sides and revokes the token", func(t *testing.T) {
		token := string(getSecret(t, memberA).Data[cli.SecretKeyToken])
		tokenAccepted(t, token)
		r := kubectlArchipelago(t, "leave", "a", "--hub-context", "hub", "--context", "member-a")
		if r.code != 0 {
			t.Fatalf("leave failed: %s", r)
		}
		assertNothingMade(t, "a", memberA)
		tokenRefused(t, token)
		cm, _ := coreDNS(t, memberA)
		if cm.Data["Corefile"] != corefile {
			t.Errorf("leave did not give the Corefile back:\n%s\nwant\n%s", cm.Data["Corefile"], corefile)
		}
		role, binding := coredns.RBAC(cli.CoreDNSNamespace, cli.CoreDNSName)
		for _, o := range []client.Object{role, binding} {
			if err := memberA.Client.Get(ctx, client.ObjectKeyFromObject(o), o); !apierrors.IsNotFound(err) {
				t.Errorf("CoreDNS RBAC %T %s after leave: %v", o, o.GetName(), err)
			}
		}
		r = kubectlArchipelago(t, "leave", "a", "--hub-context", "hub", "--context", "member-a")
		if r.code != 0 {
			t.Fatalf("a second leave is not a no-op: %s", r)
		}
	})

	t.Run("leave refuses another member's cluster", func(t *testing.T) {
		r := kubectlArchipelago(t, "join", "e", "--clusterset", set, "--hub-context", "hub", "--context", "member-b")
		if r.code != 0 {
			t.Fatalf("join e failed: %s", r)
		}
		r = kubectlArchipelago(t, "leave", "zzz", "--context", "member-b")
		wantFailure(t, r, cli.ExitFinding, `is member "e"`)
		if getMembership(t, memberB) == nil {
			t.Fatal("leave of another name removed e's membership")
		}
		if r := kubectlArchipelago(t, "leave", "e", "--hub-context", "hub", "--context", "member-b"); r.code != 0 {
			t.Fatalf("leave e failed: %s", r)
		}
		assertNothingMade(t, "e", memberB)
	})

	t.Run("usage errors exit 2", func(t *testing.T) {
		wantFailure(t, kubectlArchipelago(t, "join", "a"), cli.ExitError, "--clusterset is required")
		wantFailure(t, kubectlArchipelago(t, "join", "Not_A_Label", "--clusterset", set, "--hub-context", "hub"), cli.ExitError, "not a DNS label")
		wantFailure(t, kubectlArchipelago(t, "join", "a", "--clusterset", set, "--hub-context", "no-such-context"), cli.ExitError, "no-such-context")
		wantFailure(t, kubectlArchipelago(t, "leave", "a"), cli.ExitError, "--hub-context")
		wantFailure(t, kubectlArchipelago(t, "join", "a", "--clusterset", set, "--hub-context", "hub", "--token-ttl", "8760h"), cli.ExitError, "--token-ttl 8760h0m0s is too long")
	})
}

func wantFailure(t *testing.T, r result, code int, msgs ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\n%s", r.code, code, r)
	}
	for _, m := range msgs {
		if !strings.Contains(r.stderr, m) {
			t.Errorf("error output lacks %q:\n%s", m, r.stderr)
		}
	}
}

// assertNothingMade checks that no MemberCluster name is on the hub (after
// its finalizer ran) and nothing of a join is in the member.
func assertNothingMade(t *testing.T, name string, member *framework.APIServer) {
	t.Helper()
	waitGone(t, hub, &meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: name}})
	assertMemberEmpty(t, member)
}

func assertMemberEmpty(t *testing.T, member *framework.APIServer) {
	t.Helper()
	var props aboutv1beta1.ClusterPropertyList
	if err := member.Client.List(context.Background(), &props, client.MatchingLabels{mcs.LabelManagedBy: mcs.ManagedByValue}); err != nil || len(props.Items) != 0 {
		t.Errorf("member has %d ClusterProperties of archipelago (%v)", len(props.Items), err)
	}
	if s := getSecret(t, member); s != nil {
		t.Errorf("member has Secret %s/%s", s.Namespace, s.Name)
	}
	if m := getMembership(t, member); m != nil {
		t.Errorf("member has ClusterSetMembership %s (cluster %s)", m.Name, m.Spec.ClusterName)
	}
}

func waitGone(t *testing.T, s *framework.APIServer, obj client.Object) {
	t.Helper()
	eventually(t, "wait for "+obj.GetName()+" to be gone", func(ctx context.Context) (bool, error) {
		err := s.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj)
		return apierrors.IsNotFound(err), nil
	})
}

func getSecret(t *testing.T, s *framework.APIServer) *corev1.Secret {
	t.Helper()
	sec := &corev1.Secret{}
	err := s.Client.Get(context.Background(), types.NamespacedName{Namespace: cli.SystemNamespace, Name: cli.HubSecretName}, sec)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("get Secret: %v", err)
	}
	return sec
}

func getMembership(t *testing.T, s *framework.APIServer) *meshv1.ClusterSetMembership {
	t.Helper()
	m := &meshv1.ClusterSetMembership{}
	err := s.Client.Get(context.Background(), types.NamespacedName{Name: cli.MembershipName}, m)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("get ClusterSetMembership: %v", err)
	}
	return m
}

// tokenClaims decodes the hub token in a member's hub Secret.
func tokenClaims(t *testing.T, s *corev1.Secret) hubtoken.Claims {
	t.Helper()
	if s == nil {
		t.Fatal("no hub Secret")
	}
	c, err := hubtoken.Parse(string(s.Data[cli.SecretKeyToken]))
	if err != nil {
		t.Fatalf("hub token: %v", err)
	}
	return c
}

// credentialSecrets lists the names of the hub Secrets tokens are bound to in ns.
func credentialSecrets(t *testing.T, ns string) []string {
	t.Helper()
	var list corev1.SecretList
	if err := hub.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatalf("list Secrets in %s: %v", ns, err)
	}
	var out []string
	for _, s := range list.Items {
		if strings.HasPrefix(s.Name, hubtoken.CredentialPrefix) {
			out = append(out, s.Name)
		}
	}
	return out
}

// askHub reads the member's own MemberCluster with token, as an agent would.
func askHub(token string) error {
	c, err := client.New(&rest.Config{Host: hub.Config.Host, BearerToken: token,
		TLSClientConfig: rest.TLSClientConfig{CAData: hub.Config.CAData}}, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		return err
	}
	// A member may read its own MemberCluster (member "a"), not the list of all.
	return c.Get(context.Background(), client.ObjectKey{Name: "a"}, &meshv1.MemberCluster{})
}

func tokenAccepted(t *testing.T, token string) {
	t.Helper()
	if err := askHub(token); err != nil {
		t.Fatalf("the hub refused a token it should accept: %v", err)
	}
}

// tokenRefused waits until the hub refuses token (its authenticator reads
// the bound objects through informers, so a deletion takes a moment).
func tokenRefused(t *testing.T, token string) {
	t.Helper()
	var last error
	eventually(t, "the hub refuses the revoked token", func(context.Context) (bool, error) {
		last = askHub(token)
		return apierrors.IsUnauthorized(last), nil
	})
	t.Logf("revoked token: %v", last)
}

// applyFile creates the objects of a YAML file of the repository.
func applyFile(t *testing.T, s *framework.APIServer, path string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(framework.RepoRoot(), path))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if err := s.Client.Create(context.Background(), u); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s: create %s %s: %v", path, u.GetKind(), u.GetName(), err)
		}
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
