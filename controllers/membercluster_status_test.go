package controllers

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

func member(gen int64) *meshv1.MemberCluster {
	return &meshv1.MemberCluster{ObjectMeta: metav1.ObjectMeta{Name: "east", Generation: gen}, Spec: meshv1.MemberClusterSpec{ClusterSet: "prod"}}
}

func TestSetCIDRAllocatedCondition(t *testing.T) {
	cases := []struct {
		name       string
		a          Assignment
		wantStatus metav1.ConditionStatus
		wantReason string
	}{
		{"allocated", Assignment{PodCIDRs: []string{"10.0.0.0/16"}, Reason: meshv1.ReasonAllocated, Message: "assigned"}, metav1.ConditionTrue, meshv1.ReasonAllocated},
		{"adopted", Assignment{PodCIDRs: []string{"10.9.0.0/16"}, Reason: meshv1.ReasonAdopted, Adopted: true}, metav1.ConditionTrue, meshv1.ReasonAdopted},
		{"conflict", Assignment{Reason: meshv1.ReasonConflict, Message: "taken"}, metav1.ConditionFalse, meshv1.ReasonConflict},
		{"outside", Assignment{Reason: meshv1.ReasonOutsidePool}, metav1.ConditionFalse, meshv1.ReasonOutsidePool},
		{"exhausted", Assignment{Reason: meshv1.ReasonPoolExhausted}, metav1.ConditionFalse, meshv1.ReasonPoolExhausted},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := member(3)
			setCIDRAllocatedCondition(m, tc.a)
			c := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated)
			if c == nil || c.Status != tc.wantStatus || c.Reason != tc.wantReason || c.ObservedGeneration != 3 {
				t.Errorf("condition %+v, want %s/%s at generation 3", c, tc.wantStatus, tc.wantReason)
			}
		})
	}
}

func TestSetCIDRPendingKeepsAssignedRange(t *testing.T) {
	m := member(1)
	setCIDRAllocatedCondition(m, Assignment{PodCIDRs: []string{"10.0.0.0/16"}, Reason: meshv1.ReasonAllocated})
	m.Status.PodCIDRs = []string{"10.0.0.0/16"}
	setCIDRPendingCondition(m, "waiting for the ClusterSet")
	if c := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberCIDRAllocated); c.Status != metav1.ConditionTrue {
		t.Errorf("an assigned member lost CIDRAllocated when its set went away: %+v", c)
	}
	fresh := member(1)
	setCIDRPendingCondition(fresh, "waiting for the ClusterSet")
	if c := meta.FindStatusCondition(fresh.Status.Conditions, meshv1.MemberCIDRAllocated); c.Status != metav1.ConditionFalse || c.Reason != meshv1.ReasonPending {
		t.Errorf("pending member: %+v", c)
	}
}

func TestSetAcceptedCondition(t *testing.T) {
	m := member(1)
	setAcceptedCondition(m, nil)
	if c := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberAccepted); c.Status != metav1.ConditionFalse || c.Reason != meshv1.ReasonClusterSetNotFound || !strings.Contains(c.Message, `"prod"`) {
		t.Errorf("missing set: %+v", c)
	}
	now := metav1.Now()
	deleting := &meshv1.ClusterSet{ObjectMeta: metav1.ObjectMeta{Name: "prod", DeletionTimestamp: &now}}
	setAcceptedCondition(m, deleting)
	if c := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberAccepted); c.Reason != meshv1.ReasonClusterSetDeleting {
		t.Errorf("deleting set: %+v", c)
	}
	setAcceptedCondition(m, &meshv1.ClusterSet{ObjectMeta: metav1.ObjectMeta{Name: "prod"}})
	if c := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberAccepted); c.Status != metav1.ConditionTrue {
		t.Errorf("existing set: %+v", c)
	}
}

func TestSetGatewayConditions(t *testing.T) {
	cases := []struct {
		name             string
		total            int
		invalid, actives []string
		wantValid        metav1.ConditionStatus
		wantReason       string
	}{
		{"none published", 0, nil, nil, metav1.ConditionTrue, meshv1.ReasonValid},
		{"one valid", 1, nil, []string{"gw1"}, metav1.ConditionTrue, meshv1.ReasonValid},
		{"one invalid", 1, []string{"gw: bad key"}, nil, metav1.ConditionFalse, meshv1.ReasonInvalidGateway},
		{"one of two invalid", 2, []string{"gw: bad key"}, nil, metav1.ConditionFalse, meshv1.ReasonInvalidGateway},
		{"two active", 2, nil, []string{"gw1", "gw2"}, metav1.ConditionFalse, meshv1.ReasonMultipleActive},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := member(1)
			setGatewayConditions(m, tc.total, tc.invalid, tc.actives)
			if c := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberGatewaysValid); c.Status != tc.wantValid || c.Reason != tc.wantReason {
				t.Errorf("GatewaysValid %+v", c)
			}
		})
	}
}

