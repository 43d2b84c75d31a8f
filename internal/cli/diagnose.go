package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/hubtoken"
)

// Finding statuses.
const (
	StatusOK   = "ok"
	StatusWarn = "warn"
	StatusFail = "fail"
)

// AgentPodLabel selects the agent pods in SystemNamespace.
const AgentPodLabel = "app.kubernetes.io/name"

// AgentPodLabelValue is the value of AgentPodLabel on agent pods.
const AgentPodLabelValue = "archipelago-agent"

type diagnoseOptions struct {
	*Options
	limits DiagnoseLimits
}

// DiagnoseLimits are the ages past which diagnose calls something stale.
type DiagnoseLimits struct {
	// ReportStaleAfter: a NodeReport whose lastReconcile is older is stale.
	ReportStaleAfter time.Duration
	// HandshakeMaxAge: a tunnel whose latest handshake is older is down.
	// WireGuard renews sessions every 2 minutes and drops them after 3.
	HandshakeMaxAge time.Duration
}

// DefaultDiagnoseLimits are the flags' defaults.
var DefaultDiagnoseLimits = DiagnoseLimits{ReportStaleAfter: 5 * time.Minute, HandshakeMaxAge: 3 * time.Minute}

func newDiagnoseCommand(o *Options) *cobra.Command {
	d := &diagnoseOptions{Options: o, limits: DefaultDiagnoseLimits}
	cmd := &cobra.Command{
		Use:   "diagnose [--context MEMBER]",
		Short: "Check one member cluster and print each finding with its fix",
		Long: `diagnose reads the member cluster of --context (or the current context): the
ClusterSetMembership and its conditions (Joined, CIDRsMatch, TunnelsReady)
and peers, the hub Secret, every Node's spec.podCIDRs against the assigned
ranges, the agent pods, and the data path report each agent writes on its
Node (annotation archipelago.dev/datapath: role, tunnel interface, MTU and
the underlay it was derived from,
peers and handshakes, no-SNAT rule, IP forwarding, last reconcile and error).

Where the agents do not run as pods (the lab runs them as processes), it
judges them by how fresh their node reports are.

Each finding is a row: CHECK, STATUS (ok, warn, fail), DETAIL, FIX.
Exits 1 when any check fails.`,
		Example: `  kubectl archipelago diagnose --context kind-c1
  kubectl archipelago diagnose --context kind-c1 -o json
  kubectl archipelago diagnose --stale-after 1m`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error { return d.run(cmd.Context()) },
	}
	cmd.Flags().DurationVar(&d.limits.ReportStaleAfter, "stale-after", d.limits.ReportStaleAfter, "A node report older than this is stale (its agent stopped reconciling)")
	cmd.Flags().DurationVar(&d.limits.HandshakeMaxAge, "handshake-max-age", d.limits.HandshakeMaxAge, "A tunnel whose latest handshake is older than this is down")
	return cmd
}

func (d *diagnoseOptions) run(ctx context.Context) error {
	if err := d.checkOutput(); err != nil {
		return err
	}
	member, err := d.connect("")
	if err != nil {
		return err
	}
	report, err := BuildDiagnosis(ctx, member.Client, d.now(), d.limits)
	if err != nil {
		return unreachable(member, err)
	}
	report.Context = member.Context
	if err := WriteDiagnosis(d.Streams.Out, report, d.Output); err != nil {
		return err
	}
	if report.Failed() {
		return errSilentFinding
	}
	return nil
}

