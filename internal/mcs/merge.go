package mcs

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// DefaultEndpointGrace is how long a member's endpoints stay imported after
// its last heartbeat: three missed gateway heartbeats (30 s each).
const DefaultEndpointGrace = 90 * time.Second

// Key names one multi-cluster service.
type Key struct{ Namespace, Name string }

func (k Key) String() string { return k.Namespace + "/" + k.Name }

// Member is what the merge needs to know of one member of the ClusterSet.
type Member struct {
	// Name is the member's cluster name.
	Name string
	// LastSeen is the member's latest heartbeat (its gateways' lastSeen).
	// Zero means never seen: its endpoints are not imported.
	LastSeen time.Time
	// PodCIDRs are the member's ranges as the hub assigned them. Only
	// endpoints inside them are imported: they are the only addresses of
	// that member the archipelago routes, and a member must not point other
	// clusters' traffic at addresses that are not its own.
	PodCIDRs []netip.Prefix
}

// Options tune Merge.
type Options struct {
	// Now is the time liveness is judged at.
	Now time.Time
	// EndpointGrace is how long after its last heartbeat a member's
	// endpoints stay imported (DefaultEndpointGrace when zero).
	EndpointGrace time.Duration
	// LocalCluster is the member that runs the merge: its own endpoints are
	// never withdrawn for staleness (it is alive by definition).
	LocalCluster string
}

// Conflict is one property on which the exports of a service disagree.
type Conflict struct {
	// Reason is the MCS API's reason (PortConflict, TypeConflict, ...).
	Reason mcsv1beta1.ServiceExportConditionReason
	// Message says what differs, where, and which export won.
	Message string
}

// ClusterImport is one exporter's part of an import.
type ClusterImport struct {
	Cluster                 string
	ExportCreationTimestamp time.Time
	// Withdrawn is true when the member's heartbeat is older than the grace:
	// it still exports, but none of its endpoints are imported.
	Withdrawn bool
	// EndpointGroups are the endpoints to import from this cluster: only
	// families the import has, only addresses inside the member's ranges,
	// and only the ports this cluster serves as the import defines them.
	EndpointGroups []meshv1.ExportedEndpointGroup
	// Rejected counts endpoints dropped for lying outside the member's ranges.
	Rejected int
}

// Import is the merged view of one service across its exporters.
type Import struct {
	Key
	Type                  meshv1.ExportedServiceType
	Ports                 []meshv1.ExportedServicePort
	SessionAffinity       string
	SessionAffinityConfig *meshv1.SessionAffinityConfig
	IPFamilies            []string
	InternalTrafficPolicy *string
	TrafficDistribution   *string
	Labels                map[string]string
	Annotations           map[string]string
	// Clusters are the exporters, sorted by name.
	Clusters []ClusterImport
	// Conflicts hold every property the exporters disagree on, in a fixed
	// order; every export of the service carries all of them.
	Conflicts []Conflict
}

// ConflictReason is the Conflict condition's reason for exports of im: the
// reasons joined with commas (as the MCS API allows), or NoConflicts.
func (im *Import) ConflictReason() string {
	if len(im.Conflicts) == 0 {
		return string(mcsv1beta1.ServiceExportReasonNoConflicts)
	}
	r := make([]string, len(im.Conflicts))
	for i, c := range im.Conflicts {
		r[i] = string(c.Reason)
	}
	return strings.Join(r, ",")
}

// ConflictMessage is the Conflict condition's message for exports of im.
func (im *Import) ConflictMessage() string {
	if len(im.Conflicts) == 0 {
		return "the exports of every cluster agree"
	}
	m := make([]string, len(im.Conflicts))
	for i, c := range im.Conflicts {
		m[i] = c.Message
	}
	return strings.Join(m, "; ")
}

// Result is the merge of every export of a ClusterSet.
type Result struct {
	Imports map[Key]*Import
	// RecheckAt is the earliest time at which a member's endpoints will be
	// withdrawn if no heartbeat arrives (zero if none will): merge again then.
	RecheckAt time.Time
}

