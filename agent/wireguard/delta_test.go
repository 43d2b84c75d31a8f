package wireguard_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/archipelago-mesh/archipelago/agent/wireguard"
	"github.com/archipelago-mesh/archipelago/agent/wireguard/fake"
)

// TestDeltaMatchesApply: for random pairs of plans, the configuration Delta
// builds without reading the device leaves a device at last exactly where
// Apply(want) leaves it, names only the peers that differ, and reports the
// same Changes.
func TestDeltaMatchesApply(t *testing.T) {
	self := key(t, 200)
	r := rand.New(rand.NewPCG(9, 1))
	randPlan := func() wireguard.TunnelPlan {
		p := wireguard.TunnelPlan{PrivateKey: self, ListenPort: 51820}
		for i := range 8 {
			if r.IntN(3) == 0 {
				continue
			}
			peer := wireguard.PeerPlan{PublicKey: pub(t, byte(i+1)), AllowedIPs: pfx(fmt.Sprintf("10.%d.0.0/16", i)),
				PersistentKeepalive: time.Duration(r.IntN(2)) * 25 * time.Second}
			if r.IntN(2) == 0 {
				peer.Endpoint = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(r.IntN(3) + 1)}), 51820)
			}
			if r.IntN(4) == 0 {
				peer.AllowedIPs = append(peer.AllowedIPs, netip.MustParsePrefix(fmt.Sprintf("fd00:%d::/64", i)))
			}
			p.Peers = append(p.Peers, peer)
		}
		return p
	}
	for i := range 300 {
		last, want := randPlan(), randPlan()
		viaDelta, viaApply := fake.NewClient(dev), fake.NewClient(dev)
		for _, c := range []*fake.Client{viaDelta, viaApply} {
			if _, err := wireguard.Apply(c, dev, last); err != nil {
				t.Fatal(err)
			}
			c.ResetCalls()
		}
		cfg, ch, err := wireguard.Delta(last, want)
		if err != nil {
			t.Fatalf("%d: Delta: %v", i, err)
		}
		if !ch.Empty() {
			if err := viaDelta.ConfigureDevice(dev, cfg); err != nil {
				t.Fatal(err)
			}
		}
		applied, err := wireguard.Apply(viaApply, dev, want)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(ch, applied) {
			t.Fatalf("%d: Delta changes %s, Apply changes %s", i, ch, applied)
		}
		a, _ := viaDelta.Device(dev)
		b, _ := viaApply.Device(dev)
		byKey := func(x, y wgtypes.Peer) int { return strings.Compare(x.PublicKey.String(), y.PublicKey.String()) }
		slices.SortFunc(a.Peers, byKey)
		slices.SortFunc(b.Peers, byKey)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%d: device after Delta\n%+v\nafter Apply\n%+v", i, a, b)
		}
	}
}
