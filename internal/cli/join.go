package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
	"github.com/archipelago-mesh/archipelago/internal/hubtoken"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
	"github.com/archipelago-mesh/archipelago/internal/mcs/coredns"
)

// Names of what join writes into a member cluster. The agent reads the
// membership by this name; keep them in step with docs/cli.md.
const (
	// SystemNamespace holds the hub Secret (and the agents, where they run as pods).
	SystemNamespace = "archipelago-system"
	// HubSecretName is the Secret with the member's hub token and the hub's CA.
	HubSecretName = "archipelago-hub"
	// MembershipName is the name of the one ClusterSetMembership of a member.
	MembershipName = "membership"
	// SecretKeyToken and SecretKeyCA are the keys of the hub Secret.
	SecretKeyToken = "token"
	SecretKeyCA    = "ca.crt"

	// AnnotationAwaitingMember marks a MemberCluster whose credentials join
	// printed (--print-only, --kind-config) instead of delivering them. A
	// later join of the same name may then complete it from the member.
	AnnotationAwaitingMember = "archipelago.dev/awaiting-member"
	// AnnotationTokenExpires on the hub Secret says when its token expires.
	AnnotationTokenExpires = "archipelago.dev/token-expires"

	// DefaultTokenTTL is the lifetime of the hub token join issues. The
	// agent renews it before it ends; it is short so that a token copied
	// off a member is worth little, and revocable by deleting its bound
	// credential Secret on the hub.
	DefaultTokenTTL = 24 * time.Hour
	// MaxTokenTTL is the longest lifetime join issues, and the longest the
	// hub lets an agent renew to (config/hub/member-token-policy.yaml).
	MaxTokenTTL = 30 * 24 * time.Hour
)

type joinOptions struct {
	*Options
	name          string
	clusterSet    string
	hubContext    string
	hubServer     string
	podCIDRs      []string
	ipFamily      string
	ipFamilies    []meshv1.IPFamily
	serviceSubnet string
	tokenTTL      time.Duration
	timeout       time.Duration
	printOnly     bool
	kindConfig    bool
	clusterDomain string
}

