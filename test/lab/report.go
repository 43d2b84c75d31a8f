package lab

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"

	meshv1 "github.com/archipelago-mesh/archipelago/api/v1alpha1"
)

// Tunnel is one WireGuard peer as a gateway's device sees it.
type Tunnel struct {
	Member, Gateway, Iface string
	Peer                   string // member the peer key belongs to
	Endpoint               string
	Handshake              time.Time
	Rx, Tx                 int64
}

// Tunnels reads every lab gateway device through its UAPI socket.
func (l *Lab) Tunnels(ctx context.Context) ([]Tunnel, error) {
	keys := map[string]string{}
	var mcs meshv1.MemberClusterList
	if err := l.Hub.Client.List(ctx, &mcs); err == nil {
		for _, mc := range mcs.Items {
			for _, g := range mc.Status.Gateways {
				keys[g.PublicKey] = mc.Name
			}
		}
	}
	wg, err := wgctrl.New()
	if err != nil {
		return nil, err
	}
	defer wg.Close()
	var out []Tunnel
	for _, m := range l.Members() {
		for _, n := range m.Candidates() {
			dev, err := wg.Device(n.Iface)
			if err != nil {
				continue
			}
			for _, p := range dev.Peers {
				t := Tunnel{Member: m.Name, Gateway: n.Name, Iface: n.Iface, Peer: keys[p.PublicKey.String()],
					Handshake: p.LastHandshakeTime, Rx: p.ReceiveBytes, Tx: p.TransmitBytes}
				if t.Peer == "" {
					t.Peer = p.PublicKey.String()[:10] + "…"
				}
				if p.Endpoint != nil {
					t.Endpoint = p.Endpoint.String()
				}
				out = append(out, t)
			}
		}
	}
	return out, nil
}

// WaitTunnels waits until every member's active gateway has a handshake
// with every other member.
func (l *Lab) WaitTunnels(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var missing []string
	for time.Now().Before(deadline) {
		ts, err := l.Tunnels(ctx)
		if err != nil {
			return err
		}
		up := map[[2]string]bool{}
		for _, t := range ts {
			if !t.Handshake.IsZero() && time.Since(t.Handshake) < 3*time.Minute {
				up[[2]string{t.Member, t.Peer}] = true
			}
		}
		missing = nil
		ms := l.Members()
		for _, a := range ms {
			for _, b := range ms {
				if a != b && !up[[2]string{a.Name, b.Name}] {
					missing = append(missing, a.Name+"->"+b.Name)
				}
			}
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("tunnels not up after %s: %s", timeout, strings.Join(missing, ", "))
}

// PrintMembers prints the members with ranges, nodes and gateways.
func (l *Lab) PrintMembers(ctx context.Context, w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tPOD RANGES\tAPISERVER\tACTIVE GATEWAY\tGATEWAY WAN\tNODES (podCIDRs)")
	for _, m := range l.Members() {
		gw, _ := l.ActiveGateway(ctx, m)
		gname, wan := "-", "-"
		if gw != nil {
			gname, wan = gw.Name, gw.WANIP
			if gw.WANIP6 != "" {
				wan = gw.WANIP6
			}
			if m.NAT && gw.WANIP6 != "" {
				wan += fmt.Sprintf(" (behind NAT fd18::%d)", 16*(m.Index+1))
			} else if m.NAT {
				wan += fmt.Sprintf(" (behind NAT 198.18.0.%d)", 16*(m.Index+1))
			}
		}
		var nodes []string
		for _, n := range m.Nodes {
			addr, cidrs := n.LANIP, n.PodCIDR.String()
			if n.LANIP6 != "" {
				addr += "," + n.LANIP6
			}
			if n.PodCIDR6.IsValid() {
				cidrs += "," + n.PodCIDR6.String()
			}
			if n.Routed {
				addr += " routed"
			}
			nodes = append(nodes, fmt.Sprintf("%s %s (%s)", n.Name, addr, cidrs))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, strings.Join(m.PodCIDRs, ","), m.Cluster.InternalURL(), gname, wan, strings.Join(nodes, ", "))
	}
	tw.Flush()
}

// PrintTunnels prints every gateway's WireGuard peers.
func (l *Lab) PrintTunnels(ctx context.Context, w io.Writer) {
	ts, err := l.Tunnels(ctx)
	if err != nil {
		fmt.Fprintln(w, "tunnels:", err)
		return
	}
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].Member != ts[j].Member {
			return ts[i].Member < ts[j].Member
		}
		return ts[i].Peer < ts[j].Peer
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "GATEWAY\tINTERFACE\tPEER\tENDPOINT\tHANDSHAKE\tRX\tTX")
	for _, t := range ts {
		hs := "never"
		if !t.Handshake.IsZero() {
			hs = time.Since(t.Handshake).Round(time.Second).String() + " ago"
		}
		ep := t.Endpoint
		if ep == "" {
			ep = "(none: waits for the peer to dial in)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", t.Gateway, t.Iface, t.Peer, ep, hs, t.Rx, t.Tx)
	}
	tw.Flush()
}

