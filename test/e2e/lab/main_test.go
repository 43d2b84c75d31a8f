//go:build e2e

package lab_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/archipelago-mesh/archipelago/test/lab"
)

var (
	theLab *lab.Lab
	skip   string
)

// config is the suite's lab: three members, the first with two gateway
// candidates (takeover) and a worker on a routed subnet (VXLAN to its
// gateway), the second with a WAN of 1400 bytes (its tunnel MTU is
// smaller), the last behind a NAT. Pods and nodes are dual-stack unless
// ARCHIPELAGO_LAB_IP_FAMILY says ipv4 or ipv6.
func config() lab.Config {
	family := os.Getenv("ARCHIPELAGO_LAB_IP_FAMILY")
	if family == "" {
		family = lab.Dual
	}
	return lab.Config{Members: 3, Candidates: []int{2, 1, 1}, WANMTU: []int{0, 1400, 0}, RoutedWorkers: []int{1},
		IPFamily: family, Progress: os.Stderr, Keep: os.Getenv("ARCHIPELAGO_LAB_KEEP") != ""}
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	cfg := config()
	if why := lab.Missing(cfg); why != "" {
		skip = why
		return m.Run()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab up:", err)
		return 1
	}
	theLab = l
	done := make(chan struct{})
	defer close(done)
	go func() {
		// Ctrl-C while tests run: tear the lab down before dying.
		select {
		case <-ctx.Done():
			l.Close()
			os.Exit(130)
		case <-done:
		}
	}()
	defer l.Close()
	if err := l.WaitTunnels(ctx, 90*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		return 1
	}
	// Tunnels up is not quite converged: workers get their routes from the
	// membership status the gateway writes a moment later.
	if err := l.WaitConverged(ctx, 60*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "==> lab ready in %.1fs (logs: %s)\n", time.Since(start).Seconds(), l.LogDir())
	return m.Run()
}

func need(t *testing.T) *lab.Lab {
	t.Helper()
	if skip != "" {
		t.Skip(skip)
	}
	return theLab
}
