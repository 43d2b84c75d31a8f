package controlplane

import (
	"context"
	"net/netip"
	"slices"
	"sync"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/agent/liveness"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// election is the running gateway election of a candidate: the elector on
// the Lease and the prober of the holder's node.
type election struct {
	elector *gatewayElector
	prober  *liveness.Prober
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func (a *Agent) election(ctx context.Context, s *scope) error {
	if !s.candidate {
		// No candidate (any more): give the Lease up so that a standby
		// takes over at once.
		a.stopElection(ctx, true)
		s.role = meshv1.RoleWorker
		return nil
	}
	e := a.ensureElection(ctx)
	leading, observed, holder := e.elector.state()
	if !observed {
		a.log.V(1).Info("Gateway election has not observed the lease yet")
		return errStop
	}
	s.role = meshv1.RoleStandby
	s.holder = holder
	if leading {
		s.role = meshv1.RoleGateway
	}
	if e.prober != nil {
		target := netip.AddrPort{}
		if !leading && holder != "" && holder != a.cfg.NodeName {
			if ip := a.nodeIPByName(ctx, holder); ip.IsValid() {
				target = netip.AddrPortFrom(ip, uint16(a.cfg.ProbePort))
			}
		}
		e.prober.SetTarget(holder, target)
	}
	return nil
}

func (a *Agent) ensureElection(ctx context.Context) *election {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.elect != nil {
		return a.elect
	}
	ectx, cancel := context.WithCancel(ctx)
	el := &election{cancel: cancel}
	if a.cfg.ProbePort > 0 {
		el.prober = &liveness.Prober{
			Interval: a.cfg.ProbeInterval, Misses: a.cfg.ProbeMisses,
			Log: a.log.WithName("liveness"),
		}
	}
	el.elector = newGatewayElector(electorConfig{
		Identity: a.cfg.NodeName, Name: a.cfg.LeaseName,
		Leases:        a.kube.CoordinationV1().Leases(a.cfg.Namespace),
		Clock:         a.cfg.Clock,
		LeaseDuration: a.cfg.LeaseDuration, RenewPeriod: a.cfg.RetryPeriod, RenewDeadline: a.cfg.RenewDeadline,
		RetryPeriod: a.cfg.RetryPeriod, Grace: a.cfg.TakeoverGrace,
		Liveness: func(holder string) liveness.State {
			if el.prober == nil {
				return liveness.Unknown
			}
			return el.prober.State(holder)
		},
		OnChange: a.Trigger,
		Log:      a.log.WithName("election"),
	})
	if el.prober != nil {
		el.prober.OnDead = func(string) { el.elector.Wake() }
	}
	if el.prober != nil {
		el.wg.Add(1)
		go func() {
			defer el.wg.Done()
			if err := el.prober.Run(ectx); err != nil {
				a.log.Error(err, "Liveness prober stopped")
			}
		}()
	}
	el.wg.Add(1)
	go func() {
		defer el.wg.Done()
		el.elector.Run(ectx)
	}()
	a.elect = el
	return el
}

// stopElection ends the election; release hands the Lease over (a node
// that is no candidate any more), otherwise the Lease stays with this node
// (a restart: the next agent takes it back).
func (a *Agent) stopElection(ctx context.Context, release bool) {
	a.mu.Lock()
	e := a.elect
	a.elect = nil
	a.mu.Unlock()
	if e == nil {
		return
	}
	e.cancel()
	e.wg.Wait()
	if release {
		e.elector.Release(ctx)
	}
}

// wakeElection makes the elector look at the Lease now (its watch saw
// another holder).
func (a *Agent) wakeElection() {
	a.mu.Lock()
	e := a.elect
	a.mu.Unlock()
	if e != nil {
		e.elector.Wake()
	}
}

// leaseHandler wakes the agent when the Lease's holder changes; renewals
// (every retry period) do not cause passes.
func (a *Agent) leaseHandler() toolscache.ResourceEventHandler {
	holder := func(obj any) (string, bool) {
		l, ok := obj.(*coordinationv1.Lease)
		if !ok || l.Name != a.cfg.LeaseName || l.Namespace != a.cfg.Namespace {
			return "", false
		}
		if l.Spec.HolderIdentity == nil {
			return "", true
		}
		return *l.Spec.HolderIdentity, true
	}
	changed := func() {
		a.wakeElection()
		a.Trigger()
	}
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if _, ok := holder(obj); ok {
				changed()
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := holder(oldObj)
			n, ok2 := holder(newObj)
			if ok1 && ok2 && o != n {
				changed()
			}
		},
		DeleteFunc: func(obj any) {
			if _, ok := holder(obj); ok {
				changed()
			}
		},
	}
}

// leaseHolder is the gateway Lease's holder as the member cache has it
// ("" when there is none).
func (a *Agent) leaseHolder(ctx context.Context) string {
	l := &coordinationv1.Lease{}
	if err := a.member.Get(ctx, client.ObjectKey{Namespace: a.cfg.Namespace, Name: a.cfg.LeaseName}, l); err != nil {
		return ""
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// nodeIPByName is a Node's InternalIP from the member cache.
func (a *Agent) nodeIPByName(ctx context.Context, name string) netip.Addr {
	n := &corev1.Node{}
	if err := a.member.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
		return netip.Addr{}
	}
	return nodeIP(n)
}

// activeGatewayIPs are the next hops of remote ranges on a node that is not
// the gateway, one per family (IPv4 first): the Lease holder's InternalIPs,
// straight from the member cluster (the Lease, the Nodes), so that workers
// follow a takeover the moment the new holder writes the Lease, not after it
// rewrote the membership status. The status' activeGatewayIPs (and
// activeGatewayIP) are the fallback when the Lease names no known node.
func (a *Agent) activeGatewayIPs(ctx context.Context, s *scope) []netip.Addr {
	holder := s.holder
	if holder == "" {
		holder = a.leaseHolder(ctx)
	}
	if holder != "" {
		n := &corev1.Node{}
		if err := a.member.Get(ctx, client.ObjectKey{Name: holder}, n); err == nil {
			if ips := nodeIPs(n); len(ips) > 0 {
				return ips
			}
		}
	}
	if s.membership == nil {
		return nil
	}
	st := s.membership.Status
	var out []netip.Addr
	for _, raw := range append(slices.Clone(st.ActiveGatewayIPs), st.ActiveGatewayIP) {
		if ip, err := netip.ParseAddr(raw); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return firstPerFamily(out)
}

// stillLeading reports whether this node leads right now.
func (a *Agent) stillLeading() bool {
	a.mu.Lock()
	e := a.elect
	a.mu.Unlock()
	if e == nil {
		return false
	}
	leading, _, _ := e.elector.state()
	return leading
}
