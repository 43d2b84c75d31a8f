package wireguard_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	"github.com/archipelago-mesh/archipelago/agent/wireguard/fake"
)

const dev = "wg-test"

func key(t testing.TB, seed byte) wgtypes.Key {
	t.Helper()
	var raw [32]byte
	for i := range raw {
		raw[i] = seed
	}
	k, err := wgtypes.NewKey(raw[:])
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pub(t testing.TB, seed byte) wgtypes.Key { return key(t, seed).PublicKey() }

func pfx(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, x := range s {
		out[i] = netip.MustParsePrefix(x)
	}
	return out
}

// peerOpt is a functional option for test PeerPlans.
type peerOpt func(*wireguard.PeerPlan)

func withEndpoint(s string) peerOpt {
	return func(p *wireguard.PeerPlan) { p.Endpoint = netip.MustParseAddrPort(s) }
}
func withIPs(s ...string) peerOpt {
	return func(p *wireguard.PeerPlan) { p.AllowedIPs = pfx(s...) }
}

func peer(t testing.TB, seed byte, opts ...peerOpt) wireguard.PeerPlan {
	p := wireguard.PeerPlan{PublicKey: pub(t, seed), PersistentKeepalive: 25 * time.Second}
	for _, o := range opts {
		o(&p)
	}
	return p
}

func plan(t testing.TB, peers ...wireguard.PeerPlan) wireguard.TunnelPlan {
	return wireguard.TunnelPlan{PrivateKey: key(t, 1), ListenPort: 51820, Peers: peers}
}

func mustApply(t *testing.T, c wireguard.Client, p wireguard.TunnelPlan) wireguard.Changes {
	t.Helper()
	ch, err := wireguard.Apply(c, dev, p)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return ch
}

func TestApply(t *testing.T) {
	base := plan(t,
		peer(t, 2, withEndpoint("192.0.2.2:51820"), withIPs("10.2.0.0/16")),
		peer(t, 3, withEndpoint("192.0.2.3:51820"), withIPs("10.3.0.0/16", "fd00:3::/64")),
	)
	tests := []struct {
		name        string
		next        func(wireguard.TunnelPlan) wireguard.TunnelPlan
		wantAdded   int
		wantUpdated []wgtypes.Key
		wantRemoved []wgtypes.Key
		wantDevice  bool
	}{
		{
			name: "same plan",
			next: func(p wireguard.TunnelPlan) wireguard.TunnelPlan { return p },
		},
		{
			name: "allowed IPs reordered and with host bits",
			next: func(p wireguard.TunnelPlan) wireguard.TunnelPlan {
				p.Peers = []wireguard.PeerPlan{
					peer(t, 3, withEndpoint("192.0.2.3:51820"), withIPs("fd00:3::1/64", "10.3.7.1/16", "10.3.0.0/16")),
					peer(t, 2, withEndpoint("192.0.2.2:51820"), withIPs("10.2.0.0/16")),
				}
				return p
			},
		},
		{
			name: "IPv4-mapped endpoint equals IPv4",
			next: func(p wireguard.TunnelPlan) wireguard.TunnelPlan {
				p.Peers = []wireguard.PeerPlan{
					peer(t, 2, withEndpoint("[::ffff:192.0.2.2]:51820"), withIPs("10.2.0.0/16")),
					p.Peers[1],
				}
				return p
			},
		},
		{
			name: "keepalive below a second of difference is truncated",
			next: func(p wireguard.TunnelPlan) wireguard.TunnelPlan {
				p.Peers = slices.Clone(p.Peers)
				p.Peers[0].PersistentKeepalive = 25*time.Second + 300*time.Millisecond
				return p
			},
		},
		{
			name: "one peer's allowed IPs change",
			next: func(p wireguard.TunnelPlan) wireguard.TunnelPlan {
				p.Peers = slices.Clone(p.Peers)
				p.Peers[1].AllowedIPs = pfx("10.3.0.0/16", "10.33.0.0/16")
				return p
			},
			wantUpdated: []wgtypes.Key{pub(t, 3)},
		},
		{
			name: "endpoint moves (gateway failover)",
			next: func(p wireguard.TunnelPlan) wireguard.TunnelPlan {
				p.Peers = slices.Clone(p.Peers)
				p.Peers[0].Endpoint = netip.MustParseAddrPort("192.0.2.22:51820")
				return p
			},
			wantUpdated: []wgtypes.Key{pub(t, 2)},
		},
		{
			name: "keepalive changes",
			next: func(p wireguard.TunnelPlan) wireguard.TunnelPlan {
				p.Peers = slices.Clone(p.Peers)
				p.Peers[0].PersistentKeepalive = 0
				return p
			},
			wantUpdated: []wgtypes.Key{pub(t, 2)},
		},
		{
			name: "peer added",
			next: func(p wireguard.TunnelPlan) wireguard.TunnelPlan {
				p.Peers = append(slices.Clone(p.Peers), peer(t, 4, withIPs("10.4.0.0/16")))
				return p
			},
			wantAdded: 1,
		},
		{
			name: "peer removed",
			next: func(p wireguard.TunnelPlan) wireguard.TunnelPlan {
				p.Peers = p.Peers[:1]
				return p
			},
			wantRemoved: []wgtypes.Key{pub(t, 3)},
		},
		{
			name: "listen port changes",
			next: func(p wireguard.TunnelPlan) wireguard.TunnelPlan {
				p.ListenPort = 51821
				return p
			},
			wantDevice: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.NewClient(dev)
			mustApply(t, c, base)
			c.ResetCalls()

			ch := mustApply(t, c, tt.next(base))
			if len(ch.Added) != tt.wantAdded || !slices.Equal(ch.Updated, tt.wantUpdated) ||
				!slices.Equal(ch.Removed, tt.wantRemoved) || ch.DeviceChanged != tt.wantDevice {
				t.Errorf("changes = %s", ch)
			}
			calls := c.ConfigureCalls()
			if ch.Empty() {
				if len(calls) != 0 {
					t.Fatalf("no-change pass made %d ConfigureDevice calls", len(calls))
				}
				return
			}
			if len(calls) != 1 {
				t.Fatalf("got %d ConfigureDevice calls, want 1", len(calls))
			}
			if c.UsedReplacePeers() {
				t.Errorf("ReplacePeers used in steady state")
			}
			touched := len(ch.Added) + len(ch.Updated) + len(ch.Removed)
			if got := len(c.PeersTouched()); got != touched {
				t.Errorf("touched %d peers, want %d", got, touched)
			}
			for _, pc := range calls[0].Peers {
				if slices.Contains(ch.Updated, pc.PublicKey) && !pc.UpdateOnly {
					t.Errorf("update of %s without UpdateOnly", pc.PublicKey)
				}
			}
			assertDeviceMatches(t, c, tt.next(base))
			if ch := mustApply(t, c, tt.next(base)); !ch.Empty() {
				t.Errorf("second pass not empty: %s", ch)
			}
		})
	}
}

