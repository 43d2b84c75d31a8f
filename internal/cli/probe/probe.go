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
