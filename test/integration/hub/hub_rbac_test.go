package hub

import (
	"context"
	"strings"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/test/framework"
)

const hubPolicy = "archipelago-hub-managed-objects"

// addManagedLabel is a merge patch that only adds the hub's label: the way
// the hub would adopt an object.
var addManagedLabel = client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"app.kubernetes.io/managed-by":"archipelago-hub"}}}`))

// asHub returns a client that authenticates as the hub's ServiceAccount, with
// the RBAC and admission policy of config/.
func asHub(t *testing.T) client.Client {
	t.Helper()
	cfg, err := framework.HubConfig(context.Background(), api.Config)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The hub's identity may change only what it created: a namespace or a
// ClusterRole someone else made can be neither patched nor deleted by it, it
// cannot write RBAC objects under other names or bind another role, and its
// Leases live in its own namespace only.
func TestHubConfinedToItsObjects(t *testing.T) {
	c := needAPI(t)
	ctx := context.Background()
	hub := asHub(t)

	// Objects of someone else, among them one with a name the hub uses.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "member-not-the-hubs"}}
	// Rules the hub holds itself, so that RBAC's escalation check lets a
	// change through and only the policy stands in the way.
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses-role"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"mesh.archipelago.dev"}, Resources: []string{"clustersets"}, Verbs: []string{"get"}}}}
	memberRole := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "archipelago-member:not-the-hubs"}}
	for _, o := range []client.Object{ns, role, memberRole} {
		create(t, c, o)
	}
	t.Cleanup(func() {
		for _, o := range []client.Object{ns, role, memberRole} {
			_ = c.Delete(ctx, o)
		}
	})
	managed := map[string]string{"app.kubernetes.io/managed-by": "archipelago-hub"}

	refused := []struct {
		name string
		rule string // the policy's rule that refuses, "" for RBAC
		do   func() error
	}{
		{"delete a namespace it did not create", "rule managed-by-hub", func() error {
			return hub.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.Name}})
		}},
		{"delete its own namespace", "rule managed-by-hub", func() error {
			return hub.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: framework.HubNamespace}})
		}},
		{"patch a namespace it did not create (to adopt it)", "rule managed-by-hub", func() error {
			return hub.Patch(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.Name}}, addManagedLabel)
		}},
		{"delete a ClusterRole it did not create", "rule managed-by-hub", func() error {
			return hub.Delete(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role.Name}})
		}},
		{"patch a ClusterRole it did not create", "rule managed-by-hub", func() error {
			return hub.Patch(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role.Name}}, addManagedLabel)
		}},
		{"delete an unlabelled ClusterRole with a member name", "rule managed-by-hub", func() error {
			return hub.Delete(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: memberRole.Name}})
		}},
		{"patch its own ClusterRole", "rule managed-by-hub", func() error {
			return hub.Patch(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "archipelago-hub"}}, addManagedLabel)
		}},
		{"create a labelled ClusterRole under another name", "rule hub-rbac-names", func() error {
			return hub.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "extra-powers", Labels: managed}})
		}},
		{"bind its own ClusterRole to a member", "rule hub-binds-member-role", func() error {
			return hub.Create(ctx, &rbacv1.ClusterRoleBinding{
				ObjectMeta: metav1.ObjectMeta{Name: "archipelago-member:evil", Labels: managed},
				RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "archipelago-hub"},
				Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "archipelago-agent", Namespace: "member-evil"}},
			})
		}},
		{"create a ServiceAccount without its label", "rule managed-by-hub", func() error {
			return hub.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "archipelago-agent", Namespace: "default"}}, client.DryRunAll)
		}},
		{"take a Lease outside its namespace", "", func() error {
			return hub.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "archipelago-hub", Namespace: "default"}})
		}},
		{"read a Secret", "", func() error {
			return hub.Get(ctx, client.ObjectKey{Namespace: framework.HubNamespace, Name: "anything"}, &corev1.Secret{})
		}},
	}
	for _, r := range refused {
		t.Run("refused: "+r.name, func(t *testing.T) {
			err := r.do()
			if !apierrors.IsForbidden(err) {
				t.Fatalf("got %v, want Forbidden", err)
			}
			if r.rule != "" && !containsAll(err.Error(), "ValidatingAdmissionPolicy '"+hubPolicy+"'", r.rule) {
				t.Fatalf("refused, but not by %s of %s: %v", r.rule, hubPolicy, err)
			}
			if r.rule == "" && strings.Contains(err.Error(), "ValidatingAdmissionPolicy") {
				t.Fatalf("refused by the policy, want RBAC: %v", err)
			}
			t.Logf("refused: %v", err)
		})
	}
	// Both objects are untouched.
	got := &corev1.Namespace{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(ns), got); err != nil || !got.DeletionTimestamp.IsZero() || got.Labels["app.kubernetes.io/managed-by"] != "" {
		t.Errorf("namespace %s changed: %+v (err %v)", ns.Name, got.ObjectMeta, err)
	}

	// What it needs still works: a Lease in its own namespace.
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "archipelago-test-lease", Namespace: framework.HubNamespace}}
	if err := hub.Create(ctx, lease); err != nil {
		t.Errorf("hub cannot create a Lease in %s: %v", framework.HubNamespace, err)
	} else if err := hub.Delete(ctx, lease); err != nil {
		t.Errorf("hub cannot delete its Lease: %v", err)
	}
	// A labelled namespace and a labelled member role are its own to manage.
	own := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "member-hub-owned", Labels: managed}}
	if err := hub.Create(ctx, own, client.DryRunAll); err != nil {
		t.Errorf("hub cannot create a labelled namespace: %v", err)
	}
}