func TestApplyUpdateSendsOnlyChangedFields(t *testing.T) {
	c := fake.NewClient(dev)
	p := plan(t, peer(t, 2, withEndpoint("192.0.2.2:51820"), withIPs("10.2.0.0/16")))
	mustApply(t, c, p)
	c.ResetCalls()
	p.Peers[0].AllowedIPs = pfx("10.2.0.0/16", "10.22.0.0/16")
	mustApply(t, c, p)
	pc := c.ConfigureCalls()[0].Peers[0]
	if pc.Endpoint != nil || pc.PersistentKeepaliveInterval != nil || !pc.ReplaceAllowedIPs || !pc.UpdateOnly {
		t.Errorf("peer config = %+v, want only ReplaceAllowedIPs+AllowedIPs with UpdateOnly", pc)
	}
}

// A gateway behind NAT is planned without endpoint; the device learns it from
// the peer's packets and later follows it when the NAT rebinds. Apply must
// leave the learned endpoint alone.
func TestApplyDoesNotFightRoaming(t *testing.T) {
	c := fake.NewClient(dev)
	p := plan(t, peer(t, 2, withIPs("10.2.0.0/16")))
	mustApply(t, c, p)
	roamed := &net.UDPAddr{IP: net.ParseIP("198.51.100.7"), Port: 40123}
	c.Roam(dev, pub(t, 2), roamed)
	c.ResetCalls()
	if ch := mustApply(t, c, p); !ch.Empty() {
		t.Fatalf("Apply fought roaming: %s", ch)
	}
	d, _ := c.Device(dev)
	if got := d.Peers[0].Endpoint.String(); got != roamed.String() {
		t.Errorf("endpoint = %s, want roamed %s", got, roamed)
	}
}

func TestApplyKeepsHandshakeOfUntouchedPeers(t *testing.T) {
	c := fake.NewClient(dev)
	p := plan(t, peer(t, 2, withIPs("10.2.0.0/16")), peer(t, 3, withIPs("10.3.0.0/16")))
	mustApply(t, c, p)
	hs := time.Unix(1700000000, 0)
	c.Handshake(dev, pub(t, 2), hs)
	c.ResetCalls()
	p.Peers[1].AllowedIPs = pfx("10.30.0.0/16")
	ch := mustApply(t, c, p)
	if !slices.Equal(c.PeersTouched(), []wgtypes.Key{pub(t, 3)}) || len(ch.Updated) != 1 {
		t.Fatalf("touched %v, changes %s", c.PeersTouched(), ch)
	}
	d, _ := c.Device(dev)
	for _, peer := range d.Peers {
		if peer.PublicKey == pub(t, 2) && !peer.LastHandshakeTime.Equal(hs) {
			t.Errorf("handshake of untouched peer changed")
		}
	}
}

