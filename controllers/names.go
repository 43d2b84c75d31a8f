package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

const (
	// memberNamespacePrefix starts the name of every member's hub namespace.
	memberNamespacePrefix = "member-"
	// MemberServiceAccount is the name of the ServiceAccount a member's agent uses on the hub.
	MemberServiceAccount = "archipelago-agent"
	// memberRoleName names the Role in the member namespace (its own
	// TunnelGateways); memberRoleName:<member> names the member's ClusterRole
	// (its own MemberCluster and ClusterSet, by name), the binding to it, and
	// the member's RoleBinding in its set's namespace.
	memberRoleName = "archipelago-member"
	// peerReaderRole is the Role in a set's namespace that reads its
	// ClusterSetPeers; every member of the set is bound to it.
	peerReaderRole = "archipelago-peer-reader"
	// labelManagedBy marks every object the hub creates, so its cache can watch only those.
	labelManagedBy = "app.kubernetes.io/managed-by"
	managedByHub   = "archipelago-hub"

	// MaxGatewaysPerMember bounds the TunnelGateways a member may write (a
	// ResourceQuota in its namespace): one per gateway candidate node is
	// plenty, and a member must not be able to fill the hub's etcd.
	MaxGatewaysPerMember = 16
	// GatewayQuotaResource is what that quota counts. The API server counts
	// objects of custom resources under count/<resource>.<group>.
	GatewayQuotaResource corev1.ResourceName = "count/tunnelgateways.mesh.archipelago.dev"

	// MaxExportedServicesPerMember bounds the ExportedServices (one per
	// exported Service) a member may write, by the same quota.
	MaxExportedServicesPerMember = 1000
	// ExportedServiceQuotaResource is what the quota counts of them.
	ExportedServiceQuotaResource corev1.ResourceName = "count/exportedservices.mesh.archipelago.dev"
)

// MemberNamespace returns the hub namespace of a member. Namespace names are
// DNS labels (63 characters), so a long member name is shortened with a hash
// that keeps names unique.
func MemberNamespace(member string) string {
	name := memberNamespacePrefix + member
	if len(name) <= 63 {
		return name
	}
	sum := sha256.Sum256([]byte(member))
	return memberNamespacePrefix + strings.TrimRight(member[:47], "-") + "-" + hex.EncodeToString(sum[:])[:8]
}

// SetNamespace returns the hub namespace of a ClusterSet's peer directory
// (its ClusterSetPeer objects).
func SetNamespace(set string) string { return meshv1.ClusterSetNamespace(set) }

// memberClusterRoleBinding names the member's ClusterRole, its binding, and
// its RoleBinding in the set's namespace.
func memberClusterRoleBinding(member string) string {
	return memberRoleName + ":" + member
}

// ClaimName returns the name of the CIDRClaim that takes block in set. It is a
// pure function of the two, which is what makes creating the claim atomic.
func ClaimName(set string, block netip.Prefix) string {
	fam := "v4-"
	if block.Addr().Is6() {
		fam = "v6-"
	}
	r := strings.NewReplacer(".", "-", ":", "-", "/", "-")
	return set + "." + fam + r.Replace(block.String())
}

// readOnly lists from the cache without copying: for passes that only read
// the listed objects. Lists of every member of a set run on every pass, and
// copying thousands of objects each time would dominate the hub's work.
var readOnly = client.UnsafeDisableDeepCopy
