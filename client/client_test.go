package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

const testProgram = "shop"

// testCtx bounds every test's waits.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, fc *fakeCluster, cfg Config) *Client {
	t.Helper()
	cfg.Addrs = fc.addrs()
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = 20 * time.Millisecond
	}
	c, err := Dial(testCtx(t), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// readsQueued reports whether n reads wait in shard 0's coalescing queue.
func readsQueued(c *Client, n int) func() bool {
	return func() bool {
		c.mu.Lock()
		q := c.readQueues[0]
		c.mu.Unlock()
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.pending) == n
	}
}

func credit(member, key, amount string) Op {
	return Op{Kind: ledger.OpCredit, Program: testProgram, Member: member, Asset: "CNY", IdempotencyKey: key, Amount: decimal.RequireFromString(amount)}
}

func TestOpKindsMatchProto(t *testing.T) {
	for k := ledger.OpDefineAsset; k <= ledger.OpClose; k++ {
		assert.Equal(t, k.String(), tallypb.OpKind(k).String(), "kind %d", k)
	}
}

func TestRoutingByShard(t *testing.T) {
	fc := newFakeCluster(t, 3, 6)
	c := dial(t, fc, Config{})
	require.Equal(t, 6, c.Shards())

	var ops []Op
	for i := range 200 {
		ops = append(ops, credit(fmt.Sprintf("member-%d", i%37), fmt.Sprintf("k%d", i), "1"))
	}
	res, err := c.Submit(testCtx(t), ops, false)
	require.NoError(t, err)
	require.Len(t, res, len(ops))
	for i, r := range res {
		assert.Equal(t, ledger.CodeOK, r.Code)
		assert.Equal(t, ops[i].IdempotencyKey, r.Message, "results must come back in input order")
		assert.Equal(t, uint32(ledger.ShardOf(testProgram, ops[i].Member, 6)), r.Shard)
	}
	total := 0
	for _, n := range fc.nodes {
		reqs := n.recorded()
		for _, req := range reqs {
			shard := ledger.ShardOf(testProgram, req.Ops[0].Member, 6)
			assert.Equal(t, n.idx, shard%3, "request sent to a node that does not lead its shard")
			for _, op := range req.Ops {
				assert.Equal(t, shard, ledger.ShardOf(op.Program, op.Member, 6), "one request, one shard")
			}
			total += len(req.Ops)
		}
	}
	assert.Equal(t, len(ops), total, "every op sent exactly once")
}

// TestDialerCarriesEveryConnection: with Config.Dialer set, every node's
// connection is opened through it (the chaos harness relies on this to put
// its fault proxies on the client's links).
func TestDialerCarriesEveryConnection(t *testing.T) {
	fc := newFakeCluster(t, 3, 6)
	var mu sync.Mutex
	dialed := map[string]int{}
	var d net.Dialer
	c := dial(t, fc, Config{Dialer: func(ctx context.Context, addr string) (net.Conn, error) {
		mu.Lock()
		dialed[addr]++
		mu.Unlock()
		return d.DialContext(ctx, "tcp", addr)
	}})
	var ops []Op
	for i := range 60 {
		ops = append(ops, credit(fmt.Sprintf("member-%d", i), fmt.Sprintf("k%d", i), "1"))
	}
	_, err := c.Submit(testCtx(t), ops, false)
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	for _, a := range fc.addrs() {
		assert.NotZero(t, dialed[a], "node %s reached without the dialer", a)
	}
}

func TestBatchSplittingKeepsOrder(t *testing.T) {
	fc := newFakeCluster(t, 1, 4)
	c := dial(t, fc, Config{MaxBatchOps: 10})
	var ops []Op
	for i := range 35 {
		// Two members on shard 1, one on shard 2, interleaved.
		var m string
		switch i % 3 {
		case 0:
			m = memberOn(testProgram, 1, 4, 0)
		case 1:
			m = memberOn(testProgram, 1, 4, 1)
		default:
			m = memberOn(testProgram, 2, 4, 0)
		}
		ops = append(ops, credit(m, fmt.Sprintf("k%02d", i), "1"))
	}
	res, err := c.Submit(testCtx(t), ops, false)
	require.NoError(t, err)
	for i, r := range res {
		assert.Equal(t, ops[i].IdempotencyKey, r.Message)
	}
	var sizes []int
	for _, req := range fc.nodes[0].recorded() {
		require.LessOrEqual(t, len(req.Ops), 10)
		sizes = append(sizes, len(req.Ops))
	}
	// Shard 1 has 24 ops (10+10+4), shard 2 has 11 (10+1).
	assert.ElementsMatch(t, []int{10, 10, 4, 10, 1}, sizes)
}

func TestBatchSplittingAtServerLimit(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{})
	n := 2*ledger.MaxBatchOps + 1
	ops := make([]Op, n)
	for i := range ops {
		ops[i] = credit("alice", fmt.Sprintf("k%d", i), "0.01")
	}
	res, err := c.Submit(testCtx(t), ops, false)
	require.NoError(t, err)
	require.Len(t, res, n)
	assert.Equal(t, fmt.Sprintf("k%d", n-1), res[n-1].Message)
	var sizes []int
	for _, req := range fc.nodes[0].recorded() {
		sizes = append(sizes, len(req.Ops))
	}
	assert.Equal(t, []int{ledger.MaxBatchOps, ledger.MaxBatchOps, 1}, sizes, "chunks of one shard go in order")

	_, err = c.Submit(testCtx(t), ops[:ledger.MaxBatchOps+1], true)
	assert.ErrorIs(t, err, ledger.ErrInvalidArgument, "a linked batch cannot be split")
}

func TestNotLeaderRedirectWithHint(t *testing.T) {
	fc := newFakeCluster(t, 2, 1)
	c := dial(t, fc, Config{})
	fc.setLeader(0, 1, true) // node 0 still claims shard 0 in ClusterInfo
	infos := fc.totalClusterInfos()

	r, err := c.Credit(testCtx(t), testProgram, "alice", "CNY", decimal.NewFromInt(5), "k1", "")
	require.NoError(t, err)
	assert.Equal(t, "k1", r.Message)
	assert.Len(t, fc.nodes[0].recorded(), 1, "first attempt to the cached leader")
	assert.Len(t, fc.nodes[1].recorded(), 1, "then straight to the hinted leader")
	assert.Equal(t, infos, fc.totalClusterInfos(), "a hint needs no ClusterInfo refresh")

	_, err = c.Credit(testCtx(t), testProgram, "alice", "CNY", decimal.NewFromInt(5), "k2", "")
	require.NoError(t, err)
	assert.Len(t, fc.nodes[0].recorded(), 1, "the hint is cached")
	assert.Len(t, fc.nodes[1].recorded(), 2)
}

func TestNotLeaderWithoutHintRefreshes(t *testing.T) {
	fc := newFakeCluster(t, 3, 1)
	fc.hint = false
	c := dial(t, fc, Config{})
	fc.setLeader(0, 2, false) // ClusterInfo now knows; the client's cache does not
	infos := fc.totalClusterInfos()

	_, err := c.Credit(testCtx(t), testProgram, "alice", "CNY", decimal.NewFromInt(5), "k1", "")
	require.NoError(t, err)
	assert.Len(t, fc.nodes[0].recorded(), 1)
	assert.Len(t, fc.nodes[2].recorded(), 1)
	assert.Greater(t, fc.totalClusterInfos(), infos, "no hint: refresh ClusterInfo")
}

func TestRetryResendsSameOps(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{})
	var mu sync.Mutex
	calls := 0
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		switch calls {
		case 1:
			return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "no leader", nil), true
		case 2:
			// Applied, but the answer is lost: the retry must be a replay.
			_, _ = n.apply(req)
			return nil, status.Error(codes.Unavailable, "connection reset"), true
		}
		return nil, nil, false
	})
	ops := []Op{credit("alice", "a1", "2.50"), credit("bob", "b1", "1")}
	res, err := c.Submit(testCtx(t), ops, false)
	require.NoError(t, err)
	for _, r := range res {
		assert.True(t, r.Replayed, "second application must be a replay")
		assert.Equal(t, ledger.CodeOK, r.Code)
	}
	reqs := fc.nodes[0].recorded()
	require.Len(t, reqs, 3)
	for _, req := range reqs[1:] {
		assert.True(t, proto.Equal(reqs[0], req), "retries must re-send the very same ops")
	}
}

func TestIndeterminateOnTimeout(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{RequestTimeout: 30 * time.Millisecond})
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		<-ctx.Done() // a leader that never answers
		return nil, ctx.Err(), true
	})
	// Long enough for several 30 ms attempts on a slow, contended machine.
	ctx, cancel := context.WithTimeout(testCtx(t), time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Credit(ctx, testProgram, "alice", "CNY", decimal.NewFromInt(1), "k1", "")
	require.Error(t, err)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.True(t, IsIndeterminate(err), "err: %v", err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, ledger.CodeUnavailable, CodeOf(err))
	assert.Greater(t, len(fc.nodes[0].recorded()), 1, "per-attempt timeouts are retried")
}

