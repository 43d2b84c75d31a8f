//go:build e2e

package kind

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// mcsService is the exported echo service of the multi-cluster services
// tests, in namespace e2e of the first member.
const mcsService = "mcs-echo"

func clusterSetName(svc string) string { return svc + "." + testNS + ".svc.clusterset.local" }

// testServices runs the multi-cluster services checks: c1 exports a
// ClusterIP Service, both members import it and reach it by name.
func (e *env) testServices(t *testing.T, probes map[string][]probe) {
	c1, c2 := e.members[0], e.members[1]
	e.apply(c1, fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[4]s, namespace: %[1]s}
spec:
  replicas: 2
  selector: {matchLabels: {app: %[4]s}}
  template:
    metadata: {labels: {app: %[4]s}}
    spec:
      tolerations: [{operator: Exists}]
      terminationGracePeriodSeconds: 0
      containers:
        - name: probe
          image: %[2]s
          imagePullPolicy: Never
          args: [serve, --port, "%[3]d"]
          readinessProbe: {tcpSocket: {port: %[3]d}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: %[4]s, namespace: %[1]s}
spec:
  selector: {app: %[4]s}
  ports: [{name: echo, port: %[3]d, targetPort: %[3]d}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: %[1]s}
spec:
  selector: {app: %[4]s}
  ports: [{name: echo, port: %[3]d, targetPort: %[3]d}]
`, testNS, probeImage, probePort, mcsService))
	var podIPs []string
	if err := eventually(2*time.Minute, time.Second, func() error {
		out, err := e.kubectl(c1, "-n", testNS, "get", "endpointslices", "-l", "kubernetes.io/service-name="+mcsService,
			"-o", "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{\"\\n\"}{end}")
		if err != nil {
			return err
		}
		podIPs = strings.Fields(out)
		if len(podIPs) != 2 {
			return fmt.Errorf("%s has %d ready endpoints, want 2", mcsService, len(podIPs))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sort.Strings(podIPs)

	start := time.Now()
	e.apply(c1, serviceExport(mcsService))
	ips := map[string]string{}
	t.Run("ExportGivesClusterSetIPImportInEveryMember", func(t *testing.T) {
		for _, c := range e.members {
			if err := eventually(time.Minute, 200*time.Millisecond, func() error {
				out, err := e.kubectl(c, "-n", testNS, "get", "serviceimport", mcsService,
					"-o", "jsonpath={.spec.type} {.spec.ips[*]} {.spec.ipFamilies[*]} {.status.clusters[*].cluster} {.spec.ports[*].port}")
				if err != nil {
					return err
				}
				f := strings.Fields(out)
				if len(f) != 5 || f[0] != "ClusterSetIP" || f[2] != "IPv4" || f[3] != c1 || f[4] != fmt.Sprint(probePort) {
					return fmt.Errorf("ServiceImport in %s: %q", c, out)
				}
				ips[c] = f[1]
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			t.Logf("ServiceImport %s/%s in %s: ClusterSetIP %s (%s after the export)", testNS, mcsService, c, ips[c], time.Since(start).Round(time.Millisecond))
		}
		// The importers' EndpointSlices carry c1's pod IPs, in c1 too.
		for _, c := range e.members {
			if err := eventually(time.Minute, 200*time.Millisecond, func() error {
				out, err := e.kubectl(c, "-n", testNS, "get", "endpointslices", "-l", "multicluster.kubernetes.io/service-name="+mcsService+",multicluster.kubernetes.io/source-cluster="+c1,
					"-o", "jsonpath={range .items[*].endpoints[*]}{.addresses[0]}{\"\\n\"}{end}")
				if err != nil {
					return err
				}
				got := strings.Fields(out)
				sort.Strings(got)
				if !slices.Equal(got, podIPs) {
					return fmt.Errorf("MCS EndpointSlices in %s: %v, want %v", c, got, podIPs)
				}
				return nil
			}); err != nil {
				t.Error(err)
			}
		}
		if out, err := e.kubectl(c1, "-n", testNS, "get", "serviceexport", mcsService, "-o",
			`jsonpath={.status.conditions[?(@.type=="Valid")].status} {.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Conflict")].reason}`); err != nil || out != "True True NoConflicts" {
			t.Errorf("ServiceExport conditions Valid Ready Conflict: %q %v", out, err)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("NameResolvesAndReachesAPodOfTheExporterFromEveryMember", func(t *testing.T) {
		name := clusterSetName(mcsService)
		for _, c := range []string{c2, c1} {
			from := probes[c][0]
			if err := eventually(2*time.Minute, time.Second, func() error {
				out, err := e.podExec(c, from.pod, 10*time.Second, "busybox", "nslookup", name)
				if err != nil {
					return fmt.Errorf("nslookup %s in %s: %v: %s", name, c, err, out)
				}
				if !strings.Contains(out, ips[c]) {
					return fmt.Errorf("nslookup %s in %s answered %q, want %s", name, c, out, ips[c])
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			t.Logf("%s in %s resolves to %s", name, c, ips[c])
			for range 3 {
				seen, err := e.seen(c, from.pod, fmt.Sprintf("%s:%d", name, probePort), 5*time.Second)
				if err != nil {
					t.Errorf("%s (%s) -> %s:%d: %v", from.pod, c, name, probePort, err)
					continue
				}
				if seen != from.ip {
					t.Errorf("%s -> %s: the pod of %s saw %s, want the source %s kept", from.pod, name, c1, seen, from.ip)
				}
			}
			// busybox nc, as a user would: a line to the echo server.
			if out, err := e.podExec(c, from.pod, 15*time.Second, "sh", "-c",
				fmt.Sprintf("echo hello | busybox nc -w 3 %s %d", name, probePort)); err != nil {
				t.Errorf("nc from %s in %s to %s: %v: %s", from.pod, c, name, err, out)
			}
		}
	})

	t.Run("NotExportedNameDoesNotResolve", func(t *testing.T) {
		name := clusterSetName("plain")
		from := probes[c2][0]
		out, err := e.podExec(c2, from.pod, 10*time.Second, "busybox", "nslookup", name)
		if err == nil {
			t.Errorf("nslookup %s (not exported) in %s answered: %s", name, c2, out)
		}
	})

	t.Run("ExternalNameIsInvalidAndNotImported", func(t *testing.T) {
		e.apply(c1, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: external, namespace: %s}
spec:
  type: ExternalName
  externalName: example.invalid
`, testNS)+"---\n"+serviceExport("external"))
		if err := eventually(time.Minute, 500*time.Millisecond, func() error {
			out, err := e.kubectl(c1, "-n", testNS, "get", "serviceexport", "external", "-o",
				`jsonpath={.status.conditions[?(@.type=="Valid")].status} {.status.conditions[?(@.type=="Valid")].reason}`)
			if err != nil || out != "False InvalidServiceType" {
				return fmt.Errorf("ServiceExport external Valid: %q %v", out, err)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		for _, c := range e.members {
			if out, err := e.kubectl(c, "-n", testNS, "get", "serviceimport", "external", "--ignore-not-found", "-o", "name"); err != nil || strings.TrimSpace(out) != "" {
				t.Errorf("ServiceImport external in %s: %q %v", c, out, err)
			}
		}
	})

	t.Run("UnexportRemovesTheImports", func(t *testing.T) {
		e.mustKubectl(c1, "-n", testNS, "delete", "serviceexport", mcsService)
		for _, c := range e.members {
			if err := eventually(time.Minute, 500*time.Millisecond, func() error {
				out, err := e.kubectl(c, "-n", testNS, "get", "serviceimport", mcsService, "--ignore-not-found", "-o", "name")
				if err != nil || strings.TrimSpace(out) != "" {
					return fmt.Errorf("ServiceImport %s in %s: %q %v", mcsService, c, out, err)
				}
				return nil
			}); err != nil {
				t.Error(err)
			}
		}
	})
}

func serviceExport(name string) string {
	return fmt.Sprintf(`apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: %s, namespace: %s}
`, name, testNS)
}
