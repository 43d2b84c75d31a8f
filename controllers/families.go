package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// Which members can talk over which IP family. A pod reaches a remote pod
// over a family both clusters have ranges of, so what matters between two
// members is the set of families each holds. The sets are few (IPv4 only,
// IPv6 only, both): the ClusterSet's status counts the members of each
// (status.memberFamilies, from the ledger in the pass that counts blocks),
// and each member's FamiliesShared condition follows from the groups
// present alone, never from the other members' names or numbers. So a
// member joining writes no other member's status unless it brings a group
// the set did not have (or takes the last one away), and no pass reads the
// other members.

// familyGroupOrder is the order of status.memberFamilies.
var familyGroupOrder = []FamilySet{HasIPv4, HasIPv6, HasIPv4 | HasIPv6}

// maxNamedMembers bounds the member names of the ClusterSet's message.
const maxNamedMembers = 5

// familyGroups counts the members of each family set present.
func familyGroups(fams map[string]FamilySet) []meshv1.FamilyGroup {
	var out []meshv1.FamilyGroup
	for _, g := range familyGroupOrder {
		n := int32(0)
		for _, f := range fams {
			if f == g {
				n++
			}
		}
		if n > 0 {
			out = append(out, meshv1.FamilyGroup{Families: g.Families(), Members: n})
		}
	}
	return out
}

// groupsPresent is the family sets of groups.
func groupsPresent(groups []meshv1.FamilyGroup) []FamilySet {
	var out []FamilySet
	for _, g := range groups {
		if f := FamilySetOf(g.Families); f != 0 && g.Members > 0 {
			out = append(out, f)
		}
	}
	return out
}

// groupName says who a group is in a message.
func groupName(f FamilySet) string {
	if f == HasIPv4|HasIPv6 {
		return "the members with IPv4 and IPv6"
	}
	return "the members with " + f.String() + " only"
}

// ownName names a member's own families in a message.
func ownName(f FamilySet) string {
	if f == HasIPv4|HasIPv6 {
		return "IPv4 and IPv6"
	}
	return f.String() + " only"
}

// setMemberFamiliesCondition says which groups of other members cannot
// reach this member's pods, or whose pods this member's cannot reach, over
// some family or any. own is the families the member holds ranges of; a
// member without ranges gets no condition.
func setMemberFamiliesCondition(m *meshv1.MemberCluster, own FamilySet, groups []meshv1.FamilyGroup) {
	if own == 0 {
		return
	}
	var none, partial []string
	for _, g := range groupsPresent(groups) {
		switch {
		case g == own:
		case g&own == 0:
			none = append(none, fmt.Sprintf("no common IP family with %s: this member has %s, so its pods and theirs cannot reach each other", groupName(g), ownName(own)))
		case own&^g != 0:
			partial = append(partial, fmt.Sprintf("this member's %s pods cannot reach %s (they have no %s range): its pods reach them over %s alone",
				(own&^g).String(), groupName(g), (own&^g).String(), (own&g).String()))
		default:
			partial = append(partial, fmt.Sprintf("%s reach this member over %s alone: it has no %s range, so their %s pods cannot reach it",
				groupName(g), (own&g).String(), (g&^own).String(), (g&^own).String()))
		}
	}
	hint := "; 'kubectl archipelago status' names the members"
	switch {
	case len(none) > 0:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberFamiliesShared, metav1.ConditionFalse, meshv1.ReasonNoCommonFamily,
			strings.Join(append(none, partial...), "; ")+hint)
	case len(partial) > 0:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberFamiliesShared, metav1.ConditionFalse, meshv1.ReasonPartialFamilies,
			strings.Join(partial, "; ")+hint)
	default:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberFamiliesShared, metav1.ConditionTrue, meshv1.ReasonAllFamiliesShared,
			"every member that holds ranges has "+ownName(own))
	}
}