func newJoinCommand(o *Options) *cobra.Command {
	j := &joinOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "join NAME --clusterset SET --hub-context HUB [--context MEMBER]",
		Short: "Join a member cluster to a ClusterSet: range from the hub, credentials into the member",
		Long: `join makes the cluster of --context (or the current context) a member named
NAME of ClusterSet SET on the hub of --hub-context:

  1. checks that the hub answers, SET exists and NAME is free (nothing is
     written before these checks pass);
  2. creates the MemberCluster NAME on the hub (adopting --pod-cidr if given;
     with --ip-family, blocks of those IP families only) and waits until
     the hub assigns its pod range, hub namespace and ServiceAccount; if
     the hub refuses the range (Conflict, OutsidePool, PoolExhausted,
     NoPoolForFamily) the MemberCluster is deleted again and join fails;
  3. creates a credential Secret hub-credential-* in the member's hub
     namespace and requests a token of that ServiceAccount bound to it
     (TokenRequest, --token-ttl, default 24h; the elected agent renews it);
  4. prepares the member for multi-cluster services: applies the MCS API
     CRDs (ServiceExport, ServiceImport), creates the ClusterProperties
     cluster.clusterset.k8s.io=NAME and clusterset.k8s.io=SET (refused if
     they name another cluster or set), lets CoreDNS read ServiceImports and
     adds clusterset.local to kube-system/coredns's Corefile (then restarts
     CoreDNS; a Corefile it cannot change safely is left alone, and join
     says why);
  5. writes into the member: Namespace archipelago-system, Secret
     archipelago-hub (keys token, ca.crt) and the ClusterSetMembership
     "membership".

The hub URL written into the member comes from the hub context. kind writes
https://127.0.0.1:PORT into kubeconfigs, which other clusters cannot reach:
pass --hub-server with an address the member's nodes can reach (for kind,
the hub's control-plane container, e.g. https://hub-control-plane:6443).

Re-running join for a member that already joined (same NAME, same cluster)
rotates its token: a new credential Secret and token, then the old credential
Secrets are deleted, which revokes the old tokens at once. With --print-only or --kind-config nothing is written
into a member; the MemberCluster is marked awaiting-member, and a later join
of the same NAME with --context completes it.`,
		Example: `  # Join the current cluster as "c1"
  kubectl archipelago join c1 --clusterset demo --hub-context kind-hub \
    --hub-server https://hub-control-plane:6443

  # Join an existing cluster that already uses 10.244.0.0/16 for pods (adopt it)
  kubectl archipelago join c2 --clusterset demo --hub-context kind-hub --context kind-c2 \
    --pod-cidr 10.244.0.0/16

  # Join an IPv6-only cluster to a dual-stack ClusterSet (no IPv4 block for it)
  kubectl archipelago join c5 --clusterset demo --hub-context kind-hub --context kind-c5 --ip-family ipv6

  # Reserve a range for a cluster that does not exist yet, and create it with kind
  kubectl archipelago join c3 --clusterset demo --hub-context kind-hub --kind-config > c3.yaml
  kind create cluster --name c3 --config c3.yaml
  kubectl archipelago join c3 --clusterset demo --hub-context kind-hub --context kind-c3

  # GitOps: print the member-side manifests instead of applying them
  kubectl archipelago join c4 --clusterset demo --hub-context kind-hub --print-only > c4.yaml`,
		Args: exactArgs(1, "exactly one argument, the member's NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			j.name = args[0]
			return j.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&j.clusterSet, "clusterset", "", "ClusterSet on the hub to join (required)")
	f.StringVar(&j.hubContext, "hub-context", "", "Kubeconfig context of the hub cluster (required)")
	f.StringVar(&j.hubServer, "hub-server", "", "Hub API URL as the member's nodes reach it (default: the hub context's server; kind's 127.0.0.1 addresses do not work from other clusters)")
	f.StringSliceVar(&j.podCIDRs, "pod-cidr", nil, "Pod range the cluster already uses, to adopt (at most one per IP family; repeat or comma-separate)")
	f.StringVar(&j.ipFamily, "ip-family", "", "IP families of the member's pods: ipv4, ipv6 or dual; the hub assigns blocks of these only (default: every family the ClusterSet has a pool of)")
	f.StringVar(&j.serviceSubnet, "service-subnet", "", "serviceSubnet written by --kind-config (default: kind's 10.96.0.0/16, or another range outside the ClusterSet's pools)")
	f.DurationVar(&j.tokenTTL, "token-ttl", DefaultTokenTTL, "Lifetime of the member's hub token; the elected agent renews it at 75% of its lifetime")
	f.DurationVar(&j.timeout, "timeout", 2*time.Minute, "How long to wait for the hub to assign the range")
	f.BoolVar(&j.printOnly, "print-only", false, "Print the member-side manifests as YAML instead of applying them")
	f.BoolVar(&j.kindConfig, "kind-config", false, "Print a kind cluster config whose podSubnet is the assigned range (for a cluster that does not exist yet)")
	f.StringVar(&j.clusterDomain, "cluster-domain", "cluster.local", "The member's cluster domain: the CoreDNS kubernetes plugin that serves it also answers clusterset.local")
	return cmd
}

// JoinResult is what join reports with -o json|yaml.
type JoinResult struct {
	Member        string       `json:"member"`
	ClusterSet    string       `json:"clusterSet"`
	PodCIDRs      []string     `json:"podCIDRs"`
	HubNamespace  string       `json:"hubNamespace"`
	HubServer     string       `json:"hubServer"`
	TokenExpires  *metav1.Time `json:"tokenExpires,omitempty"`
	Rejoined      bool         `json:"rejoined"`
	MemberWritten bool         `json:"memberWritten"`
	MemberContext string       `json:"memberContext,omitempty"`
	// DNS says what join did to the member's CoreDNS.
	DNS string `json:"dns,omitempty"`
}

