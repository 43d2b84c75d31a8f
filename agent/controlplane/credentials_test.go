package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/archipelago-mesh/archipelago/internal/hubtoken"
)

func TestTokenRenewalSchedule(t *testing.T) {
	issued := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	c := hubtoken.Claims{IssuedAt: issued, Expires: issued.Add(24 * time.Hour), BoundSecret: "hub-credential-x", BoundSecretUID: "u"}
	r := &tokenRenewal{fraction: hubtoken.RenewFraction}

	if r.due(issued.Add(18*time.Hour-time.Second), c) {
		t.Error("due before 75 % of the lifetime")
	}
	at := issued.Add(18 * time.Hour)
	if !r.due(at, c) {
		t.Fatal("not due at 75 % of the lifetime")
	}
	if st := r.state(at, c, nil); !st.ok || st.reason != "Issued" || !strings.Contains(st.message, "hub-credential-x") {
		t.Errorf("state before any renewal: %+v", st)
	}

	// Failures back off exponentially, capped, and are reported; the token
	// is still due (never given up) once the backoff passed.
	now := at
	var waits []time.Duration
	for i := 0; i < 8; i++ {
		r.failed(now, errors.New("hub down"))
		waits = append(waits, r.retryAt.Sub(now))
		if r.due(r.retryAt.Add(-time.Millisecond), c) {
			t.Fatalf("failure %d: due before the backoff ended", i+1)
		}
		now = r.retryAt
		if !r.due(now, c) {
			t.Fatalf("failure %d: not due after the backoff", i+1)
		}
	}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute, 5 * time.Minute}
	for i := range want {
		if waits[i] != want[i] {
			t.Errorf("backoffs %v, want %v", waits, want)
			break
		}
	}
	st := r.state(now, c, nil)
	if st.ok || st.reason != "RenewalFailed" || !strings.Contains(st.message, "8 time(s)") || !strings.Contains(st.message, "hub down") {
		t.Errorf("state after failures: %+v", st)
	}

	// A success resets the schedule to the new token's lifetime.
	r.succeeded(now)
	next := hubtoken.Claims{IssuedAt: now, Expires: now.Add(24 * time.Hour), BoundSecret: c.BoundSecret, BoundSecretUID: c.BoundSecretUID}
	if r.due(now.Add(time.Hour), next) {
		t.Error("due right after a renewal")
	}
	if st := r.state(now, next, nil); !st.ok || st.reason != "Renewed" {
		t.Errorf("state after renewal: %+v", st)
	}
	if !r.due(now.Add(18*time.Hour), next) {
		t.Error("the renewed token is never due")
	}
}

func TestTokenRenewalStates(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	r := &tokenRenewal{fraction: hubtoken.RenewFraction}
	for name, tc := range map[string]struct {
		c      hubtoken.Claims
		err    error
		reason string
	}{
		"unreadable": {err: errors.New("not a JWT"), reason: "NotRenewable"},
		"unbound":    {c: hubtoken.Claims{IssuedAt: now, Expires: now.Add(time.Hour)}, reason: "Unbound"},
		"expired":    {c: hubtoken.Claims{IssuedAt: now.Add(-2 * time.Hour), Expires: now.Add(-time.Hour), BoundSecret: "s", BoundSecretUID: "u"}, reason: "Expired"},
	} {
		t.Run(name, func(t *testing.T) {
			if st := r.state(now, tc.c, tc.err); st.ok || st.reason != tc.reason {
				t.Errorf("state %+v, want False %s", st, tc.reason)
			}
		})
	}
}

func TestCheckHubSecret(t *testing.T) {
	ca := testCA(t)
	secret := func(data map[string][]byte) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "archipelago-system", Name: "archipelago-hub"}, Data: data}
	}
	if err := checkHubSecret(secret(map[string][]byte{"token": []byte("t"), "ca.crt": ca})); err != nil {
		t.Fatalf("a complete Secret is refused: %v", err)
	}
	for name, tc := range map[string]struct {
		data map[string][]byte
		want string
	}{
		"no CA":      {map[string][]byte{"token": []byte("t")}, `no key "ca.crt"`},
		"empty CA":   {map[string][]byte{"token": []byte("t"), "ca.crt": {}}, `no key "ca.crt"`},
		"CA not PEM": {map[string][]byte{"token": []byte("t"), "ca.crt": []byte("not a certificate")}, `no PEM certificate in key "ca.crt"`},
		"no token":   {map[string][]byte{"ca.crt": ca}, `no key "token"`},
	} {
		t.Run(name, func(t *testing.T) {
			err := checkHubSecret(secret(tc.data))
			var se *SecretError
			if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "archipelago-system/archipelago-hub") {
				t.Fatalf("error %v, want a SecretError naming the Secret and %q", err, tc.want)
			}
		})
	}
	// DefaultHubConfig refuses the same Secrets: nothing falls back to the system roots.
	if _, err := DefaultHubConfig(nil, secret(map[string][]byte{"token": []byte("t")})); err == nil {
		t.Error("DefaultHubConfig accepted a Secret without a CA")
	}
}

func testCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hub-ca"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
