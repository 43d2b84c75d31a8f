package controlplane

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/archipelago-mesh/archipelago/agent/liveness"
)

// fakeLeases is one Lease with the apiserver's optimistic concurrency: an
// Update with a stale resourceVersion is a conflict.
type fakeLeases struct {
	mu    sync.Mutex
	lease *coordinationv1.Lease
	rv    int
	down  bool // every call fails as if the apiserver were unreachable
	calls int
}

var errUnreachable = errors.New("dial tcp: connect: no route to host")

func (f *fakeLeases) Get(_ context.Context, name string, _ metav1.GetOptions) (*coordinationv1.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.down {
		return nil, errUnreachable
	}
	if f.lease == nil {
		return nil, apierrors.NewNotFound(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, name)
	}
	return f.lease.DeepCopy(), nil
}

func (f *fakeLeases) Create(_ context.Context, l *coordinationv1.Lease, _ metav1.CreateOptions) (*coordinationv1.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.down {
		return nil, errUnreachable
	}
	if f.lease != nil {
		return nil, apierrors.NewAlreadyExists(schema.GroupResource{Resource: "leases"}, l.Name)
	}
	f.rv++
	c := l.DeepCopy()
	c.ResourceVersion = strconv.Itoa(f.rv)
	f.lease = c
	return c.DeepCopy(), nil
}

func (f *fakeLeases) Update(_ context.Context, l *coordinationv1.Lease, _ metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.down {
		return nil, errUnreachable
	}
	if f.lease == nil || l.ResourceVersion != f.lease.ResourceVersion {
		return nil, apierrors.NewConflict(schema.GroupResource{Resource: "leases"}, l.Name, errors.New("the object has been modified"))
	}
	f.rv++
	c := l.DeepCopy()
	c.ResourceVersion = strconv.Itoa(f.rv)
	f.lease = c
	return c.DeepCopy(), nil
}

func (f *fakeLeases) holder() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lease == nil || f.lease.Spec.HolderIdentity == nil {
		return ""
	}
	return *f.lease.Spec.HolderIdentity
}

func (f *fakeLeases) transitions() int32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lease == nil || f.lease.Spec.LeaseTransitions == nil {
		return 0
	}
	return *f.lease.Spec.LeaseTransitions
}

func (f *fakeLeases) setDown(d bool) {
	f.mu.Lock()
	f.down = d
	f.mu.Unlock()
}

// The lab's and the DaemonSet's timing.
const (
	tLease   = 4 * time.Second
	tRenew   = time.Second
	tDead    = 3 * time.Second // renew deadline
	tRetry   = time.Second
	tGrace   = 30 * time.Second
	tickStep = 100 * time.Millisecond
)

type candidate struct {
	e     *gatewayElector
	probe liveness.State
	next  time.Time // when Run would step again
	mu    sync.Mutex
}

func newCandidate(t *testing.T, id string, leases leaseClient, clk *clocktesting.FakeClock) *candidate {
	c := &candidate{probe: liveness.Unknown}
	c.e = newGatewayElector(electorConfig{
		Identity: id, Name: "archipelago-gateway", Leases: leases, Clock: clk,
		LeaseDuration: tLease, RenewPeriod: tRenew, RenewDeadline: tDead, RetryPeriod: tRetry, Grace: tGrace,
		Liveness: func(string) liveness.State { c.mu.Lock(); defer c.mu.Unlock(); return c.probe },
		Log:      testr.New(t).WithValues("candidate", id),
	})
	c.next = clk.Now()
	return c
}

func (c *candidate) setProbe(s liveness.State) { c.mu.Lock(); c.probe = s; c.mu.Unlock() }

func (c *candidate) leading() bool { l, _, _ := c.e.state(); return l }

// world advances a fake clock in small steps and steps each running
// candidate when its Run loop would (after the delay its last Step asked
// for), as Run does with a real clock.
type world struct {
	t      *testing.T
	clk    *clocktesting.FakeClock
	leases *fakeLeases
	cands  []*candidate
	paused map[*candidate]bool
}

func newWorld(t *testing.T, ids ...string) *world {
	w := &world{t: t, clk: clocktesting.NewFakeClock(time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)), leases: &fakeLeases{}, paused: map[*candidate]bool{}}
	for _, id := range ids {
		w.cands = append(w.cands, newCandidate(t, id, w.leases, w.clk))
	}
	return w
}

func (w *world) run(d time.Duration) {
	end := w.clk.Now().Add(d)
	for !w.clk.Now().After(end) {
		for _, c := range w.cands {
			if w.paused[c] || w.clk.Now().Before(c.next) {
				continue
			}
			c.next = w.clk.Now().Add(c.e.Step(context.Background()))
		}
		w.clk.Step(tickStep)
	}
}

