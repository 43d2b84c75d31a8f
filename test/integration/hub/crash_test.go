package hub

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/controllers"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

// hubProcess runs the real hub binary against the test apiserver, and
// starts it again when it ends on its own, as its Deployment would: on a
// loaded machine the short lease of the test is easy to lose, and a hub
// that loses it exits.
type hubProcess struct {
	t         *testing.T
	bin, kcfg string
	log       *os.File
	mu        sync.Mutex
	cmd       *exec.Cmd
	done      chan struct{}
	killed    bool
	// calm makes the next start use the hub's default lease.
	calm bool
	// starts counts every start; exits the times the hub ended on its own.
	starts, exits int
}

func (h *hubProcess) start() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.killed = false
	h.spawnLocked()
}

func (h *hubProcess) spawnLocked() {
	// Short lease: a killed hub cannot release it, the next one waits it
	// out. A calm hub has the default lease.
	lease := []string{"--leader-election-lease-duration=1s", "--leader-election-renew-deadline=700ms", "--leader-election-retry-period=200ms"}
	if h.calm {
		lease = nil
	}
	args := append([]string{"--kubeconfig", h.kcfg, "--leader-elect=true", "--leader-election-namespace=" + framework.HubNamespace,
		"--metrics-bind-address=0", "--health-probe-bind-address=0"}, lease...)
	cmd := exec.Command(h.bin, args...)
	cmd.Stdout, cmd.Stderr = h.log, h.log
	if err := cmd.Start(); err != nil {
		h.t.Errorf("start hub: %v", err)
		return
	}
	done := make(chan struct{})
	h.cmd, h.done = cmd, done
	h.starts++
	go func() {
		_ = cmd.Wait()
		close(done)
		time.Sleep(200 * time.Millisecond)
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.cmd == cmd && !h.killed {
			h.exits++
			h.spawnLocked()
		}
	}()
}

// kill ends the hub with SIGKILL and waits until it is gone.
func (h *hubProcess) kill() {
	h.mu.Lock()
	cmd, done := h.cmd, h.done
	h.killed, h.cmd = true, nil
	h.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

func (h *hubProcess) selfExits() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.exits
}

// countAssigned counts the members of set that hold a range.
func countAssigned(t *testing.T, set string) int {
	var l meshv1.MemberClusterList
	if err := api.Client.List(context.Background(), &l); err != nil {
		t.Logf("list members: %v", err)
		return 0
	}
	k := 0
	for i := range l.Items {
		if l.Items[i].Spec.ClusterSet == set && len(l.Items[i].Status.PodCIDRs) > 0 {
			k++
		}
	}
	return k
}

// crashLoad is what members do to the hub while it is killed: join, adopt
// ranges of their own (some of them contested) and leave, all at once.
type crashLoad struct {
	c                     client.Client
	mu                    sync.Mutex
	joins, adopts, leaves int
	left                  []string
	err                   error
}

func (l *crashLoad) create(m *meshv1.MemberCluster) {
	if err := l.c.Create(context.Background(), m); err != nil {
		l.fail(err)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(m.Spec.PodCIDRs) > 0 {
		l.adopts++
	} else {
		l.joins++
	}
}

func (l *crashLoad) leave(name string) {
	m := &meshv1.MemberCluster{}
	m.Name = name
	if err := l.c.Delete(context.Background(), m); err != nil {
		l.fail(err)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.leaves++
	l.left = append(l.left, name)
}

func (l *crashLoad) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
	}
}

func (l *crashLoad) counts() (joins, adopts, leaves int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.joins, l.adopts, l.leaves
}