func TestApplyMovesAllowedIPBetweenPeers(t *testing.T) {
	c := fake.NewClient(dev)
	mustApply(t, c, plan(t, peer(t, 2, withIPs("10.9.0.0/16")), peer(t, 3, withIPs("10.3.0.0/16"))))
	next := plan(t, peer(t, 2, withIPs("10.2.0.0/16")), peer(t, 3, withIPs("10.3.0.0/16", "10.9.0.0/16")))
	mustApply(t, c, next)
	assertDeviceMatches(t, c, next)
}

func TestApplyRejectsInvalidPlans(t *testing.T) {
	tests := []struct {
		name string
		plan wireguard.TunnelPlan
		want string
	}{
		{"no private key", wireguard.TunnelPlan{}, "no private key"},
		{"duplicate peer", plan(t, peer(t, 2), peer(t, 2)), "twice"},
		{"self as peer", plan(t, wireguard.PeerPlan{PublicKey: pub(t, 1)}), "own public key"},
		{"same prefix on two peers", plan(t, peer(t, 2, withIPs("10.0.0.0/8")), peer(t, 3, withIPs("10.1.2.3/8"))), "both peer"},
		{"endpoint without port", plan(t, peer(t, 2, withEndpoint("192.0.2.1:0"))), "no port"},
		{"tiny MTU", wireguard.TunnelPlan{PrivateKey: key(t, 1), MTU: 500}, "MTU"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fake.NewClient(dev)
			_, err := wireguard.Apply(c, dev, tt.plan)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want containing %q", err, tt.want)
			}
			if len(c.ConfigureCalls()) != 0 {
				t.Errorf("invalid plan reached the device")
			}
		})
	}
}

func TestApplyConfigureErrorIsReported(t *testing.T) {
	c := fake.NewClient(dev)
	c.FailNextConfigure(errors.New("boom"))
	if _, err := wireguard.Apply(c, dev, plan(t, peer(t, 2))); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("error = %v", err)
	}
	// The next pass repairs it.
	if ch := mustApply(t, c, plan(t, peer(t, 2))); len(ch.Added) != 1 {
		t.Fatalf("retry changes = %s", ch)
	}
}

// TestApplyStates drives Apply through random sequences of plans (in the
// spirit of tailscale's TestRouterStates): after every step the device must be
// exactly at the last plan, and repeating it must make zero calls.
func TestApplyStates(t *testing.T) {
	for seed := uint64(1); seed <= 200; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		c := fake.NewClient(dev)
		for step := range 12 {
			p := randomPlan(t, r)
			if _, err := wireguard.Apply(c, dev, p); err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			if !deviceMatches(t, c, p) {
				t.Fatalf("seed %d step %d: device does not match plan\nplan: %+v\ndevice: %+v", seed, step, p, mustDevice(t, c))
			}
			c.ResetCalls()
			if ch := mustApply(t, c, p); !ch.Empty() || len(c.ConfigureCalls()) != 0 {
				t.Fatalf("seed %d step %d: repeated plan made changes %s", seed, step, ch)
			}
			if c.UsedReplacePeers() {
				t.Fatalf("seed %d: ReplacePeers used", seed)
			}
		}
	}
}

func randomPlan(t testing.TB, r *rand.Rand) wireguard.TunnelPlan {
	p := wireguard.TunnelPlan{PrivateKey: key(t, byte(1+r.IntN(2))), ListenPort: 51820 + r.IntN(2)}
	used := map[netip.Prefix]bool{}
	for seed := byte(10); seed < 16; seed++ {
		if r.IntN(3) == 0 {
			continue
		}
		pp := wireguard.PeerPlan{PublicKey: pub(t, seed), PersistentKeepalive: time.Duration(r.IntN(3)*10) * time.Second}
		if r.IntN(2) == 0 {
			pp.Endpoint = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(r.IntN(3) + 1)}), 51820)
		}
		for range r.IntN(4) {
			// A small space so that prefixes move between peers.
			pr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.IntN(6)), byte(r.IntN(256)), 1}), 16+8*r.IntN(2))
			if used[pr.Masked()] {
				continue
			}
			used[pr.Masked()] = true
			pp.AllowedIPs = append(pp.AllowedIPs, pr)
		}
		r.Shuffle(len(pp.AllowedIPs), func(i, j int) { pp.AllowedIPs[i], pp.AllowedIPs[j] = pp.AllowedIPs[j], pp.AllowedIPs[i] })
		p.Peers = append(p.Peers, pp)
	}
	r.Shuffle(len(p.Peers), func(i, j int) { p.Peers[i], p.Peers[j] = p.Peers[j], p.Peers[i] })
	return p
}