func TestNotIndeterminateWhenNothingCouldApply(t *testing.T) {
	// Coalesced too: the sender takes the group at once and then finds no
	// leader, so the caller's deadline passes with its group taken and
	// never sent. It used to be told "indeterminate" (found by review).
	for _, coalesce := range []bool{false, true} {
		t.Run(fmt.Sprintf("no leader, coalesce=%v", coalesce), func(t *testing.T) {
			fc := newFakeCluster(t, 2, 1)
			fc.setLeader(0, -1, false)
			c := dial(t, fc, Config{Coalesce: coalesce})
			ctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
			defer cancel()
			_, err := c.Credit(ctx, testProgram, "alice", "CNY", decimal.NewFromInt(1), "k1", "")
			require.Error(t, err)
			assert.False(t, IsIndeterminate(err), "err: %v", err)
			assert.ErrorIs(t, err, errUnavailable)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			for _, n := range fc.nodes {
				assert.Empty(t, n.recorded(), "nothing was sent")
			}
		})
	}
	t.Run("only NOT_LEADER answers", func(t *testing.T) {
		fc := newFakeCluster(t, 2, 1)
		fc.hint = false
		c := dial(t, fc, Config{})
		// Node 0 answers NOT_LEADER without a hint; after the third, the
		// cluster loses its leader, so the deadline expires while the client
		// waits for one, never with an attempt in flight (which would be
		// indeterminate, rightly).
		answers := 0
		fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
			fc.mu.Lock()
			defer fc.mu.Unlock()
			if answers++; answers == 3 {
				fc.leader[0], fc.reported[0] = -1, -1
			}
			return nil, tallyErr(codes.FailedPrecondition, ledger.CodeNotLeader, "not the leader", nil), true
		})
		// Room for three round trips on a slow, contended machine.
		ctx, cancel := context.WithTimeout(testCtx(t), 2*time.Second)
		defer cancel()
		_, err := c.Credit(ctx, testProgram, "alice", "CNY", decimal.NewFromInt(1), "k1", "")
		require.Error(t, err)
		assert.False(t, IsIndeterminate(err), "err: %v", err)
		assert.Len(t, fc.nodes[0].recorded(), 3, "NOT_LEADER without hint is retried")
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	})
	// A leader whose queue is full says nothing was proposed: the caller
	// that gives up meanwhile is told "not applied", and the leader is
	// asked again without a cluster refresh. Plain UNAVAILABLE, by
	// contrast, may hide an applied op. Coalesced callers are told the
	// same: their group goes back to "taken" after each answer that proves
	// nothing applied (they were told "indeterminate", and often with the
	// batch's internal Canceled as the cause, found by review).
	for _, tc := range []struct {
		name          string
		md            map[string]string
		coalesce      bool
		indeterminate bool
	}{
		{"overloaded leader", map[string]string{"not_applied": "true", "overloaded": "true"}, false, false},
		{"overloaded leader, coalescing", map[string]string{"not_applied": "true", "overloaded": "true"}, true, false},
		{"refused before proposal", map[string]string{"not_applied": "true"}, false, false},
		{"refused before proposal, coalescing", map[string]string{"not_applied": "true"}, true, false},
		{"plain UNAVAILABLE", nil, false, true},
		{"plain UNAVAILABLE, coalescing", nil, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 1, 1)
			fc.hint = false
			c := dial(t, fc, Config{Coalesce: tc.coalesce})
			infos := fc.totalClusterInfos()
			// Three answers of the kind under test, then the cluster loses
			// its leader, so the deadline passes while the client waits for
			// one, never with an attempt in flight (which may apply).
			answers, infosAtThird := 0, -1
			fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
				fc.mu.Lock()
				answers++
				if answers > 3 {
					fc.leader[0], fc.reported[0] = -1, -1
					fc.mu.Unlock()
					return nil, tallyErr(codes.FailedPrecondition, ledger.CodeNotLeader, "not the leader", nil), true
				}
				fc.mu.Unlock()
				if answers == 3 {
					infosAtThird = fc.totalClusterInfos()
				}
				return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "shard 0 is overloaded", tc.md), true
			})
			ctx, cancel := context.WithTimeout(testCtx(t), 2*time.Second)
			defer cancel()
			_, err := c.Credit(ctx, testProgram, "alice", "CNY", decimal.NewFromInt(1), "k1", "")
			require.Error(t, err)
			assert.Equal(t, tc.indeterminate, IsIndeterminate(err), "err: %v", err)
			assert.ErrorIs(t, err, context.DeadlineExceeded, "the caller's own reason")
			assert.NotErrorIs(t, err, context.Canceled)
			assert.Equal(t, 4, len(fc.nodes[0].recorded()), "retried until the leader went")
			if tc.md["overloaded"] == "true" {
				assert.Equal(t, infos, infosAtThird, "an overloaded leader is still the leader")
			}
		})
	}
	t.Run("cancelled before the call", func(t *testing.T) {
		fc := newFakeCluster(t, 1, 1)
		c := dial(t, fc, Config{})
		ctx, cancel := context.WithCancel(testCtx(t))
		cancel()
		_, err := c.Credit(ctx, testProgram, "alice", "CNY", decimal.NewFromInt(1), "k1", "")
		assert.ErrorIs(t, err, context.Canceled)
		assert.False(t, IsIndeterminate(err))
		assert.Empty(t, fc.nodes[0].recorded())
	})
}

func TestInvalidArgumentIsNotRetried(t *testing.T) {
	fc := newFakeCluster(t, 2, 4)
	c := dial(t, fc, Config{})
	var ops []Op
	for i := range 8 {
		ops = append(ops, credit(memberOn(testProgram, i%4, 4, 0), fmt.Sprintf("k%d", i), "1"))
	}
	ops[5].Amount = decimal.NewFromInt(-3) // shard 1, second op of its part
	res, err := c.Submit(testCtx(t), ops, false)
	require.Error(t, err)
	assert.ErrorIs(t, err, ledger.ErrInvalidAmount)
	assert.False(t, IsIndeterminate(err))
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, 5, e.OpIndex, "op index maps back to the caller's slice")
	assert.Equal(t, 1, e.Shard)
	for i, r := range res {
		if i%4 == 1 {
			assert.Equal(t, ledger.CodeInvalidAmount, r.Code, "op %d", i)
		} else {
			assert.Equal(t, ledger.CodeOK, r.Code, "op %d: other shards still apply", i)
		}
	}
	assert.Len(t, fc.nodes[1].recorded(), 2, "shard 1 (node 1) got one request, shard 3 one; no retry")
}

func TestOpErrorsAndReplay(t *testing.T) {
	fc := newFakeCluster(t, 1, 2)
	c := dial(t, fc, Config{})
	ctx := testCtx(t)
	_, err := c.Credit(ctx, testProgram, "alice", "CNY", decimal.RequireFromString("10.00"), "c1", "")
	require.NoError(t, err)
	r, err := c.Debit(ctx, testProgram, "alice", "CNY", decimal.RequireFromString("10.01"), "d1", "")
	assert.ErrorIs(t, err, ledger.ErrInsufficientFunds)
	assert.NotErrorIs(t, err, ledger.ErrInvalidAmount)
	assert.Equal(t, ledger.CodeInsufficientFunds, r.Code, "the result comes with an op error")
	assert.ErrorIs(t, r.Err(), ledger.ErrInsufficientFunds)

	r, err = c.Credit(ctx, testProgram, "alice", "CNY", decimal.RequireFromString("10.00"), "c1", "")
	require.NoError(t, err)
	assert.True(t, r.Replayed)
	assert.True(t, r.Account.Posted.Equal(decimal.NewFromInt(10)), "a replay does not credit again")
}

func TestDecimalConversion(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{})
	ctx := testCtx(t)
	maxBal := decimal.RequireFromString("100.25")
	r, err := c.OpenAccount(ctx, testProgram, "alice", "CNY", &maxBal, "o1")
	require.NoError(t, err)
	require.NotNil(t, r.Account.MaxBalance)
	assert.True(t, r.Account.MaxBalance.Equal(maxBal))
	r, err = c.Credit(ctx, testProgram, "alice", "CNY", decimal.RequireFromString("12.50"), "c1", "spring sale")
	require.NoError(t, err)
	assert.True(t, r.Account.Posted.Equal(decimal.RequireFromString("12.5")), "posted %s", r.Account.Posted)
	assert.Equal(t, "12.50", r.Account.Posted.StringFixed(2))
	assert.Equal(t, uint8(2), r.Account.Scale)
	r, err = c.Hold(ctx, testProgram, "alice", "CNY", decimal.RequireFromString("0.01"), 15*time.Minute, "h1")
	require.NoError(t, err)
	require.NotNil(t, r.Hold)
	assert.True(t, r.Hold.Amount.Equal(decimal.RequireFromString("0.01")))
	assert.Equal(t, int64(1000+15*60*1000), r.Hold.ExpiresAtMs)
	_, err = c.CaptureHold(ctx, testProgram, "alice", "h1", decimal.Zero, "cap0")
	require.Equal(t, ledger.CodeInvalidAmount, CodeOf(err), "zero is not 'the whole hold' here: %v", err)
	assert.False(t, IsIndeterminate(err))
	_, err = c.CaptureHoldAll(ctx, testProgram, "alice", "h1", "cap1")
	require.NoError(t, err)

	reqs := fc.nodes[0].recorded()
	require.Len(t, reqs, 4)
	assert.Equal(t, "100.25", reqs[0].Ops[0].MaxBalance)
	assert.Equal(t, "12.5", reqs[1].Ops[0].Amount)
	assert.Equal(t, "spring sale", reqs[1].Ops[0].Memo)
	assert.Equal(t, int64(900000), reqs[2].Ops[0].HoldTtlMs)
	assert.Equal(t, "", reqs[3].Ops[0].Amount, "zero capture = whole hold = empty amount")
	assert.Equal(t, "h1", reqs[3].Ops[0].HoldKey)
}

func TestOpToProto(t *testing.T) {
	big := decimal.RequireFromString("123456789012345678.123456789")
	tests := []struct {
		name       string
		op         Op
		amount     string
		maxBalance string
	}{
		{"credit keeps zero", Op{Kind: ledger.OpCredit}, "0", ""},
		{"debit", Op{Kind: ledger.OpDebit, Amount: decimal.RequireFromString("0.10")}, "0.1", ""},
		{"tiny", Op{Kind: ledger.OpHold, Amount: decimal.New(1, -18)}, "0.000000000000000001", ""},
		{"big, no exponent", Op{Kind: ledger.OpCredit, Amount: big}, "123456789012345678.123456789", ""},
		{"huge integer, no exponent", Op{Kind: ledger.OpCredit, Amount: decimal.New(5, 20)}, "500000000000000000000", ""},
		{"capture zero is whole", Op{Kind: ledger.OpCaptureHold}, "", ""},
		{"capture part", Op{Kind: ledger.OpCaptureHold, Amount: decimal.NewFromInt(3)}, "3", ""},
		{"open without limit", Op{Kind: ledger.OpOpenAccount}, "", ""},
		{"open with limit", Op{Kind: ledger.OpOpenAccount, MaxBalance: &big}, "", "123456789012345678.123456789"},
		{"freeze", Op{Kind: ledger.OpFreeze}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := opToProto(tt.op)
			assert.Equal(t, tt.amount, p.Amount)
			assert.Equal(t, tt.maxBalance, p.MaxBalance)
			assert.Equal(t, tallypb.OpKind(tt.op.Kind), p.Kind)
			back, err := opFromProto(p)
			require.NoError(t, err)
			assert.True(t, back.Amount.Equal(tt.op.Amount))
		})
	}
}

