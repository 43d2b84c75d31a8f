package netfilter

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
)

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}

// Apply makes the agent's table match plan and reports whether it wrote
// anything.
//
//   - Table matches (chains, rule comments, sets, elements): no write at all.
//   - Only set elements differ: one transaction that deletes the ranges that
//     went away and adds the new ones; rules are not touched.
//   - Anything else (no table, a chain or rule missing, changed or added by
//     hand, rules of another agent version): the table is deleted and
//     re-created in one transaction. nftables commits a batch atomically, so
//     packets see the old table or the new one, never none.
//
// Other tables are never read or written.
func Apply(conn Conn, plan FilterPlan) (changed bool, err error) {
	want, err := Render(plan)
	if err != nil {
		return false, fmt.Errorf("render filter plan: %w", err)
	}
	have, err := read(conn)
	if err != nil {
		return false, err
	}
	if have != nil && have.shape == want.Shape() {
		var n int
		for _, s := range want.Sets {
			del, add := diffRanges(have.ranges[s.Name], s.Ranges)
			if len(del)+len(add) == 0 {
				continue
			}
			set := nftSet(s)
			if len(del) > 0 {
				if err := conn.SetDeleteElements(set, elements(del)); err != nil {
					return false, fmt.Errorf("queue delete of %v from set %s: %w", del, s.Name, err)
				}
			}
			if len(add) > 0 {
				if err := conn.SetAddElements(set, elements(add)); err != nil {
					return false, fmt.Errorf("queue add of %v to set %s: %w", add, s.Name, err)
				}
			}
			n++
		}
		if n == 0 {
			return false, nil
		}
		if err := conn.Flush(); err != nil {
			return false, fmt.Errorf("update set elements of table inet %s: %w", TableName, err)
		}
		return true, nil
	}
	if err := rebuild(conn, want); err != nil {
		return false, err
	}
	return true, nil
}

// Cleanup deletes the agent's table (and with it its chains, rules and sets).
// It writes nothing when the table does not exist.
func Cleanup(conn Conn) error {
	exists, err := tableExists(conn)
	if err != nil || !exists {
		return err
	}
	conn.DelTable(table)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("delete table inet %s: %w", TableName, err)
	}
	return nil
}

func rebuild(conn Conn, want Ruleset) error {
	// "add table; delete table; add table" in one batch: the add makes the
	// delete valid when the table does not exist yet (a delete of a missing
	// table fails the whole batch with ENOENT), and there is no window
	// between reading the table and writing it in which a missing table
	// could appear.
	conn.AddTable(table)
	conn.DelTable(table)
	conn.AddTable(table)
	for _, s := range want.Sets {
		if err := conn.AddSet(nftSet(s), elements(s.Ranges)); err != nil {
			return fmt.Errorf("queue set %s: %w", s.Name, err)
		}
	}
	for _, c := range want.Chains {
		ch := conn.AddChain(nftChain(c))
		for _, r := range c.Rules {
			conn.AddRule(&nftables.Rule{
				Table:    table,
				Chain:    ch,
				Exprs:    r.Exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, r.Comment),
			})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("replace table inet %s: %w", TableName, err)
	}
	return nil
}

func nftSet(s Set) *nftables.Set {
	kt := nftables.TypeIPAddr
	if s.IPv6 {
		kt = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: table, Name: s.Name, KeyType: kt, Interval: true}
}

func nftChain(c Chain) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	hook, prio := c.Hook, c.Priority
	return &nftables.Chain{
		Name: c.Name, Table: table, Type: c.Type,
		Hooknum: &hook, Priority: &prio,
		// Policy accept: the agent's table drops only what its rules say
		// (the tunnel guard), never by policy.
		Policy: &accept,
	}
}

// observed is what the kernel holds in the agent's table.
type observed struct {
	shape  string
	ranges map[string][]Range
}

func tableExists(conn Conn) (bool, error) {
	ts, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list inet tables: %w", err)
	}
	return slices.ContainsFunc(ts, func(t *nftables.Table) bool { return t.Name == TableName }), nil
}

// read returns nil when the table does not exist.
func read(conn Conn) (*observed, error) {
	exists, err := tableExists(conn)
	if err != nil || !exists {
		return nil, err
	}
	obs := &observed{ranges: map[string][]Range{}}
	var rs Ruleset

	sets, err := conn.GetSets(table)
	if err != nil {
		return nil, fmt.Errorf("list sets of table inet %s: %w", TableName, err)
	}
	slices.SortFunc(sets, func(a, b *nftables.Set) int { return order(setOrder, a.Name) - order(setOrder, b.Name) })
	for _, s := range sets {
		ipv6 := s.KeyType.Name == nftables.TypeIP6Addr.Name
		if !s.Interval || (!ipv6 && s.KeyType.Name != nftables.TypeIPAddr.Name) || s.IsMap {
			obs.shape = "foreign set " + s.Name // forces a rebuild
			return obs, nil
		}
		rs.Sets = append(rs.Sets, Set{Name: s.Name, IPv6: ipv6})
		els, err := conn.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
		}
		r, ok := rangesOf(els, ipv6)
		if !ok {
			// Elements the agent would not write: rebuild.
			obs.shape = "malformed set " + s.Name
			return obs, nil
		}
		obs.ranges[s.Name] = r
	}

	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list chains of table inet %s: %w", TableName, err)
	}
	chains = slices.DeleteFunc(chains, func(c *nftables.Chain) bool { return c.Table == nil || c.Table.Name != TableName })
	slices.SortFunc(chains, func(a, b *nftables.Chain) int { return order(chainOrder, a.Name) - order(chainOrder, b.Name) })
	for _, c := range chains {
		if c.Hooknum == nil || c.Priority == nil || (c.Policy != nil && *c.Policy != nftables.ChainPolicyAccept) {
			obs.shape = "foreign chain " + c.Name
			return obs, nil
		}
		ch := Chain{Name: c.Name, Type: c.Type, Hook: *c.Hooknum, Priority: *c.Priority}
		rules, err := conn.GetRules(table, c)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s: %w", c.Name, err)
		}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			ch.Rules = append(ch.Rules, Rule{Comment: comment})
		}
		rs.Chains = append(rs.Chains, ch)
	}
	obs.shape = rs.Shape()
	return obs, nil
}

var (
	setOrder   = []string{SetLocal4, SetRemote4, SetLocal6, SetRemote6, SetOverlay4, SetOverlay6}
	chainOrder = []string{ChainNoSNAT, ChainForward, ChainMSS, ChainOverlayInput, ChainTunnelGuard, ChainTunnelInput, ChainTunnelICMP}
)

// order sorts the kernel's listing the way Render orders things; unknown
// names sort last (and make the shapes differ anyway).
func order(names []string, name string) int {
	if i := slices.Index(names, name); i >= 0 {
		return i
	}
	return len(names)
}

// diffRanges returns the ranges to delete and to add to turn have into want.
func diffRanges(have, want []Range) (del, add []Range) {
	for _, h := range have {
		if !slices.Contains(want, h) {
			del = append(del, h)
		}
	}
	for _, w := range want {
		if !slices.Contains(have, w) {
			add = append(add, w)
		}
	}
	return del, add
}
