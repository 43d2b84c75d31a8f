package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/archipelago-mesh/archipelago/internal/netns"
)

// NSPrefix starts the name of every network namespace the lab creates.
const NSPrefix = "arl-"

// sh runs a command and returns its combined output, wrapping the error
// with the command line and output.
func sh(args ...string) (string, error) {
	return shCtx(context.Background(), args...)
}

func shCtx(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// nsRun runs a command inside network namespace ns.
func nsRun(ns string, args ...string) (string, error) {
	return sh(append([]string{"ip", "netns", "exec", ns}, args...)...)
}

// ipn runs "ip -n ns args...".
func ipn(ns string, args ...string) error {
	_, err := sh(append([]string{"ip", "-n", ns}, args...)...)
	return err
}

// batch runs several "ip" commands in one process ("ip -batch"), which is
// much faster than one process per command when a topology is built.
func ipBatch(ns string, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	args := []string{"ip"}
	if ns != "" {
		args = append(args, "-n", ns)
	}
	args = append(args, "-batch", "-")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s -batch: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func sysctl(ns, key, value string) error {
	_, err := nsRun(ns, "sysctl", "-qw", key+"="+value)
	return err
}

// nft loads an nftables ruleset into namespace ns.
func nft(ns, ruleset string) error {
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft in %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// InNS runs fn on an OS thread switched into network namespace ns. Sockets
// keep the namespace they were created in, so listeners and connections
// made in fn can be used from any goroutine afterwards.
func InNS(ns string, fn func() error) error { return netns.DoNamed(ns, fn) }

// DialIn opens a TCP connection from inside namespace ns.
func DialIn(ctx context.Context, ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNS(ns, func() (err error) {
		d := net.Dialer{}
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// ListenIn opens a TCP listener inside namespace ns.
func ListenIn(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := InNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// proxy forwards TCP connections accepted on 127.0.0.1 of the host to addr
// inside namespace ns. It is how the lab process, kubectl and the CLI reach
// the apiservers without giving the host an address in the lab.
type proxy struct {
	ln   net.Listener
	ns   string
	addr string
	wg   sync.WaitGroup
}

func newProxy(ns, addr string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, ns: ns, addr: addr}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *proxy) URL() string { return "https://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			up, err := DialIn(ctx, p.ns, p.addr)
			cancel()
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(up, c); closeWrite(up); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func (p *proxy) Close() { _ = p.ln.Close() }
