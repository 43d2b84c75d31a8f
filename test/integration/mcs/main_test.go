package mcs

import (
	"context"
	"fmt"
	"os"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/archipelago-mesh/archipelago/test/framework"
)

var (
	api     *framework.APIServer
	skipWhy string
)

func TestMain(m *testing.M) {
	var err error
	api, skipWhy, err = framework.StartAPIServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if api != nil {
		if err := api.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop apiserver:", err)
		}
	}
	os.Exit(code)
}

func needAPI(t testing.TB) client.Client {
	t.Helper()
	if api == nil {
		t.Skip("needs kube-apiserver and etcd: " + skipWhy)
	}
	return api.Client
}

// cleanup deletes obj when the test ends, pass or fail.
func cleanup(t testing.TB, c client.Client, obj client.Object) {
	t.Helper()
	t.Cleanup(func() { _ = client.IgnoreNotFound(c.Delete(context.Background(), obj)) })
}