func (j *joinOptions) validate() error {
	if errs := validation.IsDNS1123Label(j.name); len(errs) > 0 {
		return usageError("member name %q is not a DNS label (%s): use lowercase letters, digits and '-'", j.name, strings.Join(errs, "; "))
	}
	if j.clusterSet == "" {
		return usageError("--clusterset is required: the ClusterSet on the hub to join")
	}
	if j.hubContext == "" {
		return usageError("--hub-context is required: the kubeconfig context of the hub cluster")
	}
	if j.printOnly && j.kindConfig {
		return usageError("--print-only and --kind-config both print to stdout: choose one")
	}
	if j.tokenTTL < 10*time.Minute {
		return usageError("--token-ttl %s is too short: the TokenRequest API needs at least 10m", j.tokenTTL)
	}
	if j.tokenTTL > MaxTokenTTL {
		return usageError("--token-ttl %s is too long: at most %s (the hub's policy archipelago-member-token-requests refuses longer renewals; the agent renews the token itself)", j.tokenTTL, MaxTokenTTL)
	}
	if err := j.checkOutput(); err != nil {
		return err
	}
	seen := map[bool]bool{}
	for i, c := range j.podCIDRs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return usageError("--pod-cidr %q is not a CIDR: %v", c, err)
		}
		if p.Masked() != p {
			return usageError("--pod-cidr %q has host bits set: did you mean %s?", c, p.Masked())
		}
		if seen[p.Addr().Is4()] {
			return usageError("--pod-cidr: at most one range per IP family")
		}
		seen[p.Addr().Is4()] = true
		j.podCIDRs[i] = p.String()
	}
	fams, err := parseIPFamily(j.ipFamily)
	if err != nil {
		return err
	}
	j.ipFamilies = fams
	for _, c := range j.podCIDRs {
		if fam := cidrFamily(c); len(fams) > 0 && !slices.Contains(fams, fam) {
			return usageError("--pod-cidr %s is an %s range, but --ip-family %s has no %s: add the family or drop the range", c, fam, j.ipFamily, fam)
		}
	}
	return nil
}

// parseIPFamily turns --ip-family into spec.ipFamilies ("" is none: every
// family of the ClusterSet).
func parseIPFamily(s string) ([]meshv1.IPFamily, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "":
		return nil, nil
	case "ipv4", "4":
		return []meshv1.IPFamily{meshv1.IPv4}, nil
	case "ipv6", "6":
		return []meshv1.IPFamily{meshv1.IPv6}, nil
	case "dual", "dual-stack", "ipv4,ipv6", "ipv6,ipv4":
		return []meshv1.IPFamily{meshv1.IPv4, meshv1.IPv6}, nil
	}
	return nil, usageError("--ip-family %q: use ipv4, ipv6 or dual (or leave it out for every family the ClusterSet has a pool of)", s)
}

// cidrFamily is the IP family of a canonical CIDR.
func cidrFamily(c string) meshv1.IPFamily {
	if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is6() {
		return meshv1.IPv6
	}
	return meshv1.IPv4
}

// poolFamiliesMissing lists the families of fams that none of pools has.
func poolFamiliesMissing(fams []meshv1.IPFamily, pools []string) []string {
	var out []string
	for _, f := range fams {
		if !slices.ContainsFunc(pools, func(p string) bool { return cidrFamily(p) == f }) {
			out = append(out, string(f))
		}
	}
	return out
}

