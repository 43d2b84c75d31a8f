package cli_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aboutv1beta1 "github.com/archipelago-mesh/archipelago/api/about/v1beta1"
	"github.com/archipelago-mesh/archipelago/internal/cli"
	"github.com/archipelago-mesh/archipelago/internal/mcs/coredns"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// installCoreDNS writes kubeadm's (kind's) CoreDNS ConfigMap and a
// Deployment into a member and returns the Corefile.
func installCoreDNS(t *testing.T, s *framework.APIServer) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(framework.RepoRoot(), "internal", "mcs", "coredns", "testdata", "kind.Corefile"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	labels := map[string]string{"k8s-app": "kube-dns"}
	objs := []client.Object{
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: cli.CoreDNSNamespace, Name: cli.CoreDNSName}, Data: map[string]string{"Corefile": string(raw)}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: cli.CoreDNSNamespace, Name: cli.CoreDNSName},
			Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "coredns", Image: "coredns"}}}}}},
	}
	for _, o := range objs {
		if err := s.Client.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Client.Delete(context.Background(), o) })
	}
	return string(raw)
}

func coreDNS(t *testing.T, s *framework.APIServer) (*corev1.ConfigMap, *appsv1.Deployment) {
	t.Helper()
	ctx := context.Background()
	cm, d := &corev1.ConfigMap{}, &appsv1.Deployment{}
	key := types.NamespacedName{Namespace: cli.CoreDNSNamespace, Name: cli.CoreDNSName}
	if err := s.Client.Get(ctx, key, cm); err != nil {
		t.Fatal(err)
	}
	if err := s.Client.Get(ctx, key, d); err != nil {
		t.Fatal(err)
	}
	return cm, d
}

// assertServices checks what join prepares for multi-cluster services.
func assertServices(t *testing.T, s *framework.APIServer, name, set, corefile string) {
	t.Helper()
	ctx := context.Background()
	for prop, want := range map[string]string{aboutv1beta1.ClusterIDProperty: name, aboutv1beta1.ClusterSetProperty: set} {
		p := &aboutv1beta1.ClusterProperty{}
		if err := s.Client.Get(ctx, types.NamespacedName{Name: prop}, p); err != nil || p.Spec.Value != want {
			t.Errorf("ClusterProperty %s: %v %+v, want %q", prop, err, p.Spec, want)
		}
	}
	for _, crd := range []string{"serviceexports.multicluster.x-k8s.io", "serviceimports.multicluster.x-k8s.io"} {
		u := &metav1.PartialObjectMetadata{}
		u.SetGroupVersionKind(apiextensionsGVK)
		if err := s.Client.Get(ctx, types.NamespacedName{Name: crd}, u); err != nil {
			t.Errorf("CRD %s: %v", crd, err)
		} else if u.GetManagedFields() == nil || !managedBy(u, "kubectl-archipelago") {
			t.Errorf("CRD %s is not applied by join (managed fields %v)", crd, u.GetManagedFields())
		}
	}
	want, _, err := coredns.Enable(corefile, "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	cm, d := coreDNS(t, s)
	if cm.Data["Corefile"] != want || !strings.Contains(cm.Data["Corefile"], "multicluster clusterset.local") {
		t.Errorf("Corefile after join:\n%s\nwant\n%s", cm.Data["Corefile"], want)
	}
	if d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] == "" {
		t.Error("CoreDNS was not restarted after its Corefile changed")
	}
	role, binding := coredns.RBAC(cli.CoreDNSNamespace, cli.CoreDNSName)
	for _, o := range []client.Object{role, binding} {
		if err := s.Client.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
			t.Errorf("CoreDNS RBAC %T %s: %v", o, o.GetName(), err)
		}
	}
}

var apiextensionsGVK = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}

func managedBy(o metav1.Object, manager string) bool {
	for _, f := range o.GetManagedFields() {
		if f.Manager == manager {
			return true
		}
	}
	return false
}
