// Command archipelago-probe is the probe of `kubectl archipelago verify`:
//
//	archipelago-probe serve [--port 7070]
//	archipelago-probe connect HOST:PORT [--timeout 5s]
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
  archipelago-probe serve [--port 7070]          answer each TCP connection with the address it came from
  archipelago-probe connect HOST:PORT [--timeout 5s]  print the address the server saw
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
		port := fs.Int("port", probe.DefaultPort, "TCP port to listen on (all addresses)")
		_ = fs.Parse(os.Args[2:])
		ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(*port)))
		if err != nil {
			fmt.Fprintf(os.Stderr, "Error: listen on port %d: %v\n", *port, err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "Listening on %s\n", ln.Addr())
		if err := probe.Serve(ctx, ln); err != nil {
			fmt.Fprintf(os.Stderr, "Error: %v\n", err)
			os.Exit(1)
		}
	case "connect":
		fs := flag.NewFlagSet("connect", flag.ExitOnError)
		timeout := fs.Duration("timeout", 5*time.Second, "Give up after this long")
		if len(os.Args) < 3 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		// The address comes first so that flags may follow it.
		addr := os.Args[2]
		_ = fs.Parse(os.Args[3:])
		answer, err := probe.Connect(ctx, addr, *timeout)
		if err != nil {
			fmt.Fprintf(os.Stderr, "Error: %v\n", err)
			os.Exit(1)
		}
		fmt.Println(answer)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
}
