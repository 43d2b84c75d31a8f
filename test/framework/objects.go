package framework

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// ClusterSetOption changes a test ClusterSet.
type ClusterSetOption func(*meshv1.ClusterSet)

// NewClusterSet builds a ClusterSet with the given pools.
func NewClusterSet(name string, pools []string, opts ...ClusterSetOption) *meshv1.ClusterSet {
	cs := &meshv1.ClusterSet{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, p := range pools {
		cs.Spec.PodCIDRPools = append(cs.Spec.PodCIDRPools, meshv1.CIDR(p))
	}
	for _, o := range opts {
		o(cs)
	}
	return cs
}

// WithBlockSize sets the IPv4 and IPv6 block prefix lengths (0 keeps the default).
func WithBlockSize(v4, v6 int32) ClusterSetOption {
	return func(cs *meshv1.ClusterSet) { cs.Spec.BlockSize = meshv1.BlockSize{IPv4: v4, IPv6: v6} }
}

// WithQuarantine sets the quarantine of released blocks.
func WithQuarantine(seconds int32) ClusterSetOption {
	return func(cs *meshv1.ClusterSet) { cs.Spec.QuarantineSeconds = &seconds }
}

// MemberOption changes a test MemberCluster.
type MemberOption func(*meshv1.MemberCluster)

// NewMember builds a MemberCluster of set.
func NewMember(name, set string, opts ...MemberOption) *meshv1.MemberCluster {
	m := &meshv1.MemberCluster{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       meshv1.MemberClusterSpec{ClusterSet: set},
	}
	for _, o := range opts {
		o(m)
	}
	return m
}

// WithPodCIDRs asks for ranges to adopt.
func WithPodCIDRs(cidrs ...string) MemberOption {
	return func(m *meshv1.MemberCluster) {
		for _, c := range cidrs {
			m.Spec.PodCIDRs = append(m.Spec.PodCIDRs, meshv1.CIDR(c))
		}
	}
}

// WithIPFamilies sets spec.ipFamilies.
func WithIPFamilies(fams ...meshv1.IPFamily) MemberOption {
	return func(m *meshv1.MemberCluster) { m.Spec.IPFamilies = append(m.Spec.IPFamilies, fams...) }
}