// Finding is one row of diagnose.
type Finding struct {
	Check  string `json:"check"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// DiagnoseReport is what diagnose found in one member cluster.
type DiagnoseReport struct {
	Context    string    `json:"context,omitempty"`
	Member     string    `json:"member,omitempty"`
	ClusterSet string    `json:"clusterSet,omitempty"`
	PodCIDRs   []string  `json:"podCIDRs,omitempty"`
	Findings   []Finding `json:"findings"`
}

// Failed is true when a check failed.
func (r *DiagnoseReport) Failed() bool {
	return slices.ContainsFunc(r.Findings, func(f Finding) bool { return f.Status == StatusFail })
}

type diagnosis struct {
	report *DiagnoseReport
	now    time.Time
	limits DiagnoseLimits
}

func (d *diagnosis) add(check, status, detail, fix string) {
	if status == StatusOK {
		fix = ""
	}
	d.report.Findings = append(d.report.Findings, Finding{Check: check, Status: status, Detail: detail, Fix: fix})
}

// nodeState is a Node with its parsed report.
type nodeState struct {
	node   *corev1.Node
	report *meshv1.NodeReport
	err    error
}

// BuildDiagnosis runs the checks against a member cluster.
func BuildDiagnosis(ctx context.Context, c client.Reader, now time.Time, limits DiagnoseLimits) (*DiagnoseReport, error) {
	d := &diagnosis{report: &DiagnoseReport{Findings: []Finding{}}, now: now, limits: limits}

	m, err := getMembership(ctx, c)
	if err != nil {
		return nil, err
	}
	if m == nil {
		d.add("membership", StatusFail, "No ClusterSetMembership in this cluster: it is not a member of any ClusterSet",
			"Join it: kubectl archipelago join NAME --clusterset SET --hub-context HUB --context <this cluster>")
		return d.report, nil
	}
	d.report.Member, d.report.ClusterSet, d.report.PodCIDRs = m.Spec.ClusterName, m.Spec.ClusterSet, m.Status.PodCIDRs
	d.add("membership", StatusOK, fmt.Sprintf("Member %s of ClusterSet %s, hub %s", m.Spec.ClusterName, m.Spec.ClusterSet, m.Spec.Hub.Server), "")
	if err := d.checkSecret(ctx, c, m); err != nil {
		return nil, err
	}
	d.condition("joined", m.Status.Conditions, meshv1.MembershipJoined, true,
		"The agent could not register with the hub: check the hub URL and token (hub credentials row) and the elected agent's log")
	d.condition("cidrs match", m.Status.Conditions, meshv1.MembershipCIDRsMatch, false,
		"Node pod ranges lie outside the assigned ranges: see the node podCIDRs rows")

	var nodes corev1.NodeList
	if err := c.List(ctx, &nodes); err != nil {
		return nil, fmt.Errorf("list Nodes: %w", err)
	}
	slices.SortFunc(nodes.Items, func(a, b corev1.Node) int { return strings.Compare(a.Name, b.Name) })
	states := make([]nodeState, 0, len(nodes.Items))
	for i := range nodes.Items {
		n := &nodes.Items[i]
		s := nodeState{node: n}
		if raw, ok := n.Annotations[meshv1.AnnotationDatapath]; ok {
			s.report = &meshv1.NodeReport{}
			if err := json.Unmarshal([]byte(raw), s.report); err != nil {
				s.report, s.err = nil, err
			}
		}
		states = append(states, s)
	}
	podsRun, err := d.checkAgentPods(ctx, c, states)
	if err != nil {
		return nil, err
	}
	gateway := d.checkGatewayElected(m, states)
	for _, s := range states {
		d.checkNode(m, s, podsRun)
	}
	d.condition("tunnels ready", m.Status.Conditions, meshv1.MembershipTunnelsReady, false,
		"Some tunnels are down: see the peer rows")
	d.checkPeers(m, gateway)
	d.checkFamilies(m)
	if err := d.checkExports(ctx, c, m); err != nil {
		return nil, err
	}
	return d.report, nil
}

func getMembership(ctx context.Context, c client.Reader) (*meshv1.ClusterSetMembership, error) {
	m := &meshv1.ClusterSetMembership{}
	err := c.Get(ctx, types.NamespacedName{Name: MembershipName}, m)
	switch {
	case err == nil:
		return m, nil
	case meta.IsNoMatchError(err):
		return nil, nil
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("get ClusterSetMembership %s: %w", MembershipName, err)
	}
	// Someone may have applied a membership under another name.
	var list meshv1.ClusterSetMembershipList
	if err := c.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list ClusterSetMemberships: %w", err)
	}
	if len(list.Items) == 0 {
		return nil, nil
	}
	slices.SortFunc(list.Items, func(a, b meshv1.ClusterSetMembership) int { return strings.Compare(a.Name, b.Name) })
	return &list.Items[0], nil
}

func (d *diagnosis) condition(check string, conds []metav1.Condition, typ string, required bool, fix string) {
	c := meta.FindStatusCondition(conds, typ)
	switch {
	case c == nil:
		status := StatusWarn
		if required {
			status = StatusFail
		}
		d.add(check, status, fmt.Sprintf("No %s condition: the elected agent has not reported", typ),
			"Check that the agents run (agents row) and read the elected agent's log")
	case c.Status == metav1.ConditionTrue:
		d.add(check, StatusOK, strings.TrimSpace(c.Reason+": "+c.Message), "")
	default:
		d.add(check, StatusFail, fmt.Sprintf("%s=%s %s: %s", typ, c.Status, c.Reason, c.Message), fix)
	}
}

// tokenRenewalGrace is how long past its renewal point a token may be before
// diagnose warns (the elected agent renews on its next pass, within 30 s).
const tokenRenewalGrace = 10 * time.Minute

// tokenExpiryWarning is when diagnose warns about a token it cannot read the
// lifetime of (the Secret's expiry annotation only).
const tokenExpiryWarning = 6 * time.Hour

func (d *diagnosis) checkSecret(ctx context.Context, c client.Reader, m *meshv1.ClusterSetMembership) error {
	ref := m.Spec.Hub.SecretRef
	rejoin := fmt.Sprintf("Re-run 'kubectl archipelago join %s --clusterset %s --hub-context HUB' to write a fresh token", m.Spec.ClusterName, m.Spec.ClusterSet)
	s := &corev1.Secret{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}, s); err != nil {
		if apierrors.IsNotFound(err) {
			d.add("hub credentials", StatusFail, fmt.Sprintf("Secret %s/%s is missing", ref.Namespace, ref.Name), rejoin)
			return nil
		}
		if apierrors.IsForbidden(err) {
			d.add("hub credentials", StatusWarn, fmt.Sprintf("Not allowed to read Secret %s/%s", ref.Namespace, ref.Name), "Run diagnose as a user who may read Secrets there")
			return nil
		}
		return fmt.Errorf("get Secret %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	var missing []string
	for _, k := range []string{SecretKeyToken, SecretKeyCA} {
		if len(s.Data[k]) == 0 {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		d.add("hub credentials", StatusFail, fmt.Sprintf("Secret %s/%s has no %s", ref.Namespace, ref.Name, strings.Join(missing, ", ")), rejoin)
		return nil
	}
	name := ref.Namespace + "/" + ref.Name
	claims, claimsErr := hubtoken.Parse(string(s.Data[SecretKeyToken]))
	exp, expErr := claims.Expires, claimsErr
	if expErr != nil {
		exp, expErr = time.Parse(time.RFC3339, s.Annotations[AnnotationTokenExpires])
	}
	if expErr == nil && !exp.After(d.now) {
		d.add("hub credentials", StatusFail, fmt.Sprintf("Token in %s expired %s ago", name, age(d.now, &metav1.Time{Time: exp})), rejoin)
		return nil
	}
	switch {
	case claimsErr == nil && claims.BoundSecret == "":
		d.add("hub credentials", StatusWarn, fmt.Sprintf("Token in %s (expires %s) is not bound to a hub credential Secret: nothing revokes it and the agent does not renew it",
			name, exp.UTC().Format(time.RFC3339)), rejoin)
		return nil
	case claimsErr == nil && d.now.After(claims.RenewAt(hubtoken.RenewFraction).Add(tokenRenewalGrace)):
		// The elected agent renews at 75 % of the lifetime; past that, renewal fails or no agent runs.
		d.add("hub credentials", StatusWarn, fmt.Sprintf("Token in %s expires in %s and was due for renewal at %s: see the membership's HubCredentials condition and the elected agent's log",
			name, age(exp, &metav1.Time{Time: d.now}), claims.RenewAt(hubtoken.RenewFraction).UTC().Format(time.RFC3339)), rejoin)
		return nil
	case claimsErr != nil && expErr == nil && exp.Sub(d.now) < tokenExpiryWarning:
		d.add("hub credentials", StatusWarn, fmt.Sprintf("Token in %s expires in %s", name, age(exp, &metav1.Time{Time: d.now})), rejoin)
		return nil
	}
	if c := meta.FindStatusCondition(m.Status.Conditions, meshv1.MembershipHubCredentials); c != nil && c.Status != metav1.ConditionTrue {
		d.add("hub credentials", StatusWarn, fmt.Sprintf("%s=%s %s: %s", c.Type, c.Status, c.Reason, c.Message), rejoin)
		return nil
	}
	d.add("hub credentials", StatusOK, fmt.Sprintf("Secret %s/%s has a token and ca.crt", ref.Namespace, ref.Name), "")
	return nil
}

// checkAgentPods reports the agent pods; it returns false when the agents
// do not run as pods here, so the nodes' reports are judged by freshness.
func (d *diagnosis) checkAgentPods(ctx context.Context, c client.Reader, states []nodeState) (bool, error) {
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(SystemNamespace), client.MatchingLabels{AgentPodLabel: AgentPodLabelValue}); err != nil {
		return false, fmt.Errorf("list agent pods in %s: %w", SystemNamespace, err)
	}
	if len(pods.Items) == 0 {
		d.add("agents", StatusOK, fmt.Sprintf("No agent pods in %s (label %s=%s): the agents do not run as pods here; judging them by their node reports' freshness",
			SystemNamespace, AgentPodLabel, AgentPodLabelValue), "")
		return false, nil
	}
	readyOn := map[string]bool{}
	var notReady []string
	for i := range pods.Items {
		p := &pods.Items[i]
		if podReady(p) {
			readyOn[p.Spec.NodeName] = true
		} else {
			notReady = append(notReady, p.Name+" on "+dash(p.Spec.NodeName))
		}
	}
	var without []string
	for _, s := range states {
		if !readyOn[s.node.Name] {
			without = append(without, s.node.Name)
		}
	}
	slices.Sort(notReady)
	switch {
	case len(without) > 0:
		detail := fmt.Sprintf("No ready agent pod on %s", strings.Join(without, ", "))
		if len(notReady) > 0 {
			detail += "; not ready: " + strings.Join(notReady, ", ")
		}
		d.add("agents", StatusFail, detail,
			fmt.Sprintf("kubectl -n %s describe pods -l %s=%s, and read the logs of the pods that are not ready", SystemNamespace, AgentPodLabel, AgentPodLabelValue))
	default:
		d.add("agents", StatusOK, fmt.Sprintf("%d agent pods ready, one on every node", len(readyOn)), "")
	}
	return true, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// checkGatewayElected wants exactly one node reporting role gateway, and
// returns it.
func (d *diagnosis) checkGatewayElected(m *meshv1.ClusterSetMembership, states []nodeState) *nodeState {
	var gws []*nodeState
	for i := range states {
		if states[i].report != nil && states[i].report.Role == meshv1.RoleGateway {
			gws = append(gws, &states[i])
		}
	}
	switch {
	case len(gws) == 0:
		d.add("gateway elected", StatusFail, "No node reports role gateway: nothing holds this cluster's tunnels",
			fmt.Sprintf("Label at least one node %s=true and check the agents: one candidate becomes the gateway", meshv1.LabelGatewayCandidate))
		return nil
	case len(gws) > 1:
		names := make([]string, len(gws))
		for i, g := range gws {
			names[i] = g.node.Name
		}
		d.add("gateway elected", StatusFail, "Several nodes report role gateway: "+strings.Join(names, ", "),
			"Two agents think they hold the tunnels: check the agents' leader election in their logs")
		return nil
	}
	g := gws[0]
	if m.Status.ActiveGateway != "" && m.Status.ActiveGateway != g.node.Name {
		d.add("gateway elected", StatusWarn, fmt.Sprintf("Node %s reports role gateway, but the membership says %s", g.node.Name, m.Status.ActiveGateway),
			"A failover may be in progress: run diagnose again in a few seconds")
		return g
	}
	d.add("gateway elected", StatusOK, "Node "+g.node.Name, "")
	return g
}

func (d *diagnosis) checkNode(m *meshv1.ClusterSetMembership, s nodeState, podsRun bool) {
	name := "node/" + s.node.Name
	d.checkNodeCIDRs(name, m, s.node)
	r := s.report
	switch {
	case s.err != nil:
		d.add(name+" report", StatusFail, fmt.Sprintf("Annotation %s does not parse: %v", meshv1.AnnotationDatapath, s.err),
			"The agent on this node writes a report this version does not understand: run matching versions of agent and plugin")
		return
	case r == nil:
		d.add(name+" report", StatusFail, fmt.Sprintf("No NodeReport (annotation %s): no agent has reported on this node", meshv1.AnnotationDatapath),
			"Start the archipelago agent on "+s.node.Name+" and read its log; it writes this annotation after each reconcile")
		return
	}
	ago := age(d.now, &r.LastReconcile)
	switch {
	case r.LastError != "":
		d.add(name+" report", StatusFail, fmt.Sprintf("Role %s, last reconcile %s ago failed: %s", r.Role, ago, r.LastError),
			"Read the agent's log on "+s.node.Name+": the error is from its last reconcile")
	case r.LastReconcile.IsZero() || d.now.Sub(r.LastReconcile.Time) > d.limits.ReportStaleAfter:
		status := StatusWarn
		if !podsRun {
			// Without pods the report is the only sign the agent lives.
			status = StatusFail
		}
		d.add(name+" report", status, fmt.Sprintf("Role %s, last reconcile %s ago (stale after %s)", r.Role, ago, d.limits.ReportStaleAfter),
			"The agent on "+s.node.Name+" stopped reconciling: check that it runs and reaches the API server")
	default:
		d.add(name+" report", StatusOK, fmt.Sprintf("Role %s, %d routes, last reconcile %s ago", r.Role, r.Routes, ago), "")
	}
	if r.IPForwarding {
		d.add(name+" forwarding", StatusOK, "IP forwarding on", "")
	} else {
		d.add(name+" forwarding", StatusFail, "IP forwarding is off: the node drops traffic between pods and tunnels",
			"The agent enables it (sysctl net.ipv4.ip_forward=1): check its log for permission errors")
	}
	if r.NoSNAT {
		d.add(name+" no-SNAT", StatusOK, "Pod source addresses kept toward remote ranges", "")
	} else {
		d.add(name+" no-SNAT", StatusFail, "The no-SNAT rule is missing: the CNI may masquerade pod traffic to remote clusters",
			"Check the agent's nftables chain on "+s.node.Name+" ('nft list ruleset') and its log")
	}
	switch r.Role {
	case meshv1.RoleGateway:
		iface := dash(r.Interface)
		if r.InterfaceUp {
			d.add(name+" tunnel", StatusOK, fmt.Sprintf("Interface %s up (%s WireGuard, port %d)", iface, dash(r.WireGuard), r.ListenPort), "")
		} else {
			d.add(name+" tunnel", StatusFail, fmt.Sprintf("Tunnel interface %s is missing or down", iface),
				"Read the agent's log on "+s.node.Name+": kernel WireGuard module or wireguard-go failed")
		}
		switch {
		case r.MTU == 0:
			d.add(name+" MTU", StatusWarn, "MTU not reported", "Update the agent on "+s.node.Name)
		case r.UnderlayMTU > 0 && r.UnderlayMTU-r.MTU < 60:
			d.add(name+" MTU", StatusWarn, fmt.Sprintf("MTU %d (%s) does not fit the underlay %s (MTU %d) with WireGuard's 60 bytes over IPv4 or 80 over IPv6: large packets are fragmented or dropped", r.MTU, dash(r.MTUSource), r.UnderlayInterface, r.UnderlayMTU),
				fmt.Sprintf("Unset spec.tunnel.mtu of the ClusterSet (each gateway derives it), or set it to %d or less", r.UnderlayMTU-80))
		case r.UnderlayMTU == 0 && r.MTU > 1420:
			d.add(name+" MTU", StatusWarn, fmt.Sprintf("MTU %d leaves less than WireGuard's 80 bytes on a 1500-byte path: large packets may be dropped", r.MTU),
				"Set spec.tunnel.mtu of the ClusterSet to 1420 or less")
		case r.MTU < 1280:
			d.add(name+" MTU", StatusWarn, fmt.Sprintf("MTU %d is below IPv6's minimum of 1280", r.MTU), "Set spec.tunnel.mtu of the ClusterSet to at least 1280")
		default:
			src := ""
			switch r.MTUSource {
			case "":
			case "Underlay":
				src = fmt.Sprintf(" (derived from %s, MTU %d)", r.UnderlayInterface, r.UnderlayMTU)
			default:
				src = " (" + r.MTUSource + ")"
			}
			d.add(name+" MTU", StatusOK, fmt.Sprintf("MTU %d%s", r.MTU, src), "")
		}
	case meshv1.RoleWorker, meshv1.RoleStandby:
		switch {
		case r.NextHop == "":
			d.add(name+" next hop", StatusFail, "No route to the gateway: remote ranges are not routed from this node",
				"Check the agent's log on "+s.node.Name+" and that the cluster has an active gateway")
		case m.Status.ActiveGatewayIP != "" && r.NextHop != m.Status.ActiveGatewayIP:
			d.add(name+" next hop", StatusWarn, fmt.Sprintf("Routes via %s, but the active gateway is %s", r.NextHop, m.Status.ActiveGatewayIP),
				"A failover may be in progress: run diagnose again in a few seconds")
		default:
			hops := r.NextHop
			if len(r.NextHops) > 1 {
				hops = strings.Join(r.NextHops, " and ")
			}
			msg := "Remote ranges via " + hops
			if r.Encapsulation != "" {
				// Off-link gateway: "vxlan archipelago-vx to <gateway>".
				msg = "Remote ranges through " + r.Encapsulation + " (the gateway is off-link)"
			}
			d.add(name+" next hop", StatusOK, msg, "")
		}
	}
	if len(r.CannotRoute) > 0 {
		var parts []string
		for _, u := range r.CannotRoute {
			parts = append(parts, fmt.Sprintf("%s (%s): %s", u.CIDR, u.Cluster, u.Reason))
		}
		d.add(name+" unreachable ranges", StatusWarn, fmt.Sprintf("%d remote ranges cannot be reached from this node's pods: %s", len(parts), strings.Join(parts, "; ")),
			"Give the gateway candidates an InternalIP of every family the ClusterSet uses, and the cluster a pod range of each (dual-stack)")
	}
}

func (d *diagnosis) checkNodeCIDRs(name string, m *meshv1.ClusterSetMembership, n *corev1.Node) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	if len(cidrs) == 0 {
		d.add(name+" podCIDRs", StatusWarn, "No spec.podCIDRs: cannot check this node's pod addresses",
			"If the CNI allocates pod addresses itself, make sure it uses the assigned ranges")
		return
	}
	if len(m.Status.PodCIDRs) == 0 {
		d.add(name+" podCIDRs", StatusWarn, strings.Join(cidrs, ",")+"; no assigned ranges known yet", "Wait for the agent to join (joined row)")
		return
	}
	var outside []string
	for _, c := range cidrs {
		if !insideAny(c, m.Status.PodCIDRs) {
			outside = append(outside, c)
		}
	}
	assigned := strings.Join(m.Status.PodCIDRs, ",")
	if len(outside) > 0 {
		d.add(name+" podCIDRs", StatusFail, fmt.Sprintf("%s outside the assigned ranges %s", strings.Join(outside, ","), assigned),
			fmt.Sprintf("Recreate the cluster with podSubnet %s (join --kind-config prints a kind config), or leave and join again with --pod-cidr set to the cluster's range", assigned))
		return
	}
	d.add(name+" podCIDRs", StatusOK, fmt.Sprintf("%s inside %s", strings.Join(cidrs, ","), assigned), "")
}

// insideAny is true when cidr lies within one of ranges.
func insideAny(cidr string, ranges []string) bool {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return false
	}
	for _, r := range ranges {
		rp, err := netip.ParsePrefix(r)
		if err == nil && rp.Bits() <= p.Bits() && rp.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// checkPeers joins the membership's peers (what the hub says exists) with
// the gateway's kernel report (what the tunnel really does).
func (d *diagnosis) checkPeers(m *meshv1.ClusterSetMembership, gateway *nodeState) {
	kernel := map[string]meshv1.NodePeerReport{}
	gwName := "the gateway"
	if gateway != nil && gateway.report != nil {
		gwName = gateway.node.Name
		for _, p := range gateway.report.Peers {
			kernel[p.Cluster] = p
		}
	}
	peers := slices.Clone(m.Status.Peers)
	slices.SortFunc(peers, func(a, b meshv1.MembershipPeer) int { return strings.Compare(a.Cluster, b.Cluster) })
	for _, p := range peers {
		check := "peer/" + p.Cluster
		hs := p.LatestHandshake
		kp, inKernel := kernel[p.Cluster]
		if inKernel && kp.LatestHandshake != nil {
			hs = kp.LatestHandshake
		}
		endpoint := p.Endpoint
		if inKernel && kp.Endpoint != "" {
			endpoint = kp.Endpoint
		}
		fix := fmt.Sprintf("Check that %s reaches %s's endpoint %s over UDP (firewall, NAT), and run 'kubectl archipelago diagnose' in member %s",
			gwName, p.Cluster, dash(endpoint), p.Cluster)
		ranges := dash(strings.Join(p.PodCIDRs, ","))
		switch {
		case gateway != nil && !inKernel:
			d.add(check, StatusFail, fmt.Sprintf("%s (%s) is not a peer of the tunnel on %s", p.Cluster, ranges, gwName),
				"Read the agent's log on "+gwName+": it did not configure this peer")
		case p.State != meshv1.PeerUp:
			msg := ""
			if p.Message != "" {
				msg = ": " + p.Message
			}
			d.add(check, StatusFail, fmt.Sprintf("%s (%s) is %s%s, last handshake %s", p.Cluster, ranges, p.State, msg, ageOrNever(d.now, hs)), fix)
		case hs == nil || d.now.Sub(hs.Time) > d.limits.HandshakeMaxAge:
			d.add(check, StatusFail, fmt.Sprintf("%s (%s): last handshake %s, older than %s: the tunnel is down", p.Cluster, ranges, ageOrNever(d.now, hs), d.limits.HandshakeMaxAge), fix)
		default:
			path := ""
			if p.PathMTU != 0 {
				path = fmt.Sprintf(", path MTU %d (its tunnel MTU %d)", p.PathMTU, p.MTU)
			}
			d.add(check, StatusOK, fmt.Sprintf("%s (%s) up via %s, handshake %s ago%s", p.Cluster, ranges, dash(endpoint), age(d.now, hs), path), "")
		}
		delete(kernel, p.Cluster)
	}
	extra := make([]string, 0, len(kernel))
	for c := range kernel {
		extra = append(extra, c)
	}
	slices.Sort(extra)
	for _, c := range extra {
		d.add("peer/"+c, StatusWarn, fmt.Sprintf("The tunnel on %s has a peer %s that the membership does not list", gwName, c),
			"The member may have left the ClusterSet a moment ago: run diagnose again; if it stays, read the agent's log")
	}
}

// checkFamilies names the peers whose pods this member's cannot reach, or
// that cannot reach this member's, over some IP family or any: the
// families of the ranges the hub assigned on each side differ.
func (d *diagnosis) checkFamilies(m *meshv1.ClusterSetMembership) {
	own := rangeFamilies(m.Status.PodCIDRs)
	if len(own) == 0 {
		return
	}
	var gaps []string
	for _, p := range m.Status.Peers {
		if fams := rangeFamilies(p.PodCIDRs); len(fams) > 0 {
			if g := familyGap("this member", own, p.Cluster, fams); g != "" {
				gaps = append(gaps, g)
			}
		}
	}
	if len(gaps) == 0 {
		return
	}
	slices.Sort(gaps)
	d.add("ip families", StatusWarn, fmt.Sprintf("This member has %s; %s", strings.Join(own, " and "), strings.Join(gaps, "; ")),
		"Expected if the clusters are single-stack; otherwise give the member the missing family (spec.ipFamilies of its MemberCluster on the hub, and a pod range of that family in the cluster)")
}

func ageOrNever(now time.Time, t *metav1.Time) string {
	if t == nil {
		return "never"
	}
	return age(now, t) + " ago"
}

// WriteDiagnosis prints the report as a table (table and wide are the same), json or yaml.
func WriteDiagnosis(w io.Writer, r *DiagnoseReport, format string) error {
	if format == "json" || format == "yaml" {
		return printStructured(w, format, r)
	}
	if r.Member != "" {
		fmt.Fprintf(w, "Member %s of ClusterSet %s   pod ranges %s\n", r.Member, r.ClusterSet, dash(strings.Join(r.PodCIDRs, ",")))
	} else {
		fmt.Fprintln(w, "Not a member of any ClusterSet")
	}
	t := newTable(w)
	fmt.Fprintln(t, "CHECK\tSTATUS\tDETAIL\tFIX")
	var failed []string
	for _, f := range r.Findings {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\n", f.Check, f.Status, f.Detail, dash(f.Fix))
		if f.Status == StatusFail {
			failed = append(failed, f.Check)
		}
	}
	if err := t.Flush(); err != nil {
		return err
	}
	if len(failed) > 0 {
		who := r.Member
		if who == "" {
			who = "this cluster"
		}
		fmt.Fprintf(w, "\n%d check(s) failed in %s: %s\n", len(failed), who, strings.Join(failed, ", "))
	}
	return nil
}
