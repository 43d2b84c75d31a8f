package hubtoken

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

func jwt(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(payload)) + ".c2ln"
}

func TestParseBoundToken(t *testing.T) {
	tok := jwt(`{"exp":1800086400,"iat":1800000000,"nbf":1800000000,"kubernetes.io":{"namespace":"member-a",` +
		`"serviceaccount":{"name":"archipelago-agent","uid":"u1"},"secret":{"name":"hub-credential-x1","uid":"u2"}}}`)
	c, err := Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	want := Claims{IssuedAt: time.Unix(1800000000, 0).UTC(), Expires: time.Unix(1800086400, 0).UTC(),
		Namespace: "member-a", ServiceAccount: "archipelago-agent", BoundSecret: "hub-credential-x1", BoundSecretUID: "u2"}
	if c != want {
		t.Fatalf("claims %+v, want %+v", c, want)
	}
	if c.Lifetime() != 24*time.Hour {
		t.Errorf("lifetime %s", c.Lifetime())
	}
	if got := c.RenewAt(RenewFraction); !got.Equal(c.IssuedAt.Add(18 * time.Hour)) {
		t.Errorf("renew at %s, want 18h after issue", got)
	}
}

func TestParseRefusesWhatIsNoToken(t *testing.T) {
	for name, tc := range map[string]struct{ tok, want string }{
		"opaque":      {"t", "not a JWT"},
		"bad base64":  {"a.!!!.c", "decode JWT payload"},
		"not JSON":    {jwt("nope"), "decode JWT claims"},
		"without exp": {jwt(`{"iat":1}`), "no exp claim"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse(tc.tok); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestUnboundToken(t *testing.T) {
	c, err := Parse(jwt(`{"exp":20,"nbf":10,"kubernetes.io":{"namespace":"n","serviceaccount":{"name":"s"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.BoundSecret != "" || !c.IssuedAt.Equal(time.Unix(10, 0)) {
		t.Errorf("claims %+v", c)
	}
}
