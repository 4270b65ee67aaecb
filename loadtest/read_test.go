package loadtest

import (
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/assert"

	"github.com/tally-ledger/tally/client"
)

// TestImpossibleRead: a read answered with another account, or with
// balances the ledger's invariants forbid, is not a read.
func TestImpossibleRead(t *testing.T) {
	d := decimal.RequireFromString
	limit := d("100")
	ok := client.Account{Program: "p", Member: "m", Asset: "PTS", Posted: d("50"), Held: d("20"), Available: d("30"), MaxBalance: &limit}
	for name, tc := range map[string]struct {
		edit func(a *client.Account)
		bad  bool
	}{
		"consistent":              {func(a *client.Account) {}, false},
		"other member":            {func(a *client.Account) { a.Member = "x" }, true},
		"other program":           {func(a *client.Account) { a.Program = "x" }, true},
		"other asset":             {func(a *client.Account) { a.Asset = "CNY" }, true},
		"negative posted":         {func(a *client.Account) { a.Posted, a.Held, a.Available = d("-1"), d("0"), d("-1") }, true},
		"negative held":           {func(a *client.Account) { a.Held, a.Available = d("-1"), d("51") }, true},
		"held over posted":        {func(a *client.Account) { a.Held, a.Available = d("60"), d("-10") }, true},
		"available ignores holds": {func(a *client.Account) { a.Available = d("50") }, true},
		"over its max":            {func(a *client.Account) { a.Posted, a.Available = d("120"), d("100") }, true},
		"no max":                  {func(a *client.Account) { a.MaxBalance = nil; a.Posted, a.Available = d("120"), d("100") }, false},
		"another scale":           {func(a *client.Account) { a.Scale = 2 }, true},
	} {
		a := ok
		tc.edit(&a)
		why := impossibleRead(&a, "p", "m", "PTS", 0)
		assert.Equal(t, tc.bad, why != "", "%s: %q", name, why)
	}
}