func (j *joinOptions) run(ctx context.Context) (retErr error) {
	if err := j.validate(); err != nil {
		return err
	}
	printing := j.printOnly || j.kindConfig
	hub, err := j.connect(j.hubContext)
	if err != nil {
		return err
	}
	server := j.hubServer
	if server == "" {
		server = hub.Config.Host
	}
	if u, err := url.Parse(server); err != nil || u.Scheme != "https" || u.Host == "" {
		return usageError("hub server %q is not an https:// URL; pass --hub-server https://HOST:PORT", server)
	}
	ca, err := caBundle(hub.Config)
	if err != nil {
		return err
	}
	if len(ca) == 0 {
		return usageError("hub context %q has no certificate authority (certificate-authority or -data): the member's agent could not verify the hub", j.hubContext)
	}
	var member *cluster
	if !printing {
		if member, err = j.connect(""); err != nil {
			return err
		}
	}

	// Preflight: nothing is written until the hub, the ClusterSet, the name
	// and the member all check out.
	pre, err := j.preflight(ctx, hub, member)
	if err != nil {
		return err
	}

	created := false
	if pre.existing == nil {
		mc := &meshv1.MemberCluster{
			ObjectMeta: metav1.ObjectMeta{
				Name:   j.name,
				Labels: map[string]string{meshv1.LabelClusterSet: j.clusterSet},
			},
			Spec: meshv1.MemberClusterSpec{ClusterSet: j.clusterSet, IPFamilies: j.ipFamilies},
		}
		for _, c := range j.podCIDRs {
			mc.Spec.PodCIDRs = append(mc.Spec.PodCIDRs, meshv1.CIDR(c))
		}
		if printing {
			mc.Annotations = map[string]string{AnnotationAwaitingMember: "true"}
		}
		if err := hub.Client.Create(ctx, mc); err != nil {
			if apierrors.IsAlreadyExists(err) {
				return finding("member %q was created on the hub by someone else a moment ago: pick another name", j.name)
			}
			if apierrors.IsInvalid(err) {
				return finding("the hub rejected MemberCluster %q: %v", j.name, err)
			}
			return unreachable(hub, fmt.Errorf("create MemberCluster %s: %w", j.name, err))
		}
		created = true
		defer func() {
			if retErr != nil {
				// Also on Ctrl-C: ctx is done, so roll back with a fresh one.
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
				defer cancel()
				if err := deleteAndWait(rctx, hub.Client, mc); err != nil {
					fmt.Fprintf(j.Streams.ErrOut, "Warning: could not remove MemberCluster %s after the failed join: %v; delete it with 'kubectl --context %s delete membercluster %s'\n", j.name, err, j.hubContext, j.name)
				}
			}
		}()
		// A hub whose MemberCluster CRD predates spec.ipFamilies drops the
		// field: the member would get every family. Refuse (and roll back)
		// rather than join it with ranges it did not ask for.
		if len(j.ipFamilies) > 0 && !slices.Equal(familySetOf(mc.Spec.IPFamilies), familySetOf(j.ipFamilies)) {
			return finding("the hub dropped spec.ipFamilies of MemberCluster %q (its CRD is older than this plugin): apply config/hub's CRDs on the hub, then join again", j.name)
		}
	}

	mc, err := j.waitAssigned(ctx, hub)
	if err != nil {
		return err
	}
	cred, tr, err := j.issueCredential(ctx, hub, mc)
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			// The token never reached anyone: revoke it.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if err := hub.Client.Delete(rctx, cred); err != nil && !apierrors.IsNotFound(err) {
				fmt.Fprintf(j.Streams.ErrOut, "Warning: could not revoke the unused credential Secret %s/%s: %v\n", cred.Namespace, cred.Name, err)
			}
			return
		}
		// Delivered: revoke every older credential of this member.
		if err := j.revokeOtherCredentials(context.WithoutCancel(ctx), hub, mc.Status.Namespace, cred.Name); err != nil {
			fmt.Fprintf(j.Streams.ErrOut, "Warning: the old hub tokens of member %s still work: %v; delete the Secrets %s* in hub namespace %s other than %s\n",
				j.name, err, hubtoken.CredentialPrefix, mc.Status.Namespace, cred.Name)
		}
	}()
	expires := tr.Status.ExpirationTimestamp
	objs := memberObjects(j.name, j.clusterSet, server, tr.Status.Token, ca, expires)

	res := JoinResult{
		Member: j.name, ClusterSet: j.clusterSet, PodCIDRs: mc.Status.PodCIDRs, HubNamespace: mc.Status.Namespace,
		HubServer: server, TokenExpires: &expires, Rejoined: !created,
	}
	switch {
	case j.kindConfig:
		fmt.Fprint(j.Streams.Out, kindConfig(j.name, j.clusterSet, mc.Status.PodCIDRs, j.serviceSubnet, pre.pools))
		fmt.Fprintf(j.Streams.ErrOut, "Member %s holds pod ranges %s in ClusterSet %s.\nCreate the cluster with this config, then run: kubectl archipelago join %s --clusterset %s --hub-context %s --context <new cluster's context>\n",
			j.name, strings.Join(mc.Status.PodCIDRs, ","), j.clusterSet, j.name, j.clusterSet, j.hubContext)
		return nil
	case j.printOnly:
		for _, p := range mcs.ClusterProperties(j.name, j.clusterSet) {
			objs = append(objs, p)
		}
		out, err := manifestsYAML(objs)
		if err != nil {
			return err
		}
		fmt.Fprint(j.Streams.Out, out)
		fmt.Fprintf(j.Streams.ErrOut, "Member %s holds pod ranges %s in ClusterSet %s; apply the manifests above in the member cluster (and the MCS CRDs of config/mcs; for %s names, CoreDNS as docs/services.md says).\n",
			j.name, strings.Join(mc.Status.PodCIDRs, ","), j.clusterSet, coredns.ClusterSetZone)
		return nil
	}

	svc, err := joinServices(ctx, member, j.name, j.clusterSet, j.clusterDomain)
	if err != nil {
		return err
	}
	res.DNS = svc.DNS
	if err := applyMember(ctx, member, objs, created); err != nil {
		return err
	}
	if mc.Annotations[AnnotationAwaitingMember] != "" {
		patch := client.MergeFrom(mc.DeepCopy())
		delete(mc.Annotations, AnnotationAwaitingMember)
		if err := hub.Client.Patch(ctx, mc, patch); err != nil {
			fmt.Fprintf(j.Streams.ErrOut, "Warning: could not clear annotation %s on MemberCluster %s: %v\n", AnnotationAwaitingMember, j.name, err)
		}
	}
	res.MemberWritten = true
	res.MemberContext = member.Context
	if j.Output == "json" || j.Output == "yaml" {
		return printStructured(j.Streams.Out, j.Output, res)
	}
	verb := "joined"
	if res.Rejoined {
		verb = "rejoined (token rotated)"
	}
	fmt.Fprintf(j.Streams.Out, "Member %s %s ClusterSet %s\n  Pod ranges:    %s\n  Hub namespace: %s\n  Hub server:    %s\n  Token expires: %s (run join again to rotate it)\n  Services DNS:  %s\n",
		j.name, verb, j.clusterSet, strings.Join(mc.Status.PodCIDRs, ", "), mc.Status.Namespace, server, expires.UTC().Format(time.RFC3339), res.DNS)
	return nil
}

