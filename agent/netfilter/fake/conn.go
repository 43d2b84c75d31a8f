// Package fake is an in-memory netfilter.Conn for unit tests. Writes are
// queued and applied by Flush all-or-nothing, like an nftables batch; a
// delete of a missing table fails the batch with ENOENT as the kernel does.
// It stores rules as given (expressions are not interpreted) and set
// elements as raw keys. It must not be used outside tests.
package fake

import (
	"bytes"
	"maps"
	"slices"
	"sync"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

type tableState struct {
	table  nftables.Table
	chains []*nftables.Chain
	rules  map[string][]*nftables.Rule
	sets   map[string]*setState
}

type setState struct {
	set      nftables.Set
	elements []nftables.SetElement
}

type key struct {
	family nftables.TableFamily
	name   string
}

// Conn implements netfilter.Conn in memory.
type Conn struct {
	mu      sync.Mutex
	tables  map[key]*tableState
	pending []func(map[key]*tableState) error
	handle  uint64

	// Flushes counts batches sent with at least one write; Ops counts queued
	// writes by method name. ResetCounts zeroes both.
	Flushes int
	Ops     map[string]int
}

// New returns an empty ruleset.
func New() *Conn { return &Conn{tables: map[key]*tableState{}, Ops: map[string]int{}} }

// ResetCounts zeroes Flushes and Ops.
func (c *Conn) ResetCounts() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Flushes, c.Ops = 0, map[string]int{}
}

// Writes returns the number of queued write operations since ResetCounts.
func (c *Conn) Writes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.Ops {
		n += v
	}
	return n
}

// HasTable reports whether a table exists.
func (c *Conn) HasTable(family nftables.TableFamily, name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.tables[key{family, name}]
	return ok
}

// Elements returns the raw elements of a set.
func (c *Conn) Elements(family nftables.TableFamily, table, set string) []nftables.SetElement {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.tables[key{family, table}]; ok {
		if s, ok := t.sets[set]; ok {
			return slices.Clone(s.elements)
		}
	}
	return nil
}

// DeleteRule removes the rule at index i of a chain, as a hand edit would
// (not counted).
func (c *Conn) DeleteRule(family nftables.TableFamily, table, chain string, i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tables[key{family, table}]
	t.rules[chain] = slices.Delete(t.rules[chain], i, i+1)
}

func (c *Conn) queue(op string, f func(map[key]*tableState) error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Ops[op]++
	c.pending = append(c.pending, f)
}

// ListTablesOfFamily implements netfilter.Conn.
func (c *Conn) ListTablesOfFamily(family nftables.TableFamily) ([]*nftables.Table, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*nftables.Table
	for k, t := range c.tables {
		if family == nftables.TableFamilyUnspecified || k.family == family {
			tt := t.table
			out = append(out, &tt)
		}
	}
	return out, nil
}

// ListChainsOfTableFamily implements netfilter.Conn.
func (c *Conn) ListChainsOfTableFamily(family nftables.TableFamily) ([]*nftables.Chain, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*nftables.Chain
	for k, t := range c.tables {
		if k.family != family {
			continue
		}
		for _, ch := range t.chains {
			cc := *ch
			out = append(out, &cc)
		}
	}
	return out, nil
}

// GetRules implements netfilter.Conn.
func (c *Conn) GetRules(tb *nftables.Table, ch *nftables.Chain) ([]*nftables.Rule, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.tables[key{tb.Family, tb.Name}]
	if !ok {
		return nil, unix.ENOENT
	}
	var out []*nftables.Rule
	for _, r := range t.rules[ch.Name] {
		rr := *r
		out = append(out, &rr)
	}
	return out, nil
}

// GetSets implements netfilter.Conn.
func (c *Conn) GetSets(tb *nftables.Table) ([]*nftables.Set, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.tables[key{tb.Family, tb.Name}]
	if !ok {
		return nil, unix.ENOENT
	}
	var out []*nftables.Set
	for _, name := range slices.Sorted(maps.Keys(t.sets)) {
		s := t.sets[name].set
		out = append(out, &s)
	}
	return out, nil
}

// GetSetElements implements netfilter.Conn. Like the kernel's rbtree dump,
// elements come back in descending key order.
func (c *Conn) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.tables[key{s.Table.Family, s.Table.Name}]
	if !ok {
		return nil, unix.ENOENT
	}
	st, ok := t.sets[s.Name]
	if !ok {
		return nil, unix.ENOENT
	}
	out := slices.Clone(st.elements)
	slices.SortFunc(out, func(a, b nftables.SetElement) int { return bytes.Compare(b.Key, a.Key) })
	return out, nil
}

// AddTable implements netfilter.Conn (create if missing).
func (c *Conn) AddTable(tb *nftables.Table) *nftables.Table {
	tt := *tb
	c.queue("AddTable", func(m map[key]*tableState) error {
		k := key{tt.Family, tt.Name}
		if _, ok := m[k]; !ok {
			m[k] = &tableState{table: tt, rules: map[string][]*nftables.Rule{}, sets: map[string]*setState{}}
		}
		return nil
	})
	return tb
}

