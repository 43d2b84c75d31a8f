package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
)

// ServiceReport is one multi-cluster service of a ClusterSet, as the hub's
// copies of its members' exports give it.
type ServiceReport struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Type      string   `json:"type"`
	Ports     []string `json:"ports,omitempty"`
	// Exporters are the members that export it, oldest export first.
	Exporters []string `json:"exporters"`
	// Conflicts are the MCS API's conflict reasons of the merge every
	// member runs (the oldest export wins each).
	Conflicts []string `json:"conflicts,omitempty"`
	// Endpoints counts the ready endpoints the exporters publish.
	Endpoints int `json:"endpoints"`
}

// setServices reads the set's exported services on the hub (the hub's copies
// in the set's namespace) and merges them as the members do.
func setServices(ctx context.Context, c client.Reader, set string, now time.Time) ([]ServiceReport, error) {
	var recs meshv1.ExportedServiceList
	if err := c.List(ctx, &recs, client.InNamespace(meshv1.ClusterSetNamespace(set))); err != nil {
		if meta.IsNoMatchError(err) {
			return nil, nil // a hub without the ExportedService CRD exports nothing
		}
		return nil, fmt.Errorf("list the exported services of ClusterSet %s: %w", set, err)
	}
	specs := make([]meshv1.ExportedServiceSpec, 0, len(recs.Items))
	members := map[string]bool{}
	// Ready endpoints as published (the merge, run without the members'
	// ranges here, would drop them all).
	endpoints := map[mcs.Key]int{}
	for _, r := range recs.Items {
		if r.Labels[meshv1.LabelMember] != r.Spec.Cluster {
			continue
		}
		specs = append(specs, r.Spec)
		members[r.Spec.Cluster] = true
		for _, g := range r.Spec.EndpointGroups {
			endpoints[mcs.Key{Namespace: r.Spec.Namespace, Name: r.Spec.Name}] += len(g.Endpoints)
		}
	}
	ms := make([]mcs.Member, 0, len(members))
	for m := range members {
		ms = append(ms, mcs.Member{Name: m, LastSeen: now})
	}
	res := mcs.Merge(specs, ms, mcs.Options{Now: now})
	out := make([]ServiceReport, 0, len(res.Imports))
	for _, im := range res.Imports {
		s := ServiceReport{Namespace: im.Namespace, Name: im.Name, Type: string(im.Type), Endpoints: endpoints[im.Key]}
		for _, p := range im.Ports {
			s.Ports = append(s.Ports, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
		}
		clusters := slices.Clone(im.Clusters)
		slices.SortStableFunc(clusters, func(a, b mcs.ClusterImport) int { return a.ExportCreationTimestamp.Compare(b.ExportCreationTimestamp) })
		for _, c := range clusters {
			s.Exporters = append(s.Exporters, c.Cluster)
		}
		for _, c := range im.Conflicts {
			s.Conflicts = append(s.Conflicts, string(c.Reason))
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b ServiceReport) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out, nil
}

// writeServices prints a set's services table (nothing when it has none).
func writeServices(w io.Writer, services []ServiceReport) error {
	if len(services) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t := newTable(w)
	fmt.Fprintln(t, "SERVICE\tTYPE\tPORTS\tEXPORTERS\tENDPOINTS\tCONFLICTS")
	for _, s := range services {
		fmt.Fprintf(t, "%s/%s\t%s\t%s\t%s\t%d\t%s\n", s.Namespace, s.Name, s.Type, dash(strings.Join(s.Ports, ",")),
			strings.Join(s.Exporters, ","), s.Endpoints, dash(strings.Join(s.Conflicts, ",")))
	}
	return t.Flush()
}

// checkExports reports the member's ServiceExports that are not Ready, not
// Valid or in Conflict, with the reason; and one ok row when all are fine.
func (d *diagnosis) checkExports(ctx context.Context, c client.Reader, m *meshv1.ClusterSetMembership) error {
	if cond := meta.FindStatusCondition(m.Status.Conditions, meshv1.MembershipServices); cond != nil {
		d.condition("multi-cluster services", m.Status.Conditions, meshv1.MembershipServices, false,
			"Fix what the detail names (a ClusterProperty: kubectl get clusterproperties), or run join again")
	}
	var list mcsv1beta1.ServiceExportList
	if err := c.List(ctx, &list); err != nil {
		if meta.IsNoMatchError(err) {
			return nil // no MCS CRDs: nothing exported
		}
		return fmt.Errorf("list ServiceExports: %w", err)
	}
	if len(list.Items) == 0 {
		return nil
	}
	slices.SortFunc(list.Items, func(a, b mcsv1beta1.ServiceExport) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	bad := 0
	for _, se := range list.Items {
		check := "export " + se.Namespace + "/" + se.Name
		conds := se.Status.Conditions
		valid := meta.FindStatusCondition(conds, string(mcsv1beta1.ServiceExportConditionValid))
		ready := meta.FindStatusCondition(conds, string(mcsv1beta1.ServiceExportConditionReady))
		conflict := meta.FindStatusCondition(conds, string(mcsv1beta1.ServiceExportConditionConflict))
		switch {
		case valid != nil && valid.Status == metav1.ConditionFalse:
			bad++
			d.add(check, StatusFail, fmt.Sprintf("Valid=False %s: %s", valid.Reason, valid.Message),
				"Export a Service of that name that is not ExternalName, or delete the ServiceExport")
		case ready == nil || ready.Status != metav1.ConditionTrue:
			bad++
			detail := "no Ready condition: the elected agent has not exported it (is it running? multi-cluster services row)"
			if ready != nil {
				detail = fmt.Sprintf("Ready=%s %s: %s", ready.Status, ready.Reason, ready.Message)
			}
			d.add(check, StatusWarn, detail, "Pending retries while the hub does not answer: check the joined and hub credentials rows")
		}
		if conflict != nil && conflict.Status == metav1.ConditionTrue {
			bad++
			d.add(check, StatusWarn, fmt.Sprintf("Conflict=True %s: %s", conflict.Reason, conflict.Message),
				"Make the Service's ports, type and session affinity the same in every exporting cluster (the oldest export wins meanwhile)")
		}
	}
	if bad == 0 {
		d.add("exports", StatusOK, fmt.Sprintf("%d ServiceExport(s), all Ready and without conflict", len(list.Items)), "")
	}
	return nil
}