type preflightResult struct {
	existing *meshv1.MemberCluster
	pools    []string
}

// preflight checks everything join needs before it writes anything.
func (j *joinOptions) preflight(ctx context.Context, hub, member *cluster) (*preflightResult, error) {
	cs := &meshv1.ClusterSet{}
	if err := hub.Client.Get(ctx, types.NamespacedName{Name: j.clusterSet}, cs); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, finding("ClusterSet %q does not exist on the hub (context %q): create it first, or pick one from 'kubectl --context %s get clustersets'",
				j.clusterSet, j.hubContext, j.hubContext)
		}
		return nil, unreachable(hub, fmt.Errorf("get ClusterSet %s: %w", j.clusterSet, err))
	}
	if !cs.DeletionTimestamp.IsZero() {
		return nil, finding("ClusterSet %q is being deleted: join another one", j.clusterSet)
	}
	res := &preflightResult{}
	for _, p := range cs.Spec.PodCIDRPools {
		res.pools = append(res.pools, string(p))
	}
	if missing := poolFamiliesMissing(j.ipFamilies, res.pools); len(missing) > 0 {
		return nil, finding("ClusterSet %q has no %s pool (pools %s), so --ip-family %s cannot be served: add a pool of that family to the set's spec.podCIDRPools, or pick another --ip-family",
			j.clusterSet, strings.Join(missing, " or "), strings.Join(res.pools, ","), j.ipFamily)
	}

	var membership *meshv1.ClusterSetMembership
	if member != nil {
		m := &meshv1.ClusterSetMembership{}
		err := member.Client.Get(ctx, types.NamespacedName{Name: MembershipName}, m)
		switch {
		case err == nil:
			membership = m
			if m.Spec.ClusterName != j.name || m.Spec.ClusterSet != j.clusterSet {
				return nil, finding("this cluster (%s) already joined as %q of ClusterSet %q: run 'kubectl archipelago leave %s --context %s' first",
					member.describe(), m.Spec.ClusterName, m.Spec.ClusterSet, m.Spec.ClusterName, member.Context)
			}
		case apierrors.IsNotFound(err):
		case meta.IsNoMatchError(err):
			return nil, finding("the member cluster (%s) has no ClusterSetMembership CRD: install the archipelago CRDs and agent there first (config/crd)", member.describe())
		default:
			return nil, unreachable(member, fmt.Errorf("get ClusterSetMembership %s: %w", MembershipName, err))
		}
	}

	mc := &meshv1.MemberCluster{}
	err := hub.Client.Get(ctx, types.NamespacedName{Name: j.name}, mc)
	switch {
	case apierrors.IsNotFound(err):
		return res, nil
	case err != nil:
		return nil, unreachable(hub, fmt.Errorf("get MemberCluster %s: %w", j.name, err))
	}
	taken := finding("a member named %q already exists on the hub (ClusterSet %q, pod ranges %s): pick another name, or remove it with 'kubectl archipelago leave %s --hub-context %s'",
		j.name, mc.Spec.ClusterSet, dash(strings.Join(mc.Status.PodCIDRs, ",")), j.name, j.hubContext)
	switch {
	case !mc.DeletionTimestamp.IsZero():
		return nil, finding("member %q is being removed from the hub: wait until 'kubectl --context %s get membercluster %s' finds nothing, then join again", j.name, j.hubContext, j.name)
	case mc.Spec.ClusterSet != j.clusterSet:
		return nil, taken
	case membership != nil:
		// The same member joins again: rotate its token.
	case mc.Annotations[AnnotationAwaitingMember] != "":
		// Reserved by --print-only/--kind-config; this join delivers it.
	default:
		return nil, taken
	}
	if j.ipFamily != "" && !slices.Equal(familySetOf(mc.Spec.IPFamilies), familySetOf(j.ipFamilies)) {
		return nil, finding("member %q already asks for IP families %s (spec.ipFamilies), not %s: run join without --ip-family, or change spec.ipFamilies on the hub (adding a family assigns it; a removed family's range stays)",
			j.name, familiesOrAll(mc.Spec.IPFamilies), familiesOrAll(j.ipFamilies))
	}
	if len(j.podCIDRs) > 0 {
		want := slices.Clone(j.podCIDRs)
		slices.Sort(want)
		have := slices.Clone(mc.Status.PodCIDRs)
		slices.Sort(have)
		if !slices.Equal(want, have) {
			return nil, finding("member %q already holds pod ranges %s; an assigned range never changes: leave and join again to move it", j.name, strings.Join(mc.Status.PodCIDRs, ","))
		}
	}
	res.existing = mc
	return res, nil
}