func TestResultFromProto(t *testing.T) {
	r, err := resultFromProto(&tallypb.OpResult{Code: "OK", Seq: 9, Captured: "1.20", Released: "0.80",
		Account: &tallypb.Account{Scale: 2, Posted: "-0.05", Held: "", Available: "7", MaxBalance: ""}})
	require.NoError(t, err)
	assert.True(t, r.Captured.Equal(decimal.RequireFromString("1.2")))
	assert.True(t, r.Released.Equal(decimal.RequireFromString("0.8")))
	assert.True(t, r.Account.Posted.Equal(decimal.RequireFromString("-0.05")))
	assert.True(t, r.Account.Held.IsZero())
	assert.Nil(t, r.Account.MaxBalance)
	assert.Nil(t, r.Hold)
	assert.NoError(t, r.Err())

	_, err = resultFromProto(&tallypb.OpResult{Code: "OK", Captured: "1e"})
	assert.Error(t, err)
	_, err = resultFromProto(&tallypb.OpResult{})
	assert.Error(t, err, "a result must have a code")
	_, err = resultFromProto(&tallypb.OpResult{Code: "OK", Account: &tallypb.Account{Scale: 19}})
	assert.Error(t, err)
}

// TestUnreadableResultIsIndeterminate: an answer the client cannot decode
// came from a server that took the op, so the op may have applied.
func TestUnreadableResultIsIndeterminate(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{})
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		return &tallypb.SubmitResponse{Results: []*tallypb.OpResult{{Code: "OK", Captured: "1e"}}}, nil, true
	})
	_, err := c.Apply(testCtx(t), credit("alice", "k1", "1"))
	require.Equal(t, ledger.CodeInternal, CodeOf(err), "%v", err)
	assert.True(t, IsIndeterminate(err), "%v", err)
}

func TestCoalescing(t *testing.T) {
	fc := newFakeCluster(t, 1, 2)
	c := dial(t, fc, Config{Coalesce: true, MaxBatchOps: 100, MaxInflightPerShard: 3})
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		time.Sleep(3 * time.Millisecond) // a commit takes a while; batches accumulate
		return nil, nil, false
	})
	const callers = 600
	var wg sync.WaitGroup
	errs := make([]error, callers)
	results := make([]Result, callers)
	for i := range callers {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", i)
			results[i], errs[i] = c.Credit(testCtx(t), testProgram, fmt.Sprintf("member-%d", i%50), "CNY", decimal.NewFromInt(int64(i+1)), key, "")
		})
	}
	wg.Wait()
	for i := range callers {
		require.NoError(t, errs[i], "caller %d", i)
		assert.Equal(t, fmt.Sprintf("k%d", i), results[i].Message, "each caller gets its own result")
	}
	reqs := fc.nodes[0].recorded()
	total, biggest := 0, 0
	for _, req := range reqs {
		total += len(req.Ops)
		biggest = max(biggest, len(req.Ops))
		assert.LessOrEqual(t, len(req.Ops), 100)
	}
	assert.Equal(t, callers, total)
	assert.Less(t, len(reqs), callers/2, "concurrent calls must share requests")
	assert.Greater(t, biggest, 1)
	assert.LessOrEqual(t, int(fc.nodes[0].maxInflight.Load()), 2*3, "in flight per shard is bounded (2 shards)")
	t.Logf("%d calls in %d requests, largest %d", callers, len(reqs), biggest)
}

func TestCoalescingIsolatesBadOp(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true, MaxInflightPerShard: 1})
	gate := make(chan struct{})
	var once sync.Once
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		once.Do(func() { <-gate }) // hold the first request so the rest pile up
		return nil, nil, false
	})
	const callers = 40
	var wg sync.WaitGroup
	errs := make([]error, callers)
	for i := range callers {
		op := credit("alice", fmt.Sprintf("k%d", i), "1")
		switch i {
		case 17, 23:
			op.Amount = decimal.NewFromInt(-1)
		case 30:
			op.Asset = "NOPE"
		}
		wg.Go(func() {
			_, errs[i] = c.Apply(testCtx(t), op)
		})
	}
	require.Eventually(t, func() bool {
		c.mu.Lock()
		q := c.queues[0]
		c.mu.Unlock()
		if q == nil {
			return false
		}
		reqs := fc.nodes[0].recorded()
		if len(reqs) == 0 {
			return false
		}
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(reqs[0].Ops)+len(q.groups) == callers
	}, 10*time.Second, time.Millisecond)
	close(gate)
	wg.Wait()
	for i, err := range errs {
		if i == 30 {
			assert.ErrorIs(t, err, ledger.ErrUnknownAsset)
			assert.Equal(t, "UNKNOWN_ASSET: no asset NOPE (op 0)", err.Error(), "the code and index appear once, as the caller's")
			continue
		}
		if i == 17 || i == 23 {
			assert.ErrorIs(t, err, ledger.ErrInvalidAmount, "caller %d", i)
			var e *Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, 0, e.OpIndex)
		} else {
			assert.NoError(t, err, "caller %d: another caller's bad op must not fail mine", i)
		}
	}
}

func TestCoalescedCallerGivesUp(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true, MaxInflightPerShard: 1, RequestTimeout: 2 * time.Second})
	release := make(chan struct{})
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil, nil, false
	})

	ctx1, cancel1 := context.WithTimeout(testCtx(t), time.Second) // outlives ctx2 by far
	defer cancel1()
	done := make(chan error, 1)
	go func() {
		_, err := c.Apply(ctx1, credit("alice", "k1", "1"))
		done <- err
	}()
	require.Eventually(t, func() bool { return fc.nodes[0].inflight.Load() == 1 }, 5*time.Second, time.Millisecond)
	// The only sender is busy: this one stays queued, never sent.
	ctx2, cancel2 := context.WithTimeout(testCtx(t), 50*time.Millisecond)
	defer cancel2()
	_, err := c.Apply(ctx2, credit("alice", "k2", "1"))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.False(t, IsIndeterminate(err), "a queued op that was never sent is not indeterminate")

	err = <-done
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.True(t, IsIndeterminate(err), "a sent op whose caller gave up is indeterminate")
	close(release)

	// The sender came back to a queue holding only k2's abandoned group. It
	// must keep serving the queue: it used to exit (the empty batch read as
	// a closed queue), and with every sender of a shard gone every later
	// write to the shard waited in the queue until its caller gave up, for
	// good, as a chaos run showed.
	ctx3, cancel3 := context.WithTimeout(testCtx(t), 5*time.Second)
	defer cancel3()
	res, err := c.Apply(ctx3, credit("alice", "k3", "1"))
	require.NoError(t, err, "a write after the abandoned ones must still be sent")
	require.Equal(t, ledger.CodeOK, res.Code)
}

func TestReads(t *testing.T) {
	fc := newFakeCluster(t, 2, 2)
	c := dial(t, fc, Config{})
	ctx := testCtx(t)
	m := memberOn(testProgram, 1, 2, 0)
	for i := range 5 {
		_, err := c.Credit(ctx, testProgram, m, "CNY", decimal.RequireFromString("1.10"), fmt.Sprintf("c%d", i), "")
		require.NoError(t, err)
	}
	fc.setLeader(1, 0, true) // leadership moved; the client's cache is stale

	a, err := c.GetAccount(ctx, testProgram, m, "CNY")
	require.NoError(t, err)
	assert.True(t, a.Posted.Equal(decimal.RequireFromString("5.5")))
	assert.Equal(t, "ACTIVE", a.State)

	_, err = c.GetAccount(ctx, testProgram, "nobody", "CNY")
	assert.ErrorIs(t, err, ledger.ErrAccountNotFound)

	found, entry, err := c.GetOperation(ctx, testProgram, m, "c3")
	require.NoError(t, err)
	assert.True(t, found)
	assert.Equal(t, ledger.OpCredit, entry.Op.Kind)
	assert.True(t, entry.Op.Amount.Equal(decimal.RequireFromString("1.1")))
	assert.Equal(t, ledger.CodeOK, entry.Result.Code)
	found, _, err = c.GetOperation(ctx, testProgram, m, "never")
	require.NoError(t, err)
	assert.False(t, found)

	var seqs []uint64
	before := uint64(0)
	for range 10 {
		page, next, err := c.ListJournal(ctx, testProgram, m, "CNY", 2, before)
		require.NoError(t, err)
		for _, e := range page {
			seqs = append(seqs, e.Seq)
		}
		if next == 0 {
			break
		}
		before = next
	}
	assert.Equal(t, []uint64{5, 4, 3, 2, 1}, seqs)
}

func TestDefineAssetAndShardState(t *testing.T) {
	fc := newFakeCluster(t, 2, 2)
	c := dial(t, fc, Config{})
	fc.setLeader(0, 1, true)
	r, err := c.DefineAsset(testCtx(t), testProgram, "CNY", 2, "def-cny")
	require.NoError(t, err)
	assert.Equal(t, "CNY/2", r.Message)

	st, err := c.ShardState(testCtx(t), fc.nodes[1].addr, 0)
	require.NoError(t, err)
	assert.True(t, st.Leader)
	assert.Equal(t, uint64(42), st.AppliedIndex)
	assert.Equal(t, uint32(2), st.Version)
	assert.Equal(t, uint32(3), st.MaxVersion)
	_, err = c.ShardState(testCtx(t), fc.nodes[1].addr, 9)
	assert.ErrorIs(t, err, ledger.ErrInvalidArgument)

	info, err := c.ClusterInfo(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, 2, info.Shards)
	assert.Len(t, info.Nodes, 2)
	assert.Equal(t, fc.nodes[0].addr, info.Leaders[0].LeaderAddr, "as the answering node sees it")
}

