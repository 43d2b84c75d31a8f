package coredns

import (
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RBACName names the ClusterRole and ClusterRoleBinding that let CoreDNS
// read ServiceImports. kubeadm's system:coredns role already covers the
// EndpointSlices the multicluster option reads.
const RBACName = "archipelago:coredns-multicluster"

// RBAC returns the ClusterRole and binding CoreDNS needs for the
// multicluster option, bound to serviceAccount in namespace (kube-system/coredns
// on kubeadm and kind clusters). config/mcs/coredns holds the same as YAML.
func RBAC(namespace, serviceAccount string) (*rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding) {
	labels := map[string]string{"app.kubernetes.io/managed-by": "archipelago"}
	role := &rbacv1.ClusterRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
		ObjectMeta: metav1.ObjectMeta{Name: RBACName, Labels: labels},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{"multicluster.x-k8s.io"},
			Resources: []string{"serviceimports"},
			Verbs:     []string{"list", "watch"},
		}},
	}
	binding := &rbacv1.ClusterRoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
		ObjectMeta: metav1.ObjectMeta{Name: RBACName, Labels: labels},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: RBACName},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: serviceAccount}},
	}
	return role, binding
}
