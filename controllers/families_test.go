package controllers

import (
	"net/netip"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/ipam"
)

var (
	v4   = []meshv1.IPFamily{meshv1.IPv4}
	v6   = []meshv1.IPFamily{meshv1.IPv6}
	dual = []meshv1.IPFamily{meshv1.IPv4, meshv1.IPv6}
)

func groups(fams ...[]meshv1.IPFamily) []meshv1.FamilyGroup {
	var out []meshv1.FamilyGroup
	for _, f := range fams {
		out = append(out, meshv1.FamilyGroup{Families: f, Members: 1})
	}
	return out
}

func TestSetMemberFamiliesCondition(t *testing.T) {
	for _, tc := range []struct {
		name       string
		own        FamilySet
		groups     []meshv1.FamilyGroup
		wantStatus metav1.ConditionStatus
		wantReason string
		want       []string
	}{
		{"alone", HasIPv4, groups(v4), metav1.ConditionTrue, meshv1.ReasonAllFamiliesShared, []string{"IPv4 only"}},
		{"set status not written yet", HasIPv4 | HasIPv6, nil, metav1.ConditionTrue, meshv1.ReasonAllFamiliesShared, nil},
		{"IPv6 only among IPv4 only", HasIPv6, groups(v4, v6), metav1.ConditionFalse, meshv1.ReasonNoCommonFamily,
			[]string{"no common IP family with the members with IPv4 only: this member has IPv6 only"}},
		{"IPv6 only among dual", HasIPv6, groups(dual), metav1.ConditionFalse, meshv1.ReasonPartialFamilies,
			[]string{"the members with IPv4 and IPv6 reach this member over IPv6 alone: it has no IPv4 range, so their IPv4 pods cannot reach it"}},
		{"dual among IPv4 only", HasIPv4 | HasIPv6, groups(v4, dual), metav1.ConditionFalse, meshv1.ReasonPartialFamilies,
			[]string{"this member's IPv6 pods cannot reach the members with IPv4 only (they have no IPv6 range)"}},
		{"no common wins over partial", HasIPv4, groups(v4, v6, dual), metav1.ConditionFalse, meshv1.ReasonNoCommonFamily,
			[]string{"IPv6 only", "the members with IPv4 and IPv6 reach this member over IPv4 alone"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := member(2)
			setMemberFamiliesCondition(m, tc.own, tc.groups)
			c := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberFamiliesShared)
			if c == nil || c.Status != tc.wantStatus || c.Reason != tc.wantReason || c.ObservedGeneration != 2 {
				t.Fatalf("condition %+v, want %s/%s", c, tc.wantStatus, tc.wantReason)
			}
			for _, w := range tc.want {
				if !strings.Contains(c.Message, w) {
					t.Errorf("message %q does not contain %q", c.Message, w)
				}
			}
		})
	}
	// A member without ranges gets no condition.
	m := member(1)
	setMemberFamiliesCondition(m, 0, groups(v4, v6))
	if len(m.Status.Conditions) != 0 {
		t.Errorf("member without ranges: %+v", m.Status.Conditions)
	}
}

// The set's condition names members, capped; its groups count them. A
// change of counts alone leaves the groups present as they were, so no
// member is woken.
func TestSetClusterSetFamilies(t *testing.T) {
	cs := &meshv1.ClusterSet{}
	setClusterSetFamilies(cs, map[string]FamilySet{})
	if c := meta.FindStatusCondition(cs.Status.Conditions, meshv1.ClusterSetFamiliesShared); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("empty set: %+v", c)
	}
	fams := map[string]FamilySet{"d1": HasIPv4 | HasIPv6}
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		fams["four-"+n] = HasIPv4
	}
	setClusterSetFamilies(cs, fams)
	c := meta.FindStatusCondition(cs.Status.Conditions, meshv1.ClusterSetFamiliesShared)
	if c.Status != metav1.ConditionFalse || c.Reason != meshv1.ReasonPartialFamilies ||
		!strings.Contains(c.Message, "IPv4 only (four-a, four-b, four-c, four-d, four-e and 2 more)") || !strings.Contains(c.Message, "IPv4 and IPv6 (d1) reach") {
		t.Errorf("condition %+v", c)
	}
	before := groupsPresent(cs.Status.MemberFamilies)
	fams["four-h"] = HasIPv4
	setClusterSetFamilies(cs, fams)
	if got := groupsPresent(cs.Status.MemberFamilies); len(got) != len(before) || got[0] != before[0] || cs.Status.MemberFamilies[0].Members != 8 {
		t.Errorf("groups %v (%v), were %v", got, cs.Status.MemberFamilies, before)
	}
	fams["six"] = HasIPv6
	setClusterSetFamilies(cs, fams)
	if c := meta.FindStatusCondition(cs.Status.Conditions, meshv1.ClusterSetFamiliesShared); c.Reason != meshv1.ReasonNoCommonFamily || !strings.Contains(c.Message, "IPv6 only (six) share no IP family") {
		t.Errorf("condition %+v", c)
	}
}

func TestMemberFamilies(t *testing.T) {
	pools := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, tc := range []struct {
		name         string
		spec         []meshv1.IPFamily
		pools        []netip.Prefix
		assigned     []string
		want, wantNo string
	}{
		{"empty: the pools' families", nil, pools, nil, "[IPv4]", "[]"},
		{"IPv6 asked, no pool", v6, pools, nil, "[]", "[IPv6]"},
		{"both asked, one pool", dual, pools, nil, "[IPv4]", "[IPv6]"},
		{"assigned family kept though not listed", v6, append(pools, netip.MustParsePrefix("fd00::/48")), []string{"10.1.0.0/16"}, "[IPv4 IPv6]", "[]"},
		{"assigned family kept though its pool is gone", nil, nil, []string{"10.1.0.0/16"}, "[IPv4]", "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := member(1)
			m.Spec.IPFamilies = tc.spec
			m.Status.PodCIDRs = tc.assigned
			cur := map[ipamFamily]netip.Prefix{}
			for _, s := range tc.assigned {
				p := netip.MustParsePrefix(s)
				cur[familyOfPrefix(p)] = p
			}
			fams, missing := memberFamilies(m, tc.pools, cur)
			if got := fmtFamilies(fams); got != tc.want {
				t.Errorf("families %s, want %s", got, tc.want)
			}
			if got := fmtFamilies(missing); got != tc.wantNo {
				t.Errorf("missing %s, want %s", got, tc.wantNo)
			}
		})
	}
}

type ipamFamily = ipam.Family

func familyOfPrefix(p netip.Prefix) ipam.Family { return ipam.FamilyOf(p.Addr()) }

func fmtFamilies(fs []ipam.Family) string {
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = f.String()
	}
	return "[" + strings.Join(s, " ") + "]"
}