// One key for two members is refused before anything is sent, also when the
// members are on different shards, where no shard could see both.
func TestSubmitRefusesAKeyUsedTwice(t *testing.T) {
	fc := newFakeCluster(t, 1, 8)
	c := dial(t, fc, Config{})
	var a, b string
	for i := 0; b == ""; i++ {
		m := fmt.Sprintf("m%d", i)
		switch {
		case a == "":
			a = m
		case ledger.ShardOf(testProgram, m, 8) != ledger.ShardOf(testProgram, a, 8):
			b = m
		}
	}
	_, err := c.Submit(testCtx(t), []Op{credit(a, "k1", "1"), credit(a, "k2", "1"), credit(b, "k1", "1")}, false)
	assert.ErrorIs(t, err, ledger.ErrInvalidArgument)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, 2, e.OpIndex)
	assert.Empty(t, fc.nodes[0].recorded(), "nothing was sent")

	// By the key alone, as the server checks one request.
	other := credit(b, "k1", "1")
	other.Program = "another-program"
	_, err = c.Submit(testCtx(t), []Op{credit(a, "k1", "1"), other}, false)
	assert.ErrorIs(t, err, ledger.ErrInvalidArgument)
	// Missing keys are the server's to refuse, as missing.
	_, err = c.Submit(testCtx(t), []Op{credit(a, "", "1"), credit(b, "", "1")}, false)
	require.NotErrorIs(t, err, ledger.ErrInvalidArgument, "the fake accepts anything; no client-side duplicate")
	assert.Len(t, fc.nodes[0].recorded(), 2, "both parts were sent")
}

// An op too big to be valid is refused before anything is sent, as a
// definite INVALID_ARGUMENT: sent, a request of them could pass the node's
// message bound and come back RESOURCE_EXHAUSTED, read as "maybe applied".
func TestSubmitRefusesAnOversizedOp(t *testing.T) {
	for _, coalesce := range []bool{false, true} {
		fc := newFakeCluster(t, 1, 1)
		c := dial(t, fc, Config{Coalesce: coalesce})
		big := credit("alice", "k2", "1")
		big.Memo = strings.Repeat("x", MaxOpBytes)
		_, err := c.Submit(testCtx(t), []Op{credit("alice", "k1", "1"), big}, false)
		assert.ErrorIs(t, err, ledger.ErrInvalidArgument)
		var e *Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, 1, e.OpIndex)
		assert.False(t, IsIndeterminate(err))
		assert.Empty(t, fc.nodes[0].recorded(), "nothing was sent")
	}
}

func TestLinkedValidation(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true})
	_, err := c.Submit(testCtx(t), []Op{credit("alice", "k1", "1"), credit("bob", "k2", "1")}, true)
	assert.ErrorIs(t, err, ledger.ErrInvalidArgument)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, 1, e.OpIndex)
	_, err = c.Submit(testCtx(t), nil, false)
	assert.ErrorIs(t, err, ledger.ErrInvalidArgument)
	_, err = c.Submit(testCtx(t), []Op{{Kind: ledger.OpDefineAsset, Program: testProgram}}, false)
	assert.ErrorIs(t, err, ledger.ErrInvalidArgument)
	assert.Empty(t, fc.nodes[0].recorded())

	res, err := c.Submit(testCtx(t), []Op{credit("alice", "k1", "1"), credit("alice", "k2", "1")}, true)
	require.NoError(t, err)
	assert.Len(t, res, 2)
	reqs := fc.nodes[0].recorded()
	require.Len(t, reqs, 1)
	assert.True(t, reqs[0].Linked, "linked requests bypass coalescing and keep the flag")
}

func TestDial(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := lis.Addr().String()
	require.NoError(t, lis.Close())

	start := time.Now()
	_, err = Dial(testCtx(t), Config{Addrs: []string{dead}, DialTimeout: 200 * time.Millisecond})
	require.Error(t, err)
	assert.ErrorIs(t, err, errUnavailable)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, time.Since(start), 5*time.Second)

	_, err = Dial(testCtx(t), Config{})
	assert.ErrorIs(t, err, ledger.ErrInvalidArgument)

	fc := newFakeCluster(t, 1, 3)
	c, err := Dial(testCtx(t), Config{Addrs: []string{dead, fc.nodes[0].addr}})
	require.NoError(t, err)
	assert.Equal(t, 3, c.Shards())
	require.NoError(t, c.Close())
	_, err = c.Credit(testCtx(t), testProgram, "alice", "CNY", decimal.NewFromInt(1), "k", "")
	assert.ErrorIs(t, err, ErrClosed)
	assert.NoError(t, c.Close(), "Close is idempotent")
}

func TestAttemptClassification(t *testing.T) {
	tests := []struct {
		name                string
		err                 error
		code                ledger.Code
		retryable, notApply bool
	}{
		{"not leader", tallyErr(codes.FailedPrecondition, ledger.CodeNotLeader, "x", nil), ledger.CodeNotLeader, true, true},
		{"no leader", tallyErr(codes.Unavailable, ledger.CodeUnavailable, "x", nil), ledger.CodeUnavailable, true, false},
		{"transport", status.Error(codes.Unavailable, "connection reset"), ledger.CodeUnavailable, true, false},
		{"attempt timeout", status.Error(codes.DeadlineExceeded, "deadline"), ledger.CodeUnavailable, true, false},
		{"invalid amount", tallyErr(codes.InvalidArgument, ledger.CodeInvalidAmount, "x", nil), ledger.CodeInvalidAmount, false, true},
		{"unknown asset", tallyErr(codes.NotFound, ledger.CodeUnknownAsset, "x", nil), ledger.CodeUnknownAsset, false, true},
		{"internal", tallyErr(codes.Internal, ledger.CodeInternal, "x", nil), ledger.CodeInternal, false, false},
		{"unknown", status.Error(codes.Unknown, "panic"), ledger.CodeInternal, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := fromRPC(tt.err, 3)
			assert.Equal(t, tt.code, e.Code)
			assert.Equal(t, tt.retryable, e.retryable())
			assert.Equal(t, tt.notApply, e.definitelyNotApplied())
			assert.Equal(t, 3, e.Shard)
			// Giving up after any of these is no refusal on the merits: a
			// give-up after NOT_LEADER (FailedPrecondition) took the last
			// attempt's gRPC code and read as rejected(), so a coalesced
			// batch split its callers as if one op were bad (found by
			// review).
			g := giveUpError(context.DeadlineExceeded, 3, e, false)
			assert.False(t, g.rejected(), "give-up after %v: %v", tt.err, g)
			assert.Equal(t, codes.Unavailable, g.GRPCCode)
		})
	}
}

func TestErrorFormatting(t *testing.T) {
	e := &Error{Code: ledger.CodeNotLeader, Message: "not the leader", Leader: "10.0.0.2:7101", OpIndex: -1}
	assert.Equal(t, "NOT_LEADER: not the leader (leader 10.0.0.2:7101)", e.Error())
	assert.ErrorIs(t, e, ledger.ErrNotLeader)
	assert.ErrorIs(t, fmt.Errorf("wrapped: %w", e), &Error{Code: ledger.CodeNotLeader})
	ind := &Error{Code: ledger.CodeUnavailable, OpIndex: -1, Indeterminate: true, Err: context.DeadlineExceeded}
	assert.True(t, strings.HasPrefix(ind.Error(), "indeterminate"))
	assert.True(t, IsIndeterminate(errors.Join(errors.New("x"), fmt.Errorf("w: %w", ind))))
	assert.False(t, IsIndeterminate(e))
	assert.Equal(t, ledger.CodeInsufficientFunds, CodeOf(ledger.Errorf(ledger.CodeInsufficientFunds, "")))
	assert.Equal(t, ledger.CodeNotLeader, CodeOf(fmt.Errorf("w: %w", e)))
}

var errUnavailable = &ledger.Error{Code: ledger.CodeUnavailable}

// TestRedirectLoopBacksOff: two nodes whose stale views name each other.
// (Whether the final error is indeterminate depends on whether the deadline
// hit during an attempt, so it is not asserted.)
func TestRedirectLoopBacksOff(t *testing.T) {
	fc := newFakeCluster(t, 2, 1)
	c := dial(t, fc, Config{})
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		other := fc.nodes[1-n.idx].addr // stale views naming each other
		return nil, tallyErr(codes.FailedPrecondition, ledger.CodeNotLeader, "not the leader", map[string]string{"leader": other, "shard": "0"}), true
	})
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	_, err := c.Credit(ctx, testProgram, "alice", "CNY", decimal.NewFromInt(1), "k1", "")
	require.Error(t, err)
	sent := len(fc.nodes[0].recorded()) + len(fc.nodes[1].recorded())
	assert.Greater(t, sent, maxImmediateRedirects)
	assert.Less(t, sent, 200, "hints that go in circles must back off, not spin")
}

// TestCoalescedReadsFallBackOnOldServers: a server without GetAccounts
// answers Unimplemented; coalesced GetAccount then reads one by one.
func TestCoalescedReadsFallBackOnOldServers(t *testing.T) {
	fc := newFakeCluster(t, 1, 2)
	c := dial(t, fc, Config{Coalesce: true})
	_, err := c.Credit(testCtx(t), testProgram, "m1", "CNY", decimal.NewFromInt(5), "k1", "")
	require.NoError(t, err)
	for range 3 {
		a, err := c.GetAccount(testCtx(t), testProgram, "m1", "CNY")
		require.NoError(t, err)
		assert.Equal(t, "5", a.Posted.String())
	}
	assert.True(t, c.noGetAccounts.Load())
}

// TestCoalescedOpOfGoneCallerIsNotResent: a caller that gave up after its op
// was sent holds "indeterminate" and may settle the op itself. Retries of
// the batch for the callers that still wait must leave its op out, or it
// could apply after the caller found it not applied.
// occupySender sends a "blocker" write, which the test's hook holds, and
// waits until it is in flight: shard 0's only sender is then busy, and the
// calls that follow queue behind it.
func occupySender(t *testing.T, fc *fakeCluster, c *Client) {
	t.Helper()
	go func() { _, _ = c.Apply(testCtx(t), credit("alice", "blocker", "1")) }()
	require.Eventually(t, func() bool { return fc.nodes[0].inflight.Load() == 1 }, 5*time.Second, time.Millisecond)
}

// waitQueued waits until shard 0's write queue holds n groups.
func waitQueued(t *testing.T, c *Client, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		q := c.queues[0]
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.groups) == n
	}, 5*time.Second, time.Millisecond)
}