func mustDevice(t testing.TB, c wireguard.Client) *wgtypes.Device {
	t.Helper()
	d, err := c.Device(dev)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func assertDeviceMatches(t *testing.T, c wireguard.Client, p wireguard.TunnelPlan) {
	t.Helper()
	if !deviceMatches(t, c, p) {
		t.Fatalf("device does not match plan\nplan: %+v\ndevice: %+v", p, mustDevice(t, c))
	}
}

// deviceMatches compares independently of Diff: an empty Diff would prove
// nothing if Diff itself were wrong.
func deviceMatches(t testing.TB, c wireguard.Client, p wireguard.TunnelPlan) bool {
	d := mustDevice(t, c)
	if d.PrivateKey != p.PrivateKey || (p.ListenPort != 0 && d.ListenPort != p.ListenPort) || len(d.Peers) != len(p.Peers) {
		return false
	}
	for _, want := range p.Peers {
		i := slices.IndexFunc(d.Peers, func(x wgtypes.Peer) bool { return x.PublicKey == want.PublicKey })
		if i < 0 {
			return false
		}
		have := d.Peers[i]
		if have.PersistentKeepaliveInterval != want.PersistentKeepalive.Truncate(time.Second) {
			return false
		}
		if want.Endpoint.IsValid() && (have.Endpoint == nil || have.Endpoint.AddrPort() != want.Endpoint) {
			return false
		}
		var got, exp []string
		for _, n := range have.AllowedIPs {
			got = append(got, n.String())
		}
		for _, pr := range want.AllowedIPs {
			exp = append(exp, pr.Masked().String())
		}
		slices.Sort(got)
		slices.Sort(exp)
		if !slices.Equal(got, exp) {
			return false
		}
	}
	return true
}

func TestNewProbe(t *testing.T) {
	ctx := context.Background()
	t.Run("kernel module present", func(t *testing.T) {
		links := fake.NewLinks(true)
		d, err := wireguard.New(ctx, wireguard.Options{Name: dev, Links: links, Client: fake.NewClient(dev), Log: logr.Discard()})
		if err != nil {
			t.Fatal(err)
		}
		if d.Kind() != wireguard.KindKernel {
			t.Errorf("kind = %s, want kernel", d.Kind())
		}
		l, _ := links.Get(dev)
		if !l.Up || l.MTU != wireguard.DefaultMTU {
			t.Errorf("link = %+v, want up with default MTU", l)
		}
		// A restart reuses the link and changes nothing.
		links.ResetChanges()
		if _, err := wireguard.New(ctx, wireguard.Options{Name: dev, Links: links, Client: fake.NewClient(dev), Log: logr.Discard()}); err != nil {
			t.Fatal(err)
		}
		if ch := links.Changes(); len(ch) != 0 {
			t.Errorf("restart changed links: %v", ch)
		}
	})
	t.Run("no kernel module and no device command", func(t *testing.T) {
		links := fake.NewLinks(false)
		_, err := wireguard.New(ctx, wireguard.Options{Name: "wgt-none-xyz", Links: links, Client: fake.NewClient(), Log: logr.Discard()})
		if err == nil || !strings.Contains(err.Error(), "no device command") {
			t.Fatalf("error = %v, want a userspace fallback without command", err)
		}
	})
	t.Run("name clash", func(t *testing.T) {
		links := fake.NewLinks(true)
		links.Put(dev, fake.Link{Kind: wireguard.LinkOther})
		_, err := wireguard.New(ctx, wireguard.Options{Name: dev, Links: links, Client: fake.NewClient(dev), Log: logr.Discard()})
		if err == nil || !strings.Contains(err.Error(), "neither WireGuard nor TUN") {
			t.Fatalf("error = %v", err)
		}
	})
	t.Run("running userspace device is never swapped for kernel", func(t *testing.T) {
		links := fake.NewLinks(true)
		links.Put("wgt-gone-xyz", fake.Link{Kind: wireguard.LinkTUN})
		_, err := wireguard.New(ctx, wireguard.Options{Name: "wgt-gone-xyz", Links: links, Client: fake.NewClient(), Log: logr.Discard()})
		if err == nil || !strings.Contains(err.Error(), "not running") {
			t.Fatalf("error = %v, want userspace path", err)
		}
		if ch := links.Changes(); len(ch) != 0 {
			t.Errorf("links changed: %v", ch)
		}
	})
}