// The hub process is killed (SIGKILL) at random moments while 100 members
// join, ten adopt ranges of their own (a /16 is 16 claims; two pairs ask
// for overlapping ranges) and 35 leave again, and it is started
// again each time. In the end no two members' ranges overlap, each
// contested range went to exactly one member, the members that left are
// gone, and every claim has a live owner whose status holds the claim's
// range, and every block of every range has its claim.
func TestHubKilledWhileMembersJoinAdoptAndLeave(t *testing.T) {
	c := needAPI(t)
	if testing.Short() {
		t.Skip("-short: the crash test builds and kills the hub binary for about a minute")
	}
	// The hub binary runs as its ServiceAccount, under config/'s RBAC.
	hubCfg, err := framework.HubConfig(context.Background(), api.Config)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kcfgPath := filepath.Join(dir, "kubeconfig")
	if err := framework.WriteKubeconfig(kcfgPath, "hub", map[string]*rest.Config{"hub": hubCfg}); err != nil {
		t.Fatal(err)
	}
	// The hub's log outlives a failed test (it is named then) and is
	// removed after a passing one.
	logFile, err := os.CreateTemp("", "archipelago-crash-hub-*.log")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		logFile.Close()
		if t.Failed() {
			t.Logf("hub log: %s", logFile.Name())
			return
		}
		os.Remove(logFile.Name())
	})
	hub := &hubProcess{t: t, bin: framework.BuildHub(t), kcfg: kcfgPath, log: logFile}
	t.Cleanup(hub.kill)

	// 256 blocks of /20. Joiners take the lowest free ones; the adopted
	// ranges lie at the top, where joiners do not get to.
	pool := netip.MustParsePrefix("10.224.0.0/12")
	create(t, c, framework.NewClusterSet("crash", []string{pool.String()}, framework.WithBlockSize(20, 0), framework.WithQuarantine(0)))
	hub.start()

	const n = 100
	seed := time.Now().UnixNano()
	t.Logf("random seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))

	adopters := map[string]string{
		"crash-adopt-0": "10.236.0.0/16", "crash-adopt-1": "10.237.0.0/16",
		"crash-adopt-2": "10.238.0.0/16", "crash-adopt-3": "10.239.0.0/16",
		"crash-adopt-gone": "10.233.0.0/16", // leaves while its 16 claims are written
		"crash-small-0":    "10.232.0.0/22",
	}
	// Each pair asks for overlapping ranges: exactly one of it may win.
	rivals := [][2]string{{"crash-rival-a", "crash-rival-b"}, {"crash-tiny-a", "crash-tiny-b"}}
	adopters["crash-rival-a"], adopters["crash-rival-b"] = "10.235.0.0/16", "10.235.16.0/20"
	adopters["crash-tiny-a"], adopters["crash-tiny-b"] = "10.234.0.0/22", "10.234.8.0/22"
	adoptOrder := make([]string, 0, len(adopters))
	for name := range adopters {
		adoptOrder = append(adoptOrder, name)
	}
	slices.Sort(adoptOrder)
	rng.Shuffle(len(adoptOrder), func(i, j int) { adoptOrder[i], adoptOrder[j] = adoptOrder[j], adoptOrder[i] })

	load := &crashLoad{c: c}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { // joiners
		defer wg.Done()
		for i := range n {
			load.create(framework.NewMember(fmt.Sprintf("crash-%03d", i), "crash"))
			time.Sleep(120 * time.Millisecond)
		}
	}()
	go func() { // adopters, spread over the joins
		defer wg.Done()
		rng := rand.New(rand.NewPCG(uint64(seed), 1))
		for _, name := range adoptOrder {
			time.Sleep(time.Duration(500+rng.IntN(700)) * time.Millisecond)
			load.create(framework.NewMember(name, "crash", framework.WithPodCIDRs(adopters[name])))
			if name == "crash-adopt-gone" {
				time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
				load.leave(name)
			}
		}
	}()
	go func() { // every third joiner leaves again, a moment after it came
		defer wg.Done()
		rng := rand.New(rand.NewPCG(uint64(seed), 2))
		for i := 0; i < n; i += 3 {
			name := fmt.Sprintf("crash-%03d", i)
			eventuallyCreated := time.Now().Add(30 * time.Second)
			for time.Now().Before(eventuallyCreated) {
				if err := c.Get(context.Background(), client.ObjectKey{Name: name}, &meshv1.MemberCluster{}); err == nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
			load.leave(name)
		}
	}()
	loadDone := make(chan struct{})
	go func() { wg.Wait(); close(loadDone) }()

	// Kill and restart while the load runs. A kill counts as "mid-join"
	// when the hub it ended had assigned ranges and some members were still
	// waiting: those are the kills that can land between choosing a block
	// and writing it. Go on until the load is done and several such kills
	// happened.
	var (
		kills, midJoin, last int
		progress             []int
		done                 bool
	)
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) && (!done || midJoin < 3) {
		time.Sleep(time.Duration(1500+rng.IntN(2000)) * time.Millisecond)
		hub.kill()
		kills++
		assigned := countAssigned(t, "crash")
		if assigned > last && !done {
			midJoin++
		}
		last = assigned
		progress = append(progress, assigned)
		hub.start()
		select {
		case <-loadDone:
			done = true
		default:
		}
	}
	<-loadDone
	// The state is checked with one hub that runs on: on a loaded machine
	// a hub with the short lease loses it every few seconds, and one that
	// lost it can take long to exit.
	hub.kill()
	hub.mu.Lock()
	hub.calm = true
	hub.mu.Unlock()
	hub.start()
	if load.err != nil {
		t.Fatalf("load: %v", load.err)
	}
	joins, adopts, leaves := load.counts()
	t.Logf("hub killed %d times (%d mid-join) during %d joins, %d adoptions and %d leaves; it also lost its lease and exited %d times; members with ranges at each kill: %v",
		kills, midJoin, joins, adopts, leaves, hub.selfExits(), progress)
	if midJoin == 0 {
		t.Fatalf("no kill landed while members were joining: the test did not test a crash mid-allocation")
	}

	// The members that left are gone (their finalizer ran). The hub may
	// take minutes to get there: after every start it goes through every
	// member of the apiserver, those of earlier tests too, on a machine that
	// may be loaded; the test is about where it ends, not how fast.
	const settle = 5 * time.Minute
	for _, name := range load.left {
		eventually(t, settle, "member "+name+" gone", func() error {
			err := c.Get(context.Background(), client.ObjectKey{Name: name}, &meshv1.MemberCluster{})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("still there (err %v)", err)
		})
	}
	gone := map[string]bool{}
	for _, name := range load.left {
		gone[name] = true
	}
	owners := map[string][]netip.Prefix{}
	for i := range n {
		if name := fmt.Sprintf("crash-%03d", i); !gone[name] {
			owners[name] = waitAssigned(t, c, name, settle)
		}
	}
	for name, want := range adopters {
		if gone[name] || slices.ContainsFunc(rivals, func(r [2]string) bool { return r[0] == name || r[1] == name }) {
			continue
		}
		got := waitAssigned(t, c, name, settle)
		if len(got) != 1 || got[0].String() != want {
			t.Errorf("adopter %s got %v, want %s", name, got, want)
		}
		owners[name] = got
	}
	for _, pair := range rivals {
		var winners []string
		for _, name := range pair {
			var m *meshv1.MemberCluster
			eventually(t, settle, "rival "+name+" decided", func() error {
				m = getMember(t, c, name)
				cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated)
				if len(m.Status.PodCIDRs) > 0 || cond != nil && cond.Reason == meshv1.ReasonConflict {
					return nil
				}
				return fmt.Errorf("CIDRAllocated %+v", cond)
			})
			if len(m.Status.PodCIDRs) > 0 {
				winners = append(winners, name)
				owners[name] = waitAssigned(t, c, name, time.Second)
				if m.Status.PodCIDRs[0] != adopters[name] {
					t.Errorf("rival %s got %v, want %s", name, m.Status.PodCIDRs, adopters[name])
				}
			}
		}
		if len(winners) != 1 {
			t.Errorf("rivals %v: %v hold their overlapping ranges, want exactly one", pair, winners)
		}
	}
	assertNoOverlap(t, owners, []netip.Prefix{pool})

	// Every claim has a live owner whose status holds the claim's range,
	// and every block of every assigned range has its claim. Leaving members'
	// claims may take a moment to go.
	var claims []meshv1.CIDRClaim
	eventually(t, settle, "every claim has a live owner", func() error {
		claims = claimsOf(t, c, "crash")
		return checkClaims(t, c, claims, owners, 20)
	})
	t.Logf("%d claims, each held by a live member whose status holds its range; %d members hold ranges", len(claims), len(owners))
}