func TestCoalescedOpOfGoneCallerIsNotResent(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true, MaxInflightPerShard: 1, RequestTimeout: time.Second})
	gate := make(chan struct{})
	var failing atomic.Bool
	failing.Store(true)
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		if req.Ops[0].IdempotencyKey == "blocker" {
			<-gate
			return nil, nil, false
		}
		if failing.Load() {
			return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "election", nil), true
		}
		return nil, nil, false
	})
	occupySender(t, fc, c)

	// A and a patient B queue behind the blocker and share the next batch.
	// A must outlive the blocker and its own batch's send, then give up.
	ctxA, cancelA := context.WithTimeout(testCtx(t), time.Second)
	defer cancelA()
	doneA := make(chan error, 1)
	go func() { _, err := c.Apply(ctxA, credit("alice", "payA", "100")); doneA <- err }()
	doneB := make(chan error, 1)
	go func() { _, err := c.Apply(testCtx(t), credit("bob", "payB", "1")); doneB <- err }()
	waitQueued(t, c, 2)
	close(gate)

	errA := <-doneA
	require.True(t, IsIndeterminate(errA), "A gave up after its op was sent: %v", errA)
	found, _, err := c.GetOperation(testCtx(t), testProgram, "alice", "payA")
	require.NoError(t, err)
	require.False(t, found)

	failing.Store(false) // the election ends; B's retry goes through
	require.NoError(t, <-doneB)
	found, _, err = c.GetOperation(testCtx(t), testProgram, "alice", "payA")
	require.NoError(t, err)
	assert.False(t, found, "A's op was re-sent for B after A had gone")
	found, _, err = c.GetOperation(testCtx(t), testProgram, "bob", "payB")
	require.NoError(t, err)
	assert.True(t, found)
}

// TestCoalescedFallbackStopsForGoneCaller: a batch rejected without an
// op_index is re-sent one caller at a time, and each of those re-sends
// lasts only while its own caller waits. It used to run under the batch's
// context, so an op whose caller had been told "indeterminate" (and found
// it not applied) was re-sent for as long as another caller of the batch
// waited, and applied after the caller had settled it.
func TestCoalescedFallbackStopsForGoneCaller(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true, MaxInflightPerShard: 1, RequestTimeout: time.Second})
	gate := make(chan struct{})
	var failing, aReturned atomic.Bool
	failing.Store(true)
	var sentAfterReturn atomic.Int32
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		if req.Ops[0].IdempotencyKey == "blocker" {
			<-gate
			return nil, nil, false
		}
		for _, op := range req.Ops {
			// An attempt may race A's return by a moment (its caller's
			// leaving is noticed between attempts); one well after it,
			// once the election is over, may not.
			if op.IdempotencyKey == "payA" && aReturned.Load() && !failing.Load() {
				sentAfterReturn.Add(1)
			}
		}
		if len(req.Ops) > 1 { // a refusal that names no op
			return nil, tallyErr(codes.InvalidArgument, ledger.CodeInvalidArgument, "refused whole", nil), true
		}
		if failing.Load() {
			return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "election", nil), true
		}
		return nil, nil, false
	})
	occupySender(t, fc, c)

	ctxA, cancelA := context.WithTimeout(testCtx(t), time.Second)
	defer cancelA()
	doneA := make(chan error, 1)
	go func() { _, err := c.Apply(ctxA, credit("alice", "payA", "100")); doneA <- err }()
	waitQueued(t, c, 1)
	doneB := make(chan error, 1)
	go func() { _, err := c.Apply(testCtx(t), credit("bob", "payB", "5")); doneB <- err }()
	waitQueued(t, c, 2)
	close(gate)

	errA := <-doneA
	require.True(t, IsIndeterminate(errA), "%v", errA)
	aReturned.Store(true)
	time.Sleep(200 * time.Millisecond) // B's re-sends go on meanwhile
	failing.Store(false)
	require.NoError(t, <-doneB)
	found, _, err := c.GetOperation(testCtx(t), testProgram, "alice", "payA")
	require.NoError(t, err)
	assert.Zero(t, sentAfterReturn.Load(), "payA was sent long after its caller returned")
	assert.False(t, found, "payA applied after its caller was told indeterminate")
}

// TestCoalescerKeepsOneKeyPerRequest: two callers sending one key at once
// (a webhook delivered twice) go in separate requests, so the server's
// refusal of a key used twice in a request does not fail either, or send
// the rest of the batch one caller at a time; the second gets the first's
// result, replayed.
func TestCoalescerKeepsOneKeyPerRequest(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true, MaxInflightPerShard: 1})
	gate := make(chan struct{})
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		if req.Ops[0].IdempotencyKey == "blocker" {
			<-gate
		}
		return nil, nil, false
	})
	occupySender(t, fc, c)
	const n = 30
	results := make([]Result, n+1)
	errs := make([]error, n+1)
	var wg sync.WaitGroup
	for i := range n + 1 {
		key := fmt.Sprintf("k%d", i)
		if i == n {
			key = "k7" // the webhook again
		}
		wg.Go(func() { results[i], errs[i] = c.Apply(testCtx(t), credit("alice", key, "1")) })
		waitQueued(t, c, i+1)
	}
	before := len(fc.nodes[0].recorded())
	close(gate)
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "caller %d", i)
		require.Equal(t, ledger.CodeOK, results[i].Code, "caller %d", i)
	}
	assert.True(t, results[n].Replayed, "the second delivery replays the first")
	assert.Equal(t, results[7].Seq, results[n].Seq)
	reqs := fc.nodes[0].recorded()[before:]
	assert.Len(t, reqs, 2, "one batch, then the repeated key on its own")
	for _, r := range reqs {
		keys := map[string]bool{}
		for _, op := range r.Ops {
			assert.False(t, keys[op.IdempotencyKey], "key %s twice in one request", op.IdempotencyKey)
			keys[op.IdempotencyKey] = true
		}
	}
}

// TestFullBatchAnswerFitsTheClient: the answer to 8,000 holds with long
// names is over gRPC's default 4 MiB receive limit. It failed as
// RESOURCE_EXHAUSTED after the server had applied the batch, and was re-sent
// until the caller gave up.
func TestFullBatchAnswerFitsTheClient(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{})
	long := func(p string, i int) string { return p + strings.Repeat("x", 120) + fmt.Sprintf("%07d", i) }
	ops := make([]Op, ledger.MaxBatchOps)
	for i := range ops {
		ops[i] = Op{Kind: ledger.OpHold, Program: long("p", 0), Member: long("m", i), Asset: "CNY", IdempotencyKey: long("k", i),
			Amount: decimal.NewFromInt(1), HoldTTL: time.Minute}
	}
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	res, err := c.Submit(ctx, ops, false)
	require.NoError(t, err)
	require.Len(t, res, len(ops))
	assert.Len(t, fc.nodes[0].recorded(), 1, "sent once")
}

// TestCoalescedReadRejectionFailsOnlyItsCaller: reads of many callers share
// one GetAccounts; the server rejects the whole request when one ref is bad.
// Only that ref's caller may fail.
func TestCoalescedReadRejectionFailsOnlyItsCaller(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	fc.getAccounts = true
	fc.badReadMember = "mallory" // passes the client's checks, not the server's
	c := dial(t, fc, Config{Coalesce: true})
	_, err := c.Credit(testCtx(t), testProgram, "alice", "CNY", decimal.NewFromInt(5), "seed", "")
	require.NoError(t, err)

	const readers = 50
	errs := make([]error, readers)
	var wg sync.WaitGroup
	for i := range readers {
		wg.Go(func() {
			member, asset := "alice", "CNY"
			switch i {
			case 10:
				asset = "" // caught before it is queued
			case 20, 30:
				member = "mallory"
			}
			_, errs[i] = c.GetAccount(testCtx(t), testProgram, member, asset)
		})
	}
	wg.Wait()
	for i, err := range errs {
		switch i {
		case 10, 20, 30:
			assert.Equal(t, ledger.CodeInvalidArgument, CodeOf(err), "reader %d: %v", i, err)
		default:
			assert.NoError(t, err, "reader %d", i)
		}
	}
	assert.False(t, c.noGetAccounts.Load())
}

// TestCoalescedReadBatchEndsWithItsLastWaitingCaller: a read the server
// blamed has its answer, so the batch must not stay alive, retrying the
// others' reads, for that caller after every other caller has gone. (It
// did, holding the shard's read sender until the shard answered again.)
func TestCoalescedReadBatchEndsWithItsLastWaitingCaller(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	fc.getAccounts = true
	fc.badReadMember = "mallory"
	gate := make(chan struct{})
	fc.readHook = func(req *tallypb.GetAccountsRequest) error {
		for _, r := range req.Accounts {
			switch r.Member {
			case "blocker":
				<-gate
				return nil
			case "mallory":
				return nil // blamed by the node
			}
		}
		return tallyErr(codes.Unavailable, ledger.CodeUnavailable, "election", nil)
	}
	c := dial(t, fc, Config{Coalesce: true})
	go func() { _, _ = c.GetAccount(testCtx(t), testProgram, "blocker", "CNY") }()
	require.Eventually(t, func() bool { return fc.nodes[0].reads.Load() >= 1 }, 5*time.Second, time.Millisecond)
	doneM := make(chan error, 1)
	go func() { _, err := c.GetAccount(testCtx(t), testProgram, "mallory", "CNY"); doneM <- err }()
	require.Eventually(t, readsQueued(c, 1), 5*time.Second, time.Millisecond)
	ctxA, cancelA := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancelA()
	doneA := make(chan error, 1)
	go func() { _, err := c.GetAccount(ctxA, testProgram, "alice", "CNY"); doneA <- err }()
	require.Eventually(t, readsQueued(c, 2), 5*time.Second, time.Millisecond)
	close(gate)

	require.Equal(t, ledger.CodeInvalidArgument, CodeOf(<-doneM))
	require.ErrorIs(t, <-doneA, context.DeadlineExceeded)
	time.Sleep(100 * time.Millisecond)
	before := fc.nodes[0].reads.Load()
	time.Sleep(500 * time.Millisecond)
	assert.Equal(t, before, fc.nodes[0].reads.Load(), "alice's read retried after every caller still waiting had gone")
}

// TestCloseFailsInflightCoalescedCallsWithErrClosed: a coalesced request
// runs under the client's context, which Close cancels; its callers must
// learn ErrClosed, not a context.Canceled they would take for their own.
func TestCloseFailsInflightCoalescedCallsWithErrClosed(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c, err := Dial(testCtx(t), Config{Addrs: fc.addrs(), Coalesce: true})
	require.NoError(t, err)
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		<-ctx.Done()
		return nil, status.Error(codes.Canceled, "canceled"), true
	})
	done := make(chan error, 1)
	go func() { _, err := c.Apply(testCtx(t), credit("alice", "k1", "1")); done <- err }()
	require.Eventually(t, func() bool { return fc.nodes[0].inflight.Load() == 1 }, 5*time.Second, time.Millisecond)
	require.NoError(t, c.Close())
	err = <-done
	assert.ErrorIs(t, err, ErrClosed)
	assert.NotErrorIs(t, err, context.Canceled)
	assert.True(t, IsIndeterminate(err), "it was sent: %v", err)
}

