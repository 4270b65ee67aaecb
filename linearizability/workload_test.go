package linearizability

import (
	"math/rand/v2"
	"testing"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// TestWorkloadAssets: the workload's ops act on both of a member's
// accounts, its linked requests span both, and amounts cross the edge as
// exact decimals of their asset's scale both ways.
func TestWorkloadAssets(t *testing.T) {
	w := &worker{id: 1, rng: rand.New(rand.NewPCG(7, 7)), epochs: [][]string{{"m1", "m2"}}}
	byAsset := map[string]int{}
	spanning := 0 // linked requests on both accounts
	for range 2000 {
		in := w.next()
		for _, op := range keysOf(in) {
			byAsset[op.Asset]++
		}
		if in.Kind == KindLinked {
			seen := map[string]bool{}
			for _, op := range in.Ops {
				seen[op.Asset] = true
			}
			if len(seen) == len(assetScales) {
				spanning++
			}
		}
		if in.Kind == KindHold || in.Kind == KindLinked {
			w.holds = append(w.holds, opened(in)...)
		}
	}
	assert.Positive(t, byAsset[Asset], "no op on points: %v", byAsset)
	assert.Positive(t, byAsset[StoredValue], "no op on stored value: %v", byAsset)
	assert.Len(t, byAsset, len(assetScales), "an op on no account or another: %v", byAsset)
	assert.Positive(t, spanning, "no linked request spans both accounts")

	op := toClientOp(Input{Kind: KindDebit, Member: "m1", Asset: StoredValue, Key: "k", Amount: 137})
	assert.Equal(t, StoredValue, op.Asset)
	assert.Equal(t, "1.37", op.Amount.String(), "137 fen")
	// A capture names no asset (the edge takes the hold's) but sends its
	// amount at the hold's scale.
	op = toClientOp(Input{Kind: KindCapture, Member: "m1", Asset: StoredValue, Key: "c", HoldKey: "h", Amount: 5})
	assert.Empty(t, op.Asset)
	assert.Equal(t, "0.05", op.Amount.String())

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

// TestWorkloadCashOut: a cash-out debits exactly what the worker's last op
// saw posted on its account and then closes that account, in one linked
// request; with nothing posted, something held, the account not active or
// no account reported, there is none.
func TestWorkloadCashOut(t *testing.T) {
	w := &worker{id: 1, rng: rand.New(rand.NewPCG(7, 7))}
	_, ok := w.cashOut("k")
	assert.False(t, ok, "no last op")
	w.last, w.lastMember = Output{Status: Known, HasAccount: true, Asset: StoredValue, Posted: 1250, State: ledger.StateActive}, "m1"
	in, ok := w.cashOut("k")
	require.True(t, ok)
	assert.Equal(t, Input{Kind: KindLinked, Member: "m1", Ops: []Input{
		{Kind: KindDebit, Member: "m1", Asset: StoredValue, Key: "k", Amount: 1250},
		{Kind: KindClose, Member: "m1", Asset: StoredValue, Key: "w1-1"},
	}}, in)
	for _, a := range []Output{
		{Status: Known, HasAccount: true, Asset: Asset, Posted: 42, Held: 1, State: ledger.StateActive},
		{Status: Known, HasAccount: true, Asset: Asset, Posted: 42, State: ledger.StateFrozen},
		{Status: Known, HasAccount: true, Asset: Asset, State: ledger.StateActive},
		{Status: Known, Asset: Asset, Posted: 42, State: ledger.StateActive},
	} {
		w.last = a
		_, ok := w.cashOut("k")
		assert.False(t, ok, "%+v", a)
	}
}

// wire is an account of member "m" as a node reports it, posted (nothing
// held) at scale in asset.
func wire(asset string, scale uint32, posted, state string) *tallypb.Account {
	a := &tallypb.Account{Program: Program, Member: "m", Asset: asset, Scale: scale, State: state,
		Posted: posted, Held: "0", Available: posted}
	if asset == StoredValue {
		a.MaxBalance = "25.00"
	}
	return a
}

// TestAccountOutputScale: an account reported at the wrong scale (the
// node's scaleOf falls back to 0) or in an asset the workload does not use
// must not convert to minor units any state has; one reported in the other
// asset keeps that asset, which the model then refuses.
func TestAccountOutputScale(t *testing.T) {
	// 1.37 CNY reported as "137" at scale 0: a 100x error the client sees.
	a := client.Account{Member: "m", Asset: StoredValue, Scale: 0, Posted: decimal.NewFromInt(137), Held: decimal.Zero}
	out := accountOutput(Output{}, &a, "m")
	assert.NotEqual(t, int64(137), out.Posted, "wrong scale accepted")

	// The same through the broken variant's direct reads, and a scale that
	// would wrap to the right one in a uint8.
	for _, scale := range []uint32{0, 258} {
		out, err := readOutput(wire(StoredValue, scale, "137", "ACTIVE"), "m")
		require.NoError(t, err)
		assert.NotEqual(t, int64(137), out.Posted, "wrong scale %d accepted", scale)
	}
	out, err := readOutput(wire(StoredValue, 2, "1.37", "LOST"), "m")
	require.NoError(t, err)
	assert.Equal(t, Output{Status: Known, Code: ledger.CodeOK, HasAccount: true, Asset: StoredValue, Posted: 137, State: ledger.StateLost}, out)

	// A state the model has no name for is not read as ACTIVE.
	for _, state := range []string{"", "SUSPENDED"} {
		out, err := readOutput(wire(Asset, 0, "1", state), "m")
		require.NoError(t, err)
		assert.Equal(t, int64(badAmount), out.Posted, "state %q accepted", state)
	}

	a = client.Account{Member: "m", Asset: "XYZ", Scale: 0, Posted: decimal.NewFromInt(137), Held: decimal.Zero}
	assert.Equal(t, int64(badAmount), accountOutput(Output{}, &a, "m").Posted, "unknown asset accepted")

	a = client.Account{Program: Program, Member: "m", Asset: Asset, Scale: 0, State: "ACTIVE", Posted: decimal.NewFromInt(137),
		Held: decimal.Zero, Available: decimal.NewFromInt(137)}
	out = accountOutput(Output{Status: Known, Code: ledger.CodeOK}, &a, "m")
	require.Empty(t, out.Wrong)
	require.Equal(t, int64(137), out.Posted)
	credit := Input{Kind: KindCredit, Member: "m", Asset: StoredValue, Key: "k", Amount: 137}
	out.Seq, out.TimeMs = 1, 1
	assert.Empty(t, step(initialState(), credit, out), "a credit of stored value answered with the points account")
	credit.Asset = Asset
	assert.Len(t, step(initialState(), credit, out), 1)
}
