// Command archipelago-probe is the probe of `kubectl archipelago verify`:
//
//	archipelago-probe serve [--port 7070]
//	archipelago-probe connect HOST:PORT [--timeout 5s] [--udp] [--count 1]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/archipelago-mesh/archipelago/internal/cli/probe"
)

const usage = `Usage:
  archipelago-probe serve [--port 7070]          answer each TCP connection with the address it came from,
                                                 each UDP datagram to the same port with that and the hostname
  archipelago-probe connect HOST:PORT [--timeout 5s] [--udp] [--count 1]
                                                 print the address the server saw (UDP: and its name),
                                                 count times, each from a new source port
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch os.Args[1] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		port := fs.Int("port", probe.DefaultPort, "TCP and UDP port to listen on (all addresses)")
		_ = fs.Parse(os.Args[2:])
		addr := net.JoinHostPort("", strconv.Itoa(*port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "Error: listen on port %d: %v\n", *port, err)
			os.Exit(1)
		}
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "Error: listen on UDP port %d: %v\n", *port, err)
			os.Exit(1)
		}
		name, err := os.Hostname()
		if err != nil {
			fmt.Fprintf(os.Stderr, "Error: hostname: %v\n", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "Listening on %s (TCP) and %s (UDP) as %s\n", ln.Addr(), pc.LocalAddr(), name)
		errs := make(chan error, 2)
		go func() { errs <- probe.Serve(ctx, ln) }()
		go func() { errs <- probe.ServeUDP(ctx, pc, name) }()
		for range 2 {
			if err := <-errs; err != nil {
				fmt.Fprintf(os.Stderr, "Error: %v\n", err)
				os.Exit(1)
			}
		}
	case "connect":
		fs := flag.NewFlagSet("connect", flag.ExitOnError)
		timeout := fs.Duration("timeout", 5*time.Second, "Give up after this long (each request)")
		udp := fs.Bool("udp", false, "Send a UDP datagram instead of connecting over TCP")
		count := fs.Int("count", 1, "Ask this many times, each from a new source port")
		if len(os.Args) < 3 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		// The address comes first so that flags may follow it.
		addr := os.Args[2]
		_ = fs.Parse(os.Args[3:])
		connect := probe.Connect
		if *udp {
			connect = probe.ConnectUDP
		}
		for range max(*count, 1) {
			answer, err := connect(ctx, addr, *timeout)
			if err != nil {
				fmt.Fprintf(os.Stderr, "Error: %v\n", err)
				os.Exit(1)
			}
			fmt.Println(answer)
		}
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
}