// TestCoalescedCallNeverSentIsNotIndeterminate: a coalesced call whose
// batch never found a leader, ended by Close, was never sent: ErrClosed,
// not "indeterminate".
func TestCoalescedCallNeverSentIsNotIndeterminate(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	fc.setLeader(0, -1, false) // no leader, and ClusterInfo says so
	c, err := Dial(testCtx(t), Config{Addrs: fc.addrs(), Coalesce: true})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { _, err := c.Apply(testCtx(t), credit("alice", "k1", "1")); done <- err }()
	time.Sleep(200 * time.Millisecond) // the sender is waiting for a leader
	require.NoError(t, c.Close())
	err = <-done
	assert.ErrorIs(t, err, ErrClosed)
	assert.False(t, IsIndeterminate(err), "never sent: %v", err)
	assert.Empty(t, fc.nodes[0].recorded())
}

// TestCoalescedRejectionAfterUnknownAttempt: a coalesced batch whose first
// attempt ends unknown (UNAVAILABLE) and whose retry is rejected for one
// caller's op still isolates that op: the innocent caller's op is sent
// again on its own and succeeds. It used to get "INVALID_ARGUMENT: another
// operation of the request was rejected" (found by review).
func TestCoalescedRejectionAfterUnknownAttempt(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true, MaxInflightPerShard: 1})
	gate := make(chan struct{})
	var n atomic.Int32
	fc.setHook(func(_ *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		switch n.Add(1) {
		case 1:
			<-gate // the warm-up request holds the sender; the next two queue
		case 2:
			return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "leader stepped down", nil), true
		}
		return nil, nil, false
	})
	warm := make(chan error, 1)
	go func() { _, err := c.Apply(testCtx(t), credit("alice", "k0", "1")); warm <- err }()
	require.Eventually(t, func() bool { return fc.nodes[0].inflight.Load() == 1 }, 5*time.Second, time.Millisecond)
	var wg sync.WaitGroup
	var goodErr, badErr error
	wg.Go(func() { _, goodErr = c.Apply(testCtx(t), credit("alice", "good", "5")) })
	waitQueued(t, c, 1)
	bad := credit("bob", "bad", "1")
	bad.Amount = decimal.NewFromInt(-1)
	wg.Go(func() { _, badErr = c.Apply(testCtx(t), bad) })
	waitQueued(t, c, 2)
	close(gate)
	wg.Wait()
	require.NoError(t, <-warm)
	require.NoError(t, goodErr, "the innocent caller is re-sent and settled")
	require.Equal(t, ledger.CodeInvalidAmount, CodeOf(badErr), "%v", badErr)
	var sent [][]string
	for _, r := range fc.nodes[0].recorded() {
		var keys []string
		for _, op := range r.Ops {
			keys = append(keys, op.IdempotencyKey)
		}
		sent = append(sent, keys)
	}
	require.Equal(t, [][]string{{"k0"}, {"good", "bad"}, {"good", "bad"}, {"good"}}, sent)
}

// TestGivenUpCallersLeaveTheQueues: while a shard has no leader, one caller
// with no deadline keeps its shard's only sender retrying; the callers that
// time out in the queue behind it must not stay queued (a review found
// 1,998 of 2,000 write groups left there, and reads were later sent).
func TestGivenUpCallersLeaveTheQueues(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true, MaxInflightPerShard: 1})
	fc.setLeader(0, -1, false)
	forever, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { _, _ = c.Apply(forever, credit("alice", "forever", "1")) }()
	go func() { _, _ = c.GetAccount(forever, testProgram, "alice", "CNY") }()
	time.Sleep(100 * time.Millisecond)
	var wg sync.WaitGroup
	for i := range 500 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
			defer cancel()
			_, _ = c.Apply(ctx, credit("bob", fmt.Sprintf("k%d", i), "1"))
		})
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
			defer cancel()
			_, _ = c.GetAccount(ctx, testProgram, "bob", "CNY")
		})
	}
	wg.Wait()
	c.mu.Lock()
	wq, rq := c.queues[0], c.readQueues[0]
	c.mu.Unlock()
	wq.mu.Lock()
	writes := len(wq.groups)
	wq.mu.Unlock()
	rq.mu.Lock()
	reads := len(rq.pending)
	rq.mu.Unlock()
	require.Zero(t, writes, "write groups of callers that gave up still queued")
	require.Zero(t, reads, "reads of callers that gave up still queued")
}

// TestUnknownOutcomeSurvivesIsolation: groups a (hold h2), b (capture h1)
// and d (capture h2) share an attempt of unknown outcome; the retry blames
// b while a's caller leaves, and d, sent alone next, is refused. That
// refusal proves nothing, since the unknown attempt (with a's hold) may
// still commit and capture h2: d must be told indeterminate, not
// HOLD_NOT_FOUND (found by review).
func TestUnknownOutcomeSurvivesIsolation(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true, MaxInflightPerShard: 1})
	gate := make(chan struct{})
	var n atomic.Int32
	actx, acancel := context.WithCancel(context.Background())
	defer acancel()
	fc.setHook(func(_ *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		switch n.Add(1) {
		case 1:
			<-gate
			return nil, nil, false
		case 2:
			return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "leader stepped down", nil), true
		case 3:
			acancel()
			time.Sleep(20 * time.Millisecond)
			return nil, tallyErr(codes.NotFound, ledger.CodeHoldNotFound, "no hold h1", map[string]string{"op_index": "1"}), true
		case 4:
			return nil, tallyErr(codes.NotFound, ledger.CodeHoldNotFound, "no hold h2", map[string]string{"op_index": "0"}), true
		}
		return nil, nil, false
	})
	warm := make(chan error, 1)
	go func() { _, err := c.Apply(testCtx(t), credit("alice", "k0", "1")); warm <- err }()
	require.Eventually(t, func() bool { return fc.nodes[0].inflight.Load() == 1 }, 5*time.Second, time.Millisecond)
	var wg sync.WaitGroup
	var dErr error
	wg.Go(func() { _, _ = c.Apply(actx, credit("alice", "a", "1")) })
	waitQueued(t, c, 1)
	wg.Go(func() { _, _ = c.Apply(testCtx(t), credit("alice", "b", "1")) })
	waitQueued(t, c, 2)
	wg.Go(func() { _, dErr = c.Apply(testCtx(t), credit("alice", "d", "1")) })
	waitQueued(t, c, 3)
	close(gate)
	wg.Wait()
	<-warm
	require.True(t, IsIndeterminate(dErr), "d was in an attempt of unknown outcome: %v", dErr)
}

// TestCoalescedGoneCallerAfterUnknownAttemptStaysIndeterminate: a batch
// whose first attempt may have applied (an UNAVAILABLE after it was sent)
// and whose second is refused whole, with no op named, answers a caller who
// left meanwhile "indeterminate": the first attempt may still commit. It
// used to answer that caller with a definite error (found by review).
func TestCoalescedGoneCallerAfterUnknownAttemptStaysIndeterminate(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true, MaxInflightPerShard: 1, RequestTimeout: 2 * time.Second})
	ctxB, cancelB := context.WithCancel(testCtx(t))
	defer cancelB()
	var attempts atomic.Int32
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		if len(req.Ops) < 2 {
			return nil, nil, false // the one-caller re-sends apply
		}
		switch attempts.Add(1) {
		case 1:
			return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "stepped down", nil), true
		default:
			cancelB() // B leaves while its ops are in flight
			return nil, tallyErr(codes.InvalidArgument, ledger.CodeInvalidArgument, "refused whole", nil), true
		}
	})
	wire := func(member, key string) *tallypb.Op {
		return &tallypb.Op{Kind: tallypb.OpKind_CREDIT, Program: testProgram, Member: member, Asset: "CNY", IdempotencyKey: key, Amount: "1"}
	}
	// Driven at the sender's level, so that B's answer is the sender's,
	// not its own caller's when its context ends.
	q := &shardQueue{c: c, shard: 0}
	q.cond.L = &q.mu
	a := &group{ctx: testCtx(t), ops: []*tallypb.Op{wire("alice", "payA")}, done: make(chan groupOutcome, 1)}
	b := &group{ctx: ctxB, ops: []*tallypb.Op{wire("bob", "payB")}, done: make(chan groupOutcome, 1)}
	a.state.Store(groupTaken) // as take leaves them
	b.state.Store(groupTaken)
	q.send([]*group{a, b})
	outA, outB := <-a.done, <-b.done
	require.Nil(t, outA.err, "%v", outA.err)
	require.NotNil(t, outB.err)
	assert.True(t, outB.err.Indeterminate, "B's ops went out in an attempt that may have applied: %v", outB.err)
	assert.GreaterOrEqual(t, attempts.Load(), int32(2))
}

// TestSubmitPartsFailIndependently: a Submit over two shards whose second
// part fails still returns the first part's outcome, and marks the failed
// part's ops indeterminate exactly when their error is.
func TestSubmitPartsFailIndependently(t *testing.T) {
	fc := newFakeCluster(t, 1, 2)
	c := dial(t, fc, Config{})
	m0, m1 := memberOn(testProgram, 0, 2, 0), memberOn(testProgram, 1, 2, 0)
	for _, tc := range []struct {
		name          string
		err           error
		indeterminate bool
	}{
		{"refused", tallyErr(codes.InvalidArgument, ledger.CodeInvalidAmount, "bad amount", map[string]string{"op_index": "0"}), false},
		{"unknown outcome", tallyErr(codes.Unavailable, ledger.CodeUnavailable, "stepped down", nil), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
				if req.Ops[0].Member == m1 {
					return nil, tc.err, true
				}
				return nil, nil, false
			})
			ctx, cancel := context.WithTimeout(testCtx(t), 500*time.Millisecond)
			defer cancel()
			res, err := c.Submit(ctx, []Op{credit(m0, "p0-"+tc.name, "1"), credit(m1, "p1-"+tc.name, "1")}, false)
			require.Error(t, err)
			assert.Equal(t, tc.indeterminate, IsIndeterminate(err), "%v", err)
			require.Len(t, res, 2)
			assert.True(t, res[0].OK(), "the other shard's part applied: %+v", res[0])
			assert.False(t, res[0].Indeterminate)
			assert.False(t, res[1].OK())
			assert.Equal(t, tc.indeterminate, res[1].Indeterminate, "%+v", res[1])
		})
	}
}

