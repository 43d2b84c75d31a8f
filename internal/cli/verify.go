package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/internal/cli/probe"
)

const (
	// ProbeImage is the default image of verify's probe pods.
	ProbeImage = "archipelago/probe:dev"
	// labelVerifyRun ties the probe pods of one verify run together, so
	// cleanup removes exactly them.
	labelVerifyRun = "archipelago.dev/verify-run"
	probeContainer = "probe"
	// DefaultVerifyNamespace holds the probe pods unless -n says otherwise.
	DefaultVerifyNamespace = "archipelago-verify"
)

type verifyOptions struct {
	*Options
	contexts   []string
	image      string
	pullPolicy string
	namespace  string
	timeout    time.Duration
	perNode    bool
	port       int
}

func newVerifyCommand(o *Options) *cobra.Command {
	v := &verifyOptions{Options: o}
	cmd := &cobra.Command{
		Use:   "verify --contexts A,B,...",
		Short: "Prove pod-to-pod connectivity and source-IP preservation between member clusters",
		Long: `verify starts a short-lived probe pod in every member cluster (with
--per-node, one on every node), waits for their pod IPs, and for every ordered
pair of probes in different clusters connects from one to the other over TCP
(through 'kubectl exec'-style pods/exec). The receiving probe answers with the
address it saw; the pair passes when that is the sender's pod IP (no NAT on
the way). It prints the matrix, removes the probes (also on failure and
Ctrl-C), and exits 1 when any pair fails.

The probe image runs 'archipelago-probe serve' (cmd/archipelago-probe). On
clusters that cannot pull images, load it first (kind load docker-image) and
pass --image-pull-policy Never.

The probes run in namespace archipelago-verify (or -n NAMESPACE), which is
created when missing and removed again when verify created it.`,
		Example: `  kubectl archipelago verify --contexts kind-c1,kind-c2,kind-c3
  kubectl archipelago verify --contexts kind-c1,kind-c2 --image archipelago/probe:dev --image-pull-policy Never
  kubectl archipelago verify --contexts kind-c1,kind-c2 --per-node -o wide`,
		Args: exactArgs(0, "no arguments (clusters come from --contexts)"),
		RunE: func(cmd *cobra.Command, _ []string) error { return v.run(cmd.Context()) },
	}
	f := cmd.Flags()
	f.StringSliceVar(&v.contexts, "contexts", nil, "Kubeconfig contexts of the member clusters to test (at least two)")
	f.StringVar(&v.image, "image", ProbeImage, "Image of the probe pods (runs archipelago-probe)")
	f.StringVar(&v.pullPolicy, "image-pull-policy", string(corev1.PullIfNotPresent), "imagePullPolicy of the probe pods: Always, IfNotPresent or Never")
	f.DurationVar(&v.timeout, "timeout", 2*time.Minute, "How long to wait for the probe pods to run")
	f.BoolVar(&v.perNode, "per-node", false, "One probe per node instead of one per cluster")
	f.IntVar(&v.port, "port", probe.DefaultPort, "TCP port the probes listen on")
	return cmd
}

// Endpoint is one probe pod.
type Endpoint struct {
	Cluster string `json:"cluster"`
	Node    string `json:"node,omitempty"`
	Pod     string `json:"pod"`
	IP      string `json:"ip"`
}

// Label names the endpoint in the matrix.
func (e Endpoint) Label(perNode bool) string {
	if perNode && e.Node != "" {
		return e.Cluster + "/" + e.Node
	}
	return e.Cluster
}

// PairResult is the outcome of one ordered pair.
type PairResult struct {
	From   Endpoint `json:"from"`
	To     Endpoint `json:"to"`
	OK     bool     `json:"ok"`
	SawIP  string   `json:"sawIP,omitempty"`
	Detail string   `json:"detail,omitempty"`
}

// ConnectFunc runs `archipelago-probe connect target` in the pod of from
// and returns what it printed.
type ConnectFunc func(ctx context.Context, from Endpoint, target string) (string, error)

