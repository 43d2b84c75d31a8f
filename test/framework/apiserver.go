package framework

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"go.uber.org/zap/zapcore"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/archipelago-mesh/archipelago/controllers"
	archscheme "github.com/archipelago-mesh/archipelago/internal/scheme"
)

// RepoRoot is the repository's top folder.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Scheme knows the core kinds and archipelago's.
func Scheme() *kruntime.Scheme { return archscheme.New() }

// AssetsDir returns where envtest finds kube-apiserver and etcd, or "" with
// the reason when they are missing.
func AssetsDir() (string, string) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = filepath.Join(RepoRoot(), "bin", "k8s")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Sprintf("no %s in %s: run 'make test-binaries' (or 'make test')", b, dir)
		}
	}
	return dir, ""
}

// APIServer is a running kube-apiserver + etcd with the CRDs installed: the
// archipelago CRDs (config/crd) and the MCS API's (config/mcs).
type APIServer struct {
	Env    *envtest.Environment
	Config *rest.Config
	Client client.Client
}

// StartAPIServer starts an apiserver for a test binary (call it from
// TestMain). It returns nil and a reason when the binaries are missing.
func StartAPIServer() (*APIServer, string, error) {
	dir, why := AssetsDir()
	if dir == "" {
		return nil, why, nil
	}
	ctrl.SetLogger(testLogger())
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths: []string{
			filepath.Join(RepoRoot(), "config", "crd", "bases"),
			filepath.Join(RepoRoot(), "config", "mcs"),
		},
		ErrorIfCRDPathMissing: true,
		Scheme:                Scheme(),
	}
	cfg, err := env.Start()
	if err != nil {
		// Start can fail after the control plane came up (a CRD the API
		// server refuses): stop it, or etcd and kube-apiserver outlive the test.
		_ = env.Stop()
		return nil, "", fmt.Errorf("start envtest: %w", err)
	}
	// Many clients hammer one apiserver in these tests.
	cfg.QPS, cfg.Burst = 500, 1000
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		_ = env.Stop()
		return nil, "", err
	}
	if err := installHubIdentity(context.Background(), cfg, c); err != nil {
		_ = env.Stop()
		return nil, "", fmt.Errorf("install the hub's RBAC from config/: %w", err)
	}
	return &APIServer{Env: env, Config: cfg, Client: c}, "", nil
}

// Stop stops the apiserver and etcd.
func (a *APIServer) Stop() error { return a.Env.Stop() }

// Hub is the hub's controllers running in this process.
type Hub struct {
	cancel context.CancelFunc
	done   chan error
}

// StartHub runs the hub's controllers until t ends (or Stop). admin is an
// administrator's config of an API server from StartAPIServer; the hub itself
// runs as its ServiceAccount, with the RBAC and admission policy of config/.
func StartHub(t testing.TB, admin *rest.Config, opts controllers.Options) *Hub {
	t.Helper()
	cfg, err := HubConfig(context.Background(), admin)
	if err != nil {
		t.Fatalf("hub identity: %v", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 Scheme(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  cache.Options{ByObject: controllers.CacheByObject()},
		Controller:             ctrlConfigSkipNameValidation(),
	})
	if err != nil {
		t.Fatalf("new manager: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := controllers.SetupHub(ctx, mgr, opts); err != nil {
		cancel()
		t.Fatalf("setup hub: %v", err)
	}
	h := &Hub{cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- mgr.Start(ctx) }()
	t.Cleanup(h.Stop)
	return h
}

// Stop stops the hub and waits for it.
func (h *Hub) Stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			ctrl.Log.Error(err, "Hub stopped with an error")
		}
	case <-time.After(30 * time.Second):
	}
	h.cancel = nil
}

// testLogger logs the controllers to stderr when ARCHIPELAGO_TEST_VERBOSE is
// set, and otherwise to a file (named on stderr) so a failure can be read
// without drowning a passing run in reconcile retries at shutdown.
func testLogger() logr.Logger {
	if os.Getenv("ARCHIPELAGO_TEST_VERBOSE") != "" {
		return zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.Level(-1)))
	}
	f, err := os.CreateTemp("", "archipelago-test-*.log")
	if err != nil {
		return logr.Discard()
	}
	fmt.Fprintf(os.Stderr, "controller logs: %s (ARCHIPELAGO_TEST_VERBOSE=1 prints them here)\n", f.Name())
	return zap.New(zap.WriteTo(f), zap.Level(zapcore.InfoLevel))
}

// RunWithAPIServer is the TestMain of a package whose tests share one
// apiserver: it starts it into *api (leaving it nil with the reason in *why
// when the binaries are missing, so each test skips), runs the tests, stops
// it and exits with the tests' code.
func RunWithAPIServer(m *testing.M, api **APIServer, why *string) {
	var err error
	*api, *why, err = StartAPIServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if *api != nil {
		if err := (*api).Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop apiserver:", err)
		}
	}
	os.Exit(code)
}
