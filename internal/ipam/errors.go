package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Errors returned by the Allocator, to be tested with errors.Is. They are always wrapped
// with the owner and prefix involved.
var (
	// ErrInvalidConfig means Config (or the pools given to SetPools) cannot be used.
	ErrInvalidConfig = errors.New("invalid allocator configuration")
	// ErrNoPool means no pool of the requested family is configured.
	ErrNoPool = errors.New("no pool for this address family")
	// ErrPoolExhausted means every block of the family is allocated or quarantined.
	ErrPoolExhausted = errors.New("pool exhausted")
	// ErrOutsidePool means a prefix does not lie inside any pool.
	ErrOutsidePool = errors.New("prefix outside every pool")
	// ErrConflict means a prefix overlaps a block that is allocated or quarantined.
	// The error carries a *ConflictError with the details.
	ErrConflict = errors.New("prefix conflicts with an existing allocation")
	// ErrNotCanonical means a prefix is invalid, has host bits set, or is IPv4-mapped IPv6.
	ErrNotCanonical = errors.New("prefix not canonical")
	// ErrNotHeld means the owner does not hold exactly that prefix.
	ErrNotHeld = errors.New("prefix not held by owner")
	// ErrInvalidOwner means the owner name is empty.
	ErrInvalidOwner = errors.New("owner must not be empty")
)

// ConflictError describes which allocation stands in the way of a prefix.
// errors.Is(err, ErrConflict) holds for it.
type ConflictError struct {
	// Prefix is the prefix that was asked for.
	Prefix netip.Prefix
	// Holder is the owner of the allocation in the way (the releasing owner if quarantined).
	Holder string
	// Held is the prefix of the allocation in the way.
	Held netip.Prefix
	// QuarantinedUntil is not zero if Held was released and is quarantined until then.
	QuarantinedUntil time.Time
}

// Error implements error.
func (e *ConflictError) Error() string {
	if !e.QuarantinedUntil.IsZero() {
		return fmt.Sprintf("%s conflicts with %s, released by %q and quarantined until %s",
			e.Prefix, e.Held, e.Holder, e.QuarantinedUntil.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("%s conflicts with %s held by %q", e.Prefix, e.Held, e.Holder)
}

// Unwrap makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Unwrap() error { return ErrConflict }

func conflictWith(p netip.Prefix, r *record) *ConflictError {
	return &ConflictError{Prefix: p, Holder: r.owner, Held: r.prefix, QuarantinedUntil: r.until}
}
