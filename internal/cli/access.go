package cli

import (
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	archscheme "github.com/archipelago-mesh/archipelago/internal/scheme"
)

// requestTimeout bounds every single API request, so an address that drops
// packets fails in seconds instead of hanging on TCP retries.
const requestTimeout = 15 * time.Second

var scheme = newScheme()

func newScheme() *runtime.Scheme { return archscheme.New() }

// cluster is one kubeconfig context, resolved into clients.
type cluster struct {
	// Context is the kubeconfig context's name ("" for the current one).
	Context string
	Config  *rest.Config
	Client  client.Client
	Kube    kubernetes.Interface
}

// describe names the cluster for messages.
func (c *cluster) describe() string {
	if c.Context == "" {
		return "the current context"
	}
	return fmt.Sprintf("context %q", c.Context)
}

// memberContext is --context, or "" for the kubeconfig's current context.
func (o *Options) memberContext() string {
	if o.Flags != nil && o.Flags.Context != nil {
		return *o.Flags.Context
	}
	return ""
}

// connect resolves a kubeconfig context. An empty name means what kubectl
// would use: --context, or the current context, plus the other global
// flags (--kubeconfig, --server, --token...). A named context ignores
// those overrides except --kubeconfig, because it names a second cluster.
func (o *Options) connect(contextName string) (*cluster, error) {
	var (
		cfg *rest.Config
		err error
	)
	if contextName == "" || contextName == o.memberContext() {
		cfg, err = o.Flags.ToRESTConfig()
		contextName = o.memberContext()
	} else {
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		if o.Flags.KubeConfig != nil && *o.Flags.KubeConfig != "" {
			rules.ExplicitPath = *o.Flags.KubeConfig
		}
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
			&clientcmd.ConfigOverrides{CurrentContext: contextName}).ClientConfig()
	}
	if err != nil {
		what := "the current context"
		if contextName != "" {
			what = fmt.Sprintf("context %q", contextName)
		}
		return nil, usageError("load %s from the kubeconfig: %v; list contexts with 'kubectl config get-contexts'", what, err)
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.Timeout == 0 {
		cfg.Timeout = requestTimeout
	}
	cfg.UserAgent = "kubectl-archipelago"
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("build a client for %s: %w", contextName, err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("build a clientset for %s: %w", contextName, err)
	}
	return &cluster{Context: contextName, Config: cfg, Client: c, Kube: kube}, nil
}

// caBundle returns the CA a context trusts for its server.
func caBundle(cfg *rest.Config) ([]byte, error) {
	if len(cfg.CAData) > 0 {
		return cfg.CAData, nil
	}
	if cfg.CAFile != "" {
		b, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read the CA file %s of the hub context: %w", cfg.CAFile, err)
		}
		return b, nil
	}
	return nil, nil
}

// unreachable wraps an API error of a cluster with what to check next.
func unreachable(c *cluster, err error) error {
	ctxArg := ""
	if c.Context != "" {
		ctxArg = " --context " + c.Context
	}
	return &exitError{code: ExitError, err: fmt.Errorf("cannot ask the cluster of %s (%s): %w; check it with 'kubectl%s get --raw /readyz'",
		c.describe(), strings.TrimSpace(c.Config.Host), err, ctxArg)}
}
