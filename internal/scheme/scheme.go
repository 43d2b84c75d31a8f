// Package scheme builds the runtime.Scheme every archipelago binary and test
// uses: the core Kubernetes kinds and the mesh.archipelago.dev kinds. It holds
// nothing else and must not grow into a home for shared client code.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// New returns a scheme that knows the core kinds and archipelago's.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err) // static registration: fails only on a programming error
	}
	if err := meshv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
