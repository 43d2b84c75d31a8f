package mcs

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	aboutv1beta1 "github.com/archipelago-mesh/archipelago/api/about/v1beta1"
)

// ClusterProperties returns the two ClusterProperties of KEP-2149 a member
// carries while it is in a ClusterSet: its name and the set's.
func ClusterProperties(cluster, set string) []*aboutv1beta1.ClusterProperty {
	prop := func(name, value string) *aboutv1beta1.ClusterProperty {
		return &aboutv1beta1.ClusterProperty{
			TypeMeta:   metav1.TypeMeta{APIVersion: aboutv1beta1.GroupVersion.String(), Kind: "ClusterProperty"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{LabelManagedBy: ManagedByValue}},
			Spec:       aboutv1beta1.ClusterPropertySpec{Value: value},
		}
	}
	return []*aboutv1beta1.ClusterProperty{
		prop(aboutv1beta1.ClusterIDProperty, cluster),
		prop(aboutv1beta1.ClusterSetProperty, set),
	}
}

// CheckClusterProperties compares the ClusterProperties of a member with
// its membership. A missing property is no error (join creates them); one
// that names another cluster or set is: exports would be published under one
// name and DNS would answer for another.
func CheckClusterProperties(props []aboutv1beta1.ClusterProperty, cluster, set string) error {
	want := map[string]string{aboutv1beta1.ClusterIDProperty: cluster, aboutv1beta1.ClusterSetProperty: set}
	for _, p := range props {
		if w, ok := want[p.Name]; ok && p.Spec.Value != w {
			return fmt.Errorf("ClusterProperty %s is %q but this cluster's membership says %q: fix the property or the membership (kubectl archipelago leave, then join)", p.Name, p.Spec.Value, w)
		}
	}
	return nil
}