// Merge merges exports (every member's, in any order) into one import per
// namespace/name. Exports of members not in members (departed) are ignored.
// Conflicts are resolved in favour of the oldest export (ties: the lower
// cluster name).
func Merge(exports []meshv1.ExportedServiceSpec, members []Member, opts Options) Result {
	if opts.EndpointGrace <= 0 {
		opts.EndpointGrace = DefaultEndpointGrace
	}
	byName := make(map[string]Member, len(members))
	for _, m := range members {
		byName[m.Name] = m
	}
	groups := map[Key][]*meshv1.ExportedServiceSpec{}
	for i := range exports {
		e := &exports[i]
		if _, ok := byName[e.Cluster]; !ok {
			continue
		}
		k := Key{e.Namespace, e.Name}
		groups[k] = append(groups[k], e)
	}
	res := Result{Imports: make(map[Key]*Import, len(groups))}
	for k, es := range groups {
		slices.SortFunc(es, precedence)
		// One export per cluster: a duplicate (which the hub's naming makes
		// impossible) keeps the oldest.
		es = slices.CompactFunc(es, func(a, b *meshv1.ExportedServiceSpec) bool { return a.Cluster == b.Cluster })
		im, recheck := mergeOne(k, es, byName, opts)
		res.Imports[k] = im
		if !recheck.IsZero() && (res.RecheckAt.IsZero() || recheck.Before(res.RecheckAt)) {
			res.RecheckAt = recheck
		}
	}
	return res
}

// precedence orders exports oldest first, then by cluster name.
func precedence(a, b *meshv1.ExportedServiceSpec) int {
	if c := a.ExportCreationTimestamp.Time.Compare(b.ExportCreationTimestamp.Time); c != 0 {
		return c
	}
	return cmp.Compare(a.Cluster, b.Cluster)
}

func mergeOne(k Key, es []*meshv1.ExportedServiceSpec, members map[string]Member, opts Options) (*Import, time.Time) {
	win := es[0]
	im := &Import{
		Key:                   k,
		Type:                  win.Type,
		SessionAffinity:       affinity(win),
		SessionAffinityConfig: win.SessionAffinityConfig.DeepCopy(),
		IPFamilies:            slices.Clone(win.IPFamilies),
		InternalTrafficPolicy: clonePtr(win.InternalTrafficPolicy),
		TrafficDistribution:   clonePtr(win.TrafficDistribution),
	}
	var c conflicts
	for _, e := range es[1:] {
		if e.Type != win.Type {
			c.add(mcsv1beta1.ServiceExportReasonTypeConflict, "type: %s in %s (oldest export), %s in %s", win.Type, win.Cluster, e.Type, e.Cluster)
		}
		if affinity(e) != im.SessionAffinity {
			c.add(mcsv1beta1.ServiceExportReasonSessionAffinityConflict, "sessionAffinity: %s in %s (oldest export), %s in %s", im.SessionAffinity, win.Cluster, affinity(e), e.Cluster)
		} else if affinityTimeout(e) != affinityTimeout(win) {
			c.add(mcsv1beta1.ServiceExportReasonSessionAffinityConfigConflict, "sessionAffinityConfig: timeout %s in %s (oldest export), %s in %s", affinityTimeout(win), win.Cluster, affinityTimeout(e), e.Cluster)
		}
		if !slices.Equal(e.IPFamilies, win.IPFamilies) {
			c.add(mcsv1beta1.ServiceExportReasonIPFamilyConflict, "ipFamilies: %v in %s (oldest export), %v in %s", win.IPFamilies, win.Cluster, e.IPFamilies, e.Cluster)
		}
		if itp(e) != itp(win) {
			c.add(mcsv1beta1.ServiceExportReasonInternalTrafficPolicyConflict, "internalTrafficPolicy: %s in %s (oldest export), %s in %s", itp(win), win.Cluster, itp(e), e.Cluster)
		}
		if deref(e.TrafficDistribution) != deref(win.TrafficDistribution) {
			c.add(mcsv1beta1.ServiceExportReasonTrafficDistributionConflict, "trafficDistribution: %q in %s (oldest export), %q in %s", deref(win.TrafficDistribution), win.Cluster, deref(e.TrafficDistribution), e.Cluster)
		}
	}
	im.Labels = mergeMap(es, func(e *meshv1.ExportedServiceSpec) map[string]string { return e.ExportedLabels }, &c, mcsv1beta1.ServiceExportReasonLabelsConflict, "exportedLabels")
	im.Annotations = mergeMap(es, func(e *meshv1.ExportedServiceSpec) map[string]string { return e.ExportedAnnotations }, &c, mcsv1beta1.ServiceExportReasonAnnotationsConflict, "exportedAnnotations")
	served := mergePorts(im, es, &c)
	im.Conflicts = c.list()

	var recheck time.Time
	for _, e := range es {
		m := members[e.Cluster]
		ci := ClusterImport{Cluster: e.Cluster, ExportCreationTimestamp: e.ExportCreationTimestamp.Time}
		if e.Cluster != opts.LocalCluster {
			deadline := m.LastSeen.Add(opts.EndpointGrace)
			if m.LastSeen.IsZero() || !opts.Now.Before(deadline) {
				ci.Withdrawn = true
			} else if recheck.IsZero() || deadline.Before(recheck) {
				recheck = deadline
			}
		}
		if !ci.Withdrawn {
			ci.EndpointGroups, ci.Rejected = endpointsToImport(e, im.IPFamilies, served[e.Cluster], m.PodCIDRs)
		}
		im.Clusters = append(im.Clusters, ci)
	}
	slices.SortFunc(im.Clusters, func(a, b ClusterImport) int { return cmp.Compare(a.Cluster, b.Cluster) })
	return im, recheck
}

