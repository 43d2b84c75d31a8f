package cli

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

type statusOptions struct {
	*Options
	hubContext string
	clusterSet string
	staleAfter time.Duration
}

// DefaultGatewayStaleAfter is how old the active Gateway's lastSeen may be
// before status calls the member's agent stale (agents refresh it every
// --report-interval, 1 min by default). The hub reports the same as
// AgentConnected=False (HeartbeatStale) after its own bound (3 min by
// default); this check also works against a hub that lags or is down.
const DefaultGatewayStaleAfter = 5 * time.Minute

func newStatusCommand(o *Options) *cobra.Command {
	s := &statusOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "status [--hub-context HUB] [--clusterset SET]",
		Short: "Show every member of the ClusterSets on the hub: ranges, gateway, tunnels, problems",
		Long: `status reads the hub (--hub-context, else --context or the current context)
and prints one table per ClusterSet:

  MEMBER            the member's name
  POD CIDRS         the ranges the hub assigned
  GATEWAY           the member's active gateway node
  TUNNELS           k/n: tunnels its active gateway reports up, of the peers it knows
  LAST SEEN         age of the active gateway's latest heartbeat (agents beat once a minute)
  PROBLEMS          hub conditions that are not OK, as Type=Reason

and, when members export services (ServiceExport), a second table:

  SERVICE           namespace/name of the multi-cluster service
  TYPE, PORTS       as the members import it (the merge of every export)
  EXPORTERS         the members that export it, oldest export first
  ENDPOINTS         ready endpoints the exporters publish
  CONFLICTS         the MCS API's conflict reasons (the oldest export wins)

-o wide adds readiness, age and the conditions' messages.
A member whose active gateway has not reported (Gateway status.lastSeen) for
--stale-after gets the problem Gateway=Stale.
Exits 1 when a member is not Ready, not connected to every peer, or stale.`,
		Example: `  kubectl archipelago status --hub-context kind-hub
  kubectl archipelago status --hub-context kind-hub --clusterset demo -o wide
  kubectl archipelago status --hub-context kind-hub -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error { return s.run(cmd.Context()) },
	}
	cmd.Flags().StringVar(&s.hubContext, "hub-context", "", "Kubeconfig context of the hub (default: --context or the current context)")
	cmd.Flags().StringVar(&s.clusterSet, "clusterset", "", "Show only this ClusterSet")
	cmd.Flags().DurationVar(&s.staleAfter, "stale-after", DefaultGatewayStaleAfter, "A member whose active gateway last reported longer ago than this is stale (its agent stopped)")
	return cmd
}

func (s *statusOptions) run(ctx context.Context) error {
	if err := s.checkOutput(); err != nil {
		return err
	}
	hub, err := s.connect(s.hubContext)
	if err != nil {
		return err
	}
	report, err := BuildStatusWithLimits(ctx, hub.Client, s.clusterSet, s.now(), s.staleAfter)
	if err != nil {
		if _, ok := err.(*exitError); ok {
			return err
		}
		return unreachable(hub, err)
	}
	if err := WriteStatus(s.Streams.Out, report, s.Output); err != nil {
		return err
	}
	if !report.Healthy() {
		return errSilentFinding
	}
	return nil
}

// StatusReport is the archipelago as the hub sees it.
type StatusReport struct {
	ClusterSets []ClusterSetReport `json:"clusterSets"`
}

// ClusterSetReport is one ClusterSet and its members.
type ClusterSetReport struct {
	Name string `json:"name"`
	// Missing is true when members name a ClusterSet that does not exist.
	Missing    bool           `json:"missing,omitempty"`
	Pools      []string       `json:"pools,omitempty"`
	FreeBlocks string         `json:"freeBlocks,omitempty"`
	Members    []MemberReport `json:"members"`
	// Services are the set's multi-cluster services and their exporters.
	Services []ServiceReport `json:"services,omitempty"`
	// CannotTalk are pairs of members whose pods cannot reach each other
	// over some IP family, or any (at most maxFamilyGaps, then a count).
	CannotTalk []string `json:"cannotTalk,omitempty"`
}

// MemberReport is one row of the status table.
type MemberReport struct {
	Name     string   `json:"name"`
	PodCIDRs []string `json:"podCIDRs,omitempty"`
	// IPFamilies are the families of PodCIDRs.
	IPFamilies []string `json:"ipFamilies,omitempty"`
	Gateway    string   `json:"gateway,omitempty"`
	Tunnels    string   `json:"tunnels,omitempty"`
	// LastSeen is the active gateway's latest heartbeat (status.lastSeen).
	LastSeen *metav1.Time `json:"lastSeen,omitempty"`
	// LastSeenAge is LAST SEEN as printed: an age, "never" or "-".
	LastSeenAge string      `json:"lastSeenAge"`
	Ready       bool        `json:"ready"`
	Connected   bool        `json:"connected"`
	Age         string      `json:"age"`
	Problems    []Condition `json:"problems,omitempty"`
	// Stale: the active gateway's agent stopped reporting.
	Stale bool `json:"stale,omitempty"`
}

// Condition is a condition that is not OK.
type Condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

// Healthy is true when every member is Ready and connected to all peers.
func (r *StatusReport) Healthy() bool {
	for _, cs := range r.ClusterSets {
		if cs.Missing {
			return false
		}
		for _, m := range cs.Members {
			if !m.Ready || !m.Connected || m.Stale {
				return false
			}
		}
	}
	return true
}

// memberConditionOrder is the order PROBLEMS lists conditions in: the
// order in which a member comes to life, so the first is the root cause.
var memberConditionOrder = []string{
	meshv1.MemberAccepted, meshv1.MemberCIDRAllocated, meshv1.MemberGatewaysValid,
	meshv1.MemberAgentConnected, meshv1.MemberConnected, meshv1.MemberFamiliesShared, meshv1.ConditionReady,
}

// BuildStatus reads the hub's ClusterSets, MemberClusters and the active
// Gateways of each member.
func BuildStatus(ctx context.Context, c client.Reader, onlySet string, now time.Time) (*StatusReport, error) {
	return BuildStatusWithLimits(ctx, c, onlySet, now, DefaultGatewayStaleAfter)
}

// BuildStatusWithLimits is BuildStatus with the age past which an active
// Gateway's lastSeen makes the member stale (0: never).
func BuildStatusWithLimits(ctx context.Context, c client.Reader, onlySet string, now time.Time, staleAfter time.Duration) (*StatusReport, error) {
	var sets []meshv1.ClusterSet
	if onlySet != "" {
		cs := &meshv1.ClusterSet{}
		if err := c.Get(ctx, types.NamespacedName{Name: onlySet}, cs); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, finding("ClusterSet %q does not exist on the hub; list them with 'kubectl get clustersets'", onlySet)
			}
			return nil, fmt.Errorf("get ClusterSet %s: %w", onlySet, err)
		}
		sets = []meshv1.ClusterSet{*cs}
	} else {
		var list meshv1.ClusterSetList
		if err := c.List(ctx, &list); err != nil {
			return nil, fmt.Errorf("list ClusterSets: %w", err)
		}
		sets = list.Items
	}
	var members meshv1.MemberClusterList
	if err := c.List(ctx, &members); err != nil {
		return nil, fmt.Errorf("list MemberClusters: %w", err)
	}
	bySet := map[string]*ClusterSetReport{}
	report := &StatusReport{}
	for _, cs := range sets {
		r := ClusterSetReport{Name: cs.Name, FreeBlocks: freeBlocks(cs.Status.Families), Members: []MemberReport{}}
		for _, p := range cs.Spec.PodCIDRPools {
			r.Pools = append(r.Pools, string(p))
		}
		report.ClusterSets = append(report.ClusterSets, r)
	}
	for i := range report.ClusterSets {
		bySet[report.ClusterSets[i].Name] = &report.ClusterSets[i]
		svcs, err := setServices(ctx, c, report.ClusterSets[i].Name, now)
		if err != nil {
			return nil, err
		}
		report.ClusterSets[i].Services = svcs
	}
	for i := range members.Items {
		m := &members.Items[i]
		if onlySet != "" && m.Spec.ClusterSet != onlySet {
			continue
		}
		row, err := memberRow(ctx, c, m, now, staleAfter)
		if err != nil {
			return nil, err
		}
		r := bySet[m.Spec.ClusterSet]
		if r == nil {
			report.ClusterSets = append(report.ClusterSets, ClusterSetReport{Name: m.Spec.ClusterSet, Missing: true})
			for i := range report.ClusterSets {
				bySet[report.ClusterSets[i].Name] = &report.ClusterSets[i]
			}
			r = bySet[m.Spec.ClusterSet]
		}
		r.Members = append(r.Members, row)
	}
	slices.SortFunc(report.ClusterSets, func(a, b ClusterSetReport) int { return strings.Compare(a.Name, b.Name) })
	for i := range report.ClusterSets {
		slices.SortFunc(report.ClusterSets[i].Members, func(a, b MemberReport) int { return strings.Compare(a.Name, b.Name) })
		report.ClusterSets[i].CannotTalk = familyGaps(report.ClusterSets[i].Members)
	}
	return report, nil
}

// freeBlocks summarizes free blocks per family, such as "IPv4: 13".
func freeBlocks(fams []meshv1.FamilyStatus) string {
	var out []string
	for _, f := range fams {
		out = append(out, fmt.Sprintf("%s: %d", f.Family, f.Free))
	}
	return strings.Join(out, ", ")
}

// tunnels is "k/n" once the hub has counted the member's connected peers.
func tunnels(m *meshv1.MemberCluster) string {
	if meta.FindStatusCondition(m.Status.Conditions, meshv1.MemberConnected) == nil {
		return ""
	}
	return fmt.Sprintf("%d/%d", m.Status.ConnectedPeers, m.Status.TotalPeers)
}

func memberRow(ctx context.Context, c client.Reader, m *meshv1.MemberCluster, now time.Time, staleAfter time.Duration) (MemberReport, error) {
	row := MemberReport{
		Name:       m.Name,
		PodCIDRs:   m.Status.PodCIDRs,
		IPFamilies: rangeFamilies(m.Status.PodCIDRs),
		Gateway:    m.Status.ActiveGateway,
		Tunnels:    tunnels(m),
		Age:        age(now, &m.CreationTimestamp),
	}
	row.Ready = meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.ConditionReady)
	row.Connected = meta.IsStatusConditionTrue(m.Status.Conditions, meshv1.MemberConnected)
	for _, t := range memberConditionOrder {
		cond := meta.FindStatusCondition(m.Status.Conditions, t)
		switch {
		case cond == nil:
			if t == meshv1.ConditionReady {
				row.Problems = append(row.Problems, Condition{Type: t, Status: "Unknown", Reason: "NotReconciled", Message: "the hub has not reported on this member: is the hub controller running?"})
			}
		case cond.Status != metav1.ConditionTrue:
			row.Problems = append(row.Problems, Condition{Type: t, Status: string(cond.Status), Reason: cond.Reason, Message: cond.Message})
		}
	}
	// Ready=False repeats the first problem; list it only when it is alone.
	if len(row.Problems) > 1 && row.Problems[len(row.Problems)-1].Type == meshv1.ConditionReady {
		row.Problems = row.Problems[:len(row.Problems)-1]
	}
	row.LastSeenAge = "-"
	if m.Status.Namespace == "" {
		return row, nil
	}
	var gws meshv1.TunnelGatewayList
	if err := c.List(ctx, &gws, client.InNamespace(m.Status.Namespace)); err != nil {
		return row, fmt.Errorf("list Gateways of member %s in %s: %w", m.Name, m.Status.Namespace, err)
	}
	for i := range gws.Items {
		gw := &gws.Items[i]
		if !gw.Spec.Active || (m.Status.ActiveGateway != "" && gw.Spec.NodeName != m.Status.ActiveGateway) {
			continue
		}
		seen := gw.Status.LastSeen
		if seen == nil {
			row.LastSeenAge = "never"
			continue
		}
		row.LastSeen = seen.DeepCopy()
		row.LastSeenAge = age(now, seen)
		if staleAfter > 0 && now.Sub(seen.Time) > staleAfter {
			row.Stale = true
			row.Problems = append(row.Problems, Condition{Type: "Gateway", Status: "Unknown", Reason: "Stale",
				Message: fmt.Sprintf("active gateway %s last reported %s ago (stale after %s): is its agent running? Run 'kubectl archipelago diagnose --context %s'", gw.Spec.NodeName, age(now, seen), staleAfter, m.Name)})
		}
	}
	return row, nil
}

// WriteStatus prints the report as table, wide, json or yaml.
func WriteStatus(w io.Writer, r *StatusReport, format string) error {
	if format == "json" || format == "yaml" {
		return printStructured(w, format, r)
	}
	wide := format == "wide"
	if len(r.ClusterSets) == 0 {
		_, err := fmt.Fprintln(w, "No ClusterSets on the hub: create one (see config/samples)")
		return err
	}
	var unhealthy []string
	for i, cs := range r.ClusterSets {
		if i > 0 {
			fmt.Fprintln(w)
		}
		switch {
		case cs.Missing:
			fmt.Fprintf(w, "ClusterSet %s (does not exist: its members cannot get ranges)\n", cs.Name)
		default:
			fmt.Fprintf(w, "ClusterSet %s   pools %s   free %s   members %d\n", cs.Name, dash(strings.Join(cs.Pools, ",")), dash(cs.FreeBlocks), len(cs.Members))
		}
		if len(cs.Members) == 0 {
			fmt.Fprintln(w, "No members: join one with 'kubectl archipelago join'")
			continue
		}
		t := newTable(w)
		header := "MEMBER\tPOD CIDRS\tGATEWAY\tTUNNELS\tLAST SEEN\tPROBLEMS"
		if wide {
			header = "MEMBER\tPOD CIDRS\tGATEWAY\tTUNNELS\tLAST SEEN\tREADY\tAGE\tPROBLEMS"
		}
		fmt.Fprintln(t, header)
		for _, m := range cs.Members {
			probs := make([]string, 0, len(m.Problems))
			for _, p := range m.Problems {
				s := p.Type + "=" + p.Reason
				if wide && p.Message != "" {
					s += " (" + p.Message + ")"
				}
				probs = append(probs, s)
			}
			if !m.Ready || !m.Connected {
				unhealthy = append(unhealthy, m.Name)
			}
			cols := []string{m.Name, dash(strings.Join(m.PodCIDRs, ",")), dash(m.Gateway), dash(m.Tunnels), m.LastSeenAge}
			if wide {
				cols = append(cols, fmt.Sprint(m.Ready), m.Age)
			}
			sep := ", "
			if wide {
				sep = "; "
			}
			cols = append(cols, dash(strings.Join(probs, sep)))
			fmt.Fprintln(t, strings.Join(cols, "\t"))
		}
		if err := t.Flush(); err != nil {
			return err
		}
		if len(cs.CannotTalk) > 0 {
			fmt.Fprintln(w, "\nPods that cannot reach each other (IP families):")
			for _, g := range cs.CannotTalk {
				fmt.Fprintln(w, "  "+g)
			}
		}
		if err := writeServices(w, cs.Services); err != nil {
			return err
		}
	}
	if len(unhealthy) > 0 {
		fmt.Fprintf(w, "\nNeed attention: %s (run 'kubectl archipelago diagnose --context <member>' for each)\n", strings.Join(unhealthy, ", "))
	}
	return nil
}

// maxFamilyGaps bounds the pairs status lists: a set of many single-stack
// and dual-stack members has a great many.
const maxFamilyGaps = 20

// rangeFamilies lists the IP families of ranges, IPv4 first.
func rangeFamilies(ranges []string) []string {
	var v4, v6 bool
	for _, r := range ranges {
		if p, err := netip.ParsePrefix(r); err == nil {
			v4, v6 = v4 || p.Addr().Is4(), v6 || p.Addr().Is6()
		}
	}
	var out []string
	if v4 {
		out = append(out, string(meshv1.IPv4))
	}
	if v6 {
		out = append(out, string(meshv1.IPv6))
	}
	return out
}

// familyGap says what pods of a (families fa) cannot reach of b (fb), or
// "" when nothing.
func familyGap(a string, fa []string, b string, fb []string) string {
	var common, aOnly, bOnly []string
	for _, f := range fa {
		if slices.Contains(fb, f) {
			common = append(common, f)
		} else {
			aOnly = append(aOnly, f)
		}
	}
	for _, f := range fb {
		if !slices.Contains(fa, f) {
			bOnly = append(bOnly, f)
		}
	}
	switch {
	case len(aOnly) == 0 && len(bOnly) == 0:
		return ""
	case len(common) == 0:
		return fmt.Sprintf("%s and %s: no common IP family (%s has %s only, %s %s only): their pods cannot reach each other",
			a, b, a, strings.Join(fa, " and "), b, strings.Join(fb, " and "))
	case len(aOnly) > 0:
		return fmt.Sprintf("%s's %s pods cannot reach %s: %s has no %s range (they talk over %s)", a, aOnly[0], b, b, aOnly[0], strings.Join(common, " and "))
	default:
		return fmt.Sprintf("%s's %s pods cannot reach %s: %s has no %s range (they talk over %s)", b, bOnly[0], a, a, bOnly[0], strings.Join(common, " and "))
	}
}

// familyGaps lists the pairs of members (with ranges, sorted by name) that
// cannot reach each other over some family, at most maxFamilyGaps of them.
func familyGaps(members []MemberReport) []string {
	var out []string
	more := 0
	for i := range members {
		for j := i + 1; j < len(members); j++ {
			a, b := &members[i], &members[j]
			if len(a.IPFamilies) == 0 || len(b.IPFamilies) == 0 {
				continue
			}
			if g := familyGap(a.Name, a.IPFamilies, b.Name, b.IPFamilies); g != "" {
				if len(out) < maxFamilyGaps {
					out = append(out, g)
				} else {
					more++
				}
			}
		}
	}
	if more > 0 {
		out = append(out, fmt.Sprintf("and %d more pairs (kubectl get memberclusters -o wide shows each member's FamiliesShared)", more))
	}
	return out
}
