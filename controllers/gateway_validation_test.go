package controllers

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

func TestKeyHolder(t *testing.T) {
	const key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
	t0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	gw := func(ns, name string, age time.Duration, opts ...func(*meshv1.TunnelGateway)) meshv1.TunnelGateway {
		g := meshv1.TunnelGateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(t0.Add(-age))},
			Spec:       meshv1.TunnelGatewaySpec{NodeName: "n", PublicKey: key, Endpoints: []string{"192.0.2.1:51820"}},
		}
		for _, o := range opts {
			o(&g)
		}
		return g
	}
	deleting := func(g *meshv1.TunnelGateway) { g.DeletionTimestamp = &metav1.Time{Time: t0} }
	badEndpoint := func(g *meshv1.TunnelGateway) { g.Spec.Endpoints = []string{"no-port"} }
	members := map[string]string{"member-a": "a", "member-b": "b", "member-c": "c"}
	memberOf := func(ns string) string { return members[ns] }

	for _, tc := range []struct {
		name       string
		candidates []meshv1.TunnelGateway
		want       string // namespace/name of the holder, "" for none
		wantMember string
	}{
		{"none", nil, "", ""},
		{"only one", []meshv1.TunnelGateway{gw("member-a", "g", time.Hour)}, "member-a/g", "a"},
		{"older wins", []meshv1.TunnelGateway{gw("member-b", "g", time.Minute), gw("member-a", "g", time.Hour)}, "member-a/g", "a"},
		{"same second: namespace, then name", []meshv1.TunnelGateway{gw("member-b", "a", time.Hour), gw("member-a", "z", time.Hour), gw("member-a", "y", time.Hour)}, "member-a/y", "a"},
		{"a deleted holder holds nothing", []meshv1.TunnelGateway{gw("member-a", "g", time.Hour, deleting), gw("member-b", "g", time.Minute)}, "member-b/g", "b"},
		{"a malformed gateway holds nothing", []meshv1.TunnelGateway{gw("member-a", "g", time.Hour, badEndpoint), gw("member-b", "g", time.Minute)}, "member-b/g", "b"},
		{"a namespace that is no member's holds nothing", []meshv1.TunnelGateway{gw("default", "g", 2*time.Hour), gw("member-c", "g", time.Minute)}, "member-c/g", "c"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, m := keyHolder(tc.candidates, memberOf)
			got := ""
			if h != nil {
				got = h.Namespace + "/" + h.Name
			}
			if got != tc.want || m != tc.wantMember {
				t.Errorf("holder %q of member %q, want %q of %q", got, m, tc.want, tc.wantMember)
			}
		})
	}
}
