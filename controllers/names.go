package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

const (
	// memberNamespacePrefix starts the name of every member's hub namespace.
	memberNamespacePrefix = "member-"
	// MemberServiceAccount is the name of the ServiceAccount a member's agent uses on the hub.
	MemberServiceAccount = "archipelago-agent"
	// memberRoleName names the Role (in the member namespace) and the ClusterRole
	// (read access to the peer directory) that members are bound to.
	memberRoleName = "archipelago-member"
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

// memberClusterRoleBinding names the binding that lets a member read the peer directory.
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
