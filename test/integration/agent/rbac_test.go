package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"
	"sigs.k8s.io/yaml"

	aboutv1beta1 "github.com/archipelago-mesh/archipelago/api/about/v1beta1"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// readObjects reads the objects of a multi-document YAML file.
func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return objs
}

// configAgent reads every object config/agent's kustomization lists.
func configAgent(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	return kustomization(t, filepath.Join(framework.RepoRoot(), "config", "agent"))
}

// kustomization reads every object a kustomization lists, following
// resources that are directories (other kustomizations).
func kustomization(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(raw, &k); err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			objs = append(objs, kustomization(t, p)...)
			continue
		}
		objs = append(objs, readObjects(t, p)...)
	}
	return objs
}

// TestOnlyGatewayCandidatesReadTheHubSecret applies config/agent to a real
// apiserver and asks it, as each agent ServiceAccount, for the hub Secret.
func TestOnlyGatewayCandidatesReadTheHubSecret(t *testing.T) {
	needAPIServers(t)
	ctx := context.Background()
	applyConfigAgent(t)
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: framework.MemberSystemNamespace, Name: framework.MemberHubSecret},
		Data: map[string][]byte{"token": []byte("t")}}
	if err := member.Client.Create(ctx, secret); err == nil {
		t.Cleanup(func() { _ = member.Client.Delete(context.Background(), secret) })
	} else if !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: framework.MemberSystemNamespace, Name: "other"}}
	if err := member.Client.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = member.Client.Delete(context.Background(), other) })

	key := client.ObjectKeyFromObject(secret)

	worker := impersonate(t, "archipelago-agent")
	if err := worker.Get(ctx, key, &corev1.Secret{}); !apierrors.IsForbidden(err) {
		t.Errorf("a worker's agent reads the hub Secret: got %v, want Forbidden", err)
	}
	if err := worker.List(ctx, &corev1.SecretList{}, client.InNamespace(framework.MemberSystemNamespace)); !apierrors.IsForbidden(err) {
		t.Errorf("a worker's agent lists Secrets: got %v, want Forbidden", err)
	}
	// It still does its own job: read Nodes and the membership.
	if err := worker.List(ctx, &corev1.NodeList{}); err != nil {
		t.Errorf("a worker's agent cannot list Nodes: %v", err)
	}
	if err := worker.List(ctx, &meshv1.ClusterSetMembershipList{}); err != nil {
		t.Errorf("a worker's agent cannot list memberships: %v", err)
	}

	gw := impersonate(t, "archipelago-gateway")
	s := &corev1.Secret{}
	if err := gw.Get(ctx, key, s); err != nil {
		t.Fatalf("a gateway candidate's agent cannot read the hub Secret: %v", err)
	}
	if err := gw.Update(ctx, s); err != nil {
		t.Errorf("a gateway candidate's agent cannot write a renewed token: %v", err)
	}
	if err := gw.Get(ctx, client.ObjectKeyFromObject(other), &corev1.Secret{}); !apierrors.IsForbidden(err) {
		t.Errorf("a gateway candidate's agent reads another Secret: got %v, want Forbidden", err)
	}

	// Multi-cluster services run on the elected agent, a gateway candidate:
	// only its ServiceAccount may write ServiceImports (config/mcs/rbac).
	si := &mcsv1beta1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Namespace: framework.MemberSystemNamespace, Name: "rbac-probe"},
		Spec: mcsv1beta1.ServiceImportSpec{Type: mcsv1beta1.Headless, Ports: []mcsv1beta1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}}}
	if err := worker.Create(ctx, si.DeepCopy()); !apierrors.IsForbidden(err) {
		t.Errorf("a worker's agent creates a ServiceImport: got %v, want Forbidden", err)
	}
	if err := gw.Create(ctx, si.DeepCopy()); err != nil {
		t.Errorf("a gateway candidate's agent cannot create a ServiceImport: %v", err)
	} else {
		t.Cleanup(func() { _ = member.Client.Delete(context.Background(), si) })
	}
	for _, l := range []client.ObjectList{&mcsv1beta1.ServiceExportList{}, &aboutv1beta1.ClusterPropertyList{}} {
		if err := gw.List(ctx, l); err != nil {
			t.Errorf("a gateway candidate's agent cannot list %T: %v", l, err)
		}
	}
	if err := gw.List(ctx, &corev1.SecretList{}, client.InNamespace(framework.MemberSystemNamespace)); !apierrors.IsForbidden(err) {
		t.Errorf("a gateway candidate's agent lists Secrets: got %v, want Forbidden", err)
	}
}

