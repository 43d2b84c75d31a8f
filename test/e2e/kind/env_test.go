//go:build e2e

package kind

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	prefix      = "arch-e2e-"
	clusterSet  = "e2e"
	dockerNet   = "arch-e2e"
	probeImage  = "archipelago/probe:dev"
	agentImage  = "archipelago/agent:latest"
	hubImage    = "archipelago/hub:dev"
	testNS      = "e2e"
	probePort   = 7070
	streamPort  = 7071
	gatewayKey  = "archipelago.dev/gateway"
	agentLabel  = "app.kubernetes.io/name=archipelago-agent"
	deviceLabel = "app.kubernetes.io/name=archipelago-device"
	agentNS     = "archipelago-system"
	routeTable  = "2684"
	routeProto  = "167"
	wgInterface = "archipelago0"
)

// env is the suite's view of the machine: where the tools are, its own
// kubeconfig, and the clusters' names.
type env struct {
	t          *testing.T
	root       string
	kubeconfig string
	nodeImage  string // "" means kind's default (KIND_OFFLINE=0)
	hub        string
	members    []string // c1: one gateway + one worker; c2: two gateway candidates
}

func newEnv(t *testing.T) *env {
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		t:          t,
		root:       root,
		kubeconfig: filepath.Join(root, "bin", "kind", "e2e.kubeconfig"),
		nodeImage:  os.Getenv("KIND_NODE_IMAGE"),
		hub:        prefix + "hub",
		members:    []string{prefix + "c1", prefix + "c2"},
	}
	switch {
	case os.Getenv("KIND_OFFLINE") == "0":
		e.nodeImage = "" // kind's stock node image
	case e.nodeImage == "":
		e.nodeImage = "archipelago/kind-node:v1.37.2" // hack/kind/build-images.sh
	}
	// Tools built by make e2e-kind come first: kind, kubectl (same version as
	// the nodes) and kubectl-archipelago.
	path := filepath.Join(root, "bin", "kind", "bin") + ":" + filepath.Join(root, "bin") + ":" + os.Getenv("PATH")
	t.Setenv("PATH", path)
	t.Setenv("KUBECONFIG", e.kubeconfig)
	// kind puts its nodes on this Docker network (created by kind, removed by
	// the suite): the suite's clusters never meet anyone else's.
	t.Setenv("KIND_EXPERIMENTAL_DOCKER_NETWORK", dockerNet)
	return e
}

func ctxName(cluster string) string { return "kind-" + cluster }

// run runs a command and returns its combined output.
func run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// runStdout runs a command and returns its standard output only (stderr goes
// into the error).
func runStdout(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s%s", name, strings.Join(args, " "), err, out.String(), stderr.String())
	}
	return out.String(), nil
}

