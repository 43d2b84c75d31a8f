// Package scheme builds the runtime.Scheme every archipelago binary and test
// uses: the core Kubernetes kinds, the mesh.archipelago.dev kinds, the
// Multi-Cluster Services API (multicluster.x-k8s.io v1alpha1 and v1beta1) and
// ClusterProperty (about.k8s.io). It holds
// nothing else and must not grow into a home for shared client code.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	mcsv1alpha1 "sigs.k8s.io/mcs-api/pkg/apis/v1alpha1"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	aboutv1beta1 "github.com/archipelago-mesh/archipelago/api/about/v1beta1"
	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// New returns a scheme that knows the core kinds, archipelago's, the MCS API's
// and ClusterProperty.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err) // static registration: fails only on a programming error
	}
	for _, add := range []func(*runtime.Scheme) error{
		meshv1.AddToScheme, aboutv1beta1.AddToScheme, mcsv1alpha1.Install, mcsv1beta1.Install,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}
