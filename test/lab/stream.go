package lab

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"
)

// serveUDP starts the pod's UDP echo on EchoPort: every datagram goes back
// to its sender.
func (p *Pod) serveUDP() error {
	var pc net.PacketConn
	if err := InNS(p.NS, func() (err error) {
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", EchoPort))
		return err
	}); err != nil {
		return err
	}
	p.udp = pc
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	return nil
}

// Stream is a UDP sequence stream from one pod to another pod's echo: one
// numbered datagram every interval; a datagram counts when its echo came
// back (so both directions of the path are measured).
type Stream struct {
	Src, Dst *Pod
	Interval time.Duration

	conn   net.Conn
	stop   chan struct{}
	done   sync.WaitGroup
	mu     sync.Mutex
	sent   uint64
	sentAt []time.Time // by sequence number - 1
	echoed map[uint64]time.Time
	start  time.Time
}

// StreamResult is what a stream saw.
type StreamResult struct {
	Sent, Received, Lost int
	// LossWindow is the longest run of consecutive lost datagrams, from
	// the sending of its first to the sending of the next one that came
	// back: how long the path was down.
	LossWindow time.Duration
	// WindowStart is when the longest run began.
	WindowStart time.Time
	// LastEcho is when the last echo came back.
	LastEcho time.Time
	Duration time.Duration
}

func (r StreamResult) String() string {
	return fmt.Sprintf("%d sent, %d echoed, %d lost, longest loss window %s", r.Sent, r.Received, r.Lost, r.LossWindow.Round(time.Millisecond))
}

// StartStream starts a stream from src to dst every interval.
func StartStream(ctx context.Context, src, dst *Pod, interval time.Duration) (*Stream, error) {
	var conn net.Conn
	if err := InNS(src.NS, func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "udp", net.JoinHostPort(dst.IP.String(), fmt.Sprint(EchoPort)))
		return err
	}); err != nil {
		return nil, err
	}
	s := &Stream{Src: src, Dst: dst, Interval: interval, conn: conn, stop: make(chan struct{}), echoed: map[uint64]time.Time{}, start: time.Now()}
	s.done.Add(2)
	go func() {
		defer s.done.Done()
		buf := make([]byte, 64)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				select {
				case <-s.stop:
					return
				default:
				}
				// ICMP errors (no route) surface as read errors on a
				// connected socket: keep reading.
				time.Sleep(time.Millisecond)
				continue
			}
			if n >= 8 {
				seq := binary.BigEndian.Uint64(buf[:8])
				s.mu.Lock()
				if _, ok := s.echoed[seq]; !ok {
					s.echoed[seq] = time.Now()
				}
				s.mu.Unlock()
			}
		}
	}()
	go func() {
		defer s.done.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		msg := make([]byte, 64)
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			s.mu.Lock()
			s.sent++
			seq := s.sent
			s.sentAt = append(s.sentAt, time.Now())
			s.mu.Unlock()
			binary.BigEndian.PutUint64(msg, seq)
			_, _ = conn.Write(msg)
		}
	}()
	return s, nil
}

// Stop ends the stream (after waiting a moment for the last echoes) and
// returns what it saw.
func (s *Stream) Stop() StreamResult {
	time.Sleep(500 * time.Millisecond)
	close(s.stop)
	_ = s.conn.Close()
	s.done.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := StreamResult{Sent: int(s.sent), Received: len(s.echoed), Duration: time.Since(s.start)}
	for _, at := range s.echoed {
		if at.After(r.LastEcho) {
			r.LastEcho = at
		}
	}
	// The last datagrams may still be in flight when Stop was called:
	// count only those sent before the final 500 ms.
	tail := uint64(500*time.Millisecond/s.Interval) + 1
	last := s.sent
	if last > tail {
		last -= tail
	}
	runStart := uint64(0)
	for seq := uint64(1); seq <= last+1; seq++ {
		_, ok := s.echoed[seq]
		if seq <= last && !ok {
			r.Lost++
			if runStart == 0 {
				runStart = seq
			}
			continue
		}
		if runStart == 0 {
			continue
		}
		// seq is the first datagram after the run (or the end).
		end := s.sentAt[min(seq, last)-1]
		if seq > last {
			end = end.Add(s.Interval)
		}
		if w := end.Sub(s.sentAt[runStart-1]); w > r.LossWindow {
			r.LossWindow, r.WindowStart = w, s.sentAt[runStart-1]
		}
		runStart = 0
	}
	r.Sent = int(last)
	r.Received = r.Sent - r.Lost
	return r
}

// LeaseHolder is the member's gateway Lease holder (the active gateway as
// the election has it; workers route to it).
func (l *Lab) LeaseHolder(ctx context.Context, m *Member) (string, error) {
	var lease coordinationv1.Lease
	if err := m.Cluster.Client.Get(ctx, types.NamespacedName{Namespace: "archipelago-system", Name: "archipelago-gateway"}, &lease); err != nil {
		return "", err
	}
	if lease.Spec.HolderIdentity == nil {
		return "", nil
	}
	return *lease.Spec.HolderIdentity, nil
}

// Percentile returns the p-th percentile (0..100, nearest rank) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(float64(len(s))*p/100+0.999999) - 1
	if k < 0 {
		k = 0
	}
	if k >= len(s) {
		k = len(s) - 1
	}
	return s[k]
}

// EchoConn is an established TCP connection to a pod's echo server that
// can be checked later: Check writes a line and reads it back.
type EchoConn struct {
	conn net.Conn
	r    interface{ ReadString(byte) (string, error) }
	n    int
}

// Dial opens an EchoConn from src to dst.
func Dial(ctx context.Context, src, dst *Pod) (*EchoConn, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, r, seen, err := Connect(cctx, src, dst)
	if err != nil {
		return nil, err
	}
	if seen != src.IP.String() {
		c.Close()
		return nil, fmt.Errorf("receiver saw %s, not %s", seen, src.IP)
	}
	return &EchoConn{conn: c, r: r}, nil
}

// Check sends one line and waits up to timeout for its echo (TCP
// retransmits across an outage on its own).
func (e *EchoConn) Check(timeout time.Duration) error {
	e.n++
	msg := fmt.Sprintf("check %d\n", e.n)
	_ = e.conn.SetDeadline(time.Now().Add(timeout))
	if _, err := e.conn.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	line, err := e.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if line != msg {
		return fmt.Errorf("echo %q, want %q", line, msg)
	}
	return nil
}

// Close closes the connection.
func (e *EchoConn) Close() { _ = e.conn.Close() }

// PodByName returns the lab's pod called name, or nil.
func PodByName(l *Lab, name string) *Pod {
	for _, p := range l.Pods() {
		if p.Name == name {
			return p
		}
	}
	return nil
}