// setClusterSetFamilies writes status.memberFamilies and the set's
// FamiliesShared condition, which names (some of) the members of each group
// whose pods cannot reach each other's.
func setClusterSetFamilies(cs *meshv1.ClusterSet, fams map[string]FamilySet) {
	cs.Status.MemberFamilies = familyGroups(fams)
	names := map[FamilySet][]string{}
	for m, f := range fams {
		names[f] = append(names[f], m)
	}
	who := func(f FamilySet) string {
		n := names[f]
		slices.Sort(n)
		s := groupName(f) + " (" + strings.Join(n[:min(len(n), maxNamedMembers)], ", ")
		if len(n) > maxNamedMembers {
			s += fmt.Sprintf(" and %d more", len(n)-maxNamedMembers)
		}
		return s + ")"
	}
	v4, v6, dual := len(names[HasIPv4]) > 0, len(names[HasIPv6]) > 0, len(names[HasIPv4|HasIPv6]) > 0
	var parts []string
	if v4 && v6 {
		parts = append(parts, who(HasIPv4)+" and "+who(HasIPv6)+" share no IP family: their pods cannot reach each other")
	}
	for _, single := range []FamilySet{HasIPv4, HasIPv6} {
		if dual && len(names[single]) > 0 {
			other := (HasIPv4 | HasIPv6) &^ single
			parts = append(parts, fmt.Sprintf("%s reach %s over %s alone (%s pods cannot reach them)", who(HasIPv4|HasIPv6), who(single), single, other))
		}
	}
	switch {
	case v4 && v6:
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ClusterSetFamiliesShared, metav1.ConditionFalse, meshv1.ReasonNoCommonFamily, strings.Join(parts, "; "))
	case len(parts) > 0:
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ClusterSetFamiliesShared, metav1.ConditionFalse, meshv1.ReasonPartialFamilies, strings.Join(parts, "; "))
	case len(cs.Status.MemberFamilies) == 1:
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ClusterSetFamiliesShared, metav1.ConditionTrue, meshv1.ReasonAllFamiliesShared,
			"every member that holds ranges has "+ownName(FamilySetOf(cs.Status.MemberFamilies[0].Families)))
	default:
		setCondition(&cs.Status.Conditions, cs.Generation, meshv1.ClusterSetFamiliesShared, metav1.ConditionTrue, meshv1.ReasonAllFamiliesShared,
			"no member holds ranges yet")
	}
}

// familyGroupEvents enqueues every member of a set whose groups of
// families changed (a group appeared or went): their FamiliesShared
// condition follows from the groups present. A change of counts alone,
// which every join makes, enqueues nobody.
func (r *MemberClusterReconciler) familyGroupEvents() handler.EventHandler {
	return handler.Funcs{
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			old, okOld := e.ObjectOld.(*meshv1.ClusterSet)
			cs, okNew := e.ObjectNew.(*meshv1.ClusterSet)
			if !okOld || !okNew || slices.Equal(groupsPresent(old.Status.MemberFamilies), groupsPresent(cs.Status.MemberFamilies)) {
				return
			}
			var members meshv1.MemberClusterList
			if err := r.Client.List(ctx, &members, client.MatchingFields{IndexClusterSet: cs.Name}, readOnly); err != nil {
				logf.FromContext(ctx).Error(err, "List members of clusterset", "clusterset", cs.Name)
				return
			}
			for i := range members.Items {
				if len(members.Items[i].Status.PodCIDRs) > 0 {
					q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: members.Items[i].Name}})
				}
			}
		},
	}
}

// reconcileFamilies sets the member's FamiliesShared condition from the
// groups of families its ClusterSet counts.
func (r *MemberClusterReconciler) reconcileFamilies(_ context.Context, s *memberScope) (reconcile.Result, error) {
	if s.clusterSet == nil {
		return reconcile.Result{}, nil
	}
	setMemberFamiliesCondition(s.member, FamiliesOf(s.member.Status.PodCIDRs), s.clusterSet.Status.MemberFamilies)
	return reconcile.Result{}, nil
}
