package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// now is the fixed clock of the golden tests.
var now = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func ago(d time.Duration) *metav1.Time { return &metav1.Time{Time: now.Add(-d)} }

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s (run go test -update to create it): %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (run go test ./internal/cli -update if the change is intended)\n--- got:\n%s\n--- want:\n%s", path, got, want)
	}
}

func fakeClient(objs ...client.Object) client.Client {
	return fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()
}

func cond(typ string, status metav1.ConditionStatus, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: metav1.Time{Time: now}}
}

// memberOpt changes a MemberCluster built by member().
type memberOpt func(*meshv1.MemberCluster)

func member(name, cidr string, opts ...memberOpt) *meshv1.MemberCluster {
	m := &meshv1.MemberCluster{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: *ago(2 * time.Hour)},
		Spec:       meshv1.MemberClusterSpec{ClusterSet: "demo"},
		Status: meshv1.MemberClusterStatus{
			PodCIDRs: []string{cidr}, Namespace: "member-" + name, ServiceAccount: "archipelago-agent",
			ActiveGateway: name + "-gw", ConnectedPeers: 2, TotalPeers: 2,
			Conditions: []metav1.Condition{
				cond(meshv1.MemberAccepted, metav1.ConditionTrue, meshv1.ReasonAccepted, "member of ClusterSet \"demo\""),
				cond(meshv1.MemberCIDRAllocated, metav1.ConditionTrue, meshv1.ReasonAllocated, "assigned "+cidr),
				cond(meshv1.MemberGatewaysValid, metav1.ConditionTrue, meshv1.ReasonValid, "1 gateway(s) valid"),
				cond(meshv1.MemberAgentConnected, metav1.ConditionTrue, meshv1.ReasonGatewayPublished, "agent published 1 valid gateway(s)"),
				cond(meshv1.MemberConnected, metav1.ConditionTrue, meshv1.ReasonAllPeersUp, "tunnels up to 2 of 2 peers"),
				cond(meshv1.ConditionReady, metav1.ConditionTrue, meshv1.ReasonReady, "ranges assigned and gateway published"),
			},
		},
	}
	for _, o := range opts {
		o(m)
	}
	return m
}

func withCondition(c metav1.Condition) memberOpt {
	return func(m *meshv1.MemberCluster) {
		for i := range m.Status.Conditions {
			if m.Status.Conditions[i].Type == c.Type {
				m.Status.Conditions[i] = c
			}
		}
	}
}

// gateway is member's active TunnelGateway with its heartbeat at lastSeen
// (nil: never) and its peers down.
func gateway(member string, lastSeen *metav1.Time, up int32, down ...string) *meshv1.TunnelGateway {
	return &meshv1.TunnelGateway{
		ObjectMeta: metav1.ObjectMeta{Name: member + "-gw", Namespace: "member-" + member},
		Spec:       meshv1.TunnelGatewaySpec{NodeName: member + "-gw", PublicKey: "k", Active: true},
		Status:     meshv1.TunnelGatewayStatus{PeersUp: up, DownPeers: down, LastSeen: lastSeen},
	}
}

func statusFixture() client.Client {
	return fakeClient(
		&meshv1.ClusterSet{
			ObjectMeta: metav1.ObjectMeta{Name: "demo"},
			Spec:       meshv1.ClusterSetSpec{PodCIDRPools: []meshv1.CIDR{"10.0.0.0/8"}},
			Status:     meshv1.ClusterSetStatus{Families: []meshv1.FamilyStatus{{Family: meshv1.IPv4, BlockPrefixLength: 16, Total: 256, Allocated: 3, Free: 253}}},
		},
		member("alpha", "10.1.0.0/16"),
		gateway("alpha", ago(12*time.Second), 2),
		member("bravo", "10.2.0.0/16", func(m *meshv1.MemberCluster) { m.Status.ConnectedPeers = 1 },
			withCondition(cond(meshv1.MemberConnected, metav1.ConditionFalse, meshv1.ReasonPeersDown, "tunnels up to 1 of 2 peers; down: charlie"))),
		gateway("bravo", ago(20*time.Second), 1, "charlie"),
		member("charlie", "10.3.0.0/16", func(m *meshv1.MemberCluster) {
			m.Status.ActiveGateway, m.Status.ConnectedPeers = "", 0
		},
			withCondition(cond(meshv1.MemberAgentConnected, metav1.ConditionFalse, meshv1.ReasonNoGateway, "no valid Gateway published yet")),
			withCondition(cond(meshv1.MemberConnected, metav1.ConditionFalse, meshv1.ReasonPeersDown, "tunnels up to 0 of 2 peers; down: alpha, bravo")),
			withCondition(cond(meshv1.ConditionReady, metav1.ConditionFalse, meshv1.ReasonNoGateway, "AgentConnected: no valid Gateway published yet"))),
		&meshv1.ClusterSet{
			ObjectMeta: metav1.ObjectMeta{Name: "empty"},
			Spec:       meshv1.ClusterSetSpec{PodCIDRPools: []meshv1.CIDR{"172.16.0.0/12"}},
		},
		// shop/api: alpha exports first, bravo later with another port.
		exported("alpha", "shop", "api", 30*time.Minute, "10.1.0.5", corev1.ServicePort{Name: "http", Port: 80}),
		exported("bravo", "shop", "api", 10*time.Minute, "10.2.0.7", corev1.ServicePort{Name: "http", Port: 80}, corev1.ServicePort{Name: "metrics", Port: 9090}),
		exported("charlie", "web", "front", time.Hour, "10.3.0.9", corev1.ServicePort{Name: "https", Port: 443}),
	)
}

