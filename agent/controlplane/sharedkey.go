package controlplane

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The member cluster's WireGuard identity, shared by its gateway
// candidates, lives in exactly one Secret of the member cluster (never on
// the hub). Only the gateway candidates' ServiceAccount (archipelago-gateway)
// may read it: config/agent/rbac/wireguard-secret.yaml, written by hand.

const (
	// DefaultKeySecret is the Secret holding the shared private key.
	DefaultKeySecret = "archipelago-wireguard"
	// KeySecretKey is the Secret's data key.
	KeySecretKey = "private.key"
)

// loadKey returns the member's shared WireGuard private key. The first
// candidate that needs it creates the Secret, seeded with cfg.Key (this
// node's existing key, so that an upgrade from per-node keys keeps the
// identity remotes know) or a new key. The key is read once per process:
// a standby holds it before it is needed, so a takeover needs no API call.
func (a *Agent) loadKey(ctx context.Context) (wgtypes.Key, error) {
	a.mu.Lock()
	k := a.key
	a.mu.Unlock()
	if k != (wgtypes.Key{}) {
		return k, nil
	}
	k, err := a.sharedKey(ctx)
	if err != nil {
		return wgtypes.Key{}, err
	}
	a.mu.Lock()
	a.key = k
	a.mu.Unlock()
	return k, nil
}

func (a *Agent) sharedKey(ctx context.Context) (wgtypes.Key, error) {
	ref := client.ObjectKey{Namespace: a.cfg.Namespace, Name: a.cfg.KeySecret}
	s := &corev1.Secret{}
	err := a.direct.Get(ctx, ref, s)
	if err == nil {
		return keyFromSecret(s)
	}
	if !apierrors.IsNotFound(err) {
		return wgtypes.Key{}, fmt.Errorf("read WireGuard key Secret %s: %w", ref, err)
	}
	var seed wgtypes.Key
	if a.cfg.Key != nil {
		if seed, err = a.cfg.Key(); err != nil {
			return wgtypes.Key{}, fmt.Errorf("load this node's WireGuard key: %w", err)
		}
	}
	if seed == (wgtypes.Key{}) {
		if seed, err = wgtypes.GeneratePrivateKey(); err != nil {
			return wgtypes.Key{}, fmt.Errorf("generate WireGuard key: %w", err)
		}
	}
	s = &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ref.Namespace, Name: ref.Name,
			Labels: map[string]string{"app.kubernetes.io/name": "archipelago-agent"}},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{KeySecretKey: []byte(seed.String())},
	}
	if err := a.direct.Create(ctx, s); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return wgtypes.Key{}, fmt.Errorf("create WireGuard key Secret %s: %w", ref, err)
		}
		// Another candidate was first: use its key.
		if err := a.direct.Get(ctx, ref, s); err != nil {
			return wgtypes.Key{}, fmt.Errorf("read WireGuard key Secret %s: %w", ref, err)
		}
		return keyFromSecret(s)
	}
	a.log.Info("Created the member's shared WireGuard key", "secret", ref.String())
	return seed, nil
}

func keyFromSecret(s *corev1.Secret) (wgtypes.Key, error) {
	raw := strings.TrimSpace(string(s.Data[KeySecretKey]))
	if raw == "" {
		return wgtypes.Key{}, fmt.Errorf("secret %s/%s has no key %q; delete it to let the agents create a new key (every peer then learns the new public key from the hub)", s.Namespace, s.Name, KeySecretKey)
	}
	k, err := wgtypes.ParseKey(raw)
	if err != nil || k == (wgtypes.Key{}) {
		return wgtypes.Key{}, errors.Join(fmt.Errorf("secret %s/%s: %q is not a WireGuard private key", s.Namespace, s.Name, KeySecretKey), err)
	}
	return k, nil
}
