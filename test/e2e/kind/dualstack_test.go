//go:build e2e

package kind

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testDualStackService: c1 exports a RequireDualStack Service; every member
// imports it with a ClusterSetIP of each family and MCS EndpointSlices of
// both families, its clusterset.local name answers A and AAAA, and a pod of
// each member reaches a pod of c1 through each of the two IPs, its source
// address of that family kept.
func (e *env) testDualStackService(t *testing.T, probes map[string][]probe) {
	const svc = "mcs-dual"
	c1 := e.members[0]
	e.apply(c1, probeDeployment(svc, 1)+fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  selector: {app: %[1]s}
  ports: [{name: echo, port: %[3]d, targetPort: %[3]d}]
---
`, svc, testNS, probePort)+serviceExport(svc))
	t.Cleanup(func() {
		e.unexport(t, svc, c1)
		if out, err := e.kubectl(c1, "-n", testNS, "delete", "deployment", svc, "--ignore-not-found"); err != nil {
			t.Errorf("delete deployment %s: %v: %s", svc, err, out)
		}
	})
	// One pod, one ready address per family (one EndpointSlice each).
	podIPs := e.awaitReadyIPs(t, c1, svc, 2)
	e.awaitImported(t, svc, map[string][]string{c1: podIPs})
	t.Logf("MCS EndpointSlices of %s in every member: %v (both families of the pod in %s)", svc, podIPs, c1)

	name := clusterSetName(svc)
	for _, c := range e.members {
		var v4, v6 string
		if err := eventually(time.Minute, 200*time.Millisecond, func() error {
			out, err := e.kubectl(c, "-n", testNS, "get", "serviceimport", svc,
				"-o", "jsonpath={.spec.type}/{.spec.ipFamilies[*]}/{.spec.ips[*]}")
			if err != nil {
				return err
			}
			f := strings.Split(out, "/")
			if len(f) != 3 || f[0] != "ClusterSetIP" || f[1] != "IPv4 IPv6" {
				return fmt.Errorf("ServiceImport %s in %s: %q, want ClusterSetIP with ipFamilies IPv4 IPv6", svc, c, out)
			}
			v4, v6 = "", ""
			for _, ip := range strings.Fields(f[2]) {
				if strings.Contains(ip, ":") {
					v6 = ip
				} else {
					v4 = ip
				}
			}
			if v4 == "" || v6 == "" {
				return fmt.Errorf("ServiceImport %s in %s: ips %q, want one per family", svc, c, f[2])
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("ServiceImport %s/%s in %s: ClusterSetIPs %s and %s", testNS, svc, c, v4, v6)

		from := probes[c][0]
		for _, q := range []struct {
			typ, ip string
			f       family
		}{{"A", v4, ipv4}, {"AAAA", v6, ipv6}} {
			if err := eventually(time.Minute, 500*time.Millisecond, func() error {
				out, err := e.podExec(c, from.pod, 10*time.Second, "busybox", "nslookup", "-type="+q.typ, name)
				if err != nil {
					return fmt.Errorf("nslookup -type=%s %s in %s: %v: %s", q.typ, name, c, err, out)
				}
				if i := strings.Index(out, "Name:"); i < 0 || !strings.Contains(out[i:], q.ip) {
					return fmt.Errorf("nslookup -type=%s %s in %s answered %q, want %s", q.typ, name, c, out, q.ip)
				}
				return nil
			}); err != nil {
				t.Error(err)
				continue
			}
			addr := net.JoinHostPort(q.ip, strconv.Itoa(probePort))
			// kube-proxy programs the imported Service a moment after the
			// import exists: the first connection may take some tries,
			// the next three must each succeed.
			if err := eventually(30*time.Second, 500*time.Millisecond, func() error {
				_, err := e.seen(c, from.pod, addr, 5*time.Second)
				return err
			}); err != nil {
				t.Errorf("%s (%s) -> %s (%s of %s): no connection in 30 s: %v", from.pod, c, addr, q.typ, name, err)
				continue
			}
			ok := 0
			for range 3 {
				seen, err := e.seen(c, from.pod, addr, 5*time.Second)
				switch {
				case err != nil:
					t.Errorf("%s (%s) -> %s: %v", from.pod, c, addr, err)
				case seen != from.addr(q.f):
					t.Errorf("%s (%s) -> %s: the pod of %s saw %s, want the source %s kept", from.pod, c, addr, c1, seen, from.addr(q.f))
				default:
					ok++
				}
			}
			t.Logf("%s %s in %s -> %s; %d of 3 TCP connections from %s (%s) to %s reached the pod of %s, source %s kept",
				q.typ, name, c, q.ip, ok, from.pod, c, addr, c1, from.addr(q.f))
		}
	}
}
