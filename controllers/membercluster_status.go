package controllers

import (
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// setCondition stamps the generation and keeps LastTransitionTime when the
// status does not change (meta.SetStatusCondition's behaviour).
func setCondition(conds *[]metav1.Condition, gen int64, typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(conds, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: gen,
	})
}

func boolStatus(b bool) metav1.ConditionStatus {
	if b {
		return metav1.ConditionTrue
	}
	return metav1.ConditionFalse
}

// setAcceptedCondition records whether the member's ClusterSet exists.
func setAcceptedCondition(m *meshv1.MemberCluster, cs *meshv1.ClusterSet) {
	switch {
	case cs == nil:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberAccepted, metav1.ConditionFalse,
			meshv1.ReasonClusterSetNotFound, fmt.Sprintf("ClusterSet %q does not exist; create it or fix spec.clusterSet", m.Spec.ClusterSet))
	case !cs.DeletionTimestamp.IsZero():
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberAccepted, metav1.ConditionFalse,
			meshv1.ReasonClusterSetDeleting, fmt.Sprintf("ClusterSet %q is being deleted", cs.Name))
	default:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberAccepted, metav1.ConditionTrue,
			meshv1.ReasonAccepted, fmt.Sprintf("member of ClusterSet %q", cs.Name))
	}
}

// setCIDRAllocatedCondition records the outcome of a range assignment.
func setCIDRAllocatedCondition(m *meshv1.MemberCluster, a Assignment) {
	setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberCIDRAllocated, boolStatus(a.Assigned()), a.Reason, a.Message)
}

// setCIDRPendingCondition is used while no assignment can be attempted.
func setCIDRPendingCondition(m *meshv1.MemberCluster, msg string) {
	if len(m.Status.PodCIDRs) > 0 {
		return // an assigned range stays assigned whatever happens to the set
	}
	setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberCIDRAllocated, metav1.ConditionFalse, meshv1.ReasonPending, msg)
}

// setGatewayConditions records the validation of the member's TunnelGateway objects.
// actives are the valid gateways that claim to be active: more than one is
// reported (peers are given the first, so that they all pick the same one).
func setGatewayConditions(m *meshv1.MemberCluster, total int, invalid, actives []string) {
	switch {
	case len(invalid) > 0:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberGatewaysValid, metav1.ConditionFalse,
			meshv1.ReasonInvalidGateway, "invalid TunnelGateway objects (not given to peers): "+strings.Join(invalid, ", "))
	case len(actives) > 1:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberGatewaysValid, metav1.ConditionFalse,
			meshv1.ReasonMultipleActive, fmt.Sprintf("%d TunnelGateways claim to be active (%s); peers are given %s until the member's agents agree",
				len(actives), strings.Join(actives, ", "), actives[0]))
	default:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberGatewaysValid, metav1.ConditionTrue,
			meshv1.ReasonValid, fmt.Sprintf("%d gateway(s) valid", total))
	}
}

// setAgentConnectedCondition records whether the member's agent is there: it
// published a valid gateway and its newest heartbeat is at most staleAfter
// old. It returns when the heartbeat turns stale if nothing refreshes it
// (0 when it is stale already or there is none). The messages hold no age,
// so that a pass at another moment writes nothing new.
func setAgentConnectedCondition(m *meshv1.MemberCluster, valid int, lastSeen *metav1.Time, now time.Time, staleAfter time.Duration) time.Duration {
	switch {
	case valid == 0:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberAgentConnected, metav1.ConditionFalse,
			meshv1.ReasonNoGateway, "no valid TunnelGateway published yet: join the member cluster (kubectl archipelago join) and check its agent")
	case lastSeen == nil:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberAgentConnected, metav1.ConditionFalse,
			meshv1.ReasonHeartbeatStale, fmt.Sprintf("%d valid gateway(s) but no heartbeat yet (TunnelGateway status.lastSeen): check the member's agent", valid))
	case now.Sub(lastSeen.Time) > staleAfter:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberAgentConnected, metav1.ConditionFalse,
			meshv1.ReasonHeartbeatStale, fmt.Sprintf("last seen %s, more than %s ago: is the member's agent running? Run 'kubectl archipelago diagnose --context %s'",
				lastSeen.UTC().Format(time.RFC3339), staleAfter, m.Name))
	default:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberAgentConnected, metav1.ConditionTrue,
			meshv1.ReasonGatewayPublished, fmt.Sprintf("agent published %d valid gateway(s) and its heartbeat is fresh", valid))
		return lastSeen.Add(staleAfter).Sub(now) + time.Second
	}
	return 0
}

// setConnectedCondition records k of n peers up, as the active gateway
// reports them: n counts the peers in its directory with a tunnel peer.
func setConnectedCondition(m *meshv1.MemberCluster, up, total int, down []string) {
	m.Status.ConnectedPeers, m.Status.TotalPeers = int32(up), int32(total)
	switch {
	case total == 0:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberConnected, metav1.ConditionTrue,
			meshv1.ReasonNoPeers, "no other member to connect to")
	case up == total:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberConnected, metav1.ConditionTrue,
			meshv1.ReasonAllPeersUp, fmt.Sprintf("tunnels up to %d of %d peers", up, total))
	default:
		setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberConnected, metav1.ConditionFalse,
			meshv1.ReasonPeersDown, fmt.Sprintf("tunnels up to %d of %d peers; down: %s", up, total, strings.Join(down, ", ")))
	}
}

// setNoGatewayConnectedCondition is Connected while the member has no active gateway.
func setNoGatewayConnectedCondition(m *meshv1.MemberCluster) {
	m.Status.ConnectedPeers, m.Status.TotalPeers = 0, 0
	setCondition(&m.Status.Conditions, m.Generation, meshv1.MemberConnected, metav1.ConditionFalse,
		meshv1.ReasonNoGateway, "no active gateway: no tunnels")
}

// setReadyCondition summarizes: the member is part of the archipelago when it
// is accepted, holds its ranges and its agent published a valid gateway.
func setReadyCondition(m *meshv1.MemberCluster) {
	for _, t := range []string{meshv1.MemberAccepted, meshv1.MemberCIDRAllocated, meshv1.MemberAgentConnected} {
		c := meta.FindStatusCondition(m.Status.Conditions, t)
		if c == nil || c.Status != metav1.ConditionTrue {
			reason, msg := meshv1.ReasonPending, t+" not yet known"
			if c != nil {
				reason, msg = c.Reason, t+": "+c.Message
			}
			setCondition(&m.Status.Conditions, m.Generation, meshv1.ConditionReady, metav1.ConditionFalse, reason, msg)
			return
		}
	}
	setCondition(&m.Status.Conditions, m.Generation, meshv1.ConditionReady, metav1.ConditionTrue, meshv1.ReasonReady,
		"ranges assigned and gateway published")
}
