package controlplane

import (
	"context"
	"errors"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// errHubConnecting: a connection to the hub is being set up beside the
// pass; the pass goes on with the last directory (or the local one).
var errHubConnecting = errors.New("connecting to the hub")

// connectHub returns the current hub connection if it is healthy. Otherwise
// it starts (once) a connection or reconnection in the background, which
// triggers a pass when it is done, and returns the degraded connection (its
// cache still serves the last directory) or errHubConnecting.
func (a *Agent) connectHub(ctx context.Context, m *meshv1.ClusterSetMembership) (*hubConn, error) {
	a.mu.Lock()
	cur := a.hub
	a.mu.Unlock()
	if cur != nil && !cur.degraded {
		// Same credentials? ensureHub compares and is cheap when they are.
		return a.ensureHub(ctx, m)
	}
	if a.hubConnecting.CompareAndSwap(false, true) {
		mc := m.DeepCopy()
		go func() {
			defer a.hubConnecting.Store(false)
			var err error
			if cur != nil {
				_, err = a.reconnectHub(ctx, cur, mc)
			} else {
				_, err = a.ensureHub(ctx, mc)
			}
			a.mu.Lock()
			a.hubErr = err
			a.mu.Unlock()
			if err != nil {
				a.log.V(1).Info("Hub connection failed", "err", err.Error())
			}
			a.Trigger()
		}()
	}
	if cur != nil {
		return cur, nil
	}
	a.mu.Lock()
	last := a.hubErr
	a.mu.Unlock()
	if last != nil {
		return nil, last
	}
	return nil, errHubConnecting
}

// publishHub is the elected agent's write to the hub (its TunnelGateway
// objects), after the data path was applied: a slow or unreachable hub
// delays nothing on the data path.
func (a *Agent) publishHub(ctx context.Context, s *scope) error {
	if s.role != meshv1.RoleGateway || s.hub == nil || s.hubDir == nil || s.hub.degraded {
		return nil
	}
	if err := a.publishGateways(ctx, s.hub, s, s.hubDir); err != nil {
		s.errs = append(s.errs, err)
		if hubDown(err) {
			s.hub.degraded = true
		}
	}
	return nil
}
