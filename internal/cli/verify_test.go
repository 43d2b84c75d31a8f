package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func TestRunMatrix(t *testing.T) {
	eps := []Endpoint{
		{Cluster: "c1", Pod: "p1", IP: "10.1.0.5"},
		{Cluster: "c2", Pod: "p2", IP: "10.2.0.7"},
		{Cluster: "c3", Pod: "p3", IP: "fd00:3::9"},
	}
	// c1→c3 is refused; c2→c1 is source-NATed; everything else keeps its IP.
	connect := func(_ context.Context, from Endpoint, target string) (string, error) {
		switch {
		case from.Cluster == "c1" && target == "[fd00:3::9]:7070":
			return "", errors.New("dial tcp: i/o timeout")
		case from.Cluster == "c2" && target == "10.1.0.5:7070":
			return "172.18.0.3:40000", nil
		}
		return hostPort(from.IP, 41000), nil
	}
	results := RunMatrix(context.Background(), eps, 7070, connect)
	if len(results) != 6 {
		t.Fatalf("%d pairs, want 6 (ordered pairs of 3 clusters)", len(results))
	}
	failed := map[string]string{}
	for _, r := range results {
		if r.From.Cluster == r.To.Cluster {
			t.Errorf("pair within one cluster: %+v", r)
		}
		if !r.OK {
			failed[r.From.Cluster+">"+r.To.Cluster] = r.Detail
		}
	}
	if len(failed) != 2 || !strings.Contains(failed["c1>c3"], "no connection") || !strings.Contains(failed["c2>c1"], "source-NATed") {
		t.Fatalf("failures %v", failed)
	}
	var buf bytes.Buffer
	if err := WriteMatrix(&buf, eps, results, false); err != nil {
		t.Fatal(err)
	}
	want := `FROM \ TO   c1     c2   c3
c1          -      ok   FAIL
c2          SNAT   -    ok
c3          ok     ok   -
`
	if !strings.HasPrefix(buf.String(), want) {
		t.Fatalf("matrix:\n%s\nwant prefix:\n%s", buf.String(), want)
	}
	if !strings.Contains(buf.String(), "2 of 6 pairs failed") {
		t.Errorf("no failure summary:\n%s", buf.String())
	}
}

func TestProbePod(t *testing.T) {
	p := ProbePod("abc123", "archipelago-verify", "node-1", "archipelago/probe:dev", corev1.PullNever, 7070, 7*time.Minute)
	c := p.Spec.Containers[0]
	switch {
	case p.Name != "archipelago-probe-abc123-node-1" || p.Namespace != "archipelago-verify":
		t.Errorf("name %s/%s", p.Namespace, p.Name)
	case p.Labels[labelVerifyRun] != "abc123":
		t.Errorf("labels %v lack the run", p.Labels)
	case p.Spec.NodeName != "node-1" || len(p.Spec.Tolerations) != 1:
		t.Errorf("not pinned to node-1 with a toleration: %+v", p.Spec)
	case c.Image != "archipelago/probe:dev" || c.ImagePullPolicy != corev1.PullNever:
		t.Errorf("image %s %s", c.Image, c.ImagePullPolicy)
	case strings.Join(c.Command, " ") != "archipelago-probe serve --port 7070":
		t.Errorf("command %v", c.Command)
	case p.Spec.RestartPolicy != corev1.RestartPolicyNever || p.Spec.ActiveDeadlineSeconds == nil || *p.Spec.ActiveDeadlineSeconds != 420:
		t.Errorf("pod does not end on its own: %+v", p.Spec)
	case c.ReadinessProbe == nil || c.ReadinessProbe.TCPSocket == nil || c.ReadinessProbe.TCPSocket.Port.IntValue() != 7070:
		t.Errorf("readiness probe %+v", c.ReadinessProbe)
	case *p.Spec.AutomountServiceAccountToken:
		t.Error("the probe needs no API token")
	}
	long := ProbePod("abc123", "ns", strings.Repeat("n", 80), "img", corev1.PullIfNotPresent, 7070, time.Minute)
	if len(long.Name) > 63 {
		t.Errorf("name %q longer than 63", long.Name)
	}
	if ProbePod("abc123", "ns", "", "img", corev1.PullIfNotPresent, 7070, time.Minute).Spec.NodeName != "" {
		t.Error("a per-cluster probe is pinned to a node")
	}
}

func TestExitCodes(t *testing.T) {
	var out, errOut bytes.Buffer
	o := &Options{Streams: streamsFor(&out, &errOut)}
	if code := MainWithOptions(context.Background(), []string{"status", "--no-such-flag"}, o); code != ExitError {
		t.Errorf("unknown flag: exit %d, want %d", code, ExitError)
	}
	for _, cmd := range []string{"join", "leave", "status", "diagnose", "verify"} {
		out.Reset()
		o := &Options{Streams: streamsFor(&out, &errOut)}
		if code := MainWithOptions(context.Background(), []string{cmd, "--help"}, o); code != ExitOK {
			t.Errorf("%s --help: exit %d", cmd, code)
		}
		if !strings.Contains(out.String(), "Examples:") {
			t.Errorf("%s --help has no examples", cmd)
		}
	}
	o = &Options{Streams: streamsFor(&out, &errOut)}
	if code := MainWithOptions(context.Background(), []string{"verify", "--contexts", "one"}, o); code != ExitError {
		t.Errorf("verify with one context: exit %d, want %d", code, ExitError)
	}
}
