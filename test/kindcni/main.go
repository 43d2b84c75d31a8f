package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// routeProtocol marks the routes kindcni owns, so that stale ones (a deleted
// node) can be found and removed without touching anyone else's.
const routeProtocol = netlink.RouteProtocol(0x6b) // 'k'

const tableName = "kindcni"

func main() {
	var (
		nodeName  = flag.String("node-name", os.Getenv("NODE_NAME"), "This node's name.")
		podSubnet = flag.String("pod-subnet", os.Getenv("POD_SUBNET"), "The cluster's pod range(s), comma-separated (kind templates it).")
		cniDir    = flag.String("cni-conf-dir", "/etc/cni/net.d", "Where the conflist is written.")
		interval  = flag.Duration("interval", 5*time.Second, "How often nodes are read and the node is reconciled.")
	)
	flag.Parse()
	if *nodeName == "" || *podSubnet == "" {
		log.Fatal("NODE_NAME and POD_SUBNET must be set")
	}
	clusterRanges, err := parsePrefixes(*podSubnet)
	if err != nil {
		log.Fatalf("Parse pod subnet %q: %v", *podSubnet, err)
	}
	cfg, err := restConfig()
	if err != nil {
		log.Fatalf("Kubernetes client config: %v", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatalf("Kubernetes client: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	log.Printf("Starting node=%s podSubnet=%v", *nodeName, clusterRanges)
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		if err := reconcile(ctx, cs, *nodeName, clusterRanges, *cniDir); err != nil {
			log.Printf("Reconcile failed: %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// restConfig talks to the control-plane node directly when kind patched in
// CONTROL_PLANE_ENDPOINT: the CNI must work before Services (kube-proxy) do.
func restConfig() (*rest.Config, error) {
	if ep := os.Getenv("CONTROL_PLANE_ENDPOINT"); ep != "" {
		host, port, err := net.SplitHostPort(ep)
		if err != nil {
			return nil, fmt.Errorf("CONTROL_PLANE_ENDPOINT %q: %w", ep, err)
		}
		os.Setenv("KUBERNETES_SERVICE_HOST", host)
		os.Setenv("KUBERNETES_SERVICE_PORT", port)
	}
	return rest.InClusterConfig()
}

func reconcile(ctx context.Context, cs kubernetes.Interface, nodeName string, clusterRanges []netip.Prefix, cniDir string) error {
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	var errs []error
	desired := map[netip.Prefix]net.IP{}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		cidrs, _ := parsePrefixes(strings.Join(n.Spec.PodCIDRs, ","))
		if n.Name == nodeName {
			if len(cidrs) == 0 {
				log.Printf("Node %s has no podCIDR yet", nodeName)
				continue
			}
			if err := writeConflist(cniDir, cidrs); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		for _, c := range cidrs {
			if gw := nodeIP(n, c.Addr().Is4()); gw != nil {
				desired[c] = gw
			}
		}
	}
	if err := syncRoutes(desired); err != nil {
		errs = append(errs, err)
	}
	if err := ensureMasquerade(clusterRanges); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func nodeIP(n *corev1.Node, v4 bool) net.IP {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() == v4 {
			return net.IP(ip.AsSlice())
		}
	}
	return nil
}

func writeConflist(dir string, cidrs []netip.Prefix) error {
	var ranges [][]map[string]string
	var routes []map[string]string
	for _, c := range cidrs {
		ranges = append(ranges, []map[string]string{{"subnet": c.String()}})
		def := "0.0.0.0/0"
		if c.Addr().Is6() {
			def = "::/0"
		}
		routes = append(routes, map[string]string{"dst": def})
	}
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "kindcni",
		"plugins": []any{
			map[string]any{
				"type":   "ptp",
				"ipMasq": false, // masquerading is ours, cluster-wide (below)
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": "/run/cni-ipam-state",
					"routes":  routes,
					"ranges":  ranges,
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, "10-kindcni.conflist")
	if old, err := os.ReadFile(path); err == nil && string(old) == string(b) {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	log.Printf("Wrote %s for %v", path, cidrs)
	return nil
}

func syncRoutes(desired map[netip.Prefix]net.IP) error {
	var errs []error
	for dst, gw := range desired {
		r := &netlink.Route{Dst: prefixToIPNet(dst), Gw: gw, Protocol: routeProtocol}
		if err := netlink.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", dst, gw, err))
		}
	}
	have, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list routes: %w", err))...)
	}
	for i := range have {
		r := have[i]
		if r.Dst == nil {
			continue
		}
		p, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if _, want := desired[netip.PrefixFrom(p.Unmap(), ones)]; want {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil {
			errs = append(errs, fmt.Errorf("delete stale route %s: %w", r.Dst, err))
		} else {
			log.Printf("Deleted stale route %s", r.Dst)
		}
	}
	return errors.Join(errs...)
}

// ensureMasquerade installs, once, the kindnet-equivalent of
//
//	ip saddr <pod range> ip daddr != <pod range> masquerade
//
// at the postrouting hook, priority srcnat.
func ensureMasquerade(ranges []netip.Prefix) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == tableName {
			return nil
		}
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: tableName})
	ch := c.AddChain(&nftables.Chain{
		Name:     "postrouting",
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	for _, r := range ranges {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: masqueradeExprs(r)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("add nftables table %s: %w", tableName, err)
	}
	log.Printf("Installed masquerade of traffic leaving %v", ranges)
	return nil
}

func masqueradeExprs(r netip.Prefix) []expr.Any {
	nfproto, saddrOff, daddrOff, length := byte(syscall.AF_INET), uint32(12), uint32(16), uint32(4)
	if r.Addr().Is6() {
		nfproto, saddrOff, daddrOff, length = byte(syscall.AF_INET6), 8, 24, 16
	}
	mask := net.CIDRMask(r.Bits(), int(length)*8)
	network := r.Masked().Addr().AsSlice()
	match := func(off uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: length},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: length, Mask: mask, Xor: make([]byte, length)},
			&expr.Cmp{Op: op, Register: 1, Data: network},
		}
	}
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
	}
	exprs = append(exprs, match(saddrOff, expr.CmpOpEq)...)
	exprs = append(exprs, match(daddrOff, expr.CmpOpNeq)...)
	return append(exprs, &expr.Counter{}, &expr.Masq{})
}

func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
