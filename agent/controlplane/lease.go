package controlplane

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	"github.com/archipelago-mesh/archipelago/agent/liveness"
)

// leaseClient is the part of the Lease API the elector uses
// (coordinationv1client.LeaseInterface implements it).
type leaseClient interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*coordinationv1.Lease, error)
	Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error)
	Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error)
}

// gatewayElector elects the active gateway among the candidates on one
// Lease. It differs from client-go's leader election where a gateway needs
// it to:
//
//   - A standby takes the Lease as soon as the liveness probes say the
//     holder is dead, even before the Lease expires; the Lease stays the
//     fence (one holder, optimistic concurrency on its resourceVersion).
//   - A leader steps down the moment it sees another holder (at its next
//     renew, or at once when the agent's watch of the Lease wakes it), or
//     when it could not renew for RenewDeadline (shorter than the Lease
//     duration, so it has stepped down before a standby may take an expired
//     Lease).
//   - Stopping (SIGTERM) does not release the Lease, and a candidate that
//     finds its own name in the Lease takes it back at once: an agent
//     restart keeps the gateway where it is.
//   - An expired Lease whose holder still answers probes (its agent is
//     restarting, its device forwards) is taken only after TakeoverGrace:
//     a rollout is not a failover.
type gatewayElector struct {
	identity string
	name     string
	leases   leaseClient
	clock    clock.Clock
	log      logr.Logger

	leaseDuration, renewPeriod, renewDeadline, retryPeriod, grace time.Duration
	// liveness tells what the probes know of a holder.
	liveness func(holder string) liveness.State
	// onChange is called after leadership or the observed holder changed.
	onChange func()

	wake chan struct{}

	mu         sync.Mutex
	leading    bool
	observed   bool
	holder     string
	observedRV string
	// observedAt is when the Lease record last changed as this candidate
	// saw it (local clock, as client-go does: no trust in other nodes'
	// clocks).
	observedAt time.Time
	lastRenew  time.Time
	released   bool
}

type electorConfig struct {
	Identity, Name                                                string
	Leases                                                        leaseClient
	Clock                                                         clock.Clock
	LeaseDuration, RenewPeriod, RenewDeadline, RetryPeriod, Grace time.Duration
	Liveness                                                      func(holder string) liveness.State
	OnChange                                                      func()
	Log                                                           logr.Logger
}

func newGatewayElector(c electorConfig) *gatewayElector {
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
	if c.Liveness == nil {
		c.Liveness = func(string) liveness.State { return liveness.Unknown }
	}
	if c.OnChange == nil {
		c.OnChange = func() {}
	}
	return &gatewayElector{
		identity: c.Identity, name: c.Name, leases: c.Leases, clock: c.Clock, log: c.Log,
		leaseDuration: c.LeaseDuration, renewPeriod: c.RenewPeriod, renewDeadline: c.RenewDeadline,
		retryPeriod: c.RetryPeriod, grace: c.Grace, liveness: c.Liveness, onChange: c.OnChange,
		wake: make(chan struct{}, 1),
	}
}

// state reports whether this candidate leads, whether it has observed the
// Lease yet, and the holder it last saw.
func (e *gatewayElector) state() (leading, observed bool, holder string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading, e.observed, e.holder
}

// Wake makes Run try at once (the probes declared the holder dead, or the
// watch saw the Lease change).
func (e *gatewayElector) Wake() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Run steps the election until ctx is done. It does not release the Lease
// when it stops.
func (e *gatewayElector) Run(ctx context.Context) {
	for {
		d := e.Step(ctx)
		t := e.clock.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-e.wake:
			t.Stop()
		case <-t.C():
		}
	}
}

