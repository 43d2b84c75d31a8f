package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	mcscrd "sigs.k8s.io/mcs-api/config/crd"
	"sigs.k8s.io/yaml"

	aboutv1beta1 "github.com/archipelago-mesh/archipelago/api/about/v1beta1"
	"github.com/archipelago-mesh/archipelago/internal/mcs"
	"github.com/archipelago-mesh/archipelago/internal/mcs/coredns"
)

// Where join changes a member's cluster DNS (kubeadm's and kind's names).
const (
	CoreDNSNamespace = "kube-system"
	CoreDNSName      = "coredns"
	// corefileKey is the ConfigMap key kubeadm writes the Corefile under.
	corefileKey = "Corefile"
	// fieldOwner names join's server-side applies.
	fieldOwner = "kubectl-archipelago"
	// annotationRestartedAt restarts CoreDNS's pods after a Corefile change,
	// as 'kubectl rollout restart' does.
	annotationRestartedAt = "kubectl.kubernetes.io/restartedAt"
)

// servicesReport is what join and leave did for multi-cluster services.
type servicesReport struct {
	DNS string `json:"dns"`
}

// joinServices prepares the member for multi-cluster services: the MCS
// CRDs, its ClusterProperties (refused when they name another cluster or
// set), and CoreDNS answering clusterset.local. It runs before the
// membership is written; on failure it removes the ClusterProperties it
// created. A cluster without kubeadm's CoreDNS, or whose Corefile cannot be
// changed safely, still joins: the report says what to do.
func joinServices(ctx context.Context, member *cluster, name, set, clusterDomain string) (rep servicesReport, retErr error) {
	if err := applyMCSCRDs(ctx, member); err != nil {
		return rep, err
	}
	var made []client.Object
	defer func() {
		if retErr == nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, o := range made {
			_ = member.Client.Delete(rctx, o)
		}
	}()
	for _, p := range mcs.ClusterProperties(name, set) {
		cur := &aboutv1beta1.ClusterProperty{}
		err := member.Client.Get(ctx, types.NamespacedName{Name: p.Name}, cur)
		switch {
		case apierrors.IsNotFound(err):
			if err := member.Client.Create(ctx, p); err != nil {
				return rep, unreachable(member, fmt.Errorf("create ClusterProperty %s: %w", p.Name, err))
			}
			made = append(made, p)
		case meta.IsNoMatchError(err):
			return rep, finding("the member cluster (%s) has no ClusterProperty CRD (about.k8s.io): install the archipelago CRDs there first (config/crd)", member.describe())
		case err != nil:
			return rep, unreachable(member, fmt.Errorf("get ClusterProperty %s: %w", p.Name, err))
		case cur.Spec.Value != p.Spec.Value:
			return rep, finding("ClusterProperty %s of %s is %q, not %q: the cluster is known by another name in a ClusterSet; delete the property if that is stale ('kubectl delete clusterproperty %s'), or join under that name",
				p.Name, member.describe(), cur.Spec.Value, p.Spec.Value, p.Name)
		}
	}
	role, binding := coredns.RBAC(CoreDNSNamespace, CoreDNSName)
	for _, o := range []client.Object{role, binding} {
		if err := apply(ctx, member, o); err != nil {
			return rep, err
		}
	}
	rep.DNS, retErr = editCorefile(ctx, member, clusterDomain, true)
	return rep, retErr
}

// leaveServices undoes joinServices, except the CRDs (ServiceExports of
// the cluster's users live in them): the ClusterProperties archipelago
// made, CoreDNS's clusterset.local and its RBAC.
func leaveServices(ctx context.Context, member *cluster, clusterDomain string) (servicesReport, error) {
	var rep servicesReport
	var errs []error
	for _, p := range mcs.ClusterProperties("", "") {
		cur := &aboutv1beta1.ClusterProperty{}
		err := member.Client.Get(ctx, types.NamespacedName{Name: p.Name}, cur)
		switch {
		case apierrors.IsNotFound(err) || meta.IsNoMatchError(err):
			continue
		case err != nil:
			errs = append(errs, unreachable(member, fmt.Errorf("get ClusterProperty %s: %w", p.Name, err)))
			continue
		}
		if cur.Labels[mcs.LabelManagedBy] != mcs.ManagedByValue {
			continue // someone else's
		}
		if err := member.Client.Delete(ctx, cur); client.IgnoreNotFound(err) != nil {
			errs = append(errs, unreachable(member, fmt.Errorf("delete ClusterProperty %s: %w", p.Name, err)))
		}
	}
	dns, err := editCorefile(ctx, member, clusterDomain, false)
	rep.DNS = dns
	if err != nil {
		errs = append(errs, err)
	}
	role, binding := coredns.RBAC(CoreDNSNamespace, CoreDNSName)
	for _, o := range []client.Object{binding, role} {
		if err := member.Client.Delete(ctx, o); client.IgnoreNotFound(err) != nil {
			errs = append(errs, unreachable(member, fmt.Errorf("delete %T %s: %w", o, o.GetName(), err)))
		}
	}
	return rep, errors.Join(errs...)
}

