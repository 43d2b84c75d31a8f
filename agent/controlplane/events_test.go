package controlplane

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

func TestWakes(t *testing.T) {
	base := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", ResourceVersion: "1", Labels: map[string]string{meshv1.LabelGatewayCandidate: ""},
			Annotations: map[string]string{meshv1.AnnotationPublicKey: "k1", meshv1.AnnotationDatapath: `{"role":"worker"}`}},
		Spec:   corev1.NodeSpec{PodCIDRs: []string{"10.1.1.0/24"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.18.0.2"}}},
	}
	edit := func(f func(n *corev1.Node)) *corev1.Node {
		n := base.DeepCopy()
		n.ResourceVersion = "2"
		f(n)
		return n
	}
	a := &Agent{}
	for name, tc := range map[string]struct {
		n    *corev1.Node
		want bool
	}{
		"own NodeReport written":   {edit(func(n *corev1.Node) { n.Annotations[meshv1.AnnotationDatapath] = `{"role":"gateway"}` }), false},
		"NodeReport first written": {edit(func(n *corev1.Node) { delete(n.Annotations, meshv1.AnnotationDatapath) }), false},
		"kubelet heartbeat":        {edit(func(n *corev1.Node) { n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady}} }), false},
		"informer resync":          {base.DeepCopy(), false},
		"public key changed":       {edit(func(n *corev1.Node) { n.Annotations[meshv1.AnnotationPublicKey] = "k2" }), true},
		"endpoint added":           {edit(func(n *corev1.Node) { n.Annotations[meshv1.AnnotationEndpoint] = "192.0.2.1:51820" }), true},
		"candidate label removed":  {edit(func(n *corev1.Node) { delete(n.Labels, meshv1.LabelGatewayCandidate) }), true},
		"podCIDR changed":          {edit(func(n *corev1.Node) { n.Spec.PodCIDRs = []string{"10.9.0.0/24"} }), true},
		"address changed":          {edit(func(n *corev1.Node) { n.Status.Addresses[0].Address = "172.18.0.9" }), true},
		"deletion started":         {edit(func(n *corev1.Node) { now := metav1.Now(); n.DeletionTimestamp = &now }), true},
	} {
		if got := a.wakes(base, tc.n); got != tc.want {
			t.Errorf("%s: wakes = %v, want %v", name, got, tc.want)
		}
	}

	m := &meshv1.ClusterSetMembership{ObjectMeta: metav1.ObjectMeta{Name: "membership", Generation: 1},
		Status: meshv1.ClusterSetMembershipStatus{ActiveGateway: "n1", PodCIDRs: []string{"10.1.0.0/16"}}}
	written := m.DeepCopy()
	written.Status.ReadyPeers = 1
	if !a.wakes(m, written) {
		t.Error("a status written by another agent must wake a pass")
	}
	a.wroteStatus = written.Status.DeepCopy()
	if a.wakes(m, written) {
		t.Error("the agent's own status write woke its next pass")
	}
	other := written.DeepCopy()
	other.Status.ActiveGateway = "n2"
	if !a.wakes(written, other) {
		t.Error("a status other than the agent's own must wake a pass")
	}
	spec := written.DeepCopy()
	spec.Generation = 2
	if !a.wakes(written, spec) {
		t.Error("a spec change must wake a pass")
	}
}