// runUntil runs until cond holds and returns how long that took.
func (w *world) runUntil(limit time.Duration, cond func() bool) time.Duration {
	start := w.clk.Now()
	for w.clk.Now().Sub(start) <= limit {
		if cond() {
			return w.clk.Now().Sub(start)
		}
		w.run(0)
	}
	w.t.Fatalf("condition not met within %s", limit)
	return 0
}

// leaders returns the identities that believe they lead.
func (w *world) leaders() []string {
	var out []string
	for _, c := range w.cands {
		if c.leading() && !w.paused[c] {
			out = append(out, c.e.identity)
		}
	}
	return out
}

func TestElectionOneLeaderAndStandbysStay(t *testing.T) {
	w := newWorld(t, "gw1", "gw2", "gw3")
	w.run(0)
	if got := w.leaders(); len(got) != 1 || got[0] != "gw1" {
		t.Fatalf("leaders after the first round: %v, want [gw1]", got)
	}
	// A live, renewing holder keeps the Lease for as long as it runs, even
	// far past the Lease duration and the grace.
	w.run(2 * (tLease + tGrace))
	if got := w.leaders(); len(got) != 1 || got[0] != "gw1" || w.leases.holder() != "gw1" {
		t.Fatalf("leaders: %v, holder %q, want gw1 alone", got, w.leases.holder())
	}
	for _, c := range w.cands[1:] {
		if _, observed, holder := c.e.state(); !observed || holder != "gw1" {
			t.Errorf("%s observed=%v holder=%q, want gw1", c.e.identity, observed, holder)
		}
	}
}

func TestTakeoverWhenProbesSayDead(t *testing.T) {
	w := newWorld(t, "gw1", "gw2")
	w.run(2 * time.Second)
	gw1, gw2 := w.cands[0], w.cands[1]
	// gw1's node loses power: it stops stepping, and the probes of gw2
	// declare it dead. gw2 takes the Lease at its next attempt, long
	// before the Lease would expire.
	w.paused[gw1] = true
	gw2.setProbe(liveness.Dead)
	took := w.runUntil(tLease, gw2.leading)
	if took > tRetry {
		t.Errorf("takeover after %s, want within one retry period (%s)", took, tRetry)
	}
	if w.leases.holder() != "gw2" || w.leases.transitions() != 2 {
		t.Errorf("holder %q transitions %d, want gw2 and 2", w.leases.holder(), w.leases.transitions())
	}
	// With Wake (what the prober's OnDead does) the takeover needs no
	// wait at all.
	w2 := newWorld(t, "gw1", "gw2")
	w2.run(2 * time.Second)
	w2.paused[w2.cands[0]] = true
	w2.cands[1].setProbe(liveness.Dead)
	w2.cands[1].e.Step(context.Background())
	if !w2.cands[1].leading() {
		t.Error("a step right after the probes declared the holder dead did not take the Lease")
	}
}

func TestOldLeaderStepsDownWithinOneRenewPeriod(t *testing.T) {
	w := newWorld(t, "gw1", "gw2")
	w.run(2 * time.Second)
	gw1, gw2 := w.cands[0], w.cands[1]
	// The probes were wrong (a LAN blip): gw1 is alive and renewing when
	// gw2 takes the Lease.
	gw2.setProbe(liveness.Dead)
	w.runUntil(2*tRetry, gw2.leading)
	overlap := w.runUntil(2*tRenew, func() bool { return !gw1.leading() })
	if overlap > tRenew {
		t.Errorf("two leaders for %s, want at most one renew period (%s)", overlap, tRenew)
	}
	gw2.setProbe(liveness.Unknown)
	w.run(10 * time.Second)
	if got := w.leaders(); len(got) != 1 || got[0] != "gw2" {
		t.Errorf("leaders: %v, want [gw2]", got)
	}
	// Woken by the Lease watch, the old leader steps down without waiting
	// for its renew.
	w3 := newWorld(t, "gw1", "gw2")
	w3.run(2 * time.Second)
	w3.cands[1].setProbe(liveness.Dead)
	w3.cands[1].e.Step(context.Background())
	w3.cands[0].e.Step(context.Background())
	if w3.cands[0].leading() {
		t.Error("old leader still leads after a step that saw another holder")
	}
}

func TestTakeoverAfterExpiryWithoutProbes(t *testing.T) {
	w := newWorld(t, "gw1", "gw2")
	w.run(2 * time.Second)
	gw1, gw2 := w.cands[0], w.cands[1]
	w.paused[gw1] = true // no responder there: probes stay Unknown
	took := w.runUntil(tLease+2*tRetry, gw2.leading)
	if took < tLease-tRenew {
		t.Errorf("took the Lease after %s, before it could expire (%s)", took, tLease)
	}
}

