package liveness

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// DefaultPort is the UDP port of the responder.
const DefaultPort = 9475

// magic starts every probe; the responder echoes the whole datagram.
var magic = []byte("ARCHPRB1")

const probeLen = 16 // magic + sequence number

// Serve answers probes on addr (host:port) until ctx is done.
func Serve(ctx context.Context, addr string, log logr.Logger) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("liveness responder on %s: %w", addr, err)
	}
	go func() {
		<-ctx.Done()
		_ = pc.Close()
	}()
	log.Info("Answering gateway liveness probes", "addr", pc.LocalAddr().String())
	return ServeConn(ctx, pc)
}

// ServeConn answers probes on pc until ctx is done or pc is closed.
func ServeConn(ctx context.Context, pc net.PacketConn) error {
	buf := make([]byte, 64)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("liveness responder: %w", err)
		}
		if n != probeLen || !bytes.Equal(buf[:len(magic)], magic) {
			continue
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

// State is what a Prober knows of its target.
type State int

// States of a target.
const (
	// Unknown: no target, or it never answered (no responder there: the
	// Lease alone decides).
	Unknown State = iota
	// Alive: the target answered within the last Misses intervals.
	Alive
	// Dead: the target answered before, then missed Misses probes in a row.
	Dead
)

func (s State) String() string {
	switch s {
	case Alive:
		return "Alive"
	case Dead:
		return "Dead"
	}
	return "Unknown"
}

// Prober probes one target at a time.
type Prober struct {
	// Interval between probes (default 200ms).
	Interval time.Duration
	// Misses in a row after which an answering target is dead (default 5).
	Misses int
	// OnDead is called (from the prober's goroutine) when the target turns
	// dead.
	OnDead func(target string)
	Log    logr.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	mu        sync.Mutex
	name      string
	addr      netip.AddrPort
	answered  bool
	lastReply time.Time
	lastSent  time.Time
	seq       uint64
	dead      bool
}

func (p *Prober) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

func (p *Prober) defaults() {
	if p.Interval == 0 {
		p.Interval = 200 * time.Millisecond
	}
	if p.Misses == 0 {
		p.Misses = 5
	}
}

// SetTarget names the node to probe and its address; an invalid address or
// an empty name stops probing. A new target starts Unknown.
func (p *Prober) SetTarget(name string, addr netip.AddrPort) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !addr.IsValid() {
		name = ""
	}
	if name == p.name && addr == p.addr {
		return
	}
	p.name, p.addr = name, addr
	p.answered, p.dead = false, false
	p.lastReply, p.lastSent = time.Time{}, time.Time{}
}

// State returns the state of target (Unknown unless it is the current
// target).
func (p *Prober) State(target string) State {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.defaults()
	return p.stateLocked(target, p.now())
}

func (p *Prober) stateLocked(target string, now time.Time) State {
	if target == "" || target != p.name || !p.answered {
		return Unknown
	}
	if now.Sub(p.lastReply) > time.Duration(p.Misses)*p.Interval {
		return Dead
	}
	return Alive
}

// replied records an answer to probe seq.
func (p *Prober) replied(from netip.AddrPort, seq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if from.Addr().Unmap() != p.addr.Addr().Unmap() || seq == 0 || seq > p.seq {
		return
	}
	p.answered, p.dead = true, false
	p.lastReply = p.now()
}

// Run probes until ctx is done.
func (p *Prober) Run(ctx context.Context) error {
	p.mu.Lock()
	p.defaults()
	p.mu.Unlock()
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return fmt.Errorf("liveness prober: %w", err)
	}
	go func() {
		<-ctx.Done()
		_ = conn.Close()
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			if n == probeLen && bytes.Equal(buf[:len(magic)], magic) {
				p.replied(from, binary.BigEndian.Uint64(buf[len(magic):n]))
			}
		}
	}()
	tick := time.NewTicker(p.Interval)
	defer tick.Stop()
	msg := make([]byte, probeLen)
	copy(msg, magic)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		p.mu.Lock()
		target, addr := p.name, p.addr
		now := p.now()
		turnedDead := false
		if target != "" {
			if p.stateLocked(target, now) == Dead && !p.dead {
				p.dead, turnedDead = true, true
			}
			p.seq++
			binary.BigEndian.PutUint64(msg[len(magic):], p.seq)
			p.lastSent = now
		}
		p.mu.Unlock()
		if target == "" {
			continue
		}
		_, _ = conn.WriteToUDPAddrPort(msg, addr)
		if turnedDead {
			p.Log.Info("Active gateway stopped answering liveness probes", "node", target, "addr", addr.String())
			if p.OnDead != nil {
				p.OnDead(target)
			}
		}
	}
}