// refusedReasons are CIDRAllocated reasons that waiting will not fix.
var refusedReasons = []string{meshv1.ReasonConflict, meshv1.ReasonOutsidePool, meshv1.ReasonPoolExhausted, meshv1.ReasonInvalidRequest, meshv1.ReasonNoPoolForFamily}

// familySetOf is fams sorted, IPv4 first.
func familySetOf(fams []meshv1.IPFamily) []meshv1.IPFamily {
	out := slices.Clone(fams)
	slices.Sort(out)
	return slices.Compact(out)
}

// familiesOrAll prints spec.ipFamilies.
func familiesOrAll(fams []meshv1.IPFamily) string {
	if len(fams) == 0 {
		return "(every family of the ClusterSet)"
	}
	s := make([]string, len(fams))
	for i, f := range familySetOf(fams) {
		s[i] = string(f)
	}
	return strings.Join(s, ",")
}

// waitAssigned waits until the hub assigned the member's ranges and made
// its namespace and ServiceAccount, or refused.
func (j *joinOptions) waitAssigned(ctx context.Context, hub *cluster) (*meshv1.MemberCluster, error) {
	var (
		last    *meshv1.MemberCluster
		lastErr error
	)
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, j.timeout, true, func(ctx context.Context) (bool, error) {
		mc := &meshv1.MemberCluster{}
		if err := hub.Client.Get(ctx, types.NamespacedName{Name: j.name}, mc); err != nil {
			if apierrors.IsNotFound(err) {
				return false, finding("MemberCluster %q disappeared from the hub while joining: someone deleted it", j.name)
			}
			lastErr = err
			return false, nil
		}
		last = mc
		if c := meta.FindStatusCondition(mc.Status.Conditions, meshv1.MemberCIDRAllocated); c != nil &&
			c.Status == metav1.ConditionFalse && slices.Contains(refusedReasons, c.Reason) && len(mc.Status.PodCIDRs) == 0 {
			return false, finding("the hub refused a pod range for member %q (%s): %s", j.name, c.Reason, c.Message)
		}
		return len(mc.Status.PodCIDRs) > 0 && mc.Status.Namespace != "" && mc.Status.ServiceAccount != "", nil
	})
	if err == nil {
		return last, nil
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return nil, err
	}
	state := "the hub never answered"
	if last != nil {
		state = "no status yet: is the hub controller running?"
		if c := meta.FindStatusCondition(last.Status.Conditions, meshv1.ConditionReady); c != nil {
			state = fmt.Sprintf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
		}
	} else if lastErr != nil {
		state = lastErr.Error()
	}
	return nil, &exitError{code: ExitError, err: fmt.Errorf("waited %s for the hub to assign member %q its range, namespace and ServiceAccount (%s); check 'kubectl --context %s get membercluster %s -o yaml' and the hub's logs: %w",
		j.timeout, j.name, state, j.hubContext, j.name, err)}
}

