package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/archipelago-mesh/archipelago/internal/hubtoken"
)

// Keys and annotation of the member's hub Secret (written by
// 'kubectl archipelago join', kept in step with internal/cli).
const (
	secretKeyToken         = "token"
	secretKeyCA            = "ca.crt"
	annotationTokenExpires = "archipelago.dev/token-expires"
)

// Renewal retries: the first after renewRetryMin, doubling up to renewRetryMax.
const (
	renewRetryMin = 10 * time.Second
	renewRetryMax = 5 * time.Minute
)

// SecretError says that the member's hub Secret cannot be used as it is.
// The agent reports it as Joined=False, reason HubSecretInvalid.
type SecretError struct {
	Namespace, Name string
	Problem         string
}

func (e *SecretError) Error() string {
	return fmt.Sprintf("hub Secret %s/%s %s; run 'kubectl archipelago join' again to rewrite it", e.Namespace, e.Name, e.Problem)
}

// checkHubSecret refuses a Secret without a token or without a CA the agent
// could verify the hub with. Without ca.crt client-go would fall back to
// the host's system roots, which would trust any publicly signed server
// with the member's token.
func checkHubSecret(s *corev1.Secret) error {
	bad := func(problem string) error {
		return &SecretError{Namespace: s.Namespace, Name: s.Name, Problem: problem}
	}
	if len(s.Data[secretKeyToken]) == 0 {
		return bad(`has no key "token"`)
	}
	ca := s.Data[secretKeyCA]
	if len(ca) == 0 {
		return bad(`has no key "ca.crt" (the hub's CA bundle); the agent does not fall back to the system's trusted roots`)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca) {
		return bad(`has no PEM certificate in key "ca.crt"`)
	}
	return nil
}

// bearerToken sets the Authorization header from a token that the renewal
// replaces in place, so that a renewed token is used by the running watches'
// next requests without restarting them.
type bearerToken struct {
	next  http.RoundTripper
	token *atomic.Pointer[string]
}

func (b *bearerToken) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	r.Header.Set("Authorization", "Bearer "+*b.token.Load())
	return b.next.RoundTrip(r)
}

// tokenRenewal decides when the elected agent renews its hub token: at a
// fraction of the token's lifetime, and after a failure with exponential
// backoff (never giving up while the token lasts).
type tokenRenewal struct {
	fraction float64
	failures int
	retryAt  time.Time
	lastErr  error
	renewed  time.Time
}

// due says whether a token with claims c should be renewed at now.
func (r *tokenRenewal) due(now time.Time, c hubtoken.Claims) bool {
	return !now.Before(c.RenewAt(r.fraction)) && !now.Before(r.retryAt)
}

func (r *tokenRenewal) failed(now time.Time, err error) {
	r.failures++
	backoff := renewRetryMin << min(r.failures-1, 16)
	if backoff > renewRetryMax {
		backoff = renewRetryMax
	}
	r.retryAt, r.lastErr = now.Add(backoff), err
}

func (r *tokenRenewal) succeeded(now time.Time) {
	r.failures, r.retryAt, r.lastErr, r.renewed = 0, time.Time{}, nil, now
}

// credState is the HubCredentials condition's input.
type credState struct {
	ok      bool
	reason  string
	message string
}

// state is the condition for a token with claims c (parsed with err).
func (r *tokenRenewal) state(now time.Time, c hubtoken.Claims, err error) credState {
	const stamp = time.RFC3339
	switch {
	case err != nil:
		return credState{reason: "NotRenewable", message: fmt.Sprintf("the hub token cannot be read (%v), so it is never renewed: run 'kubectl archipelago join' again", err)}
	case c.BoundSecret == "":
		return credState{reason: "Unbound", message: fmt.Sprintf("the hub token (expires %s) is not bound to a credential Secret: nothing can revoke it and the agent does not renew it; run 'kubectl archipelago join' again", c.Expires.Format(stamp))}
	case !now.Before(c.Expires):
		return credState{reason: "Expired", message: fmt.Sprintf("the hub token bound to hub Secret %s expired at %s: run 'kubectl archipelago join' again", c.BoundSecret, c.Expires.Format(stamp))}
	case r.lastErr != nil:
		return credState{reason: "RenewalFailed", message: fmt.Sprintf("renewing the hub token failed %d time(s), next try at %s: %v; it expires at %s",
			r.failures, r.retryAt.Format(stamp), r.lastErr, c.Expires.Format(stamp))}
	}
	reason := "Issued"
	if !r.renewed.IsZero() {
		reason = "Renewed"
	}
	return credState{ok: true, reason: reason, message: fmt.Sprintf("the hub token bound to hub Secret %s expires at %s; renewal at %s",
		c.BoundSecret, c.Expires.Format(stamp), c.RenewAt(r.fraction).Format(stamp))}
}

// renewToken renews the elected agent's hub token when it is due: a
// TokenRequest with the current token, for the same ServiceAccount, bound to
// the same credential Secret and with the same lifetime, written back into
// the member's hub Secret. A failure keeps the current token (and the
// connection); it is retried with backoff and reported in the condition.
func (a *Agent) renewToken(ctx context.Context, hub *hubConn, s *scope) {
	now := a.cfg.Now()
	r := &a.renewal
	c, err := hub.claims, hub.claimsErr
	if err == nil && c.BoundSecret != "" && now.Before(c.Expires) && r.due(now, c) {
		if err := a.renewNow(ctx, hub, c); err != nil {
			r.failed(now, err)
			a.log.Error(err, "Hub token renewal failed", "boundSecret", c.BoundSecret, "expires", c.Expires, "retryAt", r.retryAt)
		} else {
			r.succeeded(now)
			c = hub.claims
			a.log.Info("Renewed the hub token", "boundSecret", c.BoundSecret, "expires", c.Expires)
		}
	}
	st := r.state(now, c, err)
	s.cred = &st
}

func (a *Agent) renewNow(ctx context.Context, hub *hubConn, c hubtoken.Claims) error {
	tr, err := hub.kube.CoreV1().ServiceAccounts(c.Namespace).CreateToken(ctx, c.ServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: ptr.To(int64(c.Lifetime() / time.Second)),
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: c.BoundSecret, UID: types.UID(c.BoundSecretUID)},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("request a token for %s/%s bound to Secret %s: %w", c.Namespace, c.ServiceAccount, c.BoundSecret, err)
	}
	fresh, err := hubtoken.Parse(tr.Status.Token)
	if err != nil {
		return fmt.Errorf("the hub issued a token the agent cannot read: %w", err)
	}
	if fresh.BoundSecretUID != c.BoundSecretUID {
		return errors.New("the hub issued a token bound to another object than asked")
	}
	// The Secret as this pass read it: a conflict means someone (join)
	// rewrote it meanwhile, and their token wins.
	secret := hub.secret.DeepCopy()
	secret.Data[secretKeyToken] = []byte(tr.Status.Token)
	if secret.Annotations == nil {
		secret.Annotations = map[string]string{}
	}
	secret.Annotations[annotationTokenExpires] = tr.Status.ExpirationTimestamp.UTC().Format(time.RFC3339)
	if err := a.direct.Update(ctx, secret); err != nil {
		return fmt.Errorf("write the renewed token into Secret %s/%s: %w", secret.Namespace, secret.Name, err)
	}
	hub.setToken(secret, tr.Status.Token)
	return nil
}
