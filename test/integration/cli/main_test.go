package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"

	"github.com/archipelago-mesh/archipelago/internal/cli"
	"github.com/archipelago-mesh/archipelago/test/framework"
)

var (
	hub, memberA, memberB *framework.APIServer
	kubeconfig            string
	// skipReason is set when the apiservers cannot run here; every test
	// then skips with it (go test reports the skips, never a silent pass).
	skipReason string
)

// needAPIServers skips t when TestMain could not start the apiservers.
func needAPIServers(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if _, why := framework.AssetsDir(); why != "" {
		skipReason = "kubectl archipelago integration tests need envtest binaries: " + why
		return m.Run()
	}
	var servers []*framework.APIServer
	defer func() {
		for _, s := range servers {
			_ = s.Stop()
		}
	}()
	for _, p := range []**framework.APIServer{&hub, &memberA, &memberB} {
		s, why, err := framework.StartAPIServer()
		if err != nil || s == nil {
			fmt.Fprintln(os.Stderr, "start apiserver:", err, why)
			return 1
		}
		servers = append(servers, s)
		*p = s
	}
	dir, err := os.MkdirTemp("", "archipelago-cli-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	kubeconfig = filepath.Join(dir, "kubeconfig")
	unreachable := rest.CopyConfig(hub.Config)
	// Port 1 on loopback: nothing listens there, the dial is refused at once.
	unreachable.Host = "https://127.0.0.1:1"
	if err := framework.WriteKubeconfig(kubeconfig, "member-a", map[string]*rest.Config{
		"hub": hub.Config, "member-a": memberA.Config, "member-b": memberB.Config, "unreachable": unreachable,
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// result is one run of kubectl archipelago.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// kubectlArchipelago runs the plugin in process against the test kubeconfig.
func kubectlArchipelago(t *testing.T, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code := cli.Main(ctx, append([]string{"--kubeconfig", kubeconfig}, args...),
		genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	r := result{code: code, stdout: out.String(), stderr: errOut.String()}
	t.Logf("kubectl archipelago %s\n%s", strings.Join(args, " "), r)
	return r
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 30*time.Second, true, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