// editCorefile enables (or disables) clusterset.local in the member's
// CoreDNS and restarts CoreDNS when the Corefile changed. It says what it
// did; only API errors fail it.
func editCorefile(ctx context.Context, member *cluster, clusterDomain string, enable bool) (string, error) {
	cm := &corev1.ConfigMap{}
	err := member.Client.Get(ctx, types.NamespacedName{Namespace: CoreDNSNamespace, Name: CoreDNSName}, cm)
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Sprintf("no ConfigMap %s/%s: configure the cluster's DNS to answer %s from ServiceImports (docs/services.md)", CoreDNSNamespace, CoreDNSName, coredns.ClusterSetZone), nil
	case err != nil:
		return "", unreachable(member, fmt.Errorf("get ConfigMap %s/%s: %w", CoreDNSNamespace, CoreDNSName, err))
	}
	edit, verb := coredns.Enable, "enabled"
	if !enable {
		edit, verb = coredns.Disable, "disabled"
	}
	out, changed, err := edit(cm.Data[corefileKey], clusterDomain)
	if err != nil {
		return fmt.Sprintf("CoreDNS left as it is: %v (docs/services.md says how to answer %s)", err, coredns.ClusterSetZone), nil
	}
	if !changed {
		return fmt.Sprintf("CoreDNS %s/%s: %s %s already", CoreDNSNamespace, CoreDNSName, coredns.ClusterSetZone, verb), nil
	}
	patch := client.MergeFrom(cm.DeepCopy())
	cm.Data[corefileKey] = out
	if err := member.Client.Patch(ctx, cm, patch); err != nil {
		return "", unreachable(member, fmt.Errorf("update ConfigMap %s/%s: %w", CoreDNSNamespace, CoreDNSName, err))
	}
	msg := fmt.Sprintf("CoreDNS %s/%s: %s %s", CoreDNSNamespace, CoreDNSName, coredns.ClusterSetZone, verb)
	// CoreDNS's reload plugin would notice the change once the kubelet
	// updated the mounted file (a minute or more); a rolling restart makes
	// it take effect now, without a gap while two replicas run.
	d := &appsv1.Deployment{}
	switch err := member.Client.Get(ctx, types.NamespacedName{Namespace: CoreDNSNamespace, Name: CoreDNSName}, d); {
	case apierrors.IsNotFound(err):
		return msg + " (no Deployment to restart; CoreDNS reloads the Corefile itself if it runs the reload plugin)", nil
	case err != nil:
		return "", unreachable(member, fmt.Errorf("get Deployment %s/%s: %w", CoreDNSNamespace, CoreDNSName, err))
	}
	dpatch := client.MergeFrom(d.DeepCopy())
	if d.Spec.Template.Annotations == nil {
		d.Spec.Template.Annotations = map[string]string{}
	}
	d.Spec.Template.Annotations[annotationRestartedAt] = time.Now().UTC().Format(time.RFC3339)
	if err := member.Client.Patch(ctx, d, dpatch); err != nil {
		return "", unreachable(member, fmt.Errorf("restart Deployment %s/%s: %w", CoreDNSNamespace, CoreDNSName, err))
	}
	return msg + ", restarted", nil
}

// applyMCSCRDs installs (or updates) the MCS API CRDs of the mcs-api
// module the project builds with, and waits until they are served.
func applyMCSCRDs(ctx context.Context, member *cluster) error {
	var names []string
	for _, raw := range [][]byte{mcscrd.ServiceExportCRD, mcscrd.ServiceImportCRD} {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(raw, &u.Object); err != nil {
			return fmt.Errorf("decode the MCS API CRDs: %w", err)
		}
		if err := apply(ctx, member, u); err != nil {
			return err
		}
		names = append(names, u.GetName())
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := wait.PollUntilContextCancel(wctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		for _, n := range names {
			crd := &unstructured.Unstructured{}
			crd.SetAPIVersion("apiextensions.k8s.io/v1")
			crd.SetKind("CustomResourceDefinition")
			if err := member.Client.Get(ctx, types.NamespacedName{Name: n}, crd); err != nil {
				return false, nil
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			established := false
			for _, c := range conds {
				if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
					established = true
				}
			}
			if !established {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return unreachable(member, fmt.Errorf("the MCS API CRDs %v were not established within 30s: %w", names, err))
	}
	return nil
}

// apply writes o with server-side apply as join's field owner.
func apply(ctx context.Context, member *cluster, o client.Object) error {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		var err error
		if u, err = toUnstructured(o); err != nil {
			return err
		}
	}
	u.SetManagedFields(nil)
	u.SetResourceVersion("")
	if err := member.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(fieldOwner), client.ForceOwnership); err != nil {
		return unreachable(member, fmt.Errorf("apply %s %s in the member: %w", u.GetKind(), u.GetName(), err))
	}
	return nil
}

func toUnstructured(o client.Object) (*unstructured.Unstructured, error) {
	raw, err := yaml.Marshal(o)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(raw, &u.Object); err != nil {
		return nil, err
	}
	delete(u.Object, "status")
	if md, ok := u.Object["metadata"].(map[string]any); ok {
		delete(md, "creationTimestamp")
	}
	return u, nil
}