// exported is the hub's copy of a member's export of one Service.
func exported(cluster, ns, name string, age time.Duration, addr string, ports ...corev1.ServicePort) *meshv1.ExportedService {
	e := &meshv1.ExportedService{
		ObjectMeta: metav1.ObjectMeta{Namespace: meshv1.ClusterSetNamespace("demo"), Name: cluster + "." + ns + "." + name,
			Labels: map[string]string{meshv1.LabelMember: cluster}},
		Spec: meshv1.ExportedServiceSpec{Cluster: cluster, Namespace: ns, Name: name, Type: meshv1.ExportedClusterSetIP,
			ExportCreationTimestamp: *ago(age), IPFamilies: []string{"IPv4"},
			EndpointGroups: []meshv1.ExportedEndpointGroup{{AddressType: "IPv4", Endpoints: []meshv1.ExportedEndpoint{{Address: addr}}}}},
	}
	for _, p := range ports {
		e.Spec.Ports = append(e.Spec.Ports, meshv1.ExportedServicePort{Name: p.Name, Protocol: "TCP", Port: p.Port})
	}
	return e
}

func TestStatusGolden(t *testing.T) {
	for _, format := range []string{"table", "wide"} {
		t.Run(format, func(t *testing.T) {
			r, err := BuildStatus(context.Background(), statusFixture(), "", now)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := WriteStatus(&buf, r, format); err != nil {
				t.Fatal(err)
			}
			golden(t, "status-"+format, buf.Bytes())
			if r.Healthy() {
				t.Error("a ClusterSet with a tunnel down reports healthy")
			}
		})
	}
}

func TestStatusHealthySet(t *testing.T) {
	c := fakeClient(
		&meshv1.ClusterSet{ObjectMeta: metav1.ObjectMeta{Name: "demo"}, Spec: meshv1.ClusterSetSpec{PodCIDRPools: []meshv1.CIDR{"10.0.0.0/8"}}},
		member("alpha", "10.1.0.0/16"), gateway("alpha", ago(5*time.Second), 1),
	)
	r, err := BuildStatus(context.Background(), c, "demo", now)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Healthy() {
		t.Fatalf("healthy set reported unhealthy: %+v", r)
	}
	if got := r.ClusterSets[0].Members[0].LastSeenAge; got != "5s" {
		t.Errorf("last seen %q, want 5s", got)
	}
	if _, err := BuildStatus(context.Background(), c, "nope", now); ExitCode(err) != ExitFinding {
		t.Errorf("unknown --clusterset: %v (exit %d), want exit 1", err, ExitCode(err))
	}
}

// Diagnose fixtures.

func node(name string, podCIDR string, report *meshv1.NodeReport) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}}}
	if report != nil {
		b, err := json.Marshal(report)
		if err != nil {
			panic(err)
		}
		n.Annotations = map[string]string{meshv1.AnnotationDatapath: string(b)}
	}
	return n
}

