package probe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// DefaultPort is where probe pods listen.
const DefaultPort = 7070

// Serve answers every connection on ln with the remote address it saw
// ("ip:port", one line), then closes it. It returns when ctx ends.
func Serve(ctx context.Context, ln net.Listener) error {
	go func() {
		<-ctx.Done()
		_ = ln.Close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		go func() {
			defer conn.Close()
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = fmt.Fprintf(conn, "%s\n", conn.RemoteAddr())
		}()
	}
}

// Connect dials addr and returns the line the server answered: the address
// it saw this connection come from.
func Connect(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read the answer of %s: %w", addr, err)
	}
	return strings.TrimSpace(line), nil
}

// SeenHost returns the host part of an answer ("10.1.0.5:41234" → "10.1.0.5").
func SeenHost(answer string) string {
	host, _, err := net.SplitHostPort(strings.TrimSpace(answer))
	if err != nil {
		return strings.TrimSpace(answer)
	}
	return host
}

// ServeUDP answers every datagram on conn with the address it came from and
// name, separated by a space ("10.1.0.5:41234 echo-7d9f-x2"), so that a
// client behind a load-balanced name sees both whether its source address
// survived and which server answered. Datagrams from its own port number
// (another server) get no answer. It returns when ctx ends.
func ServeUDP(ctx context.Context, conn net.PacketConn, name string) error {
	go func() {
		<-ctx.Done()
		_ = conn.Close()
	}()
	buf := make([]byte, 1500)
	for {
		_, from, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("read on %s: %w", conn.LocalAddr(), err)
		}
		// Not to another server's port: two probes must not answer each
		// other for ever after one forged datagram.
		if ua, ok := from.(*net.UDPAddr); ok {
			if la, ok := conn.LocalAddr().(*net.UDPAddr); ok && ua.Port == la.Port {
				continue
			}
		}
		_, _ = conn.WriteTo([]byte(from.String()+" "+name+"\n"), from)
	}
}

// ConnectUDP sends a datagram to addr from a socket of its own (a new source
// port, so a load balancer picks a server afresh) and returns the answer of
// ServeUDP. A lost datagram is sent again every 500 ms until timeout.
func ConnectUDP(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return "", fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	buf := make([]byte, 1500)
	for {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			return "", fmt.Errorf("send to %s: %w", addr, err)
		}
		wait := time.Now().Add(500 * time.Millisecond)
		if dl, ok := ctx.Deadline(); ok && dl.Before(wait) {
			wait = dl
		}
		_ = conn.SetReadDeadline(wait)
		n, err := conn.Read(buf)
		if err == nil {
			return strings.TrimSpace(string(buf[:n])), nil
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("no answer from %s (udp) within %s: %w", addr, timeout, err)
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			// An ICMP port unreachable surfaces as a read error: try again
			// after the pause, the server may not be there yet.
			select {
			case <-ctx.Done():
				return "", fmt.Errorf("no answer from %s (udp) within %s: %w", addr, timeout, err)
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}