// PrintMatrix prints the matrix, one table per family: rows are senders,
// columns receivers; a cell shows the source address the receiver saw.
func PrintMatrix(w io.Writer, pods []*Pod, cells []Cell) (failed int) {
	for _, f := range []Family{Family4, Family6} {
		var fc []Cell
		for _, c := range cells {
			if c.Family == f {
				fc = append(fc, c)
			}
		}
		if len(fc) == 0 {
			continue
		}
		var fp []*Pod
		for _, p := range pods {
			if q := p.As(f); q != nil {
				fp = append(fp, q)
			}
		}
		failed += printMatrix(w, f, fp, fc)
	}
	return failed
}

func printMatrix(w io.Writer, f Family, pods []*Pod, cells []Cell) (failed int) {
	idx := map[[2]string]Cell{}
	for _, c := range cells {
		idx[[2]string{c.Src.Name, c.Dst.Name}] = c
		if !c.OK() {
			failed++
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%s: FROM \\ TO", f)
	for _, d := range pods {
		fmt.Fprintf(tw, "\t%s", d.Name)
	}
	fmt.Fprintln(tw)
	fmt.Fprint(tw, "")
	for _, d := range pods {
		fmt.Fprintf(tw, "\t%s", d.IP)
	}
	fmt.Fprintln(tw)
	for _, s := range pods {
		fmt.Fprintf(tw, "%s %s", s.Name, s.IP)
		for _, d := range pods {
			c, ok := idx[[2]string{s.Name, d.Name}]
			switch {
			case s.Node.Member == d.Node.Member:
				fmt.Fprint(tw, "\t·")
			case !ok:
				fmt.Fprint(tw, "\t?")
			default:
				fmt.Fprintf(tw, "\t%s", c.Status())
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Fprintf(w, "%s: %d of %d cross-cluster pairs ok (TCP + ICMP; a cell shows the source address the receiver saw; · = same cluster)\n", f, len(cells)-failed, len(cells))
	return failed
}

// DeviceKey returns the public key of the node's WireGuard device and the
// PID of the process that serves it ("" when there is no device).
func DeviceKey(n *Node) (string, []string, error) {
	wg, err := wgctrl.New()
	if err != nil {
		return "", nil, err
	}
	defer wg.Close()
	dev, err := wg.Device(n.Iface)
	if err != nil {
		return "", nil, err
	}
	var peers []string
	for _, p := range dev.Peers {
		peers = append(peers, p.PublicKey.String())
	}
	return dev.PublicKey.String(), peers, nil
}

// AgentRoutes returns the destinations of the routes in the agent's table
// (2684) on the node, IPv4 and IPv6.
func AgentRoutes(n *Node) []string {
	var dsts []string
	for _, fam := range []string{"-4", "-6"} {
		out, err := nsRun(n.NS, "ip", fam, "route", "show", "table", "2684")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			// "unreachable <dst> ..." lines (the fail-closed routes
			// under the real ones) count as "unreachable".
			if f := strings.Fields(line); len(f) > 0 {
				dsts = append(dsts, f[0])
			}
		}
	}
	return dsts
}

// WaitHealthy waits until "kubectl archipelago status" exits 0; it returns
// the last output.
func (l *Lab) WaitHealthy(ctx context.Context, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	var out string
	var code int
	var err error
	for time.Now().Before(deadline) {
		out, code, err = l.CLI(ctx, "status", "--hub-context", HubContext)
		if err == nil && code == 0 {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return out, fmt.Errorf("status not healthy after %s (exit %d, %v)", timeout, code, err)
}
