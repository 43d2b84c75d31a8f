package controllers

import (
	"encoding/base64"
	"fmt"
	"net"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
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