// Step makes one attempt: renew when leading, else take the Lease if the
// rules allow. It returns how long to wait before the next one.
func (e *gatewayElector) Step(ctx context.Context) time.Duration {
	now := e.clock.Now()
	cctx, cancel := context.WithTimeout(ctx, e.renewDeadline)
	defer cancel()
	lease, err := e.leases.Get(cctx, e.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		e.mu.Lock()
		released := e.released
		e.mu.Unlock()
		if released {
			return e.retryPeriod
		}
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: e.name}}
		e.fill(l, now, true)
		created, err := e.leases.Create(cctx, l, metav1.CreateOptions{})
		if err != nil {
			e.failed(now, fmt.Errorf("create Lease %s: %w", e.name, err))
			return e.retryPeriod
		}
		e.observe(created, now)
		e.setLeading(true, now, "created the Lease")
		return e.renewPeriod
	case err != nil:
		e.failed(now, fmt.Errorf("read Lease %s: %w", e.name, err))
		return e.wait()
	}
	e.observe(lease, now)
	holder := ""
	if lease.Spec.HolderIdentity != nil {
		holder = *lease.Spec.HolderIdentity
	}
	e.mu.Lock()
	leading, observedAt, released := e.leading, e.observedAt, e.released
	e.mu.Unlock()
	if leading {
		if holder != e.identity {
			e.setLeading(false, now, "another candidate holds the Lease: "+holder)
			return e.retryPeriod
		}
		e.fill(lease, now, false)
		updated, err := e.leases.Update(cctx, lease, metav1.UpdateOptions{})
		if err != nil {
			e.failed(now, fmt.Errorf("renew Lease %s: %w", e.name, err))
			return e.wait()
		}
		e.observe(updated, now)
		e.mu.Lock()
		e.lastRenew = now
		e.mu.Unlock()
		return e.renewPeriod
	}
	if released {
		return e.retryPeriod
	}
	reason := ""
	expired := now.Sub(observedAt) > e.leaseDuration
	switch st := e.liveness(holder); {
	case holder == e.identity:
		reason = "the Lease names this node (agent restarted)"
	case holder == "":
		reason = "the Lease has no holder"
	case st == liveness.Dead:
		reason = "the holder stopped answering liveness probes"
	case expired && st != liveness.Alive:
		reason = "the Lease expired"
	case expired && now.Sub(observedAt) > e.leaseDuration+e.grace:
		reason = "the Lease expired and its holder's agent did not come back within the takeover grace"
	}
	if reason == "" {
		return e.retryPeriod
	}
	e.fill(lease, now, holder != e.identity)
	updated, err := e.leases.Update(cctx, lease, metav1.UpdateOptions{})
	if err != nil {
		// A conflict means another candidate was faster.
		e.log.V(1).Info("Could not take the gateway Lease", "reason", reason, "err", err.Error())
		return e.retryPeriod
	}
	e.observe(updated, now)
	e.setLeading(true, now, reason)
	return e.renewPeriod
}

// wait is the pause after a failed call: leaders keep trying at their renew
// period, others at the retry period.
func (e *gatewayElector) wait() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.leading {
		return e.renewPeriod
	}
	return e.retryPeriod
}

// failed steps down a leader that could not renew for renewDeadline.
func (e *gatewayElector) failed(now time.Time, err error) {
	e.mu.Lock()
	leading, last := e.leading, e.lastRenew
	e.mu.Unlock()
	if leading && now.Sub(last) >= e.renewDeadline {
		e.setLeading(false, now, fmt.Sprintf("could not renew the Lease for %s: %v", now.Sub(last).Round(time.Millisecond), err))
		return
	}
	e.log.V(1).Info("Gateway Lease call failed", "err", err.Error())
}

// fill writes this candidate into the Lease; take also starts a new term.
func (e *gatewayElector) fill(l *coordinationv1.Lease, now time.Time, take bool) {
	id := e.identity
	secs := int32((e.leaseDuration + time.Second - 1) / time.Second)
	t := metav1.NewMicroTime(now)
	l.Spec.HolderIdentity = &id
	l.Spec.LeaseDurationSeconds = &secs
	l.Spec.RenewTime = &t
	if take || l.Spec.AcquireTime == nil {
		l.Spec.AcquireTime = &t
	}
	if take {
		n := int32(1)
		if l.Spec.LeaseTransitions != nil {
			n = *l.Spec.LeaseTransitions + 1
		}
		l.Spec.LeaseTransitions = &n
	}
}

func (e *gatewayElector) observe(l *coordinationv1.Lease, now time.Time) {
	holder := ""
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	e.mu.Lock()
	changed := !e.observed || holder != e.holder
	if !e.observed || l.ResourceVersion != e.observedRV {
		e.observedRV, e.observedAt = l.ResourceVersion, now
	}
	e.observed, e.holder = true, holder
	e.mu.Unlock()
	if changed {
		e.log.Info("Active gateway observed", "holder", holder)
		e.onChange()
	}
}

func (e *gatewayElector) setLeading(leading bool, now time.Time, reason string) {
	e.mu.Lock()
	changed := e.leading != leading
	e.leading = leading
	if leading {
		e.lastRenew = now
		e.holder = e.identity
	}
	e.mu.Unlock()
	if !changed {
		return
	}
	if leading {
		e.log.Info("Elected active gateway", "reason", reason)
	} else {
		e.log.Info("Stepped down as active gateway", "reason", reason)
	}
	e.onChange()
}

// Release gives the Lease up on purpose (this node is no candidate any
// more): the holder is cleared so that a standby takes over at once. After
// Release the elector never takes the Lease again.
func (e *gatewayElector) Release(ctx context.Context) {
	e.mu.Lock()
	e.released = true
	leading := e.leading
	e.mu.Unlock()
	if !leading {
		return
	}
	e.setLeading(false, e.clock.Now(), "released")
	cctx, cancel := context.WithTimeout(ctx, e.renewDeadline)
	defer cancel()
	l, err := e.leases.Get(cctx, e.name, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != e.identity {
		return
	}
	empty := ""
	l.Spec.HolderIdentity = &empty
	if _, err := e.leases.Update(cctx, l, metav1.UpdateOptions{}); err != nil {
		e.log.Error(err, "Could not release the gateway Lease")
	}
}
