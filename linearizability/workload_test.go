package linearizability

import (
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
)

// TestWorkloadAssets: the members of a run hold both assets, and amounts
// cross the edge as exact decimals of their asset's scale both ways.
func TestWorkloadAssets(t *testing.T) {
	held := map[string]int{}
	for _, m := range Members("e000-", 16, 3) {
		a, _ := AssetOf(m)
		held[a]++
	}
	assert.Positive(t, held[Asset], "no member holds points: %v", held)
	assert.Positive(t, held[StoredValue], "no member holds stored value: %v", held)

	var sv string // a member holding stored value
	for _, m := range Members("x-", 20, 2) {
		if a, _ := AssetOf(m); a == StoredValue && sv == "" {
			sv = m
		}
	}
	require.NotEmpty(t, sv)
	op := toClientOp(Input{Kind: KindDebit, Member: sv, Key: "k", Amount: 137})
	assert.Equal(t, StoredValue, op.Asset)
	assert.Equal(t, "1.37", op.Amount.String(), "137 fen")

	for _, tc := range []struct {
		amount string
		scale  int32
		want   int64
	}{
		{"1.37", 2, 137},
		{"1.3", 2, 130},
		{"0", 2, 0},
		{"42", 0, 42},
		{"1.375", 2, badAmount}, // finer than the asset's scale
		{"0.5", 0, badAmount},
		{"92233720368547758.08", 2, badAmount}, // one past the largest int64 of fen
	} {
		assert.Equal(t, tc.want, minorUnits(decimal.RequireFromString(tc.amount), tc.scale), "%s at scale %d", tc.amount, tc.scale)
	}
}

// TestAccountOutputScale: an account reported at the wrong scale (the
// node's scaleOf falls back to 0) must not convert to the right minor units.
func TestAccountOutputScale(t *testing.T) {
	var sv string
	for _, m := range Members("x-", 20, 2) {
		if a, _ := AssetOf(m); a == StoredValue {
			sv = m
			break
		}
	}
	require.NotEmpty(t, sv)
	// 1.37 CNY reported as "137" at scale 0: a 100x error the client sees.
	a := client.Account{Member: sv, Asset: StoredValue, Scale: 0, Posted: decimal.NewFromInt(137), Held: decimal.Zero}
	out := accountOutput(Output{}, &a)
	assert.NotEqual(t, int64(137), out.Posted, "wrong scale accepted")
}
