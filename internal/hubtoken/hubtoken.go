package hubtoken

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// CredentialPrefix starts the name of every hub Secret a member's token is
// bound to (one per credential generation, in the member's hub namespace).
// Deleting that Secret revokes every token bound to it.
const CredentialPrefix = "hub-credential-"

// LabelCredential marks the hub Secrets that tokens are bound to; its value
// is the member's name.
const LabelCredential = "archipelago.dev/hub-credential"

// RenewFraction is the share of a token's lifetime after which the agent
// renews it: at 75 %, a 24 h token is renewed 6 h before it expires, time
// enough to retry through a hub outage of several hours.
const RenewFraction = 0.75

// Claims are the parts of a bound ServiceAccount token the project uses.
type Claims struct {
	// IssuedAt and Expires bound the token's lifetime.
	IssuedAt, Expires time.Time
	// Namespace and ServiceAccount name the identity on the hub.
	Namespace, ServiceAccount string
	// BoundSecret and BoundSecretUID name the hub Secret the token is bound
	// to; empty for an unbound token.
	BoundSecret, BoundSecretUID string
}

// Lifetime is Expires - IssuedAt.
func (c Claims) Lifetime() time.Duration { return c.Expires.Sub(c.IssuedAt) }

// RenewAt is when a token with these claims should be renewed.
func (c Claims) RenewAt(fraction float64) time.Time {
	return c.IssuedAt.Add(time.Duration(float64(c.Lifetime()) * fraction))
}

type jwtClaims struct {
	Exp  int64 `json:"exp"`
	Iat  int64 `json:"iat"`
	Nbf  int64 `json:"nbf"`
	Kube struct {
		Namespace      string `json:"namespace"`
		ServiceAccount struct {
			Name string `json:"name"`
		} `json:"serviceaccount"`
		Secret *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"secret"`
	} `json:"kubernetes.io"`
}

// Parse decodes the payload of a JWT without verifying it.
func Parse(token string) (Claims, error) {
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 {
		return Claims{}, errors.New("not a JWT (want three dot-separated parts)")
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return Claims{}, fmt.Errorf("decode JWT payload: %w", err)
	}
	var jc jwtClaims
	if err := json.Unmarshal(raw, &jc); err != nil {
		return Claims{}, fmt.Errorf("decode JWT claims: %w", err)
	}
	if jc.Exp == 0 {
		return Claims{}, errors.New("JWT has no exp claim")
	}
	iat := jc.Iat
	if iat == 0 {
		iat = jc.Nbf
	}
	c := Claims{
		IssuedAt: time.Unix(iat, 0).UTC(), Expires: time.Unix(jc.Exp, 0).UTC(),
		Namespace: jc.Kube.Namespace, ServiceAccount: jc.Kube.ServiceAccount.Name,
	}
	if s := jc.Kube.Secret; s != nil {
		c.BoundSecret, c.BoundSecretUID = s.Name, s.UID
	}
	return c, nil
}
