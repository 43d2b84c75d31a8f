package netfilter_test

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/archipelago-mesh/archipelago/agent/netfilter"
	"github.com/archipelago-mesh/archipelago/agent/netfilter/fake"
)

func p(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func basePlan() netfilter.FilterPlan {
	return netfilter.FilterPlan{
		LocalPodCIDRs:   []netip.Prefix{p("10.244.0.0/16"), p("fd00:a::/48")},
		RemotePodCIDRs:  []netip.Prefix{p("10.245.0.0/16"), p("fd00:b::/48")},
		TunnelInterface: "wg0",
		MSSClamp:        true,
	}
}

func TestApplyOnFake(t *testing.T) {
	c := fake.New()
	// A foreign table that must survive everything.
	foreign := &nftables.Table{Name: "kindnet", Family: nftables.TableFamilyIPv4}
	c.AddTable(foreign)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	c.ResetCounts()

	plan := basePlan()
	if changed, err := netfilter.Apply(c, plan); err != nil || !changed {
		t.Fatalf("first Apply: changed %v, err %v", changed, err)
	}
	if c.Flushes != 1 {
		t.Fatalf("first Apply used %d batches, want 1", c.Flushes)
	}

	c.ResetCounts()
	if changed, err := netfilter.Apply(c, plan); err != nil || changed || c.Writes() != 0 || c.Flushes != 0 {
		t.Fatalf("no-change Apply: changed %v, err %v, writes %d", changed, err, c.Writes())
	}

	// One more remote range: only set elements, one batch, no rule writes.
	plan.RemotePodCIDRs = append(plan.RemotePodCIDRs, p("10.250.0.0/16")) // not adjacent: no merge
	c.ResetCounts()
	if changed, err := netfilter.Apply(c, plan); err != nil || !changed {
		t.Fatalf("range added: changed %v, err %v", changed, err)
	}
	if c.Flushes != 1 || c.Ops["SetAddElements"] != 1 || c.Writes() != 1 {
		t.Fatalf("range added: ops %v in %d batches, want one SetAddElements", c.Ops, c.Flushes)
	}
	// A range replaced by a wider one: delete + add of elements only.
	plan.RemotePodCIDRs = []netip.Prefix{p("10.245.0.0/16"), p("10.250.0.0/15"), p("fd00:b::/48")}
	c.ResetCounts()
	if changed, err := netfilter.Apply(c, plan); err != nil || !changed {
		t.Fatalf("range widened: changed %v, err %v", changed, err)
	}
	if c.Ops["SetAddElements"] != 1 || c.Ops["SetDeleteElements"] != 1 || c.Writes() != 2 {
		t.Fatalf("range widened: ops %v", c.Ops)
	}
	els := c.Elements(nftables.TableFamilyINet, netfilter.TableName, netfilter.SetRemote4)
	if len(els) != 4 {
		t.Fatalf("remote4 holds %d elements, want start and end of two ranges", len(els))
	}

	// A rule deleted by hand: rebuild in one batch.
	c.DeleteRule(nftables.TableFamilyINet, netfilter.TableName, netfilter.ChainForward, 0)
	c.ResetCounts()
	if changed, err := netfilter.Apply(c, plan); err != nil || !changed || c.Flushes != 1 || c.Ops["DelTable"] != 1 {
		t.Fatalf("repair: changed %v, err %v, ops %v", changed, err, c.Ops)
	}
	c.ResetCounts()
	if changed, _ := netfilter.Apply(c, plan); changed {
		t.Fatal("Apply after repair changed again")
	}

	// Clamping off: rebuild without the clamp chain.
	plan.MSSClamp = false
	if changed, err := netfilter.Apply(c, plan); err != nil || !changed {
		t.Fatalf("clamp off: changed %v, err %v", changed, err)
	}
	chains, _ := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	var names []string
	for _, ch := range chains {
		names = append(names, ch.Name)
	}
	if want := []string{netfilter.ChainNoSNAT, netfilter.ChainForward, netfilter.ChainTunnelGuard, netfilter.ChainTunnelInput, netfilter.ChainTunnelICMP}; !slices.Equal(names, want) {
		t.Fatalf("chains after turning clamping off %q, want %q", names, want)
	}

	if err := netfilter.Cleanup(c); err != nil {
		t.Fatal(err)
	}
	if c.HasTable(nftables.TableFamilyINet, netfilter.TableName) {
		t.Fatal("table left after Cleanup")
	}
	c.ResetCounts()
	if err := netfilter.Cleanup(c); err != nil || c.Writes() != 0 {
		t.Fatalf("second Cleanup: err %v, writes %d", err, c.Writes())
	}
	if !c.HasTable(nftables.TableFamilyIPv4, "kindnet") {
		t.Fatal("foreign table removed")
	}
}

// failingConn fails the next Flush.
type failingConn struct{ *fake.Conn }

func (failingConn) Flush() error { return unix.EPERM }

func TestApplyReportsFlushError(t *testing.T) {
	_, err := netfilter.Apply(failingConn{fake.New()}, basePlan())
	if !errors.Is(err, unix.EPERM) {
		t.Fatalf("err = %v, want EPERM", err)
	}
}

// TestFilterStates applies random plans in random order: after each, a
// second Apply must write nothing and the sets must hold exactly the plan's
// ranges.
func TestFilterStates(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 4242))
	pool := []netip.Prefix{
		p("10.245.0.0/16"), p("10.246.0.0/16"), p("10.247.0.0/16"), p("10.247.128.0/17"),
		p("10.250.1.0/24"), p("fd00:b::/48"), p("fd00:c::/48"), p("fd00:c:0:1::/64"),
	}
	c := fake.New()
	for step := range 300 {
		plan := basePlan()
		plan.RemotePodCIDRs = nil
		for _, x := range pool {
			if rng.IntN(2) == 0 {
				plan.RemotePodCIDRs = append(plan.RemotePodCIDRs, x)
			}
		}
		rng.Shuffle(len(plan.RemotePodCIDRs), func(i, j int) {
			plan.RemotePodCIDRs[i], plan.RemotePodCIDRs[j] = plan.RemotePodCIDRs[j], plan.RemotePodCIDRs[i]
		})
		plan.MSSClamp = rng.IntN(4) != 0
		plan.TunnelInterface = []string{"wg0", "wg1", ""}[rng.IntN(3)]
		if _, err := netfilter.Apply(c, plan); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		c.ResetCounts()
		if changed, err := netfilter.Apply(c, plan); err != nil || changed || c.Writes() != 0 {
			t.Fatalf("step %d: re-Apply changed %v, err %v, writes %d", step, changed, err, c.Writes())
		}
		want, _ := netfilter.Render(plan)
		for _, s := range want.Sets {
			got := c.Elements(nftables.TableFamilyINet, netfilter.TableName, s.Name)
			wantEls := 0
			for _, r := range s.Ranges {
				wantEls += 2
				if !r.Last.Next().IsValid() {
					wantEls--
				}
			}
			if len(got) != wantEls {
				t.Fatalf("step %d: set %s has %d elements, want %d (%v)", step, s.Name, len(got), wantEls, s.Ranges)
			}
			for _, r := range s.Ranges {
				if !slices.ContainsFunc(got, func(e nftables.SetElement) bool { return string(e.Key) == string(r.First.AsSlice()) && !e.IntervalEnd }) {
					t.Fatalf("step %d: set %s lacks the start of %v", step, s.Name, r)
				}
			}
		}
	}
}