// RunMatrix tests every ordered pair of endpoints in different clusters.
// Pairs run in parallel, a few at a time.
func RunMatrix(ctx context.Context, eps []Endpoint, port int, connect ConnectFunc) []PairResult {
	var pairs []PairResult
	for _, a := range eps {
		for _, b := range eps {
			if a.Cluster != b.Cluster {
				pairs = append(pairs, PairResult{From: a, To: b})
			}
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range pairs {
		wg.Add(1)
		go func(p *PairResult) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			target := hostPort(p.To.IP, port)
			out, err := connect(ctx, p.From, target)
			judgePair(p, out, err)
		}(&pairs[i])
	}
	wg.Wait()
	return pairs
}

func hostPort(ip string, port int) string {
	if strings.Contains(ip, ":") {
		return "[" + ip + "]:" + strconv.Itoa(port)
	}
	return ip + ":" + strconv.Itoa(port)
}

// judgePair decides one pair from the probe's answer.
func judgePair(p *PairResult, out string, err error) {
	if err != nil {
		p.Detail = fmt.Sprintf("no connection from %s to %s: %v", p.From.Label(true), p.To.Label(true), err)
		return
	}
	p.SawIP = probe.SeenHost(out)
	if p.SawIP != p.From.IP {
		p.Detail = fmt.Sprintf("%s saw %s, not the sender's pod IP %s: traffic is source-NATed on the way", p.To.Label(true), dash(p.SawIP), p.From.IP)
		return
	}
	p.OK = true
}

// WriteMatrix prints one row per sender and one column per receiver.
func WriteMatrix(w io.Writer, eps []Endpoint, results []PairResult, perNode bool) error {
	idx := map[[2]string]PairResult{}
	for _, r := range results {
		idx[[2]string{r.From.Pod + "@" + r.From.Cluster, r.To.Pod + "@" + r.To.Cluster}] = r
	}
	t := newTable(w)
	header := []string{"FROM \\ TO"}
	for _, e := range eps {
		header = append(header, e.Label(perNode))
	}
	fmt.Fprintln(t, strings.Join(header, "\t"))
	for _, a := range eps {
		row := []string{a.Label(perNode)}
		for _, b := range eps {
			r, ok := idx[[2]string{a.Pod + "@" + a.Cluster, b.Pod + "@" + b.Cluster}]
			switch {
			case !ok:
				row = append(row, "-")
			case r.OK:
				row = append(row, "ok")
			case r.SawIP != "":
				row = append(row, "SNAT")
			default:
				row = append(row, "FAIL")
			}
		}
		fmt.Fprintln(t, strings.Join(row, "\t"))
	}
	if err := t.Flush(); err != nil {
		return err
	}
	var failed []string
	for _, r := range results {
		if !r.OK {
			failed = append(failed, "  "+r.Detail)
		}
	}
	if len(failed) > 0 {
		fmt.Fprintf(w, "\n%d of %d pairs failed:\n%s\n", len(failed), len(results), strings.Join(failed, "\n"))
	} else {
		fmt.Fprintf(w, "\nAll %d pairs connected with their pod IPs kept\n", len(results))
	}
	return nil
}

// ProbePod is the pod verify starts in a member (on node, if set).
func ProbePod(run, namespace, node, image string, pullPolicy corev1.PullPolicy, port int, deadline time.Duration) *corev1.Pod {
	name := "archipelago-probe-" + run
	if node != "" {
		name = truncateName(name + "-" + node)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: namespace,
			Labels: map[string]string{
				"app.kubernetes.io/name":       "archipelago-probe",
				"app.kubernetes.io/managed-by": "kubectl-archipelago",
				labelVerifyRun:                 run,
			},
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			// If verify is killed hard, the kubelet still ends the probe.
			ActiveDeadlineSeconds:        ptr.To(int64(deadline / time.Second)),
			AutomountServiceAccountToken: ptr.To(false),
			EnableServiceLinks:           ptr.To(false),
			NodeName:                     node,
			// A per-node probe must run on tainted nodes (control planes) too.
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr.To(true),
				RunAsUser:      ptr.To(int64(65534)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:            probeContainer,
				Image:           image,
				ImagePullPolicy: pullPolicy,
				Command:         []string{"archipelago-probe", "serve", "--port", strconv.Itoa(port)},
				Ports:           []corev1.ContainerPort{{Name: "probe", ContainerPort: int32(port), Protocol: corev1.ProtocolTCP}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intOrStringPort(port)}},
					PeriodSeconds: 1,
				},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					ReadOnlyRootFilesystem:   ptr.To(true),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	return pod
}

func truncateName(s string) string {
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-.")
	}
	return s
}