func membership(peers ...meshv1.MembershipPeer) *meshv1.ClusterSetMembership {
	return &meshv1.ClusterSetMembership{
		ObjectMeta: metav1.ObjectMeta{Name: MembershipName},
		Spec: meshv1.ClusterSetMembershipSpec{ClusterName: "alpha", ClusterSet: "demo", Hub: meshv1.HubConnection{
			Server: "https://hub-control-plane:6443", SecretRef: meshv1.SecretReference{Name: HubSecretName, Namespace: SystemNamespace},
		}},
		Status: meshv1.ClusterSetMembershipStatus{
			PodCIDRs: []string{"10.1.0.0/16"}, HubNamespace: "member-alpha", ActiveGateway: "alpha-gw", ActiveGatewayIP: "172.18.0.2",
			Peers: peers,
			Conditions: []metav1.Condition{
				cond(meshv1.MembershipJoined, metav1.ConditionTrue, "Joined", "hub assigned 10.1.0.0/16"),
				cond(meshv1.MembershipCIDRsMatch, metav1.ConditionTrue, "Inside", "all node podCIDRs inside 10.1.0.0/16"),
				cond(meshv1.MembershipTunnelsReady, metav1.ConditionTrue, "AllPeersUp", "2/2 peers up"),
			},
		},
	}
}

func hubSecret() *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: HubSecretName, Namespace: SystemNamespace,
			Annotations: map[string]string{AnnotationTokenExpires: now.Add(300 * 24 * time.Hour).Format(time.RFC3339)}},
		Data: map[string][]byte{SecretKeyToken: []byte("t"), SecretKeyCA: []byte("ca")},
	}
}

func gatewayReport(peers ...meshv1.NodePeerReport) *meshv1.NodeReport {
	return &meshv1.NodeReport{
		Role: meshv1.RoleGateway, Interface: "archipelago0", InterfaceUp: true, WireGuard: "kernel", MTU: 1440, ListenPort: 51820,
		MTUSource: "Underlay", UnderlayInterface: "eth0", UnderlayMTU: 1500,
		Peers: peers, Routes: 2, NoSNAT: true, MSSClamp: true, IPForwarding: true, LastReconcile: *ago(8 * time.Second),
	}
}

func workerReport() *meshv1.NodeReport {
	return &meshv1.NodeReport{Role: meshv1.RoleWorker, NextHop: "172.18.0.2", Routes: 2, NoSNAT: true, IPForwarding: true, LastReconcile: *ago(9 * time.Second)}
}

func mpeer(cluster, cidr, state string, hs *metav1.Time) meshv1.MembershipPeer {
	return meshv1.MembershipPeer{Cluster: cluster, PodCIDRs: []string{cidr}, Gateway: cluster + "-gw", Endpoint: "172.18.1.2:51820", State: state, LatestHandshake: hs}
}

func serviceExport(ns, name string, conds ...metav1.Condition) *mcsv1beta1.ServiceExport {
	return &mcsv1beta1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Status: mcsv1beta1.ServiceExportStatus{Conditions: conds}}
}

