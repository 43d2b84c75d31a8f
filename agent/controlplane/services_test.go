package controlplane

import (
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

func TestMergeMembers(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	peer := func(name string, connected, withdrawn bool, cidrs ...string) meshv1.ClusterSetPeer {
		return meshv1.ClusterSetPeer{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: meshv1.ClusterSetPeerSpec{PodCIDRs: cidrs, AgentConnected: connected, Withdrawn: withdrawn}}
	}
	got := MergeMembers([]meshv1.ClusterSetPeer{
		peer("live", true, false, "10.1.0.0/16", "fd00:1::/48"),
		peer("stale", false, false, "10.2.0.0/16"),
		peer("leaving", true, true, "10.3.0.0/16"),
		peer("odd", true, false, "10.4.0.1/16", "not-a-cidr"),
	}, now)
	want := "[{live 2026-12-01 12:00:00 +0000 UTC [10.1.0.0/16 fd00:1::/48]} {stale 0001-01-01 00:00:00 +0000 UTC [10.2.0.0/16]} {odd 2026-12-01 12:00:00 +0000 UTC [10.4.0.0/16]}]"
	if s := fmt.Sprint(got); s != want {
		t.Errorf("MergeMembers =\n %s\nwant\n %s", s, want)
	}
}
