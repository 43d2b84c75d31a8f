package controlplane

import (
	"maps"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// wakes reports whether an informer update must start a pass. Updates that
// change nothing a pass reads do not: the NodeReport annotation (written
// for people and the CLI, never read by a pass), kubelet heartbeats, and
// the membership status this agent wrote itself. Without this filter every
// write of an agent woke its own next pass.
func (a *Agent) wakes(oldObj, newObj any) bool {
	switch n := newObj.(type) {
	case *corev1.Node:
		o, ok := oldObj.(*corev1.Node)
		return !ok || nodeChanged(o, n)
	case *meshv1.ClusterSetMembership:
		o, ok := oldObj.(*meshv1.ClusterSetMembership)
		return !ok || a.membershipChanged(o, n)
	}
	return true
}

// nodeChanged compares what passes read of a Node: labels (candidacy),
// annotations other than the NodeReport (keys, endpoints), spec (podCIDRs)
// and addresses.
func nodeChanged(o, n *corev1.Node) bool {
	if o.DeletionTimestamp.IsZero() != n.DeletionTimestamp.IsZero() || !maps.Equal(o.Labels, n.Labels) {
		return true
	}
	if !sameBut(o.Annotations, n.Annotations, meshv1.AnnotationDatapath) {
		return true
	}
	return !equality.Semantic.DeepEqual(o.Spec, n.Spec) || !equality.Semantic.DeepEqual(o.Status.Addresses, n.Status.Addresses)
}

// sameBut reports whether a and b are equal apart from key.
func sameBut(a, b map[string]string, key string) bool {
	for k, v := range a {
		if w, ok := b[k]; k != key && (!ok || w != v) {
			return false
		}
	}
	for k := range b {
		if _, ok := a[k]; k != key && !ok {
			return false
		}
	}
	return true
}

// membershipChanged is false for an update that only brings the status
// this agent wrote last (or changes nothing but metadata bookkeeping).
func (a *Agent) membershipChanged(o, n *meshv1.ClusterSetMembership) bool {
	if o.Generation != n.Generation || o.DeletionTimestamp.IsZero() != n.DeletionTimestamp.IsZero() ||
		!maps.Equal(o.Labels, n.Labels) || !maps.Equal(o.Annotations, n.Annotations) {
		return true
	}
	if equality.Semantic.DeepEqual(o.Status, n.Status) {
		return false
	}
	a.mu.Lock()
	own := a.wroteStatus
	a.mu.Unlock()
	return own == nil || !equality.Semantic.DeepEqual(*own, n.Status)
}
