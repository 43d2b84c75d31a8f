package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

type leaveOptions struct {
	*Options
	name          string
	hubContext    string
	timeout       time.Duration
	clusterDomain string
}

func newLeaveCommand(o *Options) *cobra.Command {
	l := &leaveOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "leave NAME [--hub-context HUB] [--context MEMBER]",
		Short: "Remove a member: its membership and Secret in the member, its MemberCluster on the hub",
		Long: `leave undoes join. With --context it deletes the ClusterSetMembership and the
hub Secret in the member cluster (only if the membership is NAME's), the
ClusterProperties join created, and clusterset.local in CoreDNS (with its
RBAC); the MCS API CRDs stay, with any ServiceExports in them. With
--hub-context it revokes the member's hub tokens (deletes the credential
Secrets they are bound to), deletes the MemberCluster NAME on the hub and
waits until it is gone: the hub first waits for the other members to drop their tunnels to
it, then releases its pod range (into the ClusterSet's quarantine).

Either side works alone, for a member cluster that no longer exists or a hub
that is gone; give both to leave cleanly.`,
		Example: `  # Leave cleanly, from both sides
  kubectl archipelago leave c1 --hub-context kind-hub --context kind-c1

  # The member cluster was deleted: release its range on the hub
  kubectl archipelago leave c1 --hub-context kind-hub

  # The hub is gone: clean up the member
  kubectl archipelago leave c1 --context kind-c1`,
		Args: exactArgs(1, "exactly one argument, the member's NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			l.name = args[0]
			return l.run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&l.hubContext, "hub-context", "", "Kubeconfig context of the hub (delete the MemberCluster there)")
	cmd.Flags().DurationVar(&l.timeout, "timeout", 3*time.Minute, "How long to wait for the hub to remove the MemberCluster")
	cmd.Flags().StringVar(&l.clusterDomain, "cluster-domain", "cluster.local", "The member's cluster domain, as given to join")
	return cmd
}

func (l *leaveOptions) run(ctx context.Context) error {
	memberCtx := l.memberContext()
	if l.hubContext == "" && memberCtx == "" {
		return usageError("leave needs --hub-context (the hub side), --context (the member side), or both")
	}
	if memberCtx != "" {
		if err := l.leaveMember(ctx); err != nil {
			return err
		}
	}
	if l.hubContext == "" {
		fmt.Fprintf(l.Streams.Out, "The hub still holds MemberCluster %s and its pod range: run 'kubectl archipelago leave %s --hub-context HUB' to release it\n", l.name, l.name)
		return nil
	}
	return l.leaveHub(ctx)
}

func (l *leaveOptions) leaveMember(ctx context.Context) error {
	member, err := l.connect("")
	if err != nil {
		return err
	}
	m := &meshv1.ClusterSetMembership{}
	err = member.Client.Get(ctx, types.NamespacedName{Name: MembershipName}, m)
	switch {
	case apierrors.IsNotFound(err) || meta.IsNoMatchError(err):
		fmt.Fprintf(l.Streams.Out, "No ClusterSetMembership in %s: nothing to remove there\n", member.describe())
		return nil
	case err != nil:
		return unreachable(member, fmt.Errorf("get ClusterSetMembership %s: %w", MembershipName, err))
	case m.Spec.ClusterName != l.name:
		return finding("%s is member %q, not %q: check --context", member.describe(), m.Spec.ClusterName, l.name)
	}
	ref := m.Spec.Hub.SecretRef
	if ref.Name == "" {
		ref = meshv1.SecretReference{Name: HubSecretName, Namespace: SystemNamespace}
	}
	// The membership goes first: the agent stops using the hub before its
	// credentials disappear under it.
	if err := member.Client.Delete(ctx, m); err != nil && !apierrors.IsNotFound(err) {
		return unreachable(member, fmt.Errorf("delete ClusterSetMembership %s: %w", MembershipName, err))
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: ref.Name, Namespace: ref.Namespace}}
	if err := member.Client.Delete(ctx, secret); err != nil && !apierrors.IsNotFound(err) {
		return unreachable(member, fmt.Errorf("delete Secret %s/%s: %w", ref.Namespace, ref.Name, err))
	}
	fmt.Fprintf(l.Streams.Out, "Deleted ClusterSetMembership %s and Secret %s/%s in %s\n", MembershipName, ref.Namespace, ref.Name, member.describe())
	svc, err := leaveServices(ctx, member, l.clusterDomain)
	if err != nil {
		return err
	}
	fmt.Fprintf(l.Streams.Out, "Removed the ClusterProperties; %s\n", svc.DNS)
	return nil
}

func (l *leaveOptions) leaveHub(ctx context.Context) error {
	hub, err := l.connect(l.hubContext)
	if err != nil {
		return err
	}
	mc := &meshv1.MemberCluster{}
	if err := hub.Client.Get(ctx, types.NamespacedName{Name: l.name}, mc); err != nil {
		if apierrors.IsNotFound(err) {
			fmt.Fprintf(l.Streams.Out, "No MemberCluster %s on the hub: nothing to remove there\n", l.name)
			return nil
		}
		return unreachable(hub, fmt.Errorf("get MemberCluster %s: %w", l.name, err))
	}
	wctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	// Revoke the member's tokens first: the hub keeps its namespace while it
	// waits for the peers to drop their tunnels, and a leaving member must
	// not write there any more.
	if ns := mc.Status.Namespace; ns != "" {
		if err := revokeCredentials(wctx, hub, ns, ""); err != nil {
			return unreachable(hub, fmt.Errorf("revoke the hub tokens of member %s: %w", l.name, err))
		}
	}
	if err := deleteAndWait(wctx, hub.Client, mc); err != nil {
		return &exitError{code: ExitError, err: fmt.Errorf("MemberCluster %s is still on the hub after %s (finalizer %s: the hub waits for peers to drop their tunnels to it); check 'kubectl --context %s get membercluster %s -o yaml' and the hub's logs: %w",
			l.name, l.timeout, meshv1.Finalizer, l.hubContext, l.name, err)}
	}
	fmt.Fprintf(l.Streams.Out, "Deleted MemberCluster %s on the hub; pod ranges %s released\n", l.name, dash(strings.Join(mc.Status.PodCIDRs, ",")))
	return nil
}
