//go:build e2e

package kind

import (
	"errors"
	"fmt"
	"net"
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
	e.apply(c1, probeDeployment(mcsService, 2)+tcpService(mcsService, mcsService)+tcpService("plain", mcsService))
	podIPs := e.awaitReadyIPs(t, c1, mcsService, 2)

	var bench []benchRow
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
			// kube-proxy programs the imported Service's endpoints a
			// moment after the import exists (until then it refuses
			// connections): the first connection may take some tries,
			// the next three must each succeed.
			if err := eventually(30*time.Second, 500*time.Millisecond, func() error {
				_, err := e.seen(c, from.pod, fmt.Sprintf("%s:%d", name, probePort), 5*time.Second)
				return err
			}); err != nil {
				t.Errorf("%s (%s) -> %s:%d: no connection in 30 s: %v", from.pod, c, name, probePort, err)
			}
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

	t.Run("UDPByNameReachesAPodOfTheExporterFromEveryMember", func(t *testing.T) {
		const svc = "mcs-udp"
		e.apply(c1, udpService(svc, mcsService)+"---\n"+serviceExport(svc))
		t.Cleanup(func() { e.unexport(t, svc, c1) })
		e.awaitImported(t, svc, map[string][]string{c1: podIPs})
		pods := map[string]string{}
		for _, p := range e.podNames(t, c1, mcsService) {
			pods[p] = c1
		}
		addr := fmt.Sprintf("%s:%d", clusterSetName(svc), probePort)
		for _, c := range e.members {
			from := probes[c][0]
			// The first answer may wait for CoreDNS and kube-proxy to see the
			// import; after it, every request must be answered.
			if err := eventually(time.Minute, time.Second, func() error {
				_, err := e.udpAnswers(c, from, addr, 1, pods)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.udpAnswers(c, from, addr, 5, pods); err != nil {
				t.Fatal(err)
			}
			t.Logf("UDP %s from %s (%s): 5 of 5 answered by pods of %s, source %s kept", addr, from.pod, c, c1, from.ip)
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

	t.Run("StatefulSetReplicaNamesPerCluster", func(t *testing.T) {
		const svc = "mcs-sts"
		e.apply(c1, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  clusterIP: None
  selector: {app: %[1]s}
  ports: [{name: echo, port: %[4]d, targetPort: %[4]d}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  serviceName: %[1]s
  replicas: 2
  podManagementPolicy: Parallel
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
`, svc, testNS, probeImage, probePort)+serviceExport(svc))
		t.Cleanup(func() {
			if out, err := e.kubectl(c1, "-n", testNS, "delete", "statefulset", svc, "--ignore-not-found"); err != nil {
				t.Errorf("delete statefulset %s: %v: %s", svc, err, out)
			}
			e.unexport(t, svc, c1)
		})
		ips := e.awaitReadyIPs(t, c1, svc, 2)
		e.awaitImported(t, svc, map[string][]string{c1: ips})
		replica := map[string]string{}
		for i := range 2 {
			pod := fmt.Sprintf("%s-%d", svc, i)
			replica[pod] = strings.TrimSpace(e.mustKubectl(c1, "-n", testNS, "get", "pod", pod, "-o", "jsonpath={.status.podIP}"))
		}
		from := probes[c2][0]
		for pod, ip := range replica {
			name := pod + "." + c1 + "." + clusterSetName(svc)
			if err := e.awaitResolves(c2, from.pod, name, ip, time.Minute); err != nil {
				t.Error(err)
				continue
			}
			out, err := e.podExec(c2, from.pod, 10*time.Second, "busybox", "nslookup", name)
			for other, oip := range replica {
				if other != pod && (err != nil || strings.Contains(out, oip)) {
					t.Errorf("nslookup %s in %s also answers %s's IP %s (%v): %s", name, c2, other, oip, err, out)
				}
			}
			t.Logf("%s resolves in %s to %s, the pod IP of %s in %s", name, c2, ip, pod, c1)
		}
	})

	t.Run("TwoExportersBothAnswerTheName", func(t *testing.T) {
		const svc = "mcs-two"
		// The same Deployment the second-exporter check below uses.
		e.apply(c2, probeDeployment(mcsService, 1)+udpService(svc, mcsService))
		e.apply(c1, udpService(svc, mcsService))
		c2IPs := e.awaitReadyIPs(t, c2, svc, 1)
		for _, c := range e.members {
			e.apply(c, serviceExport(svc))
		}
		t.Cleanup(func() { e.unexport(t, svc, c1, c2) })
		e.awaitImported(t, svc, map[string][]string{c1: podIPs, c2: c2IPs})
		pods := map[string]string{}
		for _, c := range e.members {
			for _, p := range e.podNames(t, c, mcsService) {
				pods[p] = c
			}
		}
		addr := fmt.Sprintf("%s:%d", clusterSetName(svc), probePort)
		const requests = 30
		for _, c := range e.members {
			from := probes[c][0]
			if err := eventually(time.Minute, time.Second, func() error {
				_, err := e.udpAnswers(c, from, addr, 1, pods)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			// kube-proxy picks an endpoint per flow, each request is a new
			// flow: 30 requests over 2 + 1 endpoints miss a cluster with a
			// chance below 1e-5 once kube-proxy programs the imported
			// slices. It may not have yet (the slices are there, its sync
			// follows): batches of 30 until both clusters answered, for at
			// most 45 s.
			deadline := time.Now().Add(45 * time.Second)
			for batch := 1; ; batch++ {
				got, err := e.udpAnswers(c, from, addr, requests, pods)
				if err != nil {
					t.Fatal(err)
				}
				if got[c1] > 0 && got[c2] > 0 {
					t.Logf("UDP %s from %s (%s), batch %d of %d requests: %d answered by %s, %d by %s", addr, from.pod, c, batch, requests, got[c1], c1, got[c2], c2)
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("from %s: in %d batches of %d requests over 45 s, the last answered only by %v; want pods of both exporters", c, batch, requests, got)
					break
				}
				time.Sleep(time.Second)
			}
		}
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
		// The bare SRV name answers exactly one record per port of the
		// union.
		bare := clusterSetName(mcsService)
		if err := eventually(30*time.Second, 500*time.Millisecond, func() error {
			out, err := e.podExec(c1, probes[c1][0].pod, 10*time.Second, "busybox", "nslookup", "-type=SRV", bare)
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			perPort, n := map[string]int{}, 0
			for _, l := range strings.Split(out, "\n") {
				if _, rec, ok := strings.Cut(l, "service = "); ok {
					// priority weight port target
					if f := strings.Fields(rec); len(f) == 4 {
						perPort[f[2]]++
						n++
					}
				}
			}
			if n != 2 || perPort[fmt.Sprint(probePort)] != 1 || perPort["7071"] != 1 {
				return fmt.Errorf("want one record for each of ports %d and 7071, got %d: %s", probePort, n, out)
			}
			return nil
		}); err != nil {
			t.Errorf("nslookup -type=SRV %s in %s: %v", bare, c1, err)
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
			e.apply(c1, tcpService(name, mcsService))
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
		bench = append(bench, benchRow{"export in " + c1 + " -> endpoints imported in " + c2, took})
	})

	t.Run("ExportToNameResolvesLatency", func(t *testing.T) {
		const runs = 10
		var took []time.Duration
		others := slices.DeleteFunc(slices.Clone(e.members), func(c string) bool { return c == c1 })
		for i := range runs {
			name := fmt.Sprintf("bench-dns-%d", i)
			e.apply(c1, tcpService(name, mcsService))
			start := time.Now()
			e.apply(c1, serviceExport(name))
			for _, c := range others {
				// CoreDNS may cache a negative answer (kind's Corefile: cache 30,
				// disabled for cluster.local only; the kubernetes plugin's ttl
				// 30): the name is not asked before the member has the import
				// with its IP, as a client that waits for the ServiceImport does.
				var ip string
				if err := eventually(time.Minute, 100*time.Millisecond, func() error {
					out, err := e.kubectl(c, "-n", testNS, "get", "serviceimport", name, "--ignore-not-found", "-o", "jsonpath={.spec.ips[0]}")
					ip = strings.TrimSpace(out)
					if err != nil || ip == "" {
						return fmt.Errorf("ServiceImport %s in %s has no IP: %q %v", name, c, out, err)
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if err := e.awaitResolves(c, probes[c][0].pod, clusterSetName(name), ip, time.Minute); err != nil {
					t.Fatal(err)
				}
			}
			took = append(took, time.Since(start))
			e.mustKubectl(c1, "-n", testNS, "delete", "serviceexport,service", name)
		}
		slices.Sort(took)
		t.Logf("export in %s -> %s resolves (A) in %v, %d runs (kubectl and nslookup polling every 100 ms included): p50 %s, p99 %s, min %s",
			c1, clusterSetName("bench-dns-N"), others, runs, took[runs/2].Round(time.Millisecond), took[runs-1].Round(time.Millisecond), took[0].Round(time.Millisecond))
		bench = append(bench, benchRow{"export in " + c1 + " -> name resolves (A) in " + strings.Join(others, ", "), took})
		if took[runs/2] > benchBound {
			t.Errorf("export -> name resolves: p50 %s, more than %s (ten times the 2 s target)", took[runs/2].Round(time.Millisecond), benchBound)
		}

		// Once, logged: a client that asks from the moment of the export on,
		// and how many of its lookups found nothing (a negative answer may be
		// cached for up to 30 s).
		name := "bench-dns-early"
		e.apply(c1, tcpService(name, mcsService))
		start := time.Now()
		e.apply(c1, serviceExport(name))
		failed := 0
		if err := eventually(2*time.Minute, 100*time.Millisecond, func() error {
			err := e.awaitResolves(c2, probes[c2][0].pod, clusterSetName(name), "", 0)
			if err != nil {
				failed++
			}
			return err
		}); err != nil {
			t.Error(err)
		} else {
			t.Logf("export in %s -> %s resolves in %s when asked every 100 ms from the export on: %s, after %d unanswered lookups",
				c1, clusterSetName(name), c2, time.Since(start).Round(time.Millisecond), failed)
		}
		e.mustKubectl(c1, "-n", testNS, "delete", "serviceexport,service", name)
	})

	t.Run("NewReadyPodToImportedLatency", func(t *testing.T) {
		const runs = 10
		const svc = "mcs-scale"
		e.apply(c1, probeDeployment(svc, 1)+tcpService(svc, svc)+serviceExport(svc))
		t.Cleanup(func() {
			e.unexport(t, svc, c1)
			if out, err := e.kubectl(c1, "-n", testNS, "delete", "deployment", svc, "--ignore-not-found"); err != nil {
				t.Errorf("delete deployment %s: %v: %s", svc, err, out)
			}
		})
		cur := e.awaitReadyIPs(t, c1, svc, 1)
		e.awaitImported(t, svc, map[string][]string{c1: cur})
		var took []time.Duration
		for range runs {
			e.mustKubectl(c1, "-n", testNS, "scale", "deployment", svc, "--replicas=2")
			// The moment the new pod is a ready endpoint of its Service in c1
			// (polled: up to one poll late, so the latency is if anything
			// understated by that).
			var newIP string
			if err := eventually(2*time.Minute, 100*time.Millisecond, func() error {
				ips, err := e.readyIPs(c1, svc)
				if err != nil {
					return err
				}
				for _, ip := range ips {
					if !slices.Contains(cur, ip) {
						newIP = ip
						return nil
					}
				}
				return fmt.Errorf("no new ready endpoint of %s in %s: %v", svc, c1, ips)
			}); err != nil {
				t.Fatal(err)
			}
			ready := time.Now()
			if err := eventually(time.Minute, 100*time.Millisecond, func() error {
				for _, c := range e.members {
					got, err := e.importedIPs(c, svc, c1)
					if err != nil {
						return err
					}
					if !slices.Contains(got, newIP) {
						return fmt.Errorf("new pod IP %s not in the imported EndpointSlices of %s in %s: %v", newIP, svc, c, got)
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			took = append(took, time.Since(ready))
			e.mustKubectl(c1, "-n", testNS, "scale", "deployment", svc, "--replicas=1")
			cur = e.awaitReadyIPs(t, c1, svc, 1)
			e.awaitImported(t, svc, map[string][]string{c1: cur})
		}
		slices.Sort(took)
		t.Logf("new ready pod of %s in %s -> its IP imported in %v, %d runs (kubectl polling every 100 ms included): p50 %s, p99 %s, min %s",
			svc, c1, e.members, runs, took[runs/2].Round(time.Millisecond), took[runs-1].Round(time.Millisecond), took[0].Round(time.Millisecond))
		bench = append(bench, benchRow{"new ready pod in " + c1 + " -> IP imported in " + strings.Join(e.members, ", "), took})
		if took[runs/2] > benchBound {
			t.Errorf("new ready pod -> imported: p50 %s, more than %s (ten times the 2 s target)", took[runs/2].Round(time.Millisecond), benchBound)
		}
	})
	logBench(t, bench)
}

// benchBound is what only a regression exceeds: ten times the 2 s target.
const benchBound = 20 * time.Second

// benchRow is one measured latency of the multi-cluster services checks.
type benchRow struct {
	what string
	took []time.Duration // sorted
}

// logBench prints the measured latencies as one table (docs/services.md,
// Numbers).
func logBench(t *testing.T, rows []benchRow) {
	if len(rows) == 0 {
		return
	}
	var b strings.Builder
	w := 0
	for _, r := range rows {
		w = max(w, len(r.what))
	}
	fmt.Fprintf(&b, "multi-cluster services latencies (kubectl polling every 100 ms included)\n")
	fmt.Fprintf(&b, "  %-*s  %4s  %8s  %8s  %8s\n", w, "measured", "runs", "p50", "p99", "min")
	for _, r := range rows {
		n := len(r.took)
		fmt.Fprintf(&b, "  %-*s  %4d  %8s  %8s  %8s\n", w, r.what, n,
			r.took[n/2].Round(10*time.Millisecond), r.took[n-1].Round(10*time.Millisecond), r.took[0].Round(10*time.Millisecond))
	}
	t.Log("\n" + b.String())
}

// readyIPs returns the ready addresses of svc's own EndpointSlices in
// cluster, sorted.
func (e *env) readyIPs(cluster, svc string) ([]string, error) {
	out, err := e.kubectl(cluster, "-n", testNS, "get", "endpointslices", "-l", "kubernetes.io/service-name="+svc,
		"-o", "jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{\"\\n\"}{end}")
	if err != nil {
		return nil, err
	}
	ips := strings.Fields(out)
	sort.Strings(ips)
	return ips, nil
}

// awaitReadyIPs waits until svc has n ready endpoints in cluster and
// returns their addresses, sorted.
func (e *env) awaitReadyIPs(t *testing.T, cluster, svc string, n int) []string {
	t.Helper()
	var ips []string
	if err := eventually(2*time.Minute, 200*time.Millisecond, func() error {
		var err error
		if ips, err = e.readyIPs(cluster, svc); err != nil {
			return err
		}
		if len(ips) != n {
			return fmt.Errorf("%s in %s has ready endpoints %v, want %d", svc, cluster, ips, n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ips
}

// importedIPs returns the addresses of the MCS EndpointSlices of svc from
// source in cluster, sorted.
func (e *env) importedIPs(cluster, svc, source string) ([]string, error) {
	out, err := e.kubectl(cluster, "-n", testNS, "get", "endpointslices", "-l", "multicluster.kubernetes.io/service-name="+svc+",multicluster.kubernetes.io/source-cluster="+source,
		"-o", "jsonpath={range .items[*].endpoints[*]}{.addresses[0]}{\"\\n\"}{end}")
	if err != nil {
		return nil, err
	}
	ips := strings.Fields(out)
	sort.Strings(ips)
	return ips, nil
}

// awaitImported waits until every member's MCS EndpointSlices of svc carry
// exactly the sorted addresses of want, per source cluster.
func (e *env) awaitImported(t *testing.T, svc string, want map[string][]string) {
	t.Helper()
	for _, c := range e.members {
		if err := eventually(time.Minute, 200*time.Millisecond, func() error {
			for source, ips := range want {
				got, err := e.importedIPs(c, svc, source)
				if err != nil {
					return err
				}
				if !slices.Equal(got, ips) {
					return fmt.Errorf("MCS EndpointSlices of %s from %s in %s: %v, want %v", svc, source, c, got, ips)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// awaitResolves polls name (busybox nslookup, every 100 ms) from pod until
// the answer contains ip (any address when ip is "").
func (e *env) awaitResolves(cluster, pod, name, ip string, timeout time.Duration) error {
	return eventually(timeout, 100*time.Millisecond, func() error {
		out, err := e.podExec(cluster, pod, 10*time.Second, "busybox", "nslookup", name)
		if err != nil {
			return fmt.Errorf("nslookup %s in %s: %v: %s", name, cluster, err, out)
		}
		if ip == "" {
			// busybox prints the server first, then "Name:" and the answers.
			if i := strings.Index(out, "Name:"); i < 0 || !strings.Contains(out[i:], "Address") {
				return fmt.Errorf("nslookup %s in %s: no address in %q", name, cluster, out)
			}
			return nil
		}
		if !strings.Contains(out, ip) {
			return fmt.Errorf("nslookup %s in %s answered %q, want %s", name, cluster, out, ip)
		}
		return nil
	})
}

// podNames returns the names of the pods labelled app=app in cluster.
func (e *env) podNames(t *testing.T, cluster, app string) []string {
	t.Helper()
	out := e.mustKubectl(cluster, "-n", testNS, "get", "pods", "-l", "app="+app, "-o", "jsonpath={.items[*].metadata.name}")
	return strings.Fields(out)
}

// udpAnswers sends n UDP requests from pod p (each from a new source port)
// to addr with archipelago-probe and counts the answers per cluster of the
// answering pod (pods: pod name -> cluster). Every answer must come from one
// of pods and show p's own IP as the source.
func (e *env) udpAnswers(cluster string, p probe, addr string, n int, pods map[string]string) (map[string]int, error) {
	out, err := e.podExec(cluster, p.pod, time.Duration(n)*3*time.Second+10*time.Second, "archipelago-probe", "connect", addr,
		"--udp", "--timeout", "3s", "--count", fmt.Sprint(n))
	if err != nil {
		return nil, fmt.Errorf("UDP %s from %s (%s): %v: %s", addr, p.pod, cluster, err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != n {
		return nil, fmt.Errorf("UDP %s from %s (%s): %d answers to %d requests: %q", addr, p.pod, cluster, len(lines), n, out)
	}
	got := map[string]int{}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) != 2 {
			return nil, fmt.Errorf("UDP %s from %s (%s): answer %q is not \"<address> <pod>\"", addr, p.pod, cluster, l)
		}
		c, ok := pods[f[1]]
		if !ok {
			return nil, fmt.Errorf("UDP %s from %s (%s): answered by %s, not a pod of an exporter (%v)", addr, p.pod, cluster, f[1], pods)
		}
		host, _, err := net.SplitHostPort(f[0])
		if err != nil || host != p.ip {
			return nil, fmt.Errorf("UDP %s from %s (%s): %s saw the source %s, want %s kept", addr, p.pod, cluster, f[1], f[0], p.ip)
		}
		got[c]++
	}
	return got, nil
}

// tcpService is a Service name selecting app=app with one TCP port named
// echo, the probe's echo port.
func tcpService(name, app string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  selector: {app: %[3]s}
  ports: [{name: echo, port: %[4]d, targetPort: %[4]d}]
---
`, name, testNS, app, probePort)
}

// udpService is a Service name selecting app=app with one UDP port, the
// probe's echo port.
func udpService(name, app string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  selector: {app: %[3]s}
  ports: [{name: echo-udp, protocol: UDP, port: %[4]d, targetPort: %[4]d}]
---
`, name, testNS, app, probePort)
}

// unexport deletes the ServiceExport and the Service name in clusters and
// waits until no member imports it.
func (e *env) unexport(t *testing.T, name string, clusters ...string) {
	t.Helper()
	for _, c := range clusters {
		if out, err := e.kubectl(c, "-n", testNS, "delete", "serviceexport,service", name, "--ignore-not-found"); err != nil {
			t.Errorf("unexport %s in %s: %v: %s", name, c, err, out)
		}
	}
	for _, c := range e.members {
		if err := eventually(time.Minute, 500*time.Millisecond, func() error {
			out, err := e.kubectl(c, "-n", testNS, "get", "serviceimport", name, "--ignore-not-found", "-o", "name")
			if err != nil || strings.TrimSpace(out) != "" {
				return fmt.Errorf("ServiceImport %s in %s after the unexport: %q %v", name, c, out, err)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	}
}

func serviceExport(name string) string {
	return fmt.Sprintf(`apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceExport
metadata: {name: %s, namespace: %s}
`, name, testNS)
}
