package framework

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"k8s.io/client-go/rest"
)

// StartQuotaController runs the real kube-controller-manager with only its
// resourcequota controller against api until t ends. The API server's quota
// admission enforces a ResourceQuota only once that controller has written
// the quota's status (hard and used); envtest runs no controller manager.
// The test is skipped when the binary is missing.
func StartQuotaController(t testing.TB, api *APIServer) {
	t.Helper()
	dir, why := AssetsDir()
	if dir == "" {
		t.Skip(why)
	}
	bin := filepath.Join(dir, "kube-controller-manager")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("needs kube-controller-manager (quota status) in %s: run 'make test-binaries'", dir)
	}
	work := t.TempDir()
	kc := filepath.Join(work, "kubeconfig")
	if err := WriteKubeconfig(kc, "admin", map[string]*rest.Config{"admin": api.Config}); err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(work, "kube-controller-manager.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--kubeconfig="+kc,
		"--controllers=resourcequota",
		"--leader-elect=false",
		"--secure-port=0",
		// Recount soon after a delete (admission counts creates itself).
		"--resource-quota-sync-period=5s",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start kube-controller-manager: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("kube-controller-manager log (tail):\n%s", b)
		}
	})
}