// DelTable implements netfilter.Conn.
func (c *Conn) DelTable(tb *nftables.Table) {
	k := key{tb.Family, tb.Name}
	c.queue("DelTable", func(m map[key]*tableState) error {
		if _, ok := m[k]; !ok {
			return unix.ENOENT
		}
		delete(m, k)
		return nil
	})
}

// AddChain implements netfilter.Conn.
func (c *Conn) AddChain(ch *nftables.Chain) *nftables.Chain {
	cc := *ch
	c.queue("AddChain", func(m map[key]*tableState) error {
		t, ok := m[key{cc.Table.Family, cc.Table.Name}]
		if !ok {
			return unix.ENOENT
		}
		for _, have := range t.chains {
			if have.Name == cc.Name {
				return nil
			}
		}
		x := cc
		t.chains = append(t.chains, &x)
		return nil
	})
	return ch
}

// AddRule implements netfilter.Conn.
func (c *Conn) AddRule(r *nftables.Rule) *nftables.Rule {
	rr := *r
	c.queue("AddRule", func(m map[key]*tableState) error {
		t, ok := m[key{rr.Table.Family, rr.Table.Name}]
		if !ok || !slices.ContainsFunc(t.chains, func(ch *nftables.Chain) bool { return ch.Name == rr.Chain.Name }) {
			return unix.ENOENT
		}
		c.handle++
		x := rr
		x.Handle = c.handle
		t.rules[rr.Chain.Name] = append(t.rules[rr.Chain.Name], &x)
		return nil
	})
	return r
}

// AddSet implements netfilter.Conn.
func (c *Conn) AddSet(s *nftables.Set, vals []nftables.SetElement) error {
	ss := *s
	vs := slices.Clone(vals)
	c.queue("AddSet", func(m map[key]*tableState) error {
		t, ok := m[key{ss.Table.Family, ss.Table.Name}]
		if !ok {
			return unix.ENOENT
		}
		if _, ok := t.sets[ss.Name]; !ok {
			t.sets[ss.Name] = &setState{set: ss}
		}
		return addElements(t.sets[ss.Name], vs)
	})
	return nil
}

// SetAddElements implements netfilter.Conn.
func (c *Conn) SetAddElements(s *nftables.Set, vals []nftables.SetElement) error {
	ss := *s
	vs := slices.Clone(vals)
	c.queue("SetAddElements", func(m map[key]*tableState) error {
		st, err := lookupSet(m, &ss)
		if err != nil {
			return err
		}
		return addElements(st, vs)
	})
	return nil
}

// SetDeleteElements implements netfilter.Conn.
func (c *Conn) SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error {
	ss := *s
	vs := slices.Clone(vals)
	c.queue("SetDeleteElements", func(m map[key]*tableState) error {
		st, err := lookupSet(m, &ss)
		if err != nil {
			return err
		}
		for _, v := range vs {
			i := slices.IndexFunc(st.elements, func(e nftables.SetElement) bool {
				return bytes.Equal(e.Key, v.Key) && e.IntervalEnd == v.IntervalEnd
			})
			if i < 0 {
				return unix.ENOENT
			}
			st.elements = slices.Delete(st.elements, i, i+1)
		}
		return nil
	})
	return nil
}

// Flush implements netfilter.Conn: all queued writes or none.
func (c *Conn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	ops := c.pending
	c.pending = nil
	if len(ops) == 0 {
		return nil
	}
	c.Flushes++
	next := cloneTables(c.tables)
	for _, op := range ops {
		if err := op(next); err != nil {
			return err
		}
	}
	c.tables = next
	return nil
}

func lookupSet(m map[key]*tableState, s *nftables.Set) (*setState, error) {
	t, ok := m[key{s.Table.Family, s.Table.Name}]
	if !ok {
		return nil, unix.ENOENT
	}
	st, ok := t.sets[s.Name]
	if !ok {
		return nil, unix.ENOENT
	}
	return st, nil
}

func addElements(st *setState, vals []nftables.SetElement) error {
	for _, v := range vals {
		if slices.ContainsFunc(st.elements, func(e nftables.SetElement) bool {
			return bytes.Equal(e.Key, v.Key) && e.IntervalEnd == v.IntervalEnd
		}) {
			return unix.EEXIST
		}
		st.elements = append(st.elements, nftables.SetElement{Key: slices.Clone(v.Key), IntervalEnd: v.IntervalEnd})
	}
	return nil
}

func cloneTables(in map[key]*tableState) map[key]*tableState {
	out := make(map[key]*tableState, len(in))
	for k, t := range in {
		nt := &tableState{table: t.table, rules: map[string][]*nftables.Rule{}, sets: map[string]*setState{}}
		nt.chains = slices.Clone(t.chains)
		for ch, rs := range t.rules {
			nt.rules[ch] = slices.Clone(rs)
		}
		for n, s := range t.sets {
			nt.sets[n] = &setState{set: s.set, elements: slices.Clone(s.elements)}
		}
		out[k] = nt
	}
	return out
}