func TestDiagnoseGolden(t *testing.T) {
	// charlie's WAN is smaller: its ranges are routed with a path MTU.
	charlie := mpeer("charlie", "10.3.0.0/16", meshv1.PeerUp, ago(40*time.Second))
	charlie.MTU, charlie.PathMTU = 1340, 1328
	healthy := fakeClient(
		membership(mpeer("bravo", "10.2.0.0/16", meshv1.PeerUp, ago(12*time.Second)), charlie),
		hubSecret(),
		node("alpha-gw", "10.1.0.0/24", gatewayReport(
			meshv1.NodePeerReport{Cluster: "bravo", Endpoint: "172.18.1.2:51820", LatestHandshake: ago(12 * time.Second)},
			meshv1.NodePeerReport{Cluster: "charlie", Endpoint: "172.18.2.2:51820", LatestHandshake: ago(40 * time.Second)})),
		node("alpha-worker", "10.1.1.0/24", workerReport()),
		serviceExport("shop", "api", cond("Valid", metav1.ConditionTrue, "Valid", "Service found"),
			cond("Ready", metav1.ConditionTrue, "Exported", "3 ready endpoints published"), cond("Conflict", metav1.ConditionFalse, "NoConflicts", "the exports of every cluster agree")),
	)
	broken := membership(mpeer("bravo", "10.2.0.0/16", meshv1.PeerUp, ago(12*time.Second)), mpeer("charlie", "10.3.0.0/16", meshv1.PeerConnecting, ago(184*time.Second)))
	broken.Status.Peers[1].Message = "no handshake for 3m4s"
	broken.Status.Conditions[1] = cond(meshv1.MembershipCIDRsMatch, metav1.ConditionFalse, "Outside", "node alpha-worker2 has 10.244.2.0/24")
	broken.Status.Conditions[2] = cond(meshv1.MembershipTunnelsReady, metav1.ConditionFalse, "PeersDown", "1/2 peers up; down: charlie")
	brokenGW := gatewayReport(
		meshv1.NodePeerReport{Cluster: "bravo", Endpoint: "172.18.1.2:51820", LatestHandshake: ago(12 * time.Second)},
		meshv1.NodePeerReport{Cluster: "charlie", Endpoint: "172.18.2.2:51820", LatestHandshake: ago(184 * time.Second)})
	// The ClusterSet's MTU does not fit this gateway's smaller WAN.
	brokenGW.MTU, brokenGW.MTUSource, brokenGW.UnderlayInterface, brokenGW.UnderlayMTU = 1420, "ClusterSet", "wan", 1400
	// A worker whose gateway has no IPv6 address.
	brokenWorker := workerReport()
	brokenWorker.CannotRoute = []meshv1.UnroutableRange{{CIDR: "fd00:2::/64", Cluster: "bravo", Reason: "the active gateway has no IPv6 InternalIP"}}
	brokenClient := fakeClient(
		broken, hubSecret(),
		node("alpha-gw", "10.1.0.0/24", brokenGW),
		node("alpha-worker", "10.1.1.0/24", nil),
		node("alpha-worker2", "10.244.2.0/24", brokenWorker),
		serviceExport("shop", "api", cond("Valid", metav1.ConditionTrue, "Valid", "Service found"),
			cond("Ready", metav1.ConditionTrue, "Exported", "1 ready endpoint published"),
			cond("Conflict", metav1.ConditionTrue, "PortConflict", "port metrics (9090/TCP) is in bravo's export only; oldest export: alpha")),
		serviceExport("shop", "dns", cond("Valid", metav1.ConditionFalse, "InvalidServiceType", "Service shop/dns is ExternalName: it cannot be exported")),
		serviceExport("shop", "db", cond("Valid", metav1.ConditionTrue, "Valid", "Service found"),
			cond("Ready", metav1.ConditionFalse, "Pending", "publish to the hub: not connected to the hub")),
	)
	for _, tc := range []struct {
		name   string
		c      client.Client
		failed bool
	}{
		{"diagnose-healthy", healthy, false},
		{"diagnose-broken", brokenClient, true},
		{"diagnose-not-joined", fakeClient(node("lonely", "10.244.0.0/24", nil)), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := BuildDiagnosis(context.Background(), tc.c, now, DefaultDiagnoseLimits)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if err := WriteDiagnosis(&buf, r, "table"); err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, buf.Bytes())
			if r.Failed() != tc.failed {
				t.Errorf("Failed() = %v, want %v", r.Failed(), tc.failed)
			}
		})
	}
}

func TestDiagnoseAgentPods(t *testing.T) {
	pod := func(name, nodeName string, ready corev1.ConditionStatus) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: SystemNamespace, Labels: map[string]string{AgentPodLabel: AgentPodLabelValue}},
			Spec:       corev1.PodSpec{NodeName: nodeName},
			Status:     corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}}},
		}
	}
	c := fakeClient(membership(), hubSecret(),
		node("alpha-gw", "10.1.0.0/24", gatewayReport()), node("alpha-worker", "10.1.1.0/24", workerReport()),
		pod("agent-1", "alpha-gw", corev1.ConditionTrue), pod("agent-2", "alpha-worker", corev1.ConditionFalse))
	r, err := BuildDiagnosis(context.Background(), c, now, DefaultDiagnoseLimits)
	if err != nil {
		t.Fatal(err)
	}
	var agents *Finding
	for i := range r.Findings {
		if r.Findings[i].Check == "agents" {
			agents = &r.Findings[i]
		}
	}
	if agents == nil || agents.Status != StatusFail || !bytes.Contains([]byte(agents.Detail), []byte("alpha-worker")) {
		t.Fatalf("agents finding %+v, want a failure naming alpha-worker", agents)
	}
}

func streamsFor(out, errOut *bytes.Buffer) genericiooptions.IOStreams {
	return genericiooptions.IOStreams{In: strings.NewReader(""), Out: out, ErrOut: errOut}
}
