package node

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/fsm"
	"github.com/tally-ledger/tally/ledger"
)

// TestUnknownWireKindIsRejected: the wire kind is an int32 and the ledger's
// a uint8. Kinds outside the enum used to wrap into real ones (264 became
// FREEZE, 259 CREDIT) and reach the log.
func TestUnknownWireKindIsRejected(t *testing.T) {
	n := &Node{}
	for _, k := range []int32{0, -1, 13, 256 + int32(tallypb.OpKind_CREDIT), 256 + int32(tallypb.OpKind_FREEZE), -248, 1 << 30} {
		_, err := n.toLedgerOp(context.Background(), nil, &tallypb.Op{
			Kind: tallypb.OpKind(k), Program: "p", Member: "m", Asset: "USD", IdempotencyKey: "k1", Amount: "1",
		}, nil)
		require.Error(t, err, "wire kind %d", k)
		require.Equal(t, ledger.CodeInvalidArgument, ledger.CodeOf(err), "wire kind %d", k)
	}
}

// TestEdgeRefusesUnusedFields: a field the op's kind does not use is
// refused at the edge with INVALID_ARGUMENT naming it; it used to be
// dropped, so an account "opened with 100.00" opened empty.
func TestEdgeRefusesUnusedFields(t *testing.T) {
	n := &Node{}
	n.assets.put(0, ledger.Asset{Program: "p", Code: "USD", Scale: 2}, n.assets.generation())
	s := &shard{id: 0, n: n}
	for _, tc := range []struct {
		name  string
		op    *tallypb.Op
		field string // "" = accepted
	}{
		{"open with amount", &tallypb.Op{Kind: tallypb.OpKind_OPEN_ACCOUNT, Amount: "100.00"}, "amount:"},
		{"credit with max_balance", &tallypb.Op{Kind: tallypb.OpKind_CREDIT, Amount: "1", MaxBalance: "5"}, "max_balance:"},
		{"freeze with max_balance", &tallypb.Op{Kind: tallypb.OpKind_FREEZE, MaxBalance: "5"}, "max_balance:"},
		{"credit with scale", &tallypb.Op{Kind: tallypb.OpKind_CREDIT, Amount: "1", Scale: 7}, "scale:"},
		{"open with scale", &tallypb.Op{Kind: tallypb.OpKind_OPEN_ACCOUNT, Scale: 2}, "scale:"},
		{"freeze with amount", &tallypb.Op{Kind: tallypb.OpKind_FREEZE, Amount: "1"}, "amount:"},
		{"open with max_balance", &tallypb.Op{Kind: tallypb.OpKind_OPEN_ACCOUNT, MaxBalance: "25.00"}, ""},
		{"credit", &tallypb.Op{Kind: tallypb.OpKind_CREDIT, Amount: "1.25"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.op.Program, tc.op.Member, tc.op.Asset, tc.op.IdempotencyKey = "p", "m", "USD", "k1"
			_, err := n.toLedgerOp(context.Background(), s, tc.op, nil)
			if tc.field == "" {
				require.NoError(t, err)
				return
			}
			require.Equal(t, ledger.CodeInvalidArgument, ledger.CodeOf(err), "%v", err)
			require.ErrorContains(t, err, tc.field)
		})
	}
}

// TestAssetCacheIsPerShard: each shard has its own copy of every asset, and
// a definition cached from one shard must not let an op through on another
// that lacks the asset or (defined by a DEFINE_ASSET sent to it alone) has
// it at another scale.
func TestAssetCacheIsPerShard(t *testing.T) {
	db, err := fsm.OpenDB(t.TempDir())
	require.NoError(t, err)
	defer db.Close()
	f1, err := fsm.New(db, 1)
	require.NoError(t, err)
	data := ledger.AppendCommand(nil, ledger.Command{TimeMs: 1000, Requests: []ledger.Request{{Ops: []ledger.Op{defineAssetOp("p", "USD", "rogue", 0)}}}})
	r := f1.ApplyBatch([]*raft.Log{{Index: 1, Term: 1, Type: raft.LogCommand, Data: data}})
	require.Equal(t, ledger.CodeOK, r[0].(fsm.Results)[0][0].Code)

	n := &Node{}
	n.assets.put(0, ledger.Asset{Program: "p", Code: "USD", Scale: 2}, n.assets.generation()) // learned on shard 0
	_, ok := n.assets.get(1, "p", "USD")
	require.False(t, ok, "shard 0's definition served for shard 1")
	s1 := &shard{id: 1, n: n, fsm: f1}
	op, err := n.toLedgerOp(context.Background(), s1, &tallypb.Op{Kind: tallypb.OpKind_OPEN_ACCOUNT, Program: "p", Member: "m1",
		Asset: "USD", IdempotencyKey: "o1", MaxBalance: "10"}, nil)
	require.NoError(t, err)
	require.Equal(t, int64(10), op.MaxBalanceMinor, "10 at shard 1's scale 0, not shard 0's scale 2")
	op, err = n.toLedgerOp(context.Background(), s1, &tallypb.Op{Kind: tallypb.OpKind_CREDIT, Program: "p", Member: "m1",
		Asset: "USD", IdempotencyKey: "c1", Amount: "5"}, nil)
	require.NoError(t, err)
	require.Equal(t, uint8(0), op.Scale)
	require.Equal(t, int64(5), op.AmountMinor)
}

