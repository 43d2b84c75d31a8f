package hub

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"

	"github.com/archipelago-mesh/archipelago/test/framework"
)

// buildHub compiles the real hub binary for the test.
func buildHub(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "archipelago-hub")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/hub")
	cmd.Dir = framework.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build hub: %v\n%s", err, out)
	}
	return bin
}

// hubProcess runs the real hub binary against the test apiserver.
type hubProcess struct {
	t         *testing.T
	bin, kcfg string
	log       *os.File
	mu        sync.Mutex
	cmd       *exec.Cmd
	starts    int
}

func (h *hubProcess) start() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cmd = exec.Command(h.bin,
		"--kubeconfig", h.kcfg,
		"--leader-elect=true", "--leader-election-namespace="+framework.HubNamespace,
		// Short lease: a killed hub cannot release it, the next one waits it out.
		"--leader-election-lease-duration=1s", "--leader-election-renew-deadline=700ms", "--leader-election-retry-period=200ms",
		"--metrics-bind-address=0", "--health-probe-bind-address=0")
	h.cmd.Stdout, h.cmd.Stderr = h.log, h.log
	if err := h.cmd.Start(); err != nil {
		h.t.Fatalf("start hub: %v", err)
	}
	h.starts++
}

func (h *hubProcess) kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Signal(syscall.SIGKILL)
	_ = h.cmd.Wait()
	h.cmd = nil
}

// countAssigned counts members name-prefixed with prefix that hold a range.
func countAssigned(t *testing.T, prefix string, n int) int {
	k := 0
	for i := range n {
		m := &meshv1.MemberCluster{}
		if err := api.Client.Get(context.Background(), client.ObjectKey{Name: fmt.Sprintf("%s%03d", prefix, i)}, m); err == nil && len(m.Status.PodCIDRs) > 0 {
			k++
		}
	}
	return k
}

// The hub process is killed (SIGKILL) at random moments while 100 members
// join, and started again each time. In the end every member has a range,
// no two overlap, and every claim agrees with its member's status.
func TestHubKilledWhileMembersJoin(t *testing.T) {
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
	logFile, err := os.Create(filepath.Join(dir, "hub.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	hub := &hubProcess{t: t, bin: buildHub(t), kcfg: kcfgPath, log: logFile}
	t.Cleanup(hub.kill)

	pool := netip.MustParsePrefix("10.224.0.0/12")
	create(t, c, framework.NewClusterSet("crash", []string{pool.String()}, framework.WithBlockSize(20, 0)))
	hub.start()

	const n = 100
	seed := time.Now().UnixNano()
	t.Logf("random seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))

	created := make(chan error, 1)
	go func() {
		for i := range n {
			if err := c.Create(context.Background(), framework.NewMember(fmt.Sprintf("crash-%03d", i), "crash")); err != nil {
				created <- err
				return
			}
			time.Sleep(120 * time.Millisecond)
		}
		created <- nil
	}()

	// Kill and restart while the members join. A kill counts as "mid-join"
	// when the hub it ended had assigned ranges and some members were still
	// waiting: those are the kills that can land between choosing a block
	// and writing it. Go on until several such kills happened.
	var (
		kills, midJoin, last int
		progress             []int
		createErr            error
		allCreated           bool
	)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) && ((midJoin < 3 && last < n) || !allCreated) {
		time.Sleep(time.Duration(1500+rng.IntN(2000)) * time.Millisecond)
		hub.kill()
		kills++
		assigned := countAssigned(t, "crash-", n)
		if assigned > last && assigned < n {
			midJoin++
		}
		last = assigned
		progress = append(progress, assigned)
		hub.start()
		if !allCreated {
			select {
			case createErr = <-created:
				allCreated = true
			default:
			}
		}
	}
	if !allCreated {
		createErr = <-created
	}
	if createErr != nil {
		t.Fatalf("create members: %v", createErr)
	}
	t.Logf("hub killed %d times (%d mid-join); members with ranges at each kill: %v", kills, midJoin, progress)
	if midJoin == 0 {
		t.Fatalf("no kill landed while members were joining: the test did not test a crash mid-allocation")
	}

	owners := map[string][]netip.Prefix{}
	for i := range n {
		name := fmt.Sprintf("crash-%03d", i)
		owners[name] = waitAssigned(t, c, name, 120*time.Second)
	}
	assertNoOverlap(t, owners, []netip.Prefix{pool})

	claims := claimsOf(t, c, "crash")
	held := map[string]int{}
	for _, cl := range claims {
		held[cl.Spec.Member]++
		ps := owners[cl.Spec.Member]
		if len(ps) != 1 || ps[0].String() != string(cl.Spec.CIDR) {
			t.Errorf("claim %s (%s for %s) disagrees with the member's status %v", cl.Name, cl.Spec.CIDR, cl.Spec.Member, ps)
		}
	}
	if len(claims) != n {
		t.Errorf("%d claims for %d members", len(claims), n)
	}
	for name, k := range held {
		if k != 1 {
			t.Errorf("member %s holds %d claims", name, k)
		}
	}
	if t.Failed() {
		t.Logf("hub log: %s", logFile.Name())
	}
}