// mergePorts sets im.Ports to the union of the exports' ports, oldest export
// first, and returns for each cluster the port names it serves: a port is
// served by a cluster whose export has it with the same name, protocol and
// number as the import, so traffic to a port goes only to clusters that
// expose exactly that port.
//
// Ports merge by name first (one name, one definition: the oldest's), then
// by protocol and number (one port, one name). A Service with several ports
// must name every one, so an unnamed port cannot join others.
func mergePorts(im *Import, es []*meshv1.ExportedServiceSpec, c *conflicts) map[string]map[string]bool {
	served := make(map[string]map[string]bool, len(es))
	owner := map[string]string{} // port name -> cluster that defined it
	for _, e := range es {
		served[e.Cluster] = map[string]bool{}
		for _, p := range e.Ports {
			i := slices.IndexFunc(im.Ports, func(q meshv1.ExportedServicePort) bool { return q.Name == p.Name })
			if i >= 0 {
				q := im.Ports[i]
				if q.Protocol != p.Protocol || q.Port != p.Port {
					c.add(mcsv1beta1.ServiceExportReasonPortConflict, "port %s: %s/%d in %s (oldest export), %s/%d in %s", portName(p.Name), q.Protocol, q.Port, owner[p.Name], p.Protocol, p.Port, e.Cluster)
					continue
				}
				if deref(q.AppProtocol) != deref(p.AppProtocol) {
					c.add(mcsv1beta1.ServiceExportReasonPortConflict, "port %s: appProtocol %q in %s (oldest export), %q in %s", portName(p.Name), deref(q.AppProtocol), owner[p.Name], deref(p.AppProtocol), e.Cluster)
				}
				served[e.Cluster][p.Name] = true
				continue
			}
			if j := slices.IndexFunc(im.Ports, func(q meshv1.ExportedServicePort) bool { return q.Protocol == p.Protocol && q.Port == p.Port }); j >= 0 {
				q := im.Ports[j]
				c.add(mcsv1beta1.ServiceExportReasonPortConflict, "port %s/%d: named %s in %s (oldest export), %s in %s", p.Protocol, p.Port, portName(q.Name), owner[q.Name], portName(p.Name), e.Cluster)
				continue
			}
			if len(im.Ports) > 0 && (p.Name == "" || slices.ContainsFunc(im.Ports, func(q meshv1.ExportedServicePort) bool { return q.Name == "" })) {
				c.add(mcsv1beta1.ServiceExportReasonPortConflict, "port %s/%d of %s: a service with several ports must name each, and the union would hold an unnamed one", p.Protocol, p.Port, e.Cluster)
				continue
			}
			q := p
			q.AppProtocol = clonePtr(p.AppProtocol)
			im.Ports = append(im.Ports, q)
			owner[p.Name] = e.Cluster
			served[e.Cluster][p.Name] = true
		}
	}
	// The MCS API calls ports that are not identical in every export a
	// conflict, even when the union serves them all.
	for _, e := range es {
		if len(served[e.Cluster]) != len(im.Ports) {
			c.add(mcsv1beta1.ServiceExportReasonPortConflict, "ports: the import has the union %s; %s exposes %s", portList(im.Ports), e.Cluster, portList(e.Ports))
		}
	}
	return served
}

func portList(ps []meshv1.ExportedServicePort) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprintf("%s:%s/%d", portName(p.Name), p.Protocol, p.Port)
	}
	return "[" + strings.Join(s, " ") + "]"
}

func portName(n string) string {
	if n == "" {
		return "(unnamed)"
	}
	return n
}