// TestAmountsNeedTheirAssetsScale: a value whose asset cannot be found is not
// formatted at a guessed scale (it used to be formatted at scale 0, as a
// store error still would be: 12.50 CNY shown as 1250); the conversion
// fails, and the caller answers INTERNAL.
func TestAmountsNeedTheirAssetsScale(t *testing.T) {
	db, err := fsm.OpenDB(t.TempDir())
	require.NoError(t, err)
	defer db.Close()
	f, err := fsm.New(db, 0)
	require.NoError(t, err)
	data := ledger.AppendCommand(nil, ledger.Command{TimeMs: 1000, Requests: []ledger.Request{{Ops: []ledger.Op{defineAssetOp("p", "CNY", "d", 2)}}}})
	r := f.ApplyBatch([]*raft.Log{{Index: 1, Term: 1, Type: raft.LogCommand, Data: data}})
	require.Equal(t, ledger.CodeOK, r[0].(fsm.Results)[0][0].Code)
	s := &shard{id: 0, n: &Node{}, fsm: f}

	cv := s.n.pb(s)
	a := cv.account(ledger.Account{Key: ledger.AccountKey{Program: "p", Member: "m", Asset: "CNY"}, PostedMinor: 1250})
	require.NoError(t, cv.err)
	require.Equal(t, "12.50", a.GetPosted())

	cv = s.n.pb(s)
	cv.result(ledger.Result{Code: ledger.CodeOK, Account: ledger.Account{Key: ledger.AccountKey{Program: "p", Member: "m", Asset: "EUR"}, PostedMinor: 1250}})
	require.Error(t, cv.err, "an account whose asset is missing")
	require.Equal(t, ledger.CodeInternal, codeOfErr(cv.err))
}

// TestLargestRequestFits: a Submit of MaxBatchOps operations with every
// field at its longest valid length stays under the server's message bound
// (maxRequestBytes), with room to spare, so the bound refuses only requests
// that are invalid anyway.
func TestLargestRequestFits(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	amount := long(ledger.MaxAmountTextLen)
	req := &tallypb.SubmitRequest{Linked: true, Shard: proto.Uint32(math.MaxUint32)}
	for range ledger.MaxBatchOps {
		req.Ops = append(req.Ops, &tallypb.Op{
			Kind: tallypb.OpKind_OPEN_ACCOUNT, Program: long(ledger.MaxIDLen), Member: long(ledger.MaxIDLen),
			Asset: long(ledger.MaxAssetCodeLen), IdempotencyKey: long(ledger.MaxIDLen), Amount: amount,
			HoldKey: long(ledger.MaxIDLen), HoldTtlMs: math.MaxInt64, MaxBalance: amount,
			Memo: long(ledger.MaxMemoLen), Scale: math.MaxUint32,
		})
	}
	size := proto.Size(req)
	t.Logf("largest valid request: %d bytes, bound %d", size, maxRequestBytes)
	require.Less(t, size, maxRequestBytes*3/4)

	// The client refuses an op over client.MaxOpBytes: the largest valid
	// one is under it, and a request of MaxBatchOps ops at that size (plus
	// each op's tag and length) fits the bound.
	require.LessOrEqual(t, proto.Size(req.Ops[0]), client.MaxOpBytes)
	big := &tallypb.SubmitRequest{Linked: true, Shard: proto.Uint32(math.MaxUint32)}
	for range ledger.MaxBatchOps {
		big.Ops = append(big.Ops, &tallypb.Op{Memo: strings.Repeat("x", client.MaxOpBytes-3)})
	}
	require.Equal(t, client.MaxOpBytes, proto.Size(big.Ops[0]))
	require.Less(t, proto.Size(big), maxRequestBytes)
}

// TestAssetCacheForgetsARestoredShard: a restore drops the shard's cached
// definitions, and a definition read before it (from the state it
// replaced) is not cached after it.
func TestAssetCacheForgetsARestoredShard(t *testing.T) {
	var c assetCache
	usd := ledger.Asset{Program: "p", Code: "USD", Scale: 2}
	c.put(0, usd, c.generation())
	c.put(1, usd, c.generation())
	before := c.generation() // a read of shard 0's old state begins
	c.forgetShard(0)
	_, ok := c.get(0, "p", "USD")
	require.False(t, ok)
	_, ok = c.get(1, "p", "USD")
	require.True(t, ok, "another shard's definitions stay")
	c.put(0, usd, before)
	_, ok = c.get(0, "p", "USD")
	require.False(t, ok, "a definition read before the restore was cached after it")
	c.put(0, usd, c.generation())
	_, ok = c.get(0, "p", "USD")
	require.True(t, ok)
}
