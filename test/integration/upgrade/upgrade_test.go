package upgrade

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// The previous release stored peer counts as "k/n" strings in
// MemberCluster.status.connectedPeers and ClusterSetMembership.status.readyPeers
// and free blocks in ClusterSet.status.freeBlocks. One such object left in
// etcd must not break a list of this release's types (a hub whose cache
// cannot list MemberClusters assigns nothing; an agent that cannot list its
// membership builds no data path).
func TestObjectsOfThePreviousReleaseStayReadable(t *testing.T) {
	dir, why := framework.AssetsDir()
	if dir == "" {
		t.Skip(why)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths:     []string{filepath.Join("testdata", "v0")},
		Scheme:                framework.Scheme(),
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	ctx := context.Background()
	c, err := client.New(cfg, client.Options{Scheme: framework.Scheme()})
	if err != nil {
		t.Fatal(err)
	}

	// Written as the previous release's hub and agent wrote them.
	old := func(kind, name string, spec, status map[string]any) {
		t.Helper()
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": meshv1.GroupVersion.String(), "kind": kind,
			"metadata": map[string]any{"name": name}, "spec": spec,
		}}
		if err := c.Create(ctx, u); err != nil {
			t.Fatalf("create %s %s with the previous CRDs: %v", kind, name, err)
		}
		u.Object["status"] = status
		if err := c.Status().Update(ctx, u); err != nil {
			t.Fatalf("status of %s %s with the previous CRDs: %v", kind, name, err)
		}
	}
	old("ClusterSet", "prod", map[string]any{"podCIDRPools": []any{"10.64.0.0/10"}}, map[string]any{"freeBlocks": "v4 64"})
	old("MemberCluster", "east", map[string]any{"clusterSet": "prod"}, map[string]any{"connectedPeers": "1/2"})
	old("ClusterSetMembership", "membership", map[string]any{
		"clusterSet": "prod", "clusterName": "east",
		"hub": map[string]any{"server": "https://hub.example:6443", "secretRef": map[string]any{"name": "archipelago-hub", "namespace": "archipelago-system"}},
	}, map[string]any{"readyPeers": "1/2"})

	if _, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{filepath.Join(framework.RepoRoot(), "config", "crd", "bases")}}); err != nil {
		t.Fatalf("apply this release's CRDs: %v", err)
	}

	// The API server serves the new schema a moment after the update.
	lists := func() error {
		if err := c.List(ctx, &meshv1.MemberClusterList{}); err != nil {
			return fmt.Errorf("list MemberClusters: %w", err)
		}
		if err := c.List(ctx, &meshv1.ClusterSetMembershipList{}); err != nil {
			return fmt.Errorf("list ClusterSetMemberships: %w", err)
		}
		if err := c.List(ctx, &meshv1.ClusterSetList{}); err != nil {
			return fmt.Errorf("list ClusterSets: %w", err)
		}
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for err := lists(); err != nil; err = lists() {
		if time.Now().After(deadline) {
			t.Fatalf("after the CRD upgrade: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// This release writes its counts beside what the old strings were.
	m := &meshv1.MemberCluster{}
	if err := c.Get(ctx, client.ObjectKey{Name: "east"}, m); err != nil {
		t.Fatal(err)
	}
	m.Status.ConnectedPeers, m.Status.TotalPeers = 1, 2
	if err := c.Status().Update(ctx, m); err != nil {
		t.Fatalf("status update of an upgraded MemberCluster: %v", err)
	}
	ms := &meshv1.ClusterSetMembership{}
	if err := c.Get(ctx, client.ObjectKey{Name: "membership"}, ms); err != nil {
		t.Fatal(err)
	}
	ms.Status.ReadyPeers, ms.Status.TotalPeers = 1, 2
	if err := c.Status().Update(ctx, ms); err != nil {
		t.Fatalf("status update of an upgraded membership: %v", err)
	}
	if err := c.Get(ctx, client.ObjectKey{Name: "east"}, m); err != nil || m.Status.ConnectedPeers != 1 || m.Status.TotalPeers != 2 {
		t.Errorf("MemberCluster after the update: %+v, %v", m.Status, err)
	}
}
