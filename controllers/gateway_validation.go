package controllers

import (
	"encoding/base64"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// wireGuardKeyLen is the length of a Curve25519 key.
const wireGuardKeyLen = 32

// ValidatePublicKey checks that s is a WireGuard public key: 32 bytes in
// standard base64.
func ValidatePublicKey(s string) error {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return fmt.Errorf("spec.publicKey is not base64: %w", err)
	}
	if len(b) != wireGuardKeyLen {
		return fmt.Errorf("spec.publicKey decodes to %d bytes, a WireGuard key has %d", len(b), wireGuardKeyLen)
	}
	return nil
}

// ValidateEndpoint checks that s is host:port with a port in 1..65535 and a
// host that is an IP address or a DNS name.
func ValidateEndpoint(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("endpoint %q is not host:port: %w", s, err)
	}
	if host == "" {
		return fmt.Errorf("endpoint %q has no host", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("endpoint %q: port must be a number from 1 to 65535", s)
	}
	if net.ParseIP(host) == nil && len(validation.IsDNS1123Subdomain(strings.ToLower(host))) > 0 {
		return fmt.Errorf("endpoint %q: host is neither an IP address nor a DNS name", s)
	}
	return nil
}

// IndexPublicKey indexes TunnelGateways by spec.publicKey, so that the
// holder of a key is found without listing every member's gateways.
const IndexPublicKey = "spec.publicKey"

func indexPublicKey(o client.Object) []string {
	if k := o.(*meshv1.TunnelGateway).Spec.PublicKey; k != "" {
		return []string{k}
	}
	return nil
}

// IndexPublishedKey indexes MemberClusters by the public keys of the
// gateways the hub gave to peers (status.gateways).
const IndexPublishedKey = "status.gateways.publicKey"

func indexPublishedKey(o client.Object) []string {
	gws := o.(*meshv1.MemberCluster).Status.Gateways
	out := make([]string, 0, len(gws))
	for _, g := range gws {
		out = append(out, g.PublicKey)
	}
	return out
}

// publishedKeys is the set of keys a member's status gives to peers.
func publishedKeys(m *meshv1.MemberCluster) map[string]bool {
	out := make(map[string]bool, len(m.Status.Gateways))
	for _, g := range m.Status.Gateways {
		out[g.PublicKey] = true
	}
	return out
}

// keyHolder is the gateway that holds a public key no member has published
// yet (a key that is in a member's status.gateways stays that member's:
// peers already use it, and that is where another member can learn it).
// Of the well-formed,
// not deleted gateways in members' namespaces that publish it, the oldest
// (by creationTimestamp, then namespace and name, so every pass and every
// hub replica picks the same one). A WireGuard peer is identified by its key
// and agents keep one peer per key, so a second member publishing a key
// would take over the first member's tunnels (and its ranges' traffic).
// The oldest wins because a member learns another's key only after it was
// published.
func keyHolder(candidates []meshv1.TunnelGateway, memberOf func(namespace string) string) (holder *meshv1.TunnelGateway, member string) {
	for i := range candidates {
		g := &candidates[i]
		if !g.DeletionTimestamp.IsZero() || validateGatewaySyntax(g) != nil {
			continue
		}
		if holder != nil && !olderGateway(g, holder) {
			continue
		}
		if m := memberOf(g.Namespace); m != "" {
			holder, member = g, m
		}
	}
	return holder, member
}

func olderGateway(a, b *meshv1.TunnelGateway) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// gatewayError is why a gateway is not given to peers: the reason and
// message of its Valid=False condition.
type gatewayError struct {
	reason, message string
}

func publishedKeyError(member, gateway string) *gatewayError {
	return &gatewayError{
		reason: meshv1.ReasonDuplicatePublicKey,
		message: fmt.Sprintf("spec.publicKey is already published by member %q (its gateway %s, given to peers); a WireGuard key identifies one member: give this gateway a key of its own",
			member, gateway),
	}
}

func duplicateKeyError(holder *meshv1.TunnelGateway, member string) *gatewayError {
	return &gatewayError{
		reason: meshv1.ReasonDuplicatePublicKey,
		message: fmt.Sprintf("spec.publicKey is already published by member %q (TunnelGateway %s/%s, since %s); a WireGuard key identifies one member: give this gateway a key of its own",
			member, holder.Namespace, holder.Name, holder.CreationTimestamp.UTC().Format(time.RFC3339)),
	}
}

// validateGatewaySyntax checks the fields of one gateway on their own.
func validateGatewaySyntax(gw *meshv1.TunnelGateway) error {
	if err := ValidatePublicKey(gw.Spec.PublicKey); err != nil {
		return err
	}
	for i, e := range gw.Spec.Endpoints {
		if err := ValidateEndpoint(e); err != nil {
			return fmt.Errorf("spec.endpoints[%d]: %w", i, err)
		}
	}
	return nil
}