// TestAgentDaemonSetsDifferOnlyInIdentity keeps the two agent DaemonSets'
// pods the same but for their ServiceAccount and the nodes they run on
// (workers, gateway candidates), which must split the cluster in two.
func TestAgentDaemonSetsDifferOnlyInIdentity(t *testing.T) {
	byName := map[string]*appsv1.DaemonSet{}
	for _, u := range configAgent(t) {
		if u.GetKind() != "DaemonSet" {
			continue
		}
		ds := &appsv1.DaemonSet{}
		b, _ := u.MarshalJSON()
		if err := yaml.Unmarshal(b, ds); err != nil {
			t.Fatal(err)
		}
		if ds.Name == "archipelago-device" {
			// Not an agent: the long-lived WireGuard device and liveness
			// responder on candidates (no ServiceAccount token at all).
			if ds.Spec.Template.Spec.AutomountServiceAccountToken == nil || *ds.Spec.Template.Spec.AutomountServiceAccountToken {
				t.Error("archipelago-device mounts a ServiceAccount token; it needs none")
			}
			continue
		}
		byName[ds.Name] = ds
	}
	worker, gateway := byName["archipelago-agent"], byName["archipelago-gateway"]
	if worker == nil || gateway == nil || len(byName) != 2 {
		t.Fatalf("DaemonSets in config/agent: %v, want archipelago-agent and archipelago-gateway", reflect.ValueOf(byName).MapKeys())
	}
	if sa := worker.Spec.Template.Spec.ServiceAccountName; sa != "archipelago-agent" {
		t.Errorf("archipelago-agent runs as %q", sa)
	}
	if sa := gateway.Spec.Template.Spec.ServiceAccountName; sa != "archipelago-gateway" {
		t.Errorf("archipelago-gateway runs as %q", sa)
	}
	op := func(ds *appsv1.DaemonSet) string {
		a := ds.Spec.Template.Spec.Affinity
		if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
			return ""
		}
		terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		if len(terms) != 1 || len(terms[0].MatchExpressions) != 1 || terms[0].MatchExpressions[0].Key != meshv1.LabelGatewayCandidate {
			return ""
		}
		return string(terms[0].MatchExpressions[0].Operator)
	}
	if op(worker) != string(corev1.NodeSelectorOpDoesNotExist) || op(gateway) != string(corev1.NodeSelectorOpExists) {
		t.Errorf("node affinity on %s: archipelago-agent %q, archipelago-gateway %q; want DoesNotExist and Exists",
			meshv1.LabelGatewayCandidate, op(worker), op(gateway))
	}
	strip := func(ds *appsv1.DaemonSet) corev1.PodSpec {
		p := *ds.Spec.Template.Spec.DeepCopy()
		p.ServiceAccountName, p.Affinity = "", nil
		return p
	}
	if w, g := strip(worker), strip(gateway); !reflect.DeepEqual(w, g) {
		wb, _ := yaml.Marshal(w)
		gb, _ := yaml.Marshal(g)
		t.Errorf("the agent pods differ beyond ServiceAccount and affinity:\narchipelago-agent:\n%s\narchipelago-gateway:\n%s", wb, gb)
	}
}