func TestSetAgentConnectedCondition(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	seen := func(ago time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(-ago)} }
	const bound = 90 * time.Second
	cases := []struct {
		name        string
		valid       int
		lastSeen    *metav1.Time
		wantStatus  metav1.ConditionStatus
		wantReason  string
		wantRequeue time.Duration
	}{
		{"no gateway", 0, seen(time.Second), metav1.ConditionFalse, meshv1.ReasonNoGateway, 0},
		{"no heartbeat yet", 1, nil, metav1.ConditionFalse, meshv1.ReasonHeartbeatStale, 0},
		{"fresh", 1, seen(30 * time.Second), metav1.ConditionTrue, meshv1.ReasonGatewayPublished, 61 * time.Second},
		{"just fresh", 1, seen(bound), metav1.ConditionTrue, meshv1.ReasonGatewayPublished, time.Second},
		{"stale", 2, seen(bound + time.Second), metav1.ConditionFalse, meshv1.ReasonHeartbeatStale, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := member(1)
			next := setAgentConnectedCondition(m, tc.valid, tc.lastSeen, now, bound)
			c := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberAgentConnected)
			if c.Status != tc.wantStatus || c.Reason != tc.wantReason || next != tc.wantRequeue {
				t.Errorf("%+v requeue %s, want %s %s requeue %s", c, next, tc.wantStatus, tc.wantReason, tc.wantRequeue)
			}
			if tc.name == "stale" && !strings.Contains(c.Message, tc.lastSeen.UTC().Format(time.RFC3339)) {
				t.Errorf("message %q does not say when the member was last seen", c.Message)
			}
			// A later pass writes the same condition: no age in it.
			if tc.name == "just fresh" {
				return // turns stale a moment later
			}
			later := member(1)
			setAgentConnectedCondition(later, tc.valid, tc.lastSeen, now.Add(time.Duration(tc.wantRequeue)/2), bound)
			if lc := meta.FindStatusCondition(later.Status.Conditions, meshv1.MemberAgentConnected); lc.Message != c.Message {
				t.Errorf("message changes with the clock: %q vs %q", c.Message, lc.Message)
			}
		})
	}
}

