package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	archscheme "github.com/archipelago-mesh/archipelago/internal/scheme"
)

// Scheme knows the core kinds and archipelago's.
func Scheme() *runtime.Scheme { return archscheme.New() }

// Cluster is one kube-apiserver + etcd pair running inside a namespace of
// the lab (the hub's on the WAN, a member's on its LAN).
type Cluster struct {
	Name string // also the kubeconfig context
	NS   string // namespace the apiserver and etcd run in
	IP   string // the apiserver's address inside the lab
	// URL is the apiserver as the host reaches it (a proxy on 127.0.0.1).
	URL    string
	Config *rest.Config
	Client client.Client

	pki       *pki
	dir       string
	etcd      *Proc
	apiserver *Proc
	proxy     *proxy
}

// InternalURL is the apiserver's URL inside the lab.
func (c *Cluster) InternalURL() string { return "https://" + c.IP + ":6443" }

func (l *Lab) startCluster(ctx context.Context, name, ns, ip string) (*Cluster, error) {
	dir := filepath.Join(l.Dir, name)
	p, err := newPKI(filepath.Join(dir, "pki"), name, []net.IP{net.ParseIP(ip)})
	if err != nil {
		return nil, fmt.Errorf("pki of %s: %w", name, err)
	}
	c := &Cluster{Name: name, NS: ns, IP: ip, pki: p, dir: dir}
	if err := os.MkdirAll(filepath.Join(dir, "etcd"), 0o700); err != nil {
		return nil, err
	}
	c.etcd, err = l.reg.start(name+"/etcd", ns, filepath.Join(l.LogDir(), name+"-etcd.log"), nil,
		filepath.Join(l.K8sDir, "etcd"),
		"--name=lab", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=lab=http://127.0.0.1:2380", "--unsafe-no-fsync=true", "--log-level=warn")
	if err != nil {
		return nil, err
	}
	if err := c.startAPIServer(l); err != nil {
		return nil, err
	}
	if c.proxy, err = newProxy(ns, "127.0.0.1:6443"); err != nil {
		return nil, err
	}
	l.addCloser(c.proxy.Close)
	c.URL = c.proxy.URL()
	c.Config = &rest.Config{
		Host:            c.URL,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.CAPEM, CertData: p.AdminCert, KeyData: p.AdminKey},
		QPS:             100, Burst: 200,
		Timeout: 15 * time.Second,
	}
	if err := c.WaitReady(ctx, 90*time.Second); err != nil {
		return nil, err
	}
	if c.Client, err = client.New(c.Config, client.Options{Scheme: Scheme()}); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) startAPIServer(l *Lab) error {
	p := c.pki
	var err error
	c.apiserver, err = l.reg.start(c.Name+"/kube-apiserver", c.NS, filepath.Join(l.LogDir(), c.Name+"-apiserver.log"), nil,
		filepath.Join(l.K8sDir, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0", "--secure-port=6443", "--advertise-address="+c.IP,
		"--cert-dir="+filepath.Join(c.dir, "certs"),
		"--tls-cert-file="+p.path("serving.crt"), "--tls-private-key-file="+p.path("serving.key"),
		"--client-ca-file="+p.path("ca.crt"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.path("sa.pub"),
		"--service-account-signing-key-file="+p.path("sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		// No kube-controller-manager runs in the lab: nothing would
		// create the default ServiceAccounts the admission plugin wants.
		"--disable-admission-plugins=ServiceAccount",
	)
	return err
}

// WaitReady polls /readyz until it answers ok.
func (c *Cluster) WaitReady(ctx context.Context, timeout time.Duration) error {
	tr, err := rest.TransportFor(c.Config)
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if !c.apiserver.Running() {
			return fmt.Errorf("kube-apiserver of %s exited (see %s)", c.Name, c.apiserver.Log)
		}
		resp, err := hc.Get(c.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver of %s not ready after %s: %s (see %s)", c.Name, timeout, last, c.apiserver.Log)
}

// StopAPIServer stops the apiserver (etcd keeps running).
func (c *Cluster) StopAPIServer() { c.apiserver.Stop(10 * time.Second) }

// StartAPIServer starts the apiserver again and waits until it is ready.
func (c *Cluster) StartAPIServer(ctx context.Context, l *Lab) error {
	if err := c.startAPIServer(l); err != nil {
		return err
	}
	return c.WaitReady(ctx, 90*time.Second)
}

func (c *Cluster) stop() {
	if c.apiserver != nil {
		c.apiserver.Stop(5 * time.Second)
	}
	if c.etcd != nil {
		c.etcd.Stop(5 * time.Second)
	}
	if c.proxy != nil {
		c.proxy.Close()
	}
}