func (v *verifyOptions) run(ctx context.Context) error {
	if err := v.checkOutput(); err != nil {
		return err
	}
	// -n/--namespace is kubectl's global flag; verify has its own default.
	v.namespace = DefaultVerifyNamespace
	if v.Flags.Namespace != nil && *v.Flags.Namespace != "" {
		v.namespace = *v.Flags.Namespace
	}
	if len(v.contexts) < 2 {
		return usageError("--contexts needs at least two member contexts, e.g. --contexts kind-c1,kind-c2")
	}
	switch corev1.PullPolicy(v.pullPolicy) {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return usageError("--image-pull-policy %q: use Always, IfNotPresent or Never", v.pullPolicy)
	}
	clusters := make([]*cluster, 0, len(v.contexts))
	for _, name := range v.contexts {
		c, err := v.connect(name)
		if err != nil {
			return err
		}
		clusters = append(clusters, c)
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	run := hex.EncodeToString(b)

	var cleanups []func(context.Context)
	defer func() {
		// Also after Ctrl-C: ctx is done, so clean up with a fresh one.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i](cctx)
		}
	}()

	var eps []Endpoint
	byCluster := map[string]*cluster{}
	for _, c := range clusters {
		cleanup, pods, err := v.startProbes(ctx, c, run)
		cleanups = append(cleanups, cleanup)
		if err != nil {
			return err
		}
		byCluster[c.Context] = c
		ready, err := v.waitProbes(ctx, c, pods)
		if err != nil {
			return err
		}
		eps = append(eps, ready...)
	}
	results := RunMatrix(ctx, eps, v.port, func(ctx context.Context, from Endpoint, target string) (string, error) {
		return execConnect(ctx, byCluster[from.Cluster], v.namespace, from.Pod, target)
	})
	if v.Output == "json" || v.Output == "yaml" {
		if err := printStructured(v.Streams.Out, v.Output, map[string]any{"probes": eps, "pairs": results}); err != nil {
			return err
		}
	} else if err := WriteMatrix(v.Streams.Out, eps, results, v.perNode); err != nil {
		return err
	}
	for _, r := range results {
		if !r.OK {
			return errSilentFinding
		}
	}
	return nil
}