func TestGatewayChangeMatters(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	const bound = 90 * time.Second
	base := &meshv1.TunnelGateway{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", Namespace: "member-east", Generation: 1},
		Spec:       meshv1.TunnelGatewaySpec{NodeName: "n1", PublicKey: "k", Active: true},
		Status:     meshv1.TunnelGatewayStatus{PeersUp: 2, LastSeen: &metav1.Time{Time: now.Add(-30 * time.Second)}},
	}
	cases := []struct {
		name   string
		change func(old, gw *meshv1.TunnelGateway)
		want   bool
	}{
		{"heartbeat of a live gateway", func(_, gw *meshv1.TunnelGateway) { gw.Status.LastSeen = &metav1.Time{Time: now} }, false},
		{"heartbeat after silence", func(old, gw *meshv1.TunnelGateway) {
			old.Status.LastSeen = &metav1.Time{Time: now.Add(-bound - time.Second)}
			gw.Status.LastSeen = &metav1.Time{Time: now}
		}, true},
		{"first heartbeat", func(old, gw *meshv1.TunnelGateway) {
			old.Status.LastSeen = nil
			gw.Status.LastSeen = &metav1.Time{Time: now}
		}, true},
		{"a tunnel went down", func(_, gw *meshv1.TunnelGateway) {
			gw.Status.PeersUp, gw.Status.DownPeers = 1, []string{"west"}
			gw.Status.LastSeen = &metav1.Time{Time: now}
		}, true},
		{"a peer dropped", func(_, gw *meshv1.TunnelGateway) { gw.Status.DroppedPeers = []string{"west"} }, true},
		{"endpoint change", func(_, gw *meshv1.TunnelGateway) {
			gw.Spec.Endpoints = []string{"192.0.2.1:51820"}
			gw.Generation++
		}, true},
		{"nothing", func(_, _ *meshv1.TunnelGateway) {}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			old, gw := base.DeepCopy(), base.DeepCopy()
			tc.change(old, gw)
			if got := gatewayChangeMatters(old, gw, now, bound); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSetConnectedCondition(t *testing.T) {
	cases := []struct {
		up, total  int
		down       []string
		wantStatus metav1.ConditionStatus
		wantReason string
		wantPeers  int32
	}{
		{0, 0, nil, metav1.ConditionTrue, meshv1.ReasonNoPeers, 0},
		{2, 2, nil, metav1.ConditionTrue, meshv1.ReasonAllPeersUp, 2},
		{1, 3, []string{"west", "north"}, metav1.ConditionFalse, meshv1.ReasonPeersDown, 1},
	}
	for _, tc := range cases {
		m := member(1)
		setConnectedCondition(m, tc.up, tc.total, tc.down)
		c := meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberConnected)
		if c.Status != tc.wantStatus || c.Reason != tc.wantReason || m.Status.ConnectedPeers != tc.wantPeers || m.Status.TotalPeers != int32(tc.total) {
			t.Errorf("%d/%d: %+v peers %d/%d", tc.up, tc.total, c, m.Status.ConnectedPeers, m.Status.TotalPeers)
		}
		for _, d := range tc.down {
			if !strings.Contains(c.Message, d) {
				t.Errorf("message %q does not name %s", c.Message, d)
			}
		}
	}
}

func TestSetReadyCondition(t *testing.T) {
	m := member(1)
	setAcceptedCondition(m, &meshv1.ClusterSet{ObjectMeta: metav1.ObjectMeta{Name: "prod"}})
	setCIDRAllocatedCondition(m, Assignment{Reason: meshv1.ReasonPoolExhausted, Message: "no free IPv4 block"})
	setGatewayConditions(m, 1, nil, nil)
	seen := metav1.Now()
	setAgentConnectedCondition(m, 1, &seen, seen.Time, time.Minute)
	setReadyCondition(m)
	if c := meta.FindStatusCondition(m.Status.Conditions, meshv1.ConditionReady); c.Status != metav1.ConditionFalse || c.Reason != meshv1.ReasonPoolExhausted || !strings.Contains(c.Message, "no free IPv4 block") {
		t.Errorf("Ready of an exhausted member: %+v", c)
	}
	setCIDRAllocatedCondition(m, Assignment{PodCIDRs: []string{"10.0.0.0/16"}, Reason: meshv1.ReasonAllocated})
	setReadyCondition(m)
	if c := meta.FindStatusCondition(m.Status.Conditions, meshv1.ConditionReady); c.Status != metav1.ConditionTrue {
		t.Errorf("Ready of a complete member: %+v", c)
	}
}

func TestValidatePublicKeyAndEndpoint(t *testing.T) {
	for key, ok := range map[string]bool{
		"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=": true,
		"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8D":   false, // not padded base64
		"AAAA": false, // 3 bytes
		"":     false,
		"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8DgAAA==": false, // 34 bytes
	} {
		if err := ValidatePublicKey(key); (err == nil) != ok {
			t.Errorf("ValidatePublicKey(%q) = %v, want ok=%v", key, err, ok)
		}
	}
	for ep, ok := range map[string]bool{
		"192.0.2.1:51820":     true,
		"[2001:db8::1]:51820": true,
		"gw.example.org:443":  true,
		"192.0.2.1":           false,
		"192.0.2.1:0":         false,
		"192.0.2.1:65536":     false,
		":51820":              false,
		"bad_host!:51820":     false,
		"a..b:51820":          false,
	} {
		if err := ValidateEndpoint(ep); (err == nil) != ok {
			t.Errorf("ValidateEndpoint(%q) = %v, want ok=%v", ep, err, ok)
		}
	}
}

func TestNames(t *testing.T) {
	if got := ClaimName("prod", netip.MustParsePrefix("10.64.0.0/16")); got != "prod.v4-10-64-0-0-16" {
		t.Errorf("ClaimName v4 = %q", got)
	}
	if got := ClaimName("prod", netip.MustParsePrefix("fd00:10::/64")); got != "prod.v6-fd00-10---64" {
		t.Errorf("ClaimName v6 = %q", got)
	}
	long := strings.Repeat("a", 63)
	ns := MemberNamespace(long)
	if len(ns) > 63 || !strings.HasPrefix(ns, "member-") {
		t.Errorf("MemberNamespace of a 63-character name = %q (%d characters)", ns, len(ns))
	}
	if MemberNamespace(long) == MemberNamespace(strings.Repeat("a", 62)+"b") {
		t.Errorf("two long names share a namespace")
	}
	if got := MemberNamespace("east"); got != "member-east" {
		t.Errorf("MemberNamespace(east) = %q", got)
	}
}
