package ledger

import (
	"fmt"
	"math/bits"
	"slices"
	"strings"
)

// Balance is one posted balance as a scan of a shard's state sees it: a
// member account, or the control account of (Program, Asset) with Member set
// to ControlMember.
type Balance struct {
	Program     string
	Member      string
	Asset       string
	PostedMinor int64
}

// Conservation checks double entry over every balance of one shard: per
// (program, asset), member accounts and the control account must sum to
// zero, since every posting moves value between them. Sums are exact (128-bit),
// so no number of accounts can overflow them. The error wraps ErrInvariant and
// lists every unbalanced (program, asset), sorted; the input may be in any
// order.
func Conservation(balances []Balance) error {
	var s ConservationSums
	for i := range balances {
		s.Add(balances[i])
	}
	return s.Check()
}

// ConservationSums is Conservation over balances added one at a time: a
// scan of a shard's state keeps one sum per (program, asset), not every
// account. The zero value is ready to use.
type ConservationSums struct {
	sums  map[conservationPair]*sum128
	pairs []conservationPair // first-seen order, sorted by Check: never map order
}

type conservationPair struct{ program, asset string }

type sum128 struct{ hi, lo uint64 } // two's complement

// Add adds one balance to its (program, asset)'s sum.
func (c *ConservationSums) Add(b Balance) {
	if c.sums == nil {
		c.sums = make(map[conservationPair]*sum128)
	}
	p := conservationPair{b.Program, b.Asset}
	s, ok := c.sums[p]
	if !ok {
		s = new(sum128)
		c.sums[p] = s
		c.pairs = append(c.pairs, p)
	}
	var ext uint64 // sign extension of PostedMinor to 128 bits
	if b.PostedMinor < 0 {
		ext = ^uint64(0)
	}
	var carry uint64
	s.lo, carry = bits.Add64(s.lo, uint64(b.PostedMinor), 0)
	s.hi, _ = bits.Add64(s.hi, ext, carry)
}

// Check reports every (program, asset) whose balances do not sum to zero,
// as Conservation does.
func (c *ConservationSums) Check() error {
	pairs := slices.Clone(c.pairs)
	slices.SortFunc(pairs, func(a, b conservationPair) int {
		if c := strings.Compare(a.program, b.program); c != 0 {
			return c
		}
		return strings.Compare(a.asset, b.asset)
	})
	var bad []string
	for _, p := range pairs {
		s := c.sums[p]
		if s.hi != 0 || s.lo != 0 {
			bad = append(bad, fmt.Sprintf("%s/%s sums to %s", p.program, p.asset, format128(s.hi, s.lo)))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: conservation: %s", ErrInvariant, strings.Join(bad, "; "))
	}
	return nil
}

// format128 renders a two's complement 128-bit integer; only error messages
// need it, and they usually fit in 64 bits.
func format128(hi, lo uint64) string {
	switch {
	case hi == 0 && lo <= 1<<63-1:
		return fmt.Sprint(lo)
	case hi == ^uint64(0) && lo >= 1<<63:
		return fmt.Sprint(int64(lo))
	}
	return fmt.Sprintf("0x%016x%016x (128-bit)", hi, lo)
}
