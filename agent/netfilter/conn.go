package netfilter

import (
	"fmt"

	"github.com/google/nftables"
)

// Conn is the subset of *nftables.Conn that Apply and Cleanup call. Writes
// (Add*, Del*, Set*Elements) are queued and sent as one transaction by Flush.
type Conn interface {
	ListTablesOfFamily(family nftables.TableFamily) ([]*nftables.Table, error)
	ListChainsOfTableFamily(family nftables.TableFamily) ([]*nftables.Chain, error)
	GetRules(t *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error)
	GetSets(t *nftables.Table) ([]*nftables.Set, error)
	GetSetElements(s *nftables.Set) ([]nftables.SetElement, error)

	AddTable(t *nftables.Table) *nftables.Table
	DelTable(t *nftables.Table)
	AddChain(c *nftables.Chain) *nftables.Chain
	AddRule(r *nftables.Rule) *nftables.Rule
	AddSet(s *nftables.Set, vals []nftables.SetElement) error
	SetAddElements(s *nftables.Set, vals []nftables.SetElement) error
	SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error
	Flush() error
}

var _ Conn = (*nftables.Conn)(nil)

// New returns a Conn for the network namespace of the calling thread.
func New() (*nftables.Conn, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("open nftables connection: %w", err)
	}
	return c, nil
}

// NewAt returns a Conn for the network namespace open as nsFD, without
// switching the calling thread into it.
func NewAt(nsFD int) (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(nsFD))
	if err != nil {
		return nil, fmt.Errorf("open nftables connection in netns fd %d: %w", nsFD, err)
	}
	return c, nil
}