// TestCallWithoutDeadlineIsBounded: a caller with no deadline against a
// leader that never answers is released after MaxCallDuration, coalesced
// or not, as indeterminate (an attempt was out); it waited for good
// (found by review).
func TestCallWithoutDeadlineIsBounded(t *testing.T) {
	for _, coalesce := range []bool{false, true} {
		t.Run(fmt.Sprintf("coalesce=%v", coalesce), func(t *testing.T) {
			fc := newFakeCluster(t, 1, 1)
			c := dial(t, fc, Config{RequestTimeout: 50 * time.Millisecond, MaxCallDuration: 300 * time.Millisecond, Coalesce: coalesce})
			fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
				<-ctx.Done()
				return nil, ctx.Err(), true
			})
			start := time.Now()
			_, err := c.Credit(context.Background(), testProgram, "alice", "CNY", decimal.NewFromInt(1), "k1", "")
			require.Error(t, err)
			assert.Less(t, time.Since(start), 5*time.Second)
			assert.True(t, IsIndeterminate(err), "err: %v", err)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
		})
	}
}

// TestDialPassesAHungSeed: a first seed that accepts connections and never
// answers does not use up the dial timeout; the next seed is asked (found
// by review: Dial gave each seed the whole RequestTimeout).
func TestDialPassesAHungSeed(t *testing.T) {
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer hung.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				_ = c.Close()
			}
		}()
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	fc := newFakeCluster(t, 1, 1)
	start := time.Now()
	c, err := Dial(testCtx(t), Config{Addrs: append([]string{hung.Addr().String()}, fc.addrs()...)})
	require.NoError(t, err)
	defer c.Close()
	assert.Less(t, time.Since(start), 4*time.Second)
}

// TestCoalescingQueueIsBounded: with MaxQueuedOps waiting behind a batch in
// flight, one more call is refused at once, as not applied (nothing of it
// was sent); the queued ones go through once the batch returns (found by
// review: the queues had no bound).
func TestCoalescingQueueIsBounded(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true, MaxQueuedOps: 2})
	release := make(chan struct{})
	var first atomic.Bool
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		if first.CompareAndSwap(false, true) {
			<-release // the first batch stays in flight
		}
		return nil, nil, false
	})
	var wg sync.WaitGroup
	errs := make([]error, 3)
	send := func(i int) {
		defer wg.Done()
		_, errs[i] = c.Credit(testCtx(t), testProgram, "alice", "CNY", decimal.NewFromInt(1), fmt.Sprintf("k%d", i), "")
	}
	wg.Add(1)
	go send(0)
	require.Eventually(t, first.Load, 5*time.Second, time.Millisecond)
	wg.Add(2)
	go send(1)
	go send(2)
	q, e := c.queue(0)
	require.Nil(t, e)
	require.Eventually(t, func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.queued == 2
	}, 5*time.Second, time.Millisecond)

	_, err := c.Credit(testCtx(t), testProgram, "alice", "CNY", decimal.NewFromInt(1), "k3", "")
	require.Error(t, err)
	assert.Equal(t, ledger.CodeUnavailable, CodeOf(err))
	assert.False(t, IsIndeterminate(err), "nothing was sent: %v", err)

	close(release)
	wg.Wait()
	for i, err := range errs {
		assert.NoError(t, err, "call %d", i)
	}
	q.mu.Lock()
	assert.Zero(t, q.queued, "the count follows the queue")
	q.mu.Unlock()
	for _, req := range fc.nodes[0].recorded() {
		for _, op := range req.GetOps() {
			assert.NotEqual(t, "k3", op.GetIdempotencyKey(), "the refused call was sent")
		}
	}
}

// TestMaxCallDurationLeavesCallerDeadlines: MaxCallDuration bounds only
// calls without a deadline; a coalesced caller with its own longer one is
// retried until it (found by review: the batch's own context, which has
// none, was bounded, cutting such callers short).
func TestMaxCallDurationLeavesCallerDeadlines(t *testing.T) {
	for _, coalesce := range []bool{false, true} {
		t.Run(fmt.Sprintf("coalesce=%v", coalesce), func(t *testing.T) {
			fc := newFakeCluster(t, 1, 1)
			c := dial(t, fc, Config{RequestTimeout: 50 * time.Millisecond, MaxCallDuration: 200 * time.Millisecond, Coalesce: coalesce})
			fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
				return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "busy", nil), true
			})
			ctx, cancel := context.WithTimeout(testCtx(t), time.Second)
			defer cancel()
			start := time.Now()
			_, err := c.Credit(ctx, testProgram, "alice", "CNY", decimal.NewFromInt(1), "k1", "")
			require.Error(t, err)
			assert.Greater(t, time.Since(start), 800*time.Millisecond, "gave up before the caller's own deadline: %v", err)
		})
	}
}

// TestOpUnavailableAfterUnknownAttemptIsIndeterminate: rules version 4
// answers some ops UNAVAILABLE, neither applied nor recorded. After an
// earlier attempt of the same request whose outcome is unknown (here a
// timeout), that answer settles nothing: the earlier attempt may still
// commit, and the key it would use is still free. Such results are
// Indeterminate, and Apply's error says so; they were reported as plain "not
// applied" (found by review). Answers that are recorded, or that follow only
// attempts known to have applied nothing, stay as they are.
func TestOpUnavailableAfterUnknownAttemptIsIndeterminate(t *testing.T) {
	unavailable := &tallypb.OpResult{Code: string(ledger.CodeUnavailable), Message: "expired holds still to release; not applied and not recorded"}
	linkedFailed := &tallypb.OpResult{Code: string(ledger.CodeLinkedFailed), Message: "not applied: linked op 0 failed; nothing recorded"}
	insufficient := &tallypb.OpResult{Code: string(ledger.CodeInsufficientFunds), Message: "available 0.00", Seq: 5}
	// A request that fails validation at apply: every op gets the error,
	// with no sequence number, and nothing is recorded.
	invalid := &tallypb.OpResult{Code: string(ledger.CodeInvalidArgument), Message: "memo: not valid UTF-8"}
	for _, tc := range []struct {
		name     string
		coalesce bool
		linked   bool
		first    string // how the first attempt ends: "timeout", "not leader" or "" (it answers)
		answer   []*tallypb.OpResult
		want     []bool // Result.Indeterminate per op
	}{
		{"after a timeout", false, false, "timeout", []*tallypb.OpResult{unavailable}, []bool{true}},
		{"after a timeout, coalescing", true, false, "timeout", []*tallypb.OpResult{unavailable}, []bool{true}},
		{"linked, after a timeout", false, true, "timeout", []*tallypb.OpResult{unavailable, linkedFailed}, []bool{true, true}},
		{"recorded refusal after a timeout", false, false, "timeout", []*tallypb.OpResult{insufficient}, []bool{false}},
		{"recorded refusal after a timeout, coalescing", true, false, "timeout", []*tallypb.OpResult{insufficient}, []bool{false}},
		{"unrecorded refusal after a timeout", false, false, "timeout", []*tallypb.OpResult{invalid}, []bool{true}},
		{"first answer", false, false, "", []*tallypb.OpResult{unavailable}, []bool{false}},
		{"first answer, coalescing", true, false, "", []*tallypb.OpResult{unavailable}, []bool{false}},
		{"after NOT_LEADER", false, false, "not leader", []*tallypb.OpResult{unavailable}, []bool{false}},
		{"after NOT_LEADER, coalescing", true, false, "not leader", []*tallypb.OpResult{unavailable}, []bool{false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 1, 1)
			c := dial(t, fc, Config{Coalesce: tc.coalesce, RequestTimeout: 100 * time.Millisecond})
			var attempts atomic.Int32
			fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
				if attempts.Add(1) == 1 {
					switch tc.first {
					case "timeout": // it may yet commit, after the answer below
						<-ctx.Done()
						return nil, ctx.Err(), true
					case "not leader":
						return nil, tallyErr(codes.FailedPrecondition, ledger.CodeNotLeader, "not the leader", nil), true
					}
				}
				return &tallypb.SubmitResponse{Results: tc.answer}, nil, true
			})
			ops := make([]Op, len(tc.answer))
			for i := range ops {
				ops[i] = Op{Kind: ledger.OpDebit, Program: testProgram, Member: "alice", Asset: "CNY",
					IdempotencyKey: fmt.Sprintf("pay-%d", i), Amount: decimal.NewFromInt(1)}
			}
			res, err := c.Submit(testCtx(t), ops, tc.linked)
			require.NoError(t, err, "the request got its results")
			require.Len(t, res, len(ops))
			for i, r := range res {
				assert.Equal(t, ledger.Code(tc.answer[i].Code), r.Code, "op %d", i)
				assert.Equal(t, tc.want[i], r.Indeterminate, "op %d: %+v", i, r)
				assert.Equal(t, tc.want[i], IsIndeterminate(r.Err()), "op %d: %v", i, r.Err())
				assert.ErrorIs(t, r.Err(), &ledger.Error{Code: r.Code}, "op %d: the code still matches", i)
			}
			if tc.linked {
				return
			}
			// Apply, sent again the same way, returns the same verdict.
			attempts.Store(0)
			op := ops[0]
			op.IdempotencyKey = "apply"
			r, err := c.Apply(testCtx(t), op)
			require.Error(t, err)
			assert.Equal(t, ledger.Code(tc.answer[0].Code), r.Code)
			assert.Equal(t, tc.want[0], IsIndeterminate(err), "%v", err)
			assert.Equal(t, ledger.Code(tc.answer[0].Code), CodeOf(err))
		})
	}
}