func TestExpiredLeaseOfAnAnsweringHolderWaitsForGrace(t *testing.T) {
	w := newWorld(t, "gw1", "gw2")
	w.run(2 * time.Second)
	gw1, gw2 := w.cands[0], w.cands[1]
	// gw1's agent is gone (a slow rollout) but its device process answers
	// the probes: the tunnels still forward, so the Lease is not taken for
	// the grace.
	w.paused[gw1] = true
	gw2.setProbe(liveness.Alive)
	w.run(tLease + tGrace - 2*time.Second)
	if gw2.leading() {
		t.Fatal("took the Lease of a holder that answers probes before the grace ran out")
	}
	took := w.runUntil(4*time.Second, gw2.leading)
	t.Logf("taken %s after the grace would end", took)
	// The restarted agent on gw1 comes back in time in the other case.
	w2 := newWorld(t, "gw1", "gw2")
	w2.run(2 * time.Second)
	w2.paused[w2.cands[0]] = true
	w2.cands[1].setProbe(liveness.Alive)
	w2.run(10 * time.Second)
	restarted := newCandidate(t, "gw1", w2.leases, w2.clk)
	w2.cands[0] = restarted
	w2.paused = map[*candidate]bool{}
	w2.run(0)
	if !restarted.leading() || w2.leases.holder() != "gw1" || w2.leases.transitions() != 1 {
		t.Errorf("restarted gw1 leading=%v holder=%q transitions=%d, want gw1 back without a new term",
			restarted.leading(), w2.leases.holder(), w2.leases.transitions())
	}
}

func TestRestartKeepsTheLease(t *testing.T) {
	w := newWorld(t, "gw1", "gw2")
	w.run(2 * time.Second)
	// SIGTERM: Run returns without releasing; the new agent on the same
	// node takes its Lease back at its first step.
	w.paused[w.cands[0]] = true
	w.run(time.Second)
	restarted := newCandidate(t, "gw1", w.leases, w.clk)
	restarted.e.Step(context.Background())
	if !restarted.leading() {
		t.Fatal("restarted agent does not lead with its own name in the Lease")
	}
	w.cands[0] = restarted
	w.paused = map[*candidate]bool{}
	w.run(10 * time.Second)
	if got := w.leaders(); len(got) != 1 || got[0] != "gw1" || w.leases.transitions() != 1 {
		t.Errorf("leaders %v, transitions %d, want [gw1] and 1", got, w.leases.transitions())
	}
}

func TestLeaderCutOffFromTheAPIStepsDownBeforeExpiry(t *testing.T) {
	w := newWorld(t, "gw1")
	w.run(2 * time.Second)
	gw1 := w.cands[0]
	w.leases.setDown(true)
	took := w.runUntil(tLease, func() bool { return !gw1.leading() })
	if took > tDead+tRenew || took >= tLease {
		t.Errorf("stepped down %s after the API went away, want within the renew deadline (%s) and before the Lease expires (%s)", took, tDead, tLease)
	}
	// Back: the Lease still names it, so it takes it again.
	w.leases.setDown(false)
	w.runUntil(2*tRetry, gw1.leading)
}

func TestTwoStandbysRaceOneWins(t *testing.T) {
	w := newWorld(t, "gw1", "gw2", "gw3")
	w.run(2 * time.Second)
	w.paused[w.cands[0]] = true
	w.cands[1].setProbe(liveness.Dead)
	w.cands[2].setProbe(liveness.Dead)
	// Both read the Lease before either writes it.
	l2, _ := w.leases.Get(context.Background(), "archipelago-gateway", metav1.GetOptions{})
	stale := &staleGet{leaseClient: w.leases, lease: l2}
	w.cands[2].e.leases = stale
	w.cands[1].e.Step(context.Background())
	w.cands[2].e.Step(context.Background())
	if got := w.leaders(); len(got) != 1 || got[0] != "gw2" {
		t.Fatalf("leaders after the race: %v, want [gw2]", got)
	}
	w.cands[2].e.leases = w.leases
	w.run(5 * time.Second)
	if got := w.leaders(); len(got) != 1 {
		t.Errorf("leaders: %v, want one", got)
	}
}

// staleGet answers Get once with an old copy (a read that raced a write).
type staleGet struct {
	leaseClient
	lease *coordinationv1.Lease
}

func (s *staleGet) Get(ctx context.Context, name string, o metav1.GetOptions) (*coordinationv1.Lease, error) {
	if l := s.lease; l != nil {
		s.lease = nil
		return l, nil
	}
	return s.leaseClient.Get(ctx, name, o)
}

func TestReleaseHandsOverAtOnce(t *testing.T) {
	w := newWorld(t, "gw1", "gw2")
	w.run(2 * time.Second)
	w.cands[0].e.Release(context.Background())
	if w.cands[0].leading() || w.leases.holder() != "" {
		t.Fatalf("after Release: leading=%v holder=%q", w.cands[0].leading(), w.leases.holder())
	}
	took := w.runUntil(2*tRetry, w.cands[1].leading)
	t.Logf("standby took the released Lease after %s", took)
	w.run(10 * time.Second)
	if got := w.leaders(); len(got) != 1 || got[0] != "gw2" {
		t.Errorf("leaders %v, want [gw2] (a released candidate never takes the Lease again)", got)
	}
}
