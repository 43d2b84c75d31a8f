// Package hub tests the hub controller against a real kube-apiserver and etcd.
package hub

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

var (
	api     *framework.APIServer
	skipWhy string
)

func TestMain(m *testing.M) { framework.RunWithAPIServer(m, &api, &skipWhy) }

func needAPI(t testing.TB) client.Client {
	t.Helper()
	if api == nil {
		t.Skip("needs kube-apiserver and etcd: " + skipWhy)
	}
	return api.Client
}

// eventually polls f until it returns nil or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

func create(t testing.TB, c client.Client, obj client.Object) {
	t.Helper()
	if err := c.Create(context.Background(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

func getMember(t testing.TB, c client.Client, name string) *meshv1.MemberCluster {
	t.Helper()
	m := &meshv1.MemberCluster{}
	if err := c.Get(context.Background(), client.ObjectKey{Name: name}, m); err != nil {
		t.Fatalf("get member %s: %v", name, err)
	}
	return m
}

// waitAssigned waits until member name holds ranges and returns them.
func waitAssigned(t testing.TB, c client.Client, name string, timeout time.Duration) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	eventually(t, timeout, "member "+name+" gets ranges", func() error {
		m := &meshv1.MemberCluster{}
		if err := c.Get(context.Background(), client.ObjectKey{Name: name}, m); err != nil {
			return err
		}
		if len(m.Status.PodCIDRs) == 0 {
			return fmt.Errorf("no ranges yet; conditions: %v", m.Status.Conditions)
		}
		out = nil
		for _, s := range m.Status.PodCIDRs {
			out = append(out, netip.MustParsePrefix(s))
		}
		return nil
	})
	return out
}

// waitCondition waits until member name has condition typ with status and reason.
func waitCondition(t testing.TB, c client.Client, name, typ string, status metav1.ConditionStatus, reason string) *meshv1.MemberCluster {
	t.Helper()
	var m *meshv1.MemberCluster
	eventually(t, 20*time.Second, fmt.Sprintf("member %s has %s=%s (%s)", name, typ, status, reason), func() error {
		m = &meshv1.MemberCluster{}
		if err := c.Get(context.Background(), client.ObjectKey{Name: name}, m); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(m.Status.Conditions, typ)
		if cond == nil || cond.Status != status || (reason != "" && cond.Reason != reason) {
			return fmt.Errorf("condition is %+v", cond)
		}
		return nil
	})
	return m
}

// deleteMember deletes a member and waits until it is gone.
func deleteMember(t testing.TB, c client.Client, name string) {
	t.Helper()
	m := &meshv1.MemberCluster{}
	m.Name = name
	if err := c.Delete(context.Background(), m); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete member %s: %v", name, err)
	}
	eventually(t, 30*time.Second, "member "+name+" deleted", func() error {
		err := c.Get(context.Background(), client.ObjectKey{Name: name}, &meshv1.MemberCluster{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (err %v)", err)
	})
}

// assertNoOverlap fails when two members' ranges overlap or a range lies
// outside every pool.
func assertNoOverlap(t testing.TB, owners map[string][]netip.Prefix, pools []netip.Prefix) {
	t.Helper()
	type held struct {
		owner string
		p     netip.Prefix
	}
	var all []held
	for o, ps := range owners {
		for _, p := range ps {
			inside := false
			for _, pool := range pools {
				if pool.Bits() <= p.Bits() && pool.Contains(p.Addr()) {
					inside = true
				}
			}
			if !inside {
				t.Errorf("member %s holds %s outside every pool %v", o, p, pools)
			}
			all = append(all, held{o, p})
		}
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if all[i].p.Overlaps(all[j].p) {
				t.Errorf("ranges overlap: %s holds %s, %s holds %s", all[i].owner, all[i].p, all[j].owner, all[j].p)
			}
		}
	}
}

// claimsOf lists the CIDRClaims of a set.
func claimsOf(t testing.TB, c client.Client, set string) []meshv1.CIDRClaim {
	t.Helper()
	var l meshv1.CIDRClaimList
	if err := c.List(context.Background(), &l, client.MatchingLabels{meshv1.LabelClusterSet: set}); err != nil {
		t.Fatalf("list claims: %v", err)
	}
	return l.Items
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
