package coredns

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/yaml"
)

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// kind.Corefile is the Corefile kubeadm v1.37 writes (its CoreDNS
// ConfigMap template with the cluster domain cluster.local), which kind
// clusters run.
func TestEnableKindCorefile(t *testing.T) {
	in, want := read(t, "kind.Corefile"), read(t, "kind-enabled.Corefile")
	got, changed, err := Enable(in, "cluster.local")
	if err != nil || !changed {
		t.Fatalf("Enable: changed=%v err=%v", changed, err)
	}
	if got != want {
		t.Errorf("Enable(kind) =\n%s\nwant\n%s", got, want)
	}
	again, changed, err := Enable(got, "cluster.local")
	if err != nil || changed || again != got {
		t.Errorf("Enable is not idempotent: changed=%v err=%v\n%s", changed, err, again)
	}
	back, changed, err := Disable(got, "cluster.local")
	if err != nil || !changed || back != in {
		t.Errorf("Disable(Enable(kind)) changed=%v err=%v, want the original back:\n%s", changed, err, back)
	}
	if same, changed, err := Disable(in, "cluster.local"); err != nil || changed || same != in {
		t.Errorf("Disable of a Corefile without the option: changed=%v err=%v", changed, err)
	}
}

func TestEnableVariants(t *testing.T) {
	for _, tc := range []struct {
		name, in, want, domain string
		// back is what Disable(Enable(in)) gives when it is not in.
		back string
	}{
		{
			name:   "bare kubernetes line gets a block",
			domain: "cluster.local",
			in:     ".:53 {\n    kubernetes cluster.local\n    forward . /etc/resolv.conf\n}\n",
			want:   ".:53 {\n    kubernetes cluster.local clusterset.local {\n       multicluster clusterset.local\n    }\n    forward . /etc/resolv.conf\n}\n",
			back:   ".:53 {\n    kubernetes cluster.local {\n    }\n    forward . /etc/resolv.conf\n}\n",
		},
		{
			name:   "another multicluster zone is kept",
			domain: "cluster.local",
			in:     ".:53 {\n  kubernetes cluster.local clusterset.local other.local {\n    multicluster other.local\n  }\n}\n",
			want:   ".:53 {\n  kubernetes cluster.local clusterset.local other.local {\n    multicluster other.local clusterset.local\n  }\n}\n",
		},
		{
			name:   "custom cluster domain, tabs, comments and an empty block",
			domain: "corp.internal",
			in:     "# managed\n.:53 {\n\tkubernetes corp.internal in-addr.arpa { # the cluster\n\t}\n}\nexample.org:53 {\n\tforward . 10.0.0.1\n}\n",
			want:   "# managed\n.:53 {\n\tkubernetes corp.internal clusterset.local in-addr.arpa { # the cluster\n\t   multicluster clusterset.local\n\t}\n}\nexample.org:53 {\n\tforward . 10.0.0.1\n}\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, changed, err := Enable(tc.in, tc.domain)
			if err != nil || !changed || got != tc.want {
				t.Fatalf("Enable: changed=%v err=%v\n%s\nwant\n%s", changed, err, got, tc.want)
			}
			if again, changed, _ := Enable(got, tc.domain); changed || again != got {
				t.Errorf("second Enable changed it:\n%s", again)
			}
			if tc.name == "another multicluster zone is kept" {
				return // the zone in the plugin's list was there before: Disable takes it out (below)
			}
			want := tc.in
			if tc.back != "" {
				want = tc.back // an empty block, the same to CoreDNS
			}
			if back, _, err := Disable(got, tc.domain); err != nil || back != want {
				t.Errorf("Disable(Enable(x)) = %q (err %v), want %q", back, err, want)
			}
		})
	}
}

func TestDisableKeepsOtherZones(t *testing.T) {
	in := ".:53 {\n  kubernetes cluster.local clusterset.local other.local {\n    multicluster other.local clusterset.local\n  }\n}\n"
	want := ".:53 {\n  kubernetes cluster.local other.local {\n    multicluster other.local\n  }\n}\n"
	got, changed, err := Disable(in, "cluster.local")
	if err != nil || !changed || got != want {
		t.Errorf("Disable = %q changed=%v err=%v, want %q", got, changed, err, want)
	}
}

func TestEnableRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, in, wantErr string
		is                error
	}{
		{"no kubernetes plugin", ".:53 {\n    forward . /etc/resolv.conf\n}\n", "no kubernetes plugin for the cluster domain cluster.local", nil},
		{"kubernetes without zones", ".:53 {\n    kubernetes {\n    }\n}\n", "line 2: the kubernetes plugin has no zones of its own", nil},
		{"another MCS DNS", ".:53 {\n    kubernetes cluster.local\n}\nclusterset.local:53 {\n    forward . 10.96.180.12\n}\n", "another DNS serves clusterset.local", ErrOtherClusterSetDNS},
		{"unclosed block", ".:53 {\n    kubernetes cluster.local {\n       pods insecure\n", "block is not closed", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Enable(tc.in, "cluster.local")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err %v is not %v", err, tc.is)
			}
		})
	}
	// Leave never fails on another implementation's zone: it is not ours.
	other := ".:53 {\n    kubernetes cluster.local\n}\nclusterset.local:53 {\n    forward . 10.96.180.12\n}\n"
	if got, changed, err := Disable(other, "cluster.local"); err != nil || changed || got != other {
		t.Errorf("Disable with another MCS DNS: changed=%v err=%v", changed, err)
	}
}

func TestRBACMatchesTheManifest(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "config", "mcs", "coredns", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(b), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("%d documents in rbac.yaml, want 2", len(docs))
	}
	var role rbacv1.ClusterRole
	var binding rbacv1.ClusterRoleBinding
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &role); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &binding); err != nil {
		t.Fatal(err)
	}
	wantRole, wantBinding := RBAC("kube-system", "coredns")
	if !equality.Semantic.DeepEqual(&role, wantRole) || !equality.Semantic.DeepEqual(&binding, wantBinding) {
		t.Errorf("config/mcs/coredns/rbac.yaml differs from RBAC():\n%+v\n%+v", role, binding)
	}
}