// TestCoalescedCallerLearnsItsOwnReason: coalesced callers whose deadline
// passes while their batch is retried (every answer "overloaded, not
// applied") are told their own context.DeadlineExceeded, never the
// Canceled with which the batch ends once its last caller has gone, and
// "before any attempt" only when no attempt carried their op. Most were told
// Canceled, some "indeterminate ... before any attempt" (found by review).
// Whether a call ends with an attempt in flight (indeterminate, rightly) is
// up to timing, so that is not asserted.
func TestCoalescedCallerLearnsItsOwnReason(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{Coalesce: true})
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "overloaded",
			map[string]string{"not_applied": "true", "overloaded": "true"}), true
	})
	sentKeys := func() map[string]bool {
		keys := map[string]bool{}
		for _, req := range fc.nodes[0].recorded() {
			for _, op := range req.GetOps() {
				keys[op.GetIdempotencyKey()] = true
			}
		}
		return keys
	}
	for i := range 20 {
		key := fmt.Sprintf("k%d", i)
		ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Millisecond)
		_, err := c.Apply(ctx, credit("alice", key, "1"))
		cancel()
		require.Error(t, err)
		assert.ErrorIs(t, err, context.DeadlineExceeded, "call %d: %v", i, err)
		assert.NotErrorIs(t, err, context.Canceled, "call %d: %v", i, err)
		if strings.Contains(err.Error(), "before any attempt") {
			assert.False(t, IsIndeterminate(err), "call %d: %v", i, err)
			assert.False(t, sentKeys()[key], "call %d was sent: %v", i, err)
		}
	}
}

// TestSettleGivesTheCallersCause: the outcome a coalesced caller receives
// after its own context ended carries that context's error as its cause,
// keeps its indeterminacy, and leaves answers from a server and ErrClosed
// alone.
func TestSettleGivesTheCallersCause(t *testing.T) {
	q := &shardQueue{shard: 0}
	ended, cancel := context.WithTimeout(context.Background(), -time.Second)
	defer cancel()
	overloaded := fromRPC(tallyErr(codes.Unavailable, ledger.CodeUnavailable, "overloaded", map[string]string{"not_applied": "true"}), 0)
	refused := fromRPC(tallyErr(codes.InvalidArgument, ledger.CodeInvalidAmount, "bad amount", nil), 0)
	for _, tc := range []struct {
		name          string
		ctx           context.Context
		err           *Error
		want          error // a cause errors.Is must find
		indeterminate bool
	}{
		{"batch gave up", ended, giveUpError(context.Canceled, 0, overloaded, false), context.DeadlineExceeded, false},
		{"batch gave up, unknown", ended, giveUpError(context.Canceled, 0, overloaded, true), context.DeadlineExceeded, true},
		{"attempt cut short, unknown", ended, &Error{Code: ledger.CodeUnavailable, OpIndex: -1, Indeterminate: true,
			Err: status.Error(codes.Canceled, "canceled")}, context.DeadlineExceeded, true},
		{"closed", ended, giveUpError(ErrClosed, 0, overloaded, true), ErrClosed, true},
		{"refused", ended, refused, ledger.ErrInvalidAmount, false},
		{"caller still waits", context.Background(), giveUpError(context.Canceled, 0, nil, false), context.Canceled, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := q.settle(tc.ctx, tc.err)
			assert.ErrorIs(t, got, tc.want)
			if tc.want == context.DeadlineExceeded {
				assert.NotErrorIs(t, got, context.Canceled)
			}
			assert.Equal(t, tc.indeterminate, IsIndeterminate(got), "%v", got)
		})
	}
}

// TestMaxCallDurationBoundsTheWholeCall: a Submit sent as several chunks
// (MaxBatchOps 1 here), each slow but quicker than MaxCallDuration, ends at
// MaxCallDuration, with the later chunks never sent. The bound applied to
// each chunk, so such a call could take any multiple of it (found by
// review). Generous margins: each chunk takes 400 ms of a 1 s bound.
func TestMaxCallDurationBoundsTheWholeCall(t *testing.T) {
	const busyFor = 400 * time.Millisecond
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{MaxBatchOps: 1, MaxCallDuration: time.Second})
	firstSeen := map[string]time.Time{}
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		fc.mu.Lock()
		k := req.Ops[0].IdempotencyKey
		if _, ok := firstSeen[k]; !ok {
			firstSeen[k] = time.Now()
		}
		busy := time.Since(firstSeen[k]) < busyFor
		fc.mu.Unlock()
		if busy {
			return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "overloaded", map[string]string{"not_applied": "true", "overloaded": "true"}), true
		}
		return nil, nil, false
	})
	ops := []Op{credit("alice", "a", "1"), credit("alice", "b", "1"), credit("alice", "c", "1"), credit("alice", "d", "1")}
	res, err := c.Submit(context.Background(), ops, false)
	require.Error(t, err, "4 chunks of 400 ms each do not fit in 1 s")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	require.Len(t, res, 4)
	assert.False(t, res[3].OK(), "%+v", res[3])
	fc.mu.Lock()
	_, sentD := firstSeen["d"]
	fc.mu.Unlock()
	assert.False(t, sentD, "the last chunk was sent after the call's bound")
}

// TestUnsentChunksAreNotIndeterminate: when a chunk of a split Submit ends
// indeterminate, the chunks after it were never sent: their ops are
// UNAVAILABLE and not indeterminate; only the failed chunk's are. All were
// marked Indeterminate (found by review).
func TestUnsentChunksAreNotIndeterminate(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{MaxBatchOps: 1, RequestTimeout: 30 * time.Millisecond})
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		<-ctx.Done() // a leader that never answers
		return nil, ctx.Err(), true
	})
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	res, err := c.Submit(ctx, []Op{credit("alice", "a", "1"), credit("alice", "b", "1"), credit("alice", "c", "1")}, false)
	require.Error(t, err)
	assert.True(t, IsIndeterminate(err), "chunk a was sent: %v", err)
	for _, r := range fc.nodes[0].recorded() {
		require.Equal(t, "a", r.Ops[0].IdempotencyKey, "only the first chunk is sent")
	}
	require.Len(t, res, 3)
	assert.True(t, res[0].Indeterminate, "%+v", res[0])
	for _, r := range res[1:] {
		assert.Equal(t, ledger.CodeUnavailable, r.Code)
		assert.False(t, r.Indeterminate, "never sent: %+v", r)
		assert.Contains(t, r.Message, "not sent")
	}
}

// TestCoalescedReadBatchUnimplementedAnsweredAtOnce: a server from before
// GetAccounts answers a coalesced batch of reads Unimplemented; every caller
// of the batch learns it from that answer and reads one by one. The batch
// used to be re-sent one read at a time, each to the same refusal (found by
// review).
func TestCoalescedReadBatchUnimplementedAnsweredAtOnce(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	gate := make(chan struct{})
	var batches atomic.Int32
	fc.readHook = func(req *tallypb.GetAccountsRequest) error {
		if batches.Add(1) == 1 {
			<-gate // the first read holds the only sender; the others queue
		}
		return nil
	}
	c := dial(t, fc, Config{Coalesce: true, MaxInflightPerShard: 1})
	_, err := c.Credit(testCtx(t), testProgram, "alice", "CNY", decimal.NewFromInt(5), "seed", "")
	require.NoError(t, err)
	const readers = 5
	var wg sync.WaitGroup
	errs := make([]error, readers+1)
	wg.Go(func() { _, errs[readers] = c.GetAccount(testCtx(t), testProgram, "alice", "CNY") })
	require.Eventually(t, func() bool { return batches.Load() == 1 }, 5*time.Second, time.Millisecond)
	for i := range readers {
		wg.Go(func() { _, errs[i] = c.GetAccount(testCtx(t), testProgram, "alice", "CNY") })
	}
	require.Eventually(t, readsQueued(c, readers), 5*time.Second, time.Millisecond)
	close(gate)
	wg.Wait()
	for i, err := range errs {
		assert.NoError(t, err, "reader %d", i)
	}
	assert.True(t, c.noGetAccounts.Load())
	assert.Equal(t, int32(2), batches.Load(), "GetAccounts requests: the first read's, then the batch's, once")
}

// TestGetAccountsErrorNamesNoKeyOutOfRange: an op_index past the request it
// answers names no key, so the error's OpIndex is -1, as Submit's is.
func TestGetAccountsErrorNamesNoKeyOutOfRange(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	fc.getAccounts = true
	fc.readHook = func(req *tallypb.GetAccountsRequest) error {
		return tallyErr(codes.InvalidArgument, ledger.CodeInvalidArgument, "op 7: bad account", map[string]string{"op_index": "7"})
	}
	c := dial(t, fc, Config{})
	_, err := c.GetAccounts(testCtx(t), []ledger.AccountKey{
		{Program: testProgram, Member: "alice", Asset: "CNY"}, {Program: testProgram, Member: "bob", Asset: "CNY"}})
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, ledger.CodeInvalidArgument, e.Code)
	assert.Equal(t, -1, e.OpIndex, "%v", e)
}

// TestClusterInfoKeepsLeadersItDoesNotName: an answer that names no leader
// for a shard (a node cut off from the cluster, which refresh applies when
// no node knows better) leaves the cached leader of that shard; it used to
// clear every shard's, sending each shard's next call to a refresh of its
// own (found by review). A leader it names replaces the cached one, and a
// new shard count starts afresh.
func TestClusterInfoKeepsLeadersItDoesNotName(t *testing.T) {
	for _, tc := range []struct {
		name    string
		info    ClusterInfo
		leaders []string
	}{
		{"names none", ClusterInfo{Shards: 2, Leaders: []ShardLeader{{Shard: 0}, {Shard: 1}}}, []string{"a:1", "b:1"}},
		{"names one", ClusterInfo{Shards: 2, Leaders: []ShardLeader{{Shard: 0, LeaderAddr: "c:1"}}}, []string{"c:1", "b:1"}},
		{"new shard count", ClusterInfo{Shards: 3, Leaders: []ShardLeader{{Shard: 2, LeaderAddr: "c:1"}}}, []string{"", "", "c:1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Client{}
			c.applyClusterInfo(ClusterInfo{Shards: 2, Leaders: []ShardLeader{{Shard: 0, LeaderAddr: "a:1"}, {Shard: 1, LeaderAddr: "b:1"}}})
			c.applyClusterInfo(tc.info)
			for s, want := range tc.leaders {
				assert.Equal(t, want, c.leader(s), "shard %d", s)
			}
		})
	}
}

// TestLoadTLSWantsEveryFile: the library's TLS helper refuses to make a
// plaintext config out of missing names.
func TestLoadTLSWantsEveryFile(t *testing.T) {
	_, err := LoadTLS("client.pem", "", "ca.pem")
	require.Error(t, err)
	_, err = LoadTLS("", "", "")
	require.Error(t, err)
}