// startProbes creates the namespace (if missing) and the probe pods in c;
// the returned cleanup removes what it created, and is valid even on error.
func (v *verifyOptions) startProbes(ctx context.Context, c *cluster, run string) (func(context.Context), []*corev1.Pod, error) {
	createdNS := false
	cleanup := func(ctx context.Context) {
		sel := client.MatchingLabels{labelVerifyRun: run}
		if err := c.Client.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(v.namespace), sel, client.GracePeriodSeconds(0)); err != nil && !apierrors.IsNotFound(err) {
			fmt.Fprintf(v.Streams.ErrOut, "Warning: could not delete the probe pods in %s: %v; delete them with 'kubectl --context %s -n %s delete pods -l %s=%s'\n",
				c.describe(), err, c.Context, v.namespace, labelVerifyRun, run)
		}
		if createdNS {
			_ = c.Client.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: v.namespace}})
		}
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: v.namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "kubectl-archipelago"}}}
	if err := c.Client.Create(ctx, ns); err == nil {
		createdNS = true
	} else if !apierrors.IsAlreadyExists(err) {
		return cleanup, nil, unreachable(c, fmt.Errorf("create namespace %s: %w", v.namespace, err))
	}
	nodes := []string{""}
	if v.perNode {
		var list corev1.NodeList
		if err := c.Client.List(ctx, &list); err != nil {
			return cleanup, nil, unreachable(c, fmt.Errorf("list nodes: %w", err))
		}
		nodes = nodes[:0]
		for _, n := range list.Items {
			nodes = append(nodes, n.Name)
		}
	}
	var pods []*corev1.Pod
	for _, node := range nodes {
		pod := ProbePod(run, v.namespace, node, v.image, corev1.PullPolicy(v.pullPolicy), v.port, v.timeout+5*time.Minute)
		if err := c.Client.Create(ctx, pod); err != nil {
			return cleanup, nil, unreachable(c, fmt.Errorf("create probe pod %s/%s: %w", v.namespace, pod.Name, err))
		}
		pods = append(pods, pod)
	}
	return cleanup, pods, nil
}

// waitProbes waits until every probe pod is ready and has an IP; an image
// that cannot be pulled fails at once with what to do.
func (v *verifyOptions) waitProbes(ctx context.Context, c *cluster, pods []*corev1.Pod) ([]Endpoint, error) {
	var out []Endpoint
	for _, pod := range pods {
		var failure error
		err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, v.timeout, true, func(ctx context.Context) (bool, error) {
			if err := c.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
				return false, nil
			}
			if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
				failure = fmt.Errorf("probe pod %s in %s ended (%s): %s", pod.Name, c.describe(), pod.Status.Phase, pod.Status.Message)
				return false, failure
			}
			for _, cs := range pod.Status.ContainerStatuses {
				if w := cs.State.Waiting; w != nil {
					switch w.Reason {
					case "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName":
						failure = fmt.Errorf("probe pod %s in %s cannot get image %s (%s: %s): build it and load it into the cluster (kind load docker-image %s), or pass --image",
							pod.Name, c.describe(), v.image, w.Reason, w.Message, v.image)
						return false, failure
					}
				}
			}
			return pod.Status.PodIP != "" && podReady(pod), nil
		})
		if failure != nil {
			return nil, finding("%v", failure)
		}
		if err != nil {
			return nil, &exitError{code: ExitError, err: fmt.Errorf("probe pod %s/%s in %s was not ready after %s (phase %s): check 'kubectl --context %s -n %s describe pod %s': %w",
				v.namespace, pod.Name, c.describe(), v.timeout, pod.Status.Phase, c.Context, v.namespace, pod.Name, err)}
		}
		out = append(out, Endpoint{Cluster: c.Context, Node: pod.Spec.NodeName, Pod: pod.Name, IP: pod.Status.PodIP})
	}
	return out, nil
}

// execConnect runs archipelago-probe connect in a probe pod through the
// pods/exec subresource, over websocket with a fallback to SPDY (as kubectl).
func execConnect(ctx context.Context, c *cluster, namespace, pod, target string) (string, error) {
	req := c.Kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: probeContainer,
			Command:   []string{"archipelago-probe", "connect", target, "--timeout", "5s"},
			Stdout:    true,
			Stderr:    true,
		}, clientgoscheme.ParameterCodec)
	spdy, err := remotecommand.NewSPDYExecutor(c.Config, "POST", req.URL())
	if err != nil {
		return "", fmt.Errorf("spdy executor: %w", err)
	}
	ws, err := remotecommand.NewWebSocketExecutor(c.Config, "GET", req.URL().String())
	if err != nil {
		return "", fmt.Errorf("websocket executor: %w", err)
	}
	exec, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return "", fmt.Errorf("exec executor: %w", err)
	}
	ectx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if err := exec.StreamWithContext(ectx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}); err != nil {
		return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

func intOrStringPort(port int) intstr.IntOrString { return intstr.FromInt32(int32(port)) }