// endpointsToImport filters one export's endpoint groups to what the import
// may carry.
func endpointsToImport(e *meshv1.ExportedServiceSpec, families []string, served map[string]bool, ranges []netip.Prefix) ([]meshv1.ExportedEndpointGroup, int) {
	var out []meshv1.ExportedEndpointGroup
	rejected := 0
	for _, g := range e.EndpointGroups {
		if !slices.Contains(families, g.AddressType) {
			continue
		}
		ng := meshv1.ExportedEndpointGroup{AddressType: g.AddressType}
		for _, p := range g.Ports {
			if served[p.Name] {
				ng.Ports = append(ng.Ports, p)
			}
		}
		for _, ep := range g.Endpoints {
			a, err := netip.ParseAddr(ep.Address)
			if err != nil || !slices.ContainsFunc(ranges, func(r netip.Prefix) bool { return r.Contains(a.Unmap()) }) {
				rejected++
				continue
			}
			ng.Endpoints = append(ng.Endpoints, ep)
		}
		if len(ng.Endpoints) == 0 {
			continue
		}
		slices.SortFunc(ng.Ports, func(a, b meshv1.ExportedEndpointPort) int { return cmp.Compare(a.Name, b.Name) })
		slices.SortFunc(ng.Endpoints, func(a, b meshv1.ExportedEndpoint) int { return cmp.Compare(a.Address, b.Address) })
		out = append(out, ng)
	}
	slices.SortFunc(out, func(a, b meshv1.ExportedEndpointGroup) int {
		if c := cmp.Compare(a.AddressType, b.AddressType); c != 0 {
			return c
		}
		return cmp.Compare(portsKey(a.Ports), portsKey(b.Ports))
	})
	return out, rejected
}

func portsKey(ps []meshv1.ExportedEndpointPort) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "%s/%s/%d,", p.Name, p.Protocol, p.Port)
	}
	return b.String()
}

// mergeMap is the union of the exports' maps; a key with different values
// takes the oldest export's value and is a conflict.
func mergeMap(es []*meshv1.ExportedServiceSpec, get func(*meshv1.ExportedServiceSpec) map[string]string, c *conflicts, reason mcsv1beta1.ServiceExportConditionReason, field string) map[string]string {
	var out map[string]string
	from := map[string]string{}
	for _, e := range es {
		for _, k := range slices.Sorted(maps.Keys(get(e))) {
			v := get(e)[k]
			if old, ok := out[k]; ok {
				if old != v {
					c.add(reason, "%s[%s]: %q in %s (oldest export), %q in %s", field, k, old, from[k], v, e.Cluster)
				}
				continue
			}
			if out == nil {
				out = map[string]string{}
			}
			out[k], from[k] = v, e.Cluster
		}
	}
	return out
}

func affinity(e *meshv1.ExportedServiceSpec) string {
	if e.SessionAffinity == "" {
		return "None"
	}
	return e.SessionAffinity
}

func affinityTimeout(e *meshv1.ExportedServiceSpec) string {
	if e.SessionAffinityConfig == nil || e.SessionAffinityConfig.ClientIP == nil || e.SessionAffinityConfig.ClientIP.TimeoutSeconds == nil {
		return "default"
	}
	return fmt.Sprintf("%ds", *e.SessionAffinityConfig.ClientIP.TimeoutSeconds)
}

func itp(e *meshv1.ExportedServiceSpec) string {
	if e.InternalTrafficPolicy == nil {
		return "Cluster"
	}
	return *e.InternalTrafficPolicy
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// conflicts collects conflicts: one message per reason (the first found, in
// precedence order), reasons in the MCS API's order.
type conflicts struct {
	byReason map[mcsv1beta1.ServiceExportConditionReason][]string
}

func (c *conflicts) add(r mcsv1beta1.ServiceExportConditionReason, format string, args ...any) {
	if c.byReason == nil {
		c.byReason = map[mcsv1beta1.ServiceExportConditionReason][]string{}
	}
	msg := fmt.Sprintf(format, args...)
	if !slices.Contains(c.byReason[r], msg) {
		c.byReason[r] = append(c.byReason[r], msg)
	}
}

var reasonOrder = []mcsv1beta1.ServiceExportConditionReason{
	mcsv1beta1.ServiceExportReasonPortConflict,
	mcsv1beta1.ServiceExportReasonTypeConflict,
	mcsv1beta1.ServiceExportReasonSessionAffinityConflict,
	mcsv1beta1.ServiceExportReasonSessionAffinityConfigConflict,
	mcsv1beta1.ServiceExportReasonIPFamilyConflict,
	mcsv1beta1.ServiceExportReasonInternalTrafficPolicyConflict,
	mcsv1beta1.ServiceExportReasonTrafficDistributionConflict,
	mcsv1beta1.ServiceExportReasonLabelsConflict,
	mcsv1beta1.ServiceExportReasonAnnotationsConflict,
}

func (c *conflicts) list() []Conflict {
	var out []Conflict
	for _, r := range reasonOrder {
		if msgs := c.byReason[r]; len(msgs) > 0 {
			out = append(out, Conflict{Reason: r, Message: strings.Join(msgs, "; ")})
		}
	}
	return out
}