// checkClaims says what is wrong with the claims of a set: a claim whose
// member is gone (or another member of the same name), released, not in its
// member's status, or not on the grid of blockLen; a block of a member's
// range without its claim.
func checkClaims(t *testing.T, c client.Client, claims []meshv1.CIDRClaim, owners map[string][]netip.Prefix, blockLen int) error {
	t.Helper()
	var problems []string
	seen := map[netip.Prefix]string{}
	for _, cl := range claims {
		m := &meshv1.MemberCluster{}
		if err := c.Get(context.Background(), client.ObjectKey{Name: cl.Spec.Member}, m); err != nil {
			problems = append(problems, fmt.Sprintf("claim %s: member %s: %v", cl.Name, cl.Spec.Member, err))
			continue
		}
		rng := cl.Spec.PodCIDR
		if rng == "" {
			rng = cl.Spec.CIDR
		}
		block := netip.MustParsePrefix(string(cl.Spec.CIDR))
		r := netip.MustParsePrefix(string(rng))
		switch {
		case cl.Spec.MemberUID != m.UID:
			problems = append(problems, fmt.Sprintf("claim %s names member %s uid %s, the live one is %s", cl.Name, m.Name, cl.Spec.MemberUID, m.UID))
		case cl.Spec.ReleasedAt != nil:
			problems = append(problems, fmt.Sprintf("claim %s released with no quarantine", cl.Name))
		case !slices.Contains(m.Status.PodCIDRs, string(rng)):
			problems = append(problems, fmt.Sprintf("claim %s (%s) is not in %s's status %v", cl.Name, rng, m.Name, m.Status.PodCIDRs))
		case block.Bits() != blockLen || block.Masked() != block || !r.Contains(block.Addr()) && !block.Contains(r.Addr()):
			problems = append(problems, fmt.Sprintf("claim %s: %s is not a /%d block of %s", cl.Name, block, blockLen, r))
		case controllers.ClaimName("crash", block) != cl.Name:
			problems = append(problems, fmt.Sprintf("claim %s is not named by its block %s", cl.Name, block))
		}
		seen[block] = cl.Spec.Member
	}
	for name, ps := range owners {
		for _, p := range ps {
			if p.Bits() >= blockLen {
				b, _ := p.Addr().Prefix(blockLen)
				if seen[b] != name {
					problems = append(problems, fmt.Sprintf("block %s of %s's %s has no claim of it", b, name, p))
				}
				continue
			}
			for b := range subBlocks(p, blockLen) {
				if seen[b] != name {
					problems = append(problems, fmt.Sprintf("block %s of %s's %s has no claim of it", b, name, p))
				}
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%d problems: %v", len(problems), problems)
	}
	return nil
}

// subBlocks yields the IPv4 blocks of length bl inside p.
func subBlocks(p netip.Prefix, bl int) func(func(netip.Prefix) bool) {
	return func(yield func(netip.Prefix) bool) {
		base := p.Addr().As4()
		start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		for i := uint32(0); i < 1<<(bl-p.Bits()); i++ {
			a := start + i<<(32-bl)
			if !yield(netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), bl)) {
				return
			}
		}
	}
}
