package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// EchoPort is where every pod's echo server listens.
const EchoPort = 7070

// Family is an IP family of pod addresses.
type Family int

// The two families.
const (
	Family4 Family = 4
	Family6 Family = 6
)

func (f Family) String() string {
	if f == Family6 {
		return "IPv6"
	}
	return "IPv4"
}

// serve starts the pod's echo server: it writes the address the connection
// came from, then echoes.
func (p *Pod) serve() error {
	ln, err := ListenIn(p.NS, fmt.Sprintf(":%d", EchoPort))
	if err != nil {
		return err
	}
	p.ln = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
				if _, err := io.WriteString(c, host+"\n"); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return nil
}

// Connect opens a TCP connection from src to dst's echo server and returns
// it with the source address dst saw.
func Connect(ctx context.Context, src, dst *Pod) (net.Conn, *bufio.Reader, string, error) {
	c, err := DialIn(ctx, src.NS, net.JoinHostPort(dst.IP.String(), fmt.Sprint(EchoPort)))
	if err != nil {
		return nil, nil, "", err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, nil, "", err
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, r, strings.TrimSpace(line), nil
}

// TCP connects src to dst and returns the source address dst saw.
func TCP(ctx context.Context, src, dst *Pod, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, _, seen, err := Connect(ctx, src, dst)
	if err != nil {
		return "", err
	}
	c.Close()
	return seen, nil
}

// Ping sends one ICMP echo from src to dst.
func Ping(src, dst *Pod, timeout time.Duration) error {
	w := int(timeout.Seconds())
	if w < 1 {
		w = 1
	}
	_, err := nsRun(src.NS, "ping", "-n", "-q", "-c", "1", "-W", fmt.Sprint(w), dst.IP.String())
	return err
}

// Cell is one entry of the connectivity matrix: Src and Dst are the pods
// seen through their addresses of Family.
type Cell struct {
	Family   Family
	Src, Dst *Pod
	Seen     string // source address the receiver saw (TCP)
	TCPErr   error
	PingErr  error
	RTT      time.Duration
}

// OK reports whether TCP and ICMP worked and the source address survived.
func (c Cell) OK() bool {
	return c.TCPErr == nil && c.PingErr == nil && c.Seen == c.Src.IP.String()
}

// Status is a short word for the cell.
func (c Cell) Status() string {
	switch {
	case c.TCPErr != nil && c.PingErr != nil:
		return "FAIL"
	case c.TCPErr != nil:
		return "FAIL(tcp)"
	case c.PingErr != nil:
		return "FAIL(icmp)"
	case c.Seen != c.Src.IP.String():
		return "SNAT " + c.Seen
	}
	return "ok " + c.Seen
}

// CrossPairs returns every ordered pair of pods in different members.
func CrossPairs(pods []*Pod) [][2]*Pod {
	var out [][2]*Pod
	for _, s := range pods {
		for _, d := range pods {
			if s.Node.Member != d.Node.Member {
				out = append(out, [2]*Pod{s, d})
			}
		}
	}
	return out
}

// Matrix probes every cross-member pair over TCP and ICMP, a few at a
// time, in every family both pods of the pair have.
func Matrix(ctx context.Context, pods []*Pod, timeout time.Duration) []Cell {
	type pair struct {
		f    Family
		s, d *Pod
	}
	var pairs []pair
	for _, f := range []Family{Family4, Family6} {
		for _, pr := range CrossPairs(pods) {
			if s, d := pr[0].As(f), pr[1].As(f); s != nil && d != nil {
				pairs = append(pairs, pair{f, s, d})
			}
		}
	}
	cells := make([]Cell, len(pairs))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, pr := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c := Cell{Family: pr.f, Src: pr.s, Dst: pr.d}
			start := time.Now()
			c.Seen, c.TCPErr = TCP(ctx, pr.s, pr.d, timeout)
			c.RTT = time.Since(start)
			c.PingErr = Ping(pr.s, pr.d, timeout)
			cells[i] = c
		}()
	}
	wg.Wait()
	return cells
}

// WaitTCP retries a TCP probe from src to dst until it works with the
// source address kept, or timeout. It returns how long it took.
func WaitTCP(ctx context.Context, src, dst *Pod, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		seen, err := TCP(ctx, src, dst, 300*time.Millisecond)
		if err == nil && seen == src.IP.String() {
			return time.Since(start), nil
		}
		if err == nil {
			err = fmt.Errorf("receiver saw %s, not %s", seen, src.IP)
		}
		last = err
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("%s -> %s not working after %s: %v", src.Name, dst.Name, timeout, last)
}

// WaitConverged waits until every cross-member pair of pods works over TCP
// in every family of the lab with its source address kept (the tunnels
// are up and every node has its routes), or timeout.
func (l *Lab) WaitConverged(ctx context.Context, timeout time.Duration) error {
	start := time.Now()
	for _, f := range l.Families() {
		for _, pr := range CrossPairs(l.Pods()) {
			s, d := pr[0].As(f), pr[1].As(f)
			if s == nil || d == nil {
				continue
			}
			if _, err := WaitTCP(ctx, s, d, timeout-time.Since(start)); err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
		}
	}
	return nil
}