// must runs a command with a timeout and fails the test on error.
func (e *env) must(timeout time.Duration, name string, args ...string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := run(ctx, "", name, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// kubectl runs kubectl against cluster's context.
func (e *env) kubectl(cluster string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return run(ctx, "", "kubectl", append([]string{"--context", ctxName(cluster)}, args...)...)
}

func (e *env) mustKubectl(cluster string, args ...string) string {
	e.t.Helper()
	out, err := e.kubectl(cluster, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) apply(cluster, manifest string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := run(ctx, manifest, "kubectl", "--context", ctxName(cluster), "apply", "-f", "-"); err != nil {
		e.t.Fatalf("apply in %s: %v\n%s", cluster, err, out)
	}
}

// eventually polls f until it returns nil or timeout passes.
func eventually(timeout, every time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(every)
	}
}

// phase runs one measured step and prints its duration (the suite's timings
// are part of its output).
func (e *env) phase(name string, f func()) {
	e.t.Helper()
	start := time.Now()
	fmt.Printf("==> [%s] %s\n", start.Format("15:04:05"), name)
	f()
	fmt.Printf("==> [%s] %s: %.1fs\n", time.Now().Format("15:04:05"), name, time.Since(start).Seconds())
}

// nodeInfo is a node of a member cluster.
type nodeInfo struct {
	Name    string
	IP      string // IPv4 InternalIP
	IP6     string // IPv6 InternalIP (the members are dual-stack)
	Gateway bool   // labelled gateway candidate
}

func (e *env) nodes(cluster string) []nodeInfo {
	e.t.Helper()
	out := e.mustKubectl(cluster, "get", "nodes", "-o", "json")
	var list struct {
		Items []struct {
			Metadata struct {
				Name   string            `json:"name"`
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Status struct {
				Addresses []struct{ Type, Address string } `json:"addresses"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		e.t.Fatal(err)
	}
	var nodes []nodeInfo
	for _, it := range list.Items {
		n := nodeInfo{Name: it.Metadata.Name}
		_, n.Gateway = it.Metadata.Labels[gatewayKey]
		for _, a := range it.Status.Addresses {
			switch {
			case a.Type != "InternalIP":
			case strings.Contains(a.Address, ":"):
				n.IP6 = a.Address
			default:
				n.IP = a.Address
			}
		}
		nodes = append(nodes, n)
	}
	return nodes
}

// membership is the part of the member's ClusterSetMembership status the
// suite reads.
type membership struct {
	ActiveGateway   string `json:"activeGateway"`
	ActiveGatewayIP string `json:"activeGatewayIP"`
	ReadyPeers      int32  `json:"readyPeerCount"`
	TotalPeers      int32  `json:"totalPeers"`
	PodCIDRs        []string
	Peers           []struct {
		Cluster  string `json:"cluster"`
		Gateway  string `json:"gateway"`
		Endpoint string `json:"endpoint"`
		State    string `json:"state"`
		Message  string `json:"message"`
	} `json:"peers"`
}

func (e *env) membership(cluster string) (membership, error) {
	var m membership
	out, err := e.kubectl(cluster, "get", "clustersetmemberships.mesh.archipelago.dev", "membership", "-o", "jsonpath={.status}")
	if err != nil {
		return m, err
	}
	if strings.TrimSpace(out) == "" {
		return m, fmt.Errorf("%s: membership has no status yet", cluster)
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		return m, fmt.Errorf("%s: membership status %q: %w", cluster, out, err)
	}
	return m, nil
}

// dockerExec runs a command on a kind node (a container).
func (e *env) dockerExec(node string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return run(ctx, "", "docker", append([]string{"exec", node}, args...)...)
}

// podExec runs a command in a pod of namespace e2e.
func (e *env) podExec(cluster, pod string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return run(ctx, "", "kubectl", append([]string{"--context", ctxName(cluster), "-n", testNS, "exec", pod, "--"}, args...)...)
}

// probePod is the manifest of a probe pod pinned to a node.
func probePod(name, node string, labels map[string]string) string {
	var l strings.Builder
	for k, v := range labels {
		fmt.Fprintf(&l, "    %s: %q\n", k, v)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels:
%s    app: probe
spec:
  nodeName: %s
  terminationGracePeriodSeconds: 0
  tolerations: [{operator: Exists}]
  containers:
    - name: probe
      image: %s
      imagePullPolicy: Never
      args: [serve, --port, "%d"]
`, name, testNS, l.String(), node, probeImage, probePort)
}

// podIP waits until pod runs and returns its IP (the IPv4 one: IPv4 is the
// members' primary family).
func (e *env) podIP(cluster, pod string) string {
	e.t.Helper()
	ip, _ := e.podIPs(cluster, pod)
	return ip
}

// podIPs waits until pod runs and returns its IPv4 address and its IPv6
// address ("" when the pod has none).
func (e *env) podIPs(cluster, pod string) (ip4, ip6 string) {
	e.t.Helper()
	err := eventually(2*time.Minute, time.Second, func() error {
		out, err := e.kubectl(cluster, "-n", testNS, "get", "pod", pod, "-o", "jsonpath={.status.phase} {.status.podIPs[*].ip}")
		if err != nil {
			return err
		}
		f := strings.Fields(out)
		if len(f) < 2 || f[0] != "Running" {
			return fmt.Errorf("pod %s/%s: %q", cluster, pod, out)
		}
		ip4, ip6 = "", ""
		for _, a := range f[1:] {
			if strings.Contains(a, ":") {
				ip6 = a
			} else {
				ip4 = a
			}
		}
		if ip4 == "" {
			return fmt.Errorf("pod %s/%s has no IPv4 address: %q", cluster, pod, out)
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return ip4, ip6
}

// seen connects from pod to addr with archipelago-probe and returns the
// address the receiver saw.
func (e *env) seen(cluster, pod, addr string, timeout time.Duration) (string, error) {
	out, err := e.podExec(cluster, pod, timeout+10*time.Second, "archipelago-probe", "connect", addr, "--timeout", timeout.String())
	if err != nil {
		return "", err
	}
	// The receiver answers host:port ([v6]:port for IPv6).
	answer := strings.TrimSpace(out)
	if host, _, err := net.SplitHostPort(answer); err == nil {
		return host, nil
	}
	return answer, nil
}

func dumpOnFailure(e *env) {
	if !e.t.Failed() {
		return
	}
	for _, c := range append([]string{e.hub}, e.members...) {
		for _, args := range [][]string{
			{"get", "pods", "-A", "-o", "wide"},
			{"get", "clustersetmemberships.mesh.archipelago.dev", "-o", "yaml"},
			{"-n", agentNS, "logs", "-l", agentLabel, "-c", "agent", "--tail=40", "--prefix"},
			{"-n", agentNS, "logs", "-l", deviceLabel, "--tail=20", "--prefix"},
			{"-n", agentNS, "logs", "-l", "app.kubernetes.io/name=archipelago-hub", "--tail=40", "--prefix"},
		} {
			out, _ := e.kubectl(c, args...)
			e.t.Logf("--- %s: kubectl %s\n%s", c, strings.Join(args, " "), out)
		}
	}
}

// probeDeployment is a Deployment of name in the test namespace: replicas
// pods of the probe image serving on probePort, ready once the
// port answers, labelled app=name.
func probeDeployment(name string, replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  replicas: %[5]d
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      tolerations: [{operator: Exists}]
      terminationGracePeriodSeconds: 0
      containers:
        - name: probe
          image: %[3]s
          imagePullPolicy: Never
          args: [serve, --port, "%[4]d"]
          readinessProbe: {tcpSocket: {port: %[4]d}, periodSeconds: 1}
---
`, name, testNS, probeImage, probePort, replicas)
}

// The ClusterSet of the suite: an IPv4 and an IPv6 pool, so every member is
// dual-stack (join --kind-config writes ipFamily dual with both ranges).
// Each member's IPv6 block holds 256 of the node /64s kube-controller-manager
// hands out.
const (
	poolV4  = "10.200.0.0/14"
	poolV6  = "fd00:200::/48"
	blockV6 = 56
)
