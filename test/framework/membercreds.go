package framework

import (
	"context"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/internal/hubtoken"
)

// Names the kubectl plugin's join writes into a member cluster.
const (
	MemberSystemNamespace = "archipelago-system"
	MemberHubSecret       = "archipelago-hub"
	MembershipName        = "membership"
)

// MemberHubToken waits for the hub to create member's ServiceAccount in its
// hub namespace and returns a token for it, as join does: a one-hour token
// (TokenRequest) bound to a new credential Secret hub-credential-* in the
// member's hub namespace.
func MemberHubToken(t testing.TB, hub *rest.Config, member string) string {
	t.Helper()
	return MemberHubTokenTTL(t, hub, member, time.Hour)
}

// MemberHubTokenTTL is MemberHubToken with a lifetime (at least 10 minutes,
// the TokenRequest API's minimum).
func MemberHubTokenTTL(t testing.TB, hub *rest.Config, member string, ttl time.Duration) string {
	t.Helper()
	cs, err := kubernetes.NewForConfig(hub)
	if err != nil {
		t.Fatal(err)
	}
	ns := controllers.MemberNamespace(member)
	var (
		token string
		cred  *corev1.Secret
	)
	err = wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		if cred == nil {
			s, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
				GenerateName: hubtoken.CredentialPrefix, Labels: map[string]string{hubtoken.LabelCredential: member}}}, metav1.CreateOptions{})
			if apierrors.IsNotFound(err) {
				return false, nil // no namespace yet
			}
			if err != nil {
				return false, err
			}
			cred = s
		}
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, controllers.MemberServiceAccount,
			&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
				ExpirationSeconds: ptr.To(int64(ttl / time.Second)),
				BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: cred.Name, UID: cred.UID},
			}}, metav1.CreateOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		token = tr.Status.Token
		return true, nil
	})
	if err != nil {
		t.Fatalf("token for member %s's ServiceAccount %s/%s: %v", member, ns, controllers.MemberServiceAccount, err)
	}
	return token
}

// JoinMember writes what 'kubectl archipelago join' writes into the member:
// the archipelago-system Namespace, the archipelago-hub Secret (token,
// ca.crt) and the ClusterSetMembership "membership".
func JoinMember(t testing.TB, member client.Client, hub *rest.Config, cluster, set, token string) {
	t.Helper()
	ctx := context.Background()
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MemberSystemNamespace}},
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: MemberHubSecret, Namespace: MemberSystemNamespace},
			Data:       map[string][]byte{"token": []byte(token), "ca.crt": hub.CAData},
		},
		&meshv1.ClusterSetMembership{
			ObjectMeta: metav1.ObjectMeta{Name: MembershipName},
			Spec: meshv1.ClusterSetMembershipSpec{ClusterName: cluster, ClusterSet: set, Hub: meshv1.HubConnection{
				Server:    hub.Host,
				SecretRef: meshv1.SecretReference{Name: MemberHubSecret, Namespace: MemberSystemNamespace},
			}},
		},
	}
	for _, o := range objs {
		if err := member.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("join: create %T %s: %v", o, o.GetName(), err)
		}
	}
}
