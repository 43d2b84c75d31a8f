package records

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
)

// Publisher writes a member's ExportedService records into its hub namespace.
type Publisher struct {
	// Client talks to the hub with the member's credentials.
	Client client.Client
	// Namespace is the member's hub namespace.
	Namespace string
}

// Publish creates the record of spec or replaces its spec when it differs.
func (p *Publisher) Publish(ctx context.Context, spec *meshv1.ExportedServiceSpec) error {
	name := meshv1.ExportedServiceName(spec.Namespace, spec.Name)
	cur := &meshv1.ExportedService{}
	err := p.Client.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: name}, cur)
	switch {
	case apierrors.IsNotFound(err):
		rec := &meshv1.ExportedService{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: name, Labels: map[string]string{mcsv1beta1.LabelSourceCluster: spec.Cluster}},
			Spec:       *spec.DeepCopy(),
		}
		if err := p.Client.Create(ctx, rec); err != nil {
			return fmt.Errorf("create exportedservice %s/%s on the hub: %w", p.Namespace, name, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("get exportedservice %s/%s on the hub: %w", p.Namespace, name, err)
	}
	if equality.Semantic.DeepEqual(cur.Spec, *spec) {
		return nil
	}
	cur.Spec = *spec.DeepCopy()
	if err := p.Client.Update(ctx, cur); err != nil {
		return fmt.Errorf("update exportedservice %s/%s on the hub: %w", p.Namespace, name, err)
	}
	return nil
}

// Withdraw deletes the record of k.
func (p *Publisher) Withdraw(ctx context.Context, k mcs.Key) error {
	rec := &meshv1.ExportedService{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: meshv1.ExportedServiceName(k.Namespace, k.Name)}}
	if err := p.Client.Delete(ctx, rec); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("delete exportedservice %s/%s on the hub: %w", p.Namespace, rec.Name, err)
	}
	return nil
}

// Published lists the services this member has records of.
func (p *Publisher) Published(ctx context.Context) ([]mcs.Key, error) {
	var l meshv1.ExportedServiceList
	if err := p.Client.List(ctx, &l, client.InNamespace(p.Namespace)); err != nil {
		return nil, fmt.Errorf("list exportedservices in %s on the hub: %w", p.Namespace, err)
	}
	keys := make([]mcs.Key, 0, len(l.Items))
	for _, r := range l.Items {
		keys = append(keys, mcs.Key{Namespace: r.Spec.Namespace, Name: r.Spec.Name})
	}
	return keys, nil
}

// Collect reads the records of the given hub namespaces. A record whose
// spec.cluster is not the member its namespace belongs to is skipped: a
// member may only speak for itself. clusterOf maps a namespace to its member.
func Collect(ctx context.Context, c client.Reader, clusterOf map[string]string) ([]meshv1.ExportedServiceSpec, error) {
	var out []meshv1.ExportedServiceSpec
	for ns, cluster := range clusterOf {
		var l meshv1.ExportedServiceList
		if err := c.List(ctx, &l, client.InNamespace(ns)); err != nil {
			return nil, fmt.Errorf("list exportedservices in %s: %w", ns, err)
		}
		for _, r := range l.Items {
			if r.Spec.Cluster == cluster {
				out = append(out, r.Spec)
			}
		}
	}
	return out, nil
}
