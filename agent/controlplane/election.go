package controlplane

import (
	"context"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// elector runs the gateway election among candidates. Its identity is the
// node name, so a restarted agent on the leader's node finds its own name in
// the Lease and renews it instead of waiting for it to expire: the tunnels
// stay on the same node across agent restarts.
type elector struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	le      *leaderelection.LeaderElector
	stopped bool // leadership was lost and not yet re-acquired
}

// state reports whether this node leads, and whether the election has
// observed any holder yet (until then the role is unknown and the data
// path is left alone, so that a restart never tears down a live tunnel).
func (e *elector) state() (leading, observed bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.le == nil {
		return false, false
	}
	return e.le.IsLeader() && !e.stopped, e.le.GetLeader() != ""
}

func (a *Agent) election(ctx context.Context, s *scope) error {
	if !s.candidate {
		a.stopElection()
		s.role = meshv1.RoleWorker
		return nil
	}
	e, err := a.ensureElection(ctx)
	if err != nil {
		return err
	}
	leading, observed := e.state()
	if !observed {
		a.log.V(1).Info("Gateway election has not observed the lease yet")
		return errStop
	}
	s.role = meshv1.RoleStandby
	if leading {
		s.role = meshv1.RoleGateway
	}
	return nil
}

func (a *Agent) ensureElection(ctx context.Context) (*elector, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.elector != nil {
		return a.elector, nil
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: a.cfg.Namespace, Name: a.cfg.LeaseName},
		Client:     a.kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: a.cfg.NodeName},
	}
	e := &elector{done: make(chan struct{})}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   a.cfg.LeaseDuration,
		RenewDeadline:   a.cfg.RenewDeadline,
		RetryPeriod:     a.cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            a.cfg.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				a.log.Info("Elected active gateway")
				a.Trigger()
			},
			OnStoppedLeading: func() {
				e.mu.Lock()
				e.stopped = true
				e.mu.Unlock()
				a.log.Info("Lost the gateway election")
				a.Trigger()
			},
			OnNewLeader: func(id string) {
				a.log.Info("Active gateway observed", "leader", id)
				a.Trigger()
			},
		},
	})
	if err != nil {
		return nil, err
	}
	e.le = le
	ectx, cancel := context.WithCancel(ctx)
	e.cancel = cancel
	go func() {
		defer close(e.done)
		for ectx.Err() == nil {
			e.mu.Lock()
			e.stopped = false
			e.mu.Unlock()
			le.Run(ectx) // returns when leadership is lost or ectx ends
		}
	}()
	a.elector = e
	return e, nil
}

func (a *Agent) stopElection() {
	a.mu.Lock()
	e := a.elector
	a.elector = nil
	a.mu.Unlock()
	if e != nil {
		e.cancel()
		<-e.done
	}
}