// issueCredential creates a new credential generation of the member on the
// hub: a Secret in its hub namespace (no data; it exists to be deleted) and
// a token of the member's ServiceAccount bound to it. The hub's apiserver
// refuses the token as soon as the Secret is gone.
func (j *joinOptions) issueCredential(ctx context.Context, hub *cluster, mc *meshv1.MemberCluster) (*corev1.Secret, *authenticationv1.TokenRequest, error) {
	ns, sa := mc.Status.Namespace, mc.Status.ServiceAccount
	cred := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			// A random name: another member cannot guess it, and a token can
			// only be bound to an object that exists.
			GenerateName: hubtoken.CredentialPrefix, Namespace: ns,
			Labels: map[string]string{hubtoken.LabelCredential: j.name, "app.kubernetes.io/part-of": "archipelago"},
			Annotations: map[string]string{
				"archipelago.dev/purpose": "Tokens of ServiceAccount " + sa + " are bound to this Secret: deleting it revokes them",
			},
		},
		Type: corev1.SecretTypeOpaque,
	}
	if err := hub.Client.Create(ctx, cred); err != nil {
		return nil, nil, unreachable(hub, fmt.Errorf("create credential Secret in hub namespace %s (your hub user needs create on secrets there): %w", ns, err))
	}
	tr, err := hub.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: ptr.To(int64(j.tokenTTL / time.Second)),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Secret", APIVersion: "v1", Name: cred.Name, UID: cred.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_ = hub.Client.Delete(rctx, cred)
		return nil, nil, unreachable(hub, fmt.Errorf("request a token for ServiceAccount %s/%s (your hub user needs create on serviceaccounts/token): %w", ns, sa, err))
	}
	return cred, tr, nil
}

// revokeOtherCredentials deletes the member's credential Secrets on the hub
// except keep, which revokes every token bound to them.
func (j *joinOptions) revokeOtherCredentials(ctx context.Context, hub *cluster, ns, keep string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return revokeCredentials(ctx, hub, ns, keep)
}

// revokeCredentials deletes the credential Secrets (hub-credential-*) in
// the hub namespace ns, all but keep when given.
func revokeCredentials(ctx context.Context, hub *cluster, ns, keep string) error {
	// By name, not label: the namespace is the member's, and a credential
	// made by hand (config/agent/samples) need not carry the label.
	var list corev1.SecretList
	if err := hub.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return fmt.Errorf("list credential Secrets in hub namespace %s: %w", ns, err)
	}
	var errs []error
	for i := range list.Items {
		s := &list.Items[i]
		if s.Name == keep || !strings.HasPrefix(s.Name, hubtoken.CredentialPrefix) {
			continue
		}
		if err := hub.Client.Delete(ctx, s, client.Preconditions{UID: &s.UID}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete credential Secret %s/%s: %w", ns, s.Name, err))
		}
	}
	return errors.Join(errs...)
}

// deleteAndWait deletes obj and waits until the hub's finalizer let it go.
func deleteAndWait(ctx context.Context, c client.Client, obj client.Object) error {
	if err := c.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", obj.GetName(), err)
	}
	key := client.ObjectKeyFromObject(obj)
	fresh := obj.DeepCopyObject().(client.Object)
	return wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		err := c.Get(ctx, key, fresh)
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, nil
	})
}

// memberObjects are what join writes into a member: the namespace, the
// Secret with the hub credentials, and the membership that points at both.
func memberObjects(name, set, server, token string, ca []byte, expires metav1.Time) []client.Object {
	labels := map[string]string{"app.kubernetes.io/part-of": "archipelago"}
	ns := &corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: SystemNamespace, Labels: labels},
	}
	secret := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name: HubSecretName, Namespace: SystemNamespace, Labels: labels,
			Annotations: map[string]string{AnnotationTokenExpires: expires.UTC().Format(time.RFC3339)},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{SecretKeyToken: []byte(token), SecretKeyCA: ca},
	}
	membership := &meshv1.ClusterSetMembership{
		TypeMeta:   metav1.TypeMeta{APIVersion: meshv1.GroupVersion.String(), Kind: "ClusterSetMembership"},
		ObjectMeta: metav1.ObjectMeta{Name: MembershipName, Labels: labels},
		Spec: meshv1.ClusterSetMembershipSpec{
			ClusterName: name,
			ClusterSet:  set,
			Hub: meshv1.HubConnection{
				Server:    server,
				SecretRef: meshv1.SecretReference{Name: HubSecretName, Namespace: SystemNamespace},
			},
		},
	}
	return []client.Object{ns, secret, membership}
}

