package liveness

import (
	"bytes"
	"context"
	"crypto/rand"
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

// Every message is 16 bytes: an 8-byte magic that says whether it is a
// request or a reply, then the prober's sequence number. The responder
// answers only requests and only with a reply, and nothing answers a reply,
// so no message can make two responders echo each other. The magics of
// version 1 ("ARCHPRB1", one message type that was echoed as is) are not
// accepted any more: a prober of this version and a responder of the old
// one (or the reverse) never see an answer, the target stays Unknown and
// the Lease alone decides (docs/agent.md).
var (
	requestMagic = []byte("ARCHPRQ2")
	replyMagic   = []byte("ARCHPRP2")
)

const (
	probeLen = 16 // magic + sequence number
	// window is how many of the latest probes a reply may answer: a reply
	// that overtook the next probe still counts, an older one does not.
	window = 4
)

// parse returns the sequence number of msg when it is a message of the kind
// that magic names.
func parse(msg, magic []byte) (uint64, bool) {
	if len(msg) != probeLen || !bytes.Equal(msg[:len(magic)], magic) {
		return 0, false
	}
	return binary.BigEndian.Uint64(msg[len(magic):]), true
}

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
		if _, ok := parse(buf[:n], requestMagic); !ok {
			continue
		}
		copy(buf, replyMagic)
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
	// seq is the number of the latest probe sent; acked the latest one
	// answered (or the last one sent before the target was set: replies to
	// probes of an earlier target do not count).
	seq, acked uint64
	seeded     bool
	dead       bool
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
	p.acked = p.seq
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

// seed starts the sequence numbers at a random value, so that a sender
// off the path cannot guess one a reply would need.
func (p *Prober) seed() {
	if p.seeded {
		return
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	p.seq = binary.BigEndian.Uint64(b[:]) >> 1 // far from wrapping
	p.acked = p.seq
	p.seeded = true
}

// replied records reply msg from from. It counts only when it comes from
// the target's address and port and answers one of the last window probes
// that was not answered yet; anything else (another sender, another port, a
// request, a stale, repeated or made-up number) is ignored.
func (p *Prober) replied(from netip.AddrPort, msg []byte) {
	seq, ok := parse(msg, replyMagic)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.name == "" || from.Addr().Unmap() != p.addr.Addr().Unmap() || from.Port() != p.addr.Port() {
		return
	}
	if seq <= p.acked || seq > p.seq || p.seq-seq >= window {
		return
	}
	p.acked = seq
	p.answered, p.dead = true, false
	p.lastReply = p.now()
}

// Run probes until ctx is done.
func (p *Prober) Run(ctx context.Context) error {
	p.mu.Lock()
	p.defaults()
	p.seed()
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
			p.replied(from, buf[:n])
		}
	}()
	tick := time.NewTicker(p.Interval)
	defer tick.Stop()
	msg := make([]byte, probeLen)
	copy(msg, requestMagic)
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
			binary.BigEndian.PutUint64(msg[len(requestMagic):], p.seq)
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
