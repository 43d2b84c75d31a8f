package controllers

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

func exportRecord(ns, cluster, svcNS, svc string) *meshv1.ExportedService {
	return &meshv1.ExportedService{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: meshv1.ExportedServiceName(svcNS, svc)},
		Spec: meshv1.ExportedServiceSpec{Cluster: cluster, Namespace: svcNS, Name: svc, Type: meshv1.ExportedClusterSetIP,
			Ports: []meshv1.ExportedServicePort{{Name: "http", Protocol: "TCP", Port: 80}}},
	}
}

func TestExportedServiceCopies(t *testing.T) {
	ctx := context.Background()
	memberNS := func(m string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MemberNamespace(m),
			Labels: map[string]string{meshv1.LabelMember: m, labelManagedBy: managedByHub}}}
	}
	c, _, _ := newFakeHub(t,
		memberNS("east"), memberNS("west"),
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		&meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "west"}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}},
		// A namespace someone else made with a member's label.
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "rogue", Labels: map[string]string{meshv1.LabelMember: "east"}}},
	)
	r := &ExportedServiceReconciler{Client: c}
	reconcile := func(ns, name string) {
		t.Helper()
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}); err != nil {
			t.Fatalf("reconcile %s/%s: %v", ns, name, err)
		}
	}
	copyOf := func(member, record string) (*meshv1.ExportedService, error) {
		cp := &meshv1.ExportedService{}
		err := c.Get(ctx, types.NamespacedName{Namespace: SetNamespace("prod"), Name: exportCopyName(member, record)}, cp)
		return cp, err
	}

	// East's own record is copied, labelled with its member and set.
	rec := exportRecord(MemberNamespace("east"), "east", "shop", "api")
	if err := c.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	reconcile(rec.Namespace, rec.Name)
	cp, err := copyOf("east", rec.Name)
	if err != nil {
		t.Fatalf("no copy: %v", err)
	}
	if cp.Spec.Cluster != "east" || cp.Labels[meshv1.LabelMember] != "east" || cp.Labels[meshv1.LabelClusterSet] != "prod" || cp.Labels[labelManagedBy] != managedByHub {
		t.Errorf("copy %+v", cp)
	}
	if got := exportSource(ctx, cp); len(got) != 1 || got[0].Namespace != rec.Namespace || got[0].Name != rec.Name {
		t.Errorf("copy maps to %v, want its source %s/%s", got, rec.Namespace, rec.Name)
	}

	// A change is copied; a pass without change writes nothing.
	rec.Spec.Ports[0].Port = 8080
	if err := c.Update(ctx, rec); err != nil {
		t.Fatal(err)
	}
	reconcile(rec.Namespace, rec.Name)
	cp, _ = copyOf("east", rec.Name)
	rv := cp.ResourceVersion
	if cp.Spec.Ports[0].Port != 8080 {
		t.Errorf("copy not updated: %+v", cp.Spec.Ports)
	}
	reconcile(rec.Namespace, rec.Name)
	if cp, _ = copyOf("east", rec.Name); cp.ResourceVersion != rv {
		t.Error("a pass without change rewrote the copy")
	}

	// West speaking for east, or a record under another name, is not copied.
	lie := exportRecord(MemberNamespace("west"), "east", "shop", "web")
	misnamed := exportRecord(MemberNamespace("west"), "west", "shop", "db")
	misnamed.Name = "shop.other"
	rogue := exportRecord("rogue", "east", "shop", "cache")
	for _, o := range []*meshv1.ExportedService{lie, misnamed, rogue} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		reconcile(o.Namespace, o.Name)
	}
	for _, k := range [][2]string{{"west", lie.Name}, {"east", lie.Name}, {"west", misnamed.Name}, {"east", rogue.Name}} {
		if _, err := copyOf(k[0], k[1]); !apierrors.IsNotFound(err) {
			t.Errorf("copy %s.%s: %v, want NotFound", k[0], k[1], err)
		}
	}

	// The record goes: so does its copy.
	if err := c.Delete(ctx, rec); err != nil {
		t.Fatal(err)
	}
	reconcile(rec.Namespace, rec.Name)
	if _, err := copyOf("east", rec.Name); !apierrors.IsNotFound(err) {
		t.Errorf("copy after the record was deleted: %v", err)
	}
	var all meshv1.ExportedServiceList
	if err := c.List(ctx, &all, client.InNamespace(SetNamespace("prod"))); err != nil || len(all.Items) != 0 {
		t.Errorf("set namespace holds %d records (%v)", len(all.Items), err)
	}
}
