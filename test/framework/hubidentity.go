package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// The hub's identity as config/hub deploys it.
const (
	HubNamespace      = "archipelago-system"
	HubServiceAccount = "archipelago-hub"
)

// HubUserName is the user name the API server gives the hub's ServiceAccount.
var HubUserName = "system:serviceaccount:" + HubNamespace + ":" + HubServiceAccount

// installHubIdentity applies what config/ gives the hub in a real cluster:
// its Namespace and ServiceAccount (config/hub) and everything
// config/rbac/kustomization.yaml lists (ClusterRole, Role, bindings and the
// ValidatingAdmissionPolicy that confines it). It returns once the policy
// is enforced, so no test runs while the hub is still unconfined.
func installHubIdentity(ctx context.Context, admin *rest.Config, c client.Client) error {
	files := []string{
		filepath.Join(RepoRoot(), "config", "hub", "namespace.yaml"),
		filepath.Join(RepoRoot(), "config", "hub", "serviceaccount.yaml"),
	}
	rbacDir := filepath.Join(RepoRoot(), "config", "rbac")
	resources, err := kustomizationResources(rbacDir)
	if err != nil {
		return err
	}
	for _, r := range resources {
		files = append(files, filepath.Join(rbacDir, r))
	}
	policies := 0
	for _, f := range files {
		kinds, err := applyFile(ctx, c, f)
		if err != nil {
			return err
		}
		policies += kinds["ValidatingAdmissionPolicy"]
	}
	if policies == 0 {
		// TestHubConfinedToItsObjects fails without one.
		return nil
	}
	hub, err := HubConfig(ctx, admin)
	if err != nil {
		return err
	}
	return waitPolicyEnforced(ctx, hub)
}

// kustomizationResources lists the files a kustomization.yaml names.
func kustomizationResources(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		return nil, fmt.Errorf("parse %s/kustomization.yaml: %w", dir, err)
	}
	return k.Resources, nil
}

// applyFile creates every object of a (multi-document) YAML file and
// counts them by kind.
func applyFile(ctx context.Context, c client.Client, path string) (map[string]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kinds := map[string]int{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return kinds, nil
			}
			return nil, fmt.Errorf("decode %s: %w", path, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if err := c.Create(ctx, &u); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("apply %s %s from %s: %w", u.GetKind(), u.GetName(), path, err)
		}
		kinds[u.GetKind()]++
	}
}

// HubConfig returns a rest.Config that authenticates as the hub's
// ServiceAccount with a token of its own (TokenRequest), as the hub's Pod
// does: the hub then has exactly the rights config/rbac gives it.
func HubConfig(ctx context.Context, admin *rest.Config) (*rest.Config, error) {
	cs, err := kubernetes.NewForConfig(admin)
	if err != nil {
		return nil, err
	}
	tr, err := cs.CoreV1().ServiceAccounts(HubNamespace).CreateToken(ctx, HubServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](4 * 3600)}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for the hub's ServiceAccount %s/%s: %w", HubNamespace, HubServiceAccount, err)
	}
	cfg := rest.AnonymousClientConfig(admin)
	cfg.BearerToken = tr.Status.Token
	cfg.QPS, cfg.Burst = admin.QPS, admin.Burst
	// A test's transport wrapper (a write counter, say) applies to the hub too.
	cfg.WrapTransport = admin.WrapTransport
	return cfg, nil
}

// waitPolicyEnforced waits until the API server refuses the hub a namespace
// it did not label (a dry run, so nothing is created). Policies take effect a
// moment after they are written; an API server without the
// ValidatingAdmissionPolicy admission plugin never refuses, and the tests
// would run with the hub unconfined.
func waitPolicyEnforced(ctx context.Context, hub *rest.Config) error {
	c, err := client.New(hub, client.Options{Scheme: Scheme()})
	if err != nil {
		return err
	}
	probe := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "archipelago-policy-probe"}}
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		last = c.Create(ctx, probe, client.DryRunAll)
		if apierrors.IsForbidden(last) && strings.Contains(last.Error(), "ValidatingAdmissionPolicy") {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the hub's ValidatingAdmissionPolicy is not enforced after 30s (is the ValidatingAdmissionPolicy admission plugin on?); a dry-run namespace without the managed-by label got: %v", last)
}