// manifestsYAML prints objects as one YAML stream, without the empty
// status and creationTimestamp that typed objects carry.
func manifestsYAML(objs []client.Object) (string, error) {
	var buf bytes.Buffer
	for i, o := range objs {
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			return "", fmt.Errorf("convert %s: %w", o.GetName(), err)
		}
		delete(u, "status")
		if md, ok := u["metadata"].(map[string]any); ok {
			delete(md, "creationTimestamp")
		}
		b, err := yaml.Marshal(u)
		if err != nil {
			return "", fmt.Errorf("encode %s: %w", o.GetName(), err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(b)
	}
	return buf.String(), nil
}

// applyMember writes the member-side objects. On a failure it removes what
// this join created there, so a failed join leaves the member as it was
// (the caller removes the MemberCluster when it created it).
func applyMember(ctx context.Context, member *cluster, objs []client.Object, fresh bool) (retErr error) {
	var made []client.Object
	defer func() {
		if retErr == nil || !fresh {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for i := len(made) - 1; i >= 0; i-- {
			if _, isNS := made[i].(*corev1.Namespace); isNS {
				continue // others may use archipelago-system; an empty namespace is harmless
			}
			_ = member.Client.Delete(rctx, made[i])
		}
	}()
	for _, o := range objs {
		existing := o.DeepCopyObject().(client.Object)
		err := member.Client.Get(ctx, client.ObjectKeyFromObject(o), existing)
		switch {
		case apierrors.IsNotFound(err):
			if err := member.Client.Create(ctx, o); err != nil {
				return unreachable(member, fmt.Errorf("create %T %s in the member: %w", o, o.GetName(), err))
			}
			made = append(made, o)
		case err != nil:
			return unreachable(member, fmt.Errorf("get %T %s in the member: %w", o, o.GetName(), err))
		default:
			if _, isNS := o.(*corev1.Namespace); isNS {
				continue
			}
			o.SetResourceVersion(existing.GetResourceVersion())
			if err := member.Client.Update(ctx, o); err != nil {
				return unreachable(member, fmt.Errorf("update %T %s in the member: %w", o, o.GetName(), err))
			}
		}
	}
	return nil
}

// kindConfig is a kind cluster config whose pod subnet is the assigned range.
func kindConfig(name, set string, podCIDRs []string, serviceSubnet string, pools []string) string {
	var v4, v6 string
	for _, c := range podCIDRs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() {
			v4 = c
		} else {
			v6 = c
		}
	}
	svc4 := firstFree([]string{"10.96.0.0/16", "172.30.0.0/16", "192.168.240.0/20"}, pools)
	svc6 := firstFree([]string{"fd00:10:96::/112", "fd00:ac1e::/112"}, pools)
	family, pod, svc := "ipv4", v4, svc4
	switch {
	case v4 != "" && v6 != "":
		family, pod, svc = "dual", v4+","+v6, svc4+","+svc6
	case v4 == "":
		family, pod, svc = "ipv6", v6, svc6
	}
	if serviceSubnet != "" {
		svc = serviceSubnet
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# kind cluster for archipelago member %q of ClusterSet %q.\n", name, set)
	b.WriteString("# podSubnet is the range the hub assigned: keep it, or the member's pods get\n")
	b.WriteString("# addresses the rest of the archipelago does not route to this cluster.\n")
	b.WriteString("# serviceSubnet avoids the ClusterSet's pools: change it if it overlaps another\n")
	b.WriteString("# network your pods must reach (join --service-subnet).\n")
	if overlaps := overlappingPools(svc, pools); len(overlaps) > 0 {
		fmt.Fprintf(&b, "# WARNING: serviceSubnet %s overlaps pool(s) %s of the ClusterSet: pick another one.\n", svc, strings.Join(overlaps, ", "))
	}
	b.WriteString("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n")
	fmt.Fprintf(&b, "name: %s\nnetworking:\n", name)
	if family != "ipv4" {
		fmt.Fprintf(&b, "  ipFamily: %s\n", family)
	}
	fmt.Fprintf(&b, "  podSubnet: %q\n  serviceSubnet: %q\n", pod, svc)
	return b.String()
}

// firstFree returns the first candidate that overlaps no pool (or the first
// candidate when all do; the config then carries a warning).
func firstFree(candidates, pools []string) string {
	for _, c := range candidates {
		if len(overlappingPools(c, pools)) == 0 {
			return c
		}
	}
	return candidates[0]
}

func overlappingPools(subnets string, pools []string) []string {
	var out []string
	for _, s := range strings.Split(subnets, ",") {
		sp, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			continue
		}
		for _, p := range pools {
			pp, err := netip.ParsePrefix(p)
			if err == nil && pp.Overlaps(sp) && !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}
