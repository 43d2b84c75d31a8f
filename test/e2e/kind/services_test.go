//go:build e2e

package kind

import (
	"errors"
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
	e.apply(c1, probeDeployment(mcsService, 2)+fmt.Sprintf(`apiVersion: v1
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

	t.Run("SRVRecordPerNamedPort", func(t *testing.T) {
		name := "_echo._tcp." + clusterSetName(mcsService)
		from := probes[c2][0]
		out, err := e.podExec(c2, from.pod, 10*time.Second, "busybox", "nslookup", "-type=SRV", name)
		if err != nil || !strings.Contains(out, fmt.Sprint(probePort)) {
			t.Errorf("nslookup -type=SRV %s in %s: %v: %s", name, c2, err, out)
		}
	})

	t.Run("HeadlessExportGivesHeadlessImportAndPodAddresses", func(t *testing.T) {
		e.apply(c1, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: mcs-headless, namespace: %[1]s}
spec:
  clusterIP: None
  selector: {app: %[3]s}
  ports: [{name: echo, port: %[2]d, targetPort: %[2]d}]
`, testNS, probePort, mcsService)+"---\n"+serviceExport("mcs-headless"))
		if err := eventually(time.Minute, 500*time.Millisecond, func() error {
			out, err := e.kubectl(c2, "-n", testNS, "get", "serviceimport", "mcs-headless", "-o", "jsonpath={.spec.type} [{.spec.ips[*]}]")
			if err != nil || out != "Headless []" {
				return fmt.Errorf("ServiceImport mcs-headless in %s: %q %v", c2, out, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		name := clusterSetName("mcs-headless")
		if err := eventually(time.Minute, time.Second, func() error {
			out, err := e.podExec(c2, probes[c2][0].pod, 10*time.Second, "busybox", "nslookup", name)
			for _, ip := range podIPs {
				if err != nil || !strings.Contains(out, ip) {
					return fmt.Errorf("nslookup %s in %s: %v: %s (want the pod IPs %v)", name, c2, err, out, podIPs)
				}
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		e.mustKubectl(c1, "-n", testNS, "delete", "serviceexport", "mcs-headless")
	})

	t.Run("SecondExporterUnionAndConflictWithoutGap", func(t *testing.T) {
		// c2 exports mcs-echo too, with one more port.
		e.apply(c2, probeDeployment(mcsService, 1)+fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[4]s, namespace: %[1]s}
spec:
  selector: {app: %[4]s}
  ports: [{name: echo, port: %[3]d, targetPort: %[3]d}, {name: extra, port: 7071, targetPort: 7071}]
`, testNS, probeImage, probePort, mcsService))
		// The import must exist in both members at every look while the
		// exporters change.
		gap := func() error {
			for _, c := range e.members {
				out, err := e.kubectl(c, "-n", testNS, "get", "serviceimport", mcsService, "--ignore-not-found", "-o", "name")
				if err != nil {
					return err
				}
				if strings.TrimSpace(out) == "" {
					return fmt.Errorf("the ServiceImport %s vanished in %s", mcsService, c)
				}
			}
			return nil
		}
		watchFor := func(d time.Duration, until func() error) error {
			deadline := time.Now().Add(d)
			var last error
			for time.Now().Before(deadline) {
				if err := gap(); err != nil {
					return err
				}
				if last = until(); last == nil {
					return nil
				}
				time.Sleep(200 * time.Millisecond)
			}
			return fmt.Errorf("not within %s: %v", d, last)
		}
		e.apply(c2, serviceExport(mcsService))
		union := func() error {
			for _, c := range e.members {
				out, err := e.kubectl(c, "-n", testNS, "get", "serviceimport", mcsService, "-o", "jsonpath={.status.clusters[*].cluster} {.spec.ports[*].port}")
				if err != nil || out != c1+" "+c2+" "+fmt.Sprint(probePort)+" 7071" {
					return fmt.Errorf("ServiceImport in %s: %q %v", c, out, err)
				}
			}
			for _, c := range e.members {
				out, err := e.kubectl(c, "-n", testNS, "get", "serviceexport", mcsService, "-o", `jsonpath={.status.conditions[?(@.type=="Conflict")].status} {.status.conditions[?(@.type=="Conflict")].reason}`)
				if err != nil || out != "True PortConflict" {
					return fmt.Errorf("ServiceExport Conflict in %s: %q %v", c, out, err)
				}
			}
			return nil
		}
		if err := watchFor(time.Minute, union); err != nil {
			t.Fatal(err)
		}
		// c1 unexports: c2 alone, the import stays (watched for 5 s more).
		e.mustKubectl(c1, "-n", testNS, "delete", "serviceexport", mcsService)
		alone := func() error {
			for _, c := range e.members {
				out, err := e.kubectl(c, "-n", testNS, "get", "serviceimport", mcsService, "-o", "jsonpath={.status.clusters[*].cluster}")
				if err != nil || out != c2 {
					return fmt.Errorf("ServiceImport in %s: exporters %q %v", c, out, err)
				}
			}
			return nil
		}
		if err := watchFor(time.Minute, alone); err != nil {
			t.Fatal(err)
		}
		if err := watchFor(5*time.Second, func() error { return errors.New("watching") }); err != nil && !strings.Contains(err.Error(), "watching") {
			t.Error(err)
		}
	})

	t.Run("UnexportRemovesTheImports", func(t *testing.T) {
		for _, c := range e.members {
			e.mustKubectl(c, "-n", testNS, "delete", "serviceexport", mcsService, "--ignore-not-found")
		}
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

	// Not a timing assertion: the distribution is logged for docs/services.md.
	t.Run("ExportToImportLatency", func(t *testing.T) {
		const runs = 10
		var took []time.Duration
		for i := range runs {
			name := fmt.Sprintf("bench-%d", i)
			e.apply(c1, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  selector: {app: %[4]s}
  ports: [{name: echo, port: %[3]d, targetPort: %[3]d}]
`, name, testNS, probePort, mcsService))
			start := time.Now()
			e.apply(c1, serviceExport(name))
			if err := eventually(time.Minute, 100*time.Millisecond, func() error {
				out, err := e.kubectl(c2, "-n", testNS, "get", "endpointslices", "-l", "multicluster.kubernetes.io/service-name="+name,
					"-o", "jsonpath={range .items[*].endpoints[*]}{.addresses[0]}{\"\\n\"}{end}")
				if err != nil || len(strings.Fields(out)) != len(podIPs) {
					return fmt.Errorf("imported endpoints of %s in %s: %q %v", name, c2, out, err)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			took = append(took, time.Since(start))
			e.mustKubectl(c1, "-n", testNS, "delete", "serviceexport,service", name)
		}
		slices.Sort(took)
		t.Logf("export in %s -> its endpoints imported in %s, %d runs (kubectl polling every 100 ms included): p50 %s, p99 %s, min %s",
			c1, c2, runs, took[runs/2].Round(time.Millisecond), took[runs-1].Round(time.Millisecond), took[0].Round(time.Millisecond))
	})
}

func serviceExport(name string) string {
	return fmt.Sprintf(`apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: %s, namespace: %s}
`, name, testNS)
}
