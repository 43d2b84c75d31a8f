// Command lab runs the archipelago lab: a hub and member clusters on this
// machine (network namespaces, real apiservers, the real hub, agent and
// kubectl plugin), prints the members, tunnels and a pod-to-pod
// connectivity matrix, and stays up for exploration until Ctrl-C. See
// docs/lab.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/utils/ptr"

	"github.com/archipelago-mesh/archipelago/test/lab"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		members    = flag.Int("members", 3, "Member clusters to join (at most 14).")
		candidates = flag.Int("gateways", 1, "Gateway candidates per member (2 or more shows failover).")
		workers    = flag.Int("workers", 1, "Worker nodes per member.")
		routed     = flag.Int("routed-workers", 0, "Extra workers of the first member on a subnet of their own behind a router (VXLAN to the gateway).")
		family     = flag.String("ip-family", lab.IPv4, "Pod address families: ipv4, ipv6 (IPv6 pods, nodes and tunnel endpoints) or dual (both families; tunnels over IPv4).")
		podCount   = flag.Int("pods", 1, "Pods per node.")
		nat        = flag.Int("nat", -2, "Index of the member whose gateway sits behind a NAT (0-based; -1: none; default: the last).")
		once       = flag.Bool("once", false, "Exit after the matrix; nonzero status if any cell failed.")
		keep       = flag.Bool("keep", false, "Keep the work directory (logs, kubeconfig) after exit; everything else is removed anyway.")
		timeout    = flag.Duration("tunnel-timeout", 90*time.Second, "How long to wait for all tunnels.")
	)
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: lab [flags]   (as root; 'make demo' builds what it needs first)\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *members < 1 || *members > len(lab.MemberNames) {
		fmt.Fprintf(os.Stderr, "lab: --members must be 1..%d\n", len(lab.MemberNames))
		return 2
	}
	if *family != lab.IPv4 && *family != lab.IPv6 && *family != lab.Dual {
		fmt.Fprintf(os.Stderr, "lab: --ip-family must be %s, %s or %s\n", lab.IPv4, lab.IPv6, lab.Dual)
		return 2
	}
	cfg := lab.Config{Members: *members, Workers: *workers, PodsPerNode: *podCount, IPFamily: *family,
		RoutedWorkers: []int{*routed}, Keep: *keep, Progress: os.Stdout}
	for i := 0; i < *members; i++ {
		cfg.Candidates = append(cfg.Candidates, *candidates)
	}
	if *nat != -2 {
		cfg.NATMember = ptr.To(*nat)
	}
	if why := lab.Missing(cfg); why != "" {
		fmt.Fprintln(os.Stderr, "lab:", why)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		return 1
	}
	defer l.Close()
	fmt.Printf("==> Waiting for the tunnels (every gateway to every other member)\n")
	if err := l.WaitTunnels(ctx, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		fmt.Fprintln(os.Stderr, "lab: logs in", l.LogDir(), "(run with --keep to keep them)")
		if *once {
			return 1
		}
	}
	fmt.Printf("==> Tunnels up %.1fs after start\n", time.Since(start).Seconds())
	// Workers get their routes from the membership status the gateway
	// writes a moment after the tunnels come up; hub status follows the
	// agents' reports.
	if err := l.WaitConverged(ctx, 60*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "lab: not converged:", err)
	}
	if _, err := l.WaitHealthy(ctx, 30*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
	}
	fmt.Printf("==> Converged %.1fs after start\n\n", time.Since(start).Seconds())

	fmt.Println("## Members (hub-assigned ranges; node podCIDRs carved from them by the lab's node-IPAM stand-in)")
	l.PrintMembers(ctx, os.Stdout)
	fmt.Println()
	fmt.Println("## kubectl archipelago status --hub-context hub")
	out, _, _ := l.CLI(ctx, "status", "--hub-context", lab.HubContext)
	fmt.Print(out)
	fmt.Println()
	fmt.Println("## Tunnels (WireGuard devices of the gateways, read through their UAPI sockets)")
	l.PrintTunnels(ctx, os.Stdout)
	fmt.Println()
	fmt.Println("## Connectivity matrix: every pod to every pod of the other clusters, in every family (TCP :7070 + ICMP)")
	pods := l.Pods()
	cells := lab.Matrix(ctx, pods, 3*time.Second)
	failed := lab.PrintMatrix(os.Stdout, pods, cells)
	if *once {
		if failed > 0 {
			return 1
		}
		return 0
	}
	fmt.Println()
	fmt.Println("## Explore (the lab stays up until Ctrl-C)")
	fmt.Printf("  export KUBECONFIG=%s\n", l.Kubeconfig)
	ctxs := "hub"
	for _, m := range l.Members() {
		ctxs += ", " + m.Name
	}
	fmt.Printf("  contexts: %s   (kubectl from %s, or any kubectl)\n", ctxs, filepath.Join(cfg.K8sDir, "kubectl"))
	fmt.Printf("  kubectl --context hub get clustersets,memberclusters\n")
	fmt.Printf("  kubectl --context %s get nodes -o wide; kubectl --context %s get clustersetmemberships\n", l.Members()[0].Name, l.Members()[0].Name)
	fmt.Printf("  %s --kubeconfig %s diagnose --context %s\n", filepath.Join(cfg.BinDir, "kubectl-archipelago"), l.Kubeconfig, l.Members()[0].Name)
	p := pods[0]
	fmt.Printf("  ip netns exec %s ping %s        # a pod's namespace (all: ip netns list | grep %s)\n", p.NS, pods[len(pods)-1].IP, lab.NSPrefix)
	gw := l.Members()[0].Candidates()[0]
	fmt.Printf("  wg show %s                    # a gateway's tunnel\n", gw.Iface)
	fmt.Printf("  logs: %s\n", l.LogDir())
	<-ctx.Done()
	fmt.Println()
	return 0
}
