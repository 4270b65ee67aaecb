package client

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// loseLeader leaves shard 0 without a leader, ClusterInfo saying so: a call
// then waits for one, with no attempt in flight, until its context ends.
func loseLeader(fc *fakeCluster) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.leader[0], fc.reported[0] = -1, -1
}

// leaveIndeterminate makes a call with op end indeterminate: the hook holds
// its attempts until they time out, so each may yet commit.
func leaveIndeterminate(t *testing.T, c *Client, op Op) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testCtx(t), 150*time.Millisecond)
	defer cancel()
	_, err := c.Apply(ctx, op)
	require.True(t, IsIndeterminate(err), "the first call must end indeterminate: %v", err)
}

// TestNotAppliedAnswerLeavesAnOpenKeyOpen: an indeterminate op is settled
// only by an answer the ledger recorded under its key. A re-send (what the
// package doc tells the caller to do) answered with something that records
// nothing, an op-level UNAVAILABLE, a refusal before proposal, NOT_LEADER,
// or no attempt at all, used to be reported "not applied", while the first
// call's attempt, queued at the leader or in an uncommitted entry, may
// still apply the op (found by review). It is reported indeterminate, until
// a recorded answer settles the key.
func TestNotAppliedAnswerLeavesAnOpenKeyOpen(t *testing.T) {
	unavailable := func(*fakeCluster) (*tallypb.SubmitResponse, error) {
		return &tallypb.SubmitResponse{Results: []*tallypb.OpResult{{Code: string(ledger.CodeUnavailable),
			Message: "expired holds still to release; not applied and not recorded"}}}, nil
	}
	refusedBeforeProposal := func(fc *fakeCluster) (*tallypb.SubmitResponse, error) {
		loseLeader(fc)
		return nil, tallyErr(codes.Unavailable, ledger.CodeUnavailable, "shutting down", map[string]string{"not_applied": "true"})
	}
	notLeader := func(fc *fakeCluster) (*tallypb.SubmitResponse, error) {
		loseLeader(fc)
		return nil, tallyErr(codes.FailedPrecondition, ledger.CodeNotLeader, "not the leader", nil)
	}
	insufficient := func(*fakeCluster) (*tallypb.SubmitResponse, error) {
		return &tallypb.SubmitResponse{Results: []*tallypb.OpResult{{Code: string(ledger.CodeInsufficientFunds),
			Message: "available 0.00", Seq: 9}}}, nil
	}
	for _, tc := range []struct {
		name     string
		coalesce bool
		// answer answers the re-send's attempts; nil: the re-send finds no
		// leader and sends nothing (coalesced: its group is abandoned).
		answer func(*fakeCluster) (*tallypb.SubmitResponse, error)
		code   ledger.Code // the re-send's code
		want   bool        // the re-send is reported indeterminate
	}{
		{"op UNAVAILABLE", false, unavailable, ledger.CodeUnavailable, true},
		{"op UNAVAILABLE, coalescing", true, unavailable, ledger.CodeUnavailable, true},
		{"refused before proposal", false, refusedBeforeProposal, ledger.CodeUnavailable, true},
		{"refused before proposal, coalescing", true, refusedBeforeProposal, ledger.CodeUnavailable, true},
		{"NOT_LEADER", false, notLeader, ledger.CodeUnavailable, true},
		{"NOT_LEADER, coalescing", true, notLeader, ledger.CodeUnavailable, true},
		{"never sent", false, nil, ledger.CodeUnavailable, true},
		{"never sent, coalescing", true, nil, ledger.CodeUnavailable, true},
		{"recorded refusal settles", false, insufficient, ledger.CodeInsufficientFunds, false},
		{"recorded refusal settles, coalescing", true, insufficient, ledger.CodeInsufficientFunds, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 1, 1)
			fc.hint = false
			c := dial(t, fc, Config{Coalesce: tc.coalesce, RequestTimeout: 50 * time.Millisecond})
			var phase atomic.Int32 // 0: hold every attempt; 1: tc.answer; 2: apply
			fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
				switch phase.Load() {
				case 0:
					<-ctx.Done()
					return nil, ctx.Err(), true
				case 1:
					if tc.answer == nil {
						t.Errorf("sent with no leader: %v", req.Ops)
						return nil, tallyErr(codes.FailedPrecondition, ledger.CodeNotLeader, "not the leader", nil), true
					}
					resp, err := tc.answer(fc)
					return resp, err, true
				}
				return nil, nil, false
			})
			op := credit("alice", "pay-1", "10")
			leaveIndeterminate(t, c, op)

			phase.Store(1)
			if tc.answer == nil {
				loseLeader(fc)
				c.forgetLeader(0, fc.nodes[0].addr)
			}
			ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
			r, err := c.Apply(ctx, op)
			cancel()
			require.Error(t, err)
			assert.Equal(t, tc.code, CodeOf(err), "%v", err)
			assert.Equal(t, tc.want, IsIndeterminate(err), "the re-send's error: %v", err)
			if r.Code != "" { // answered at the op level
				assert.Equal(t, tc.want, r.Indeterminate, "%+v", r)
			}
			assert.Equal(t, !tc.want, c.open.empty(), "only a recorded answer settles the key")

			// A recorded answer settles it.
			phase.Store(2)
			fc.setLeader(0, 0, false)
			r, err = c.Apply(testCtx(t), op)
			require.NoError(t, err)
			assert.False(t, r.Indeterminate)
			assert.True(t, c.open.empty(), "the key is settled")
		})
	}
	t.Run("linked", func(t *testing.T) {
		fc := newFakeCluster(t, 1, 1)
		c := dial(t, fc, Config{RequestTimeout: 50 * time.Millisecond})
		var answer atomic.Bool
		fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
			if !answer.Load() {
				<-ctx.Done()
				return nil, ctx.Err(), true
			}
			return &tallypb.SubmitResponse{Results: []*tallypb.OpResult{
				{Code: string(ledger.CodeUnavailable), Message: "not applied and not recorded"},
				{Code: string(ledger.CodeLinkedFailed), Message: "not applied: linked op 0 failed; nothing recorded"},
			}}, nil, true
		})
		ops := []Op{credit("alice", "pay-1", "10"), credit("alice", "pay-2", "10")}
		ctx, cancel := context.WithTimeout(testCtx(t), 150*time.Millisecond)
		_, err := c.Submit(ctx, ops, true)
		cancel()
		require.True(t, IsIndeterminate(err), "%v", err)
		answer.Store(true)
		res, err := c.Submit(testCtx(t), ops, true)
		require.NoError(t, err)
		for i, r := range res {
			assert.True(t, r.Indeterminate, "op %d: %+v", i, r)
			assert.True(t, IsIndeterminate(r.Err()), "op %d", i)
		}
	})
	t.Run("define asset", func(t *testing.T) {
		fc := newFakeCluster(t, 1, 1)
		fc.hint = false
		c := dial(t, fc, Config{RequestTimeout: 50 * time.Millisecond})
		var answer atomic.Bool
		fc.mu.Lock()
		fc.defineHook = func(ctx context.Context) (*tallypb.DefineAssetResponse, error, bool) {
			if !answer.Load() {
				<-ctx.Done()
				return nil, ctx.Err(), true
			}
			loseLeader(fc)
			return nil, tallyErr(codes.FailedPrecondition, ledger.CodeNotLeader, "not the leader", nil), true
		}
		fc.mu.Unlock()
		ctx, cancel := context.WithTimeout(testCtx(t), 150*time.Millisecond)
		_, err := c.DefineAsset(ctx, testProgram, "CNY", 2, "asset-1")
		cancel()
		require.True(t, IsIndeterminate(err), "%v", err)
		answer.Store(true)
		ctx, cancel = context.WithTimeout(testCtx(t), 300*time.Millisecond)
		_, err = c.DefineAsset(ctx, testProgram, "CNY", 2, "asset-1")
		cancel()
		assert.True(t, IsIndeterminate(err), "%v", err)
	})
}

// TestOpenKeysExpireAndAreBounded: the record of open keys forgets a key
// openKeyTTL after the last answer that left it open, and, full, forgets
// the oldest first, opening an overflow window of openKeyTTL in which every
// unrecorded answer is indeterminate: the dropped key's used to read "not
// applied" at once (found by review). Settled keys leave nothing behind.
func TestOpenKeysExpireAndAreBounded(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{RequestTimeout: 50 * time.Millisecond})
	var (
		mu  sync.Mutex
		now = time.Unix(1_000_000, 0)
	)
	advance := func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
	}
	c.open.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	c.open.max = 2
	var answer atomic.Bool
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		if !answer.Load() {
			<-ctx.Done()
			return nil, ctx.Err(), true
		}
		return &tallypb.SubmitResponse{Results: []*tallypb.OpResult{{Code: string(ledger.CodeUnavailable), Message: "not recorded"}}}, nil, true
	})
	for _, key := range []string{"a", "b", "c"} { // c pushes a out
		leaveIndeterminate(t, c, credit("alice", key, "1"))
		advance(time.Second)
	}
	answer.Store(true)
	// open reports whether a re-send of key answered UNAVAILABLE is
	// reported indeterminate.
	open := func(key string) bool {
		r, err := c.Apply(testCtx(t), credit("alice", key, "1"))
		require.Equal(t, ledger.CodeUnavailable, r.Code, "%v", err)
		require.Equal(t, r.Indeterminate, IsIndeterminate(err), "%v", err)
		return r.Indeterminate
	}
	// recorded reports whether key is in the record (as of the last call).
	recorded := func(key string) bool {
		c.open.mu.Lock()
		defer c.open.mu.Unlock()
		_, ok := c.open.at[openKey{program: testProgram, key: key, shard: 0}]
		return ok
	}
	// b was recorded at t0+1s, c at t0+2s, when a was dropped; it is now
	// t0+3s.
	assert.Equal(t, []bool{false, true, true}, []bool{recorded("a"), recorded("b"), recorded("c")}, "the oldest key is dropped first")
	assert.True(t, open("a"), "dropped for room: the overflow window covers it")
	assert.True(t, open("never-open"), "the overflow window covers every key")
	advance(openKeyTTL - 2*time.Second)
	assert.True(t, open("a"), "the window is open a second more")
	assert.False(t, recorded("b"), "expired")
	assert.True(t, recorded("c"), "a second short of expiry")
	advance(time.Second)
	assert.False(t, open("a"), "the window is closed")
	assert.False(t, open("c"), "expired")
	assert.True(t, c.open.empty())

	// Keys recorded and settled over and over leave order bounded.
	o := newOpenKeys()
	o.max = 4
	at := time.Unix(0, 0)
	for i := range 100 {
		k := openKey{program: testProgram, key: strconv.Itoa(i)}
		o.answerLocked(k, answerUnknown, at)
		if i%3 != 0 {
			o.answerLocked(k, answerRecorded, at)
		}
		require.LessOrEqual(t, len(o.at), o.max)
		require.Less(t, len(o.order), 2*o.max)
	}
}

// TestChunksHoldBackTheLaterOpsOfADeferredMember: a part sent as chunks
// keeps a member's ops in order as the ledger does within one request: once
// an op of a member is answered UNAVAILABLE (not applied, not recorded), its
// ops in later chunks are not sent, and are answered UNAVAILABLE, not sent,
// not indeterminate. They used to be sent: a Capture after a deferred Hold
// was refused HOLD_NOT_FOUND, recorded, its key spent (found by review).
func TestChunksHoldBackTheLaterOpsOfADeferredMember(t *testing.T) {
	ops := []Op{credit("alice", "a1", "1"), credit("bob", "b1", "1"), credit("alice", "a2", "1"), credit("bob", "b2", "1"), credit("alice", "a3", "1")}
	for _, tc := range []struct {
		name     string
		deferred string // the key answered UNAVAILABLE
		rejected string // a key whose request is rejected on its merits
		codes    []ledger.Code
		notSent  []bool // answered "not sent"
		sent     [][]string
		opIndex  int // the error's, -1 without one
	}{
		{"nothing deferred", "", "",
			[]ledger.Code{"OK", "OK", "OK", "OK", "OK"}, []bool{false, false, false, false, false},
			[][]string{{"a1", "b1"}, {"a2", "b2"}, {"a3"}}, -1},
		{"deferred in the first chunk", "a1", "",
			[]ledger.Code{"UNAVAILABLE", "OK", "UNAVAILABLE", "OK", "UNAVAILABLE"}, []bool{false, false, true, false, true},
			[][]string{{"a1", "b1"}, {"b2"}}, -1},
		{"a later chunk is rejected", "a1", "b2",
			[]ledger.Code{"UNAVAILABLE", "OK", "UNAVAILABLE", "INVALID_AMOUNT", "UNAVAILABLE"}, []bool{false, false, true, false, true},
			[][]string{{"a1", "b1"}, {"b2"}}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, 1, 1)
			c := dial(t, fc, Config{MaxBatchOps: 2})
			fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
				fc.mu.Lock()
				defer fc.mu.Unlock()
				resp := &tallypb.SubmitResponse{}
				for i, op := range req.Ops {
					if op.IdempotencyKey == tc.rejected {
						return nil, tallyErr(codes.InvalidArgument, ledger.CodeInvalidAmount, "bad amount", map[string]string{"op_index": strconv.Itoa(i)}), true
					}
				}
				for _, op := range req.Ops {
					if op.IdempotencyKey == tc.deferred {
						resp.Results = append(resp.Results, &tallypb.OpResult{Code: string(ledger.CodeUnavailable), Message: "deferred"})
						continue
					}
					resp.Results = append(resp.Results, fc.applyOpLocked(op, 0))
				}
				return resp, nil, true
			})
			res, err := c.Submit(testCtx(t), ops, false)
			if tc.opIndex < 0 {
				require.NoError(t, err)
			} else {
				var e *Error
				require.True(t, errors.As(err, &e), "%v", err)
				assert.Equal(t, tc.opIndex, e.OpIndex, "%v", err)
				assert.False(t, IsIndeterminate(err))
			}
			require.Len(t, res, len(ops))
			for i, r := range res {
				assert.Equal(t, tc.codes[i], r.Code, "op %d: %+v", i, r)
				assert.False(t, r.Indeterminate, "op %d: %+v", i, r)
				if tc.notSent[i] {
					assert.Contains(t, r.Message, "not sent", "op %d", i)
				}
			}
			var sent [][]string
			for _, req := range fc.nodes[0].recorded() {
				var keys []string
				for _, op := range req.Ops {
					keys = append(keys, op.IdempotencyKey)
				}
				sent = append(sent, keys)
			}
			assert.Equal(t, tc.sent, sent)
		})
	}
}

// holdThenAnswer makes the cluster hold every Submit attempt until its
// deadline while phase is 0 (so a call ends indeterminate), and answer
// answer(req) after.
func holdThenAnswer(fc *fakeCluster, phase *atomic.Int32, answer func(req *tallypb.SubmitRequest) *tallypb.SubmitResponse) {
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		if phase.Load() == 0 {
			<-ctx.Done()
			return nil, ctx.Err(), true
		}
		return answer(req), nil, true
	})
}

// TestUnrecordedRefusalDoesNotSettleAnOpenKey: a request that fails
// ledger.ValidateRequest at apply gets the error on every op, with no
// sequence number, and records nothing. Such an answer was taken for
// recorded (any op-level code but UNAVAILABLE was): it settled the key, and
// a later UNAVAILABLE for it read "not applied" (found by review). Only a
// replay, a result with a sequence number, or IDEMPOTENCY_KEY_REUSED
// settles a key.
func TestUnrecordedRefusalDoesNotSettleAnOpenKey(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{RequestTimeout: 50 * time.Millisecond})
	var phase atomic.Int32 // 0: hold; 1: INVALID_ARGUMENT, seq 0; 2: UNAVAILABLE
	holdThenAnswer(fc, &phase, func(req *tallypb.SubmitRequest) *tallypb.SubmitResponse {
		code := ledger.CodeInvalidArgument
		if phase.Load() == 2 {
			code = ledger.CodeUnavailable
		}
		resp := &tallypb.SubmitResponse{}
		for range req.Ops {
			resp.Results = append(resp.Results, &tallypb.OpResult{Code: string(code), Message: "op 0: memo: not valid UTF-8"})
		}
		return resp
	})
	op := credit("alice", "pay-1", "10")
	leaveIndeterminate(t, c, op)

	phase.Store(1)
	r, err := c.Apply(testCtx(t), op)
	assert.Equal(t, ledger.CodeInvalidArgument, r.Code)
	assert.True(t, r.Indeterminate, "an unrecorded refusal for an open key: %+v", r)
	assert.True(t, IsIndeterminate(err), "%v", err)

	phase.Store(2)
	r, err = c.Apply(testCtx(t), op)
	assert.True(t, r.Indeterminate, "the unrecorded refusal settled the key: %+v", r)
	assert.True(t, IsIndeterminate(err), "%v", err)
	assert.False(t, c.open.empty())
}

// TestRecordedAnswerOnAnotherShardLeavesAnOpenKeyOpen: the ledger
// deduplicates a key on its member's shard only, so a recorded answer for
// the same key on another shard (the key reused for another member) says
// nothing of the first. It used to settle the key, which the record kept by
// program and key alone (found by review).
func TestRecordedAnswerOnAnotherShardLeavesAnOpenKeyOpen(t *testing.T) {
	fc := newFakeCluster(t, 1, 2)
	c := dial(t, fc, Config{RequestTimeout: 50 * time.Millisecond})
	alice := "alice"
	bob := memberOn(testProgram, 1-ledger.ShardOf(testProgram, alice, 2), 2, 0)
	var phase atomic.Int32
	holdThenAnswer(fc, &phase, func(req *tallypb.SubmitRequest) *tallypb.SubmitResponse {
		if req.Ops[0].Member == bob {
			return &tallypb.SubmitResponse{Results: []*tallypb.OpResult{{Code: string(ledger.CodeOK), Seq: 7}}}
		}
		return &tallypb.SubmitResponse{Results: []*tallypb.OpResult{{Code: string(ledger.CodeUnavailable), Message: "not recorded"}}}
	})
	leaveIndeterminate(t, c, credit(alice, "order-9", "10"))

	phase.Store(1)
	_, err := c.Apply(testCtx(t), credit(bob, "order-9", "1")) // recorded on bob's shard only
	require.NoError(t, err)
	r, err := c.Apply(testCtx(t), credit(alice, "order-9", "10"))
	assert.Equal(t, ledger.CodeUnavailable, r.Code)
	assert.True(t, r.Indeterminate, "alice's shard recorded nothing under order-9: %+v", r)
	assert.True(t, IsIndeterminate(err), "%v", err)
}

// TestUnrecordedAnswersKeepAnOpenKeyOpen: every unrecorded answer for an
// open key re-stamps it, so that openKeyTTL counts from the last sign that
// the key is still unsettled. A caller re-sending every minute through a
// loss of quorum (an entry already in a follower's log may commit when it
// returns) was told "not applied" two minutes after the first call (found
// by review). A key left alone for openKeyTTL is forgotten.
func TestUnrecordedAnswersKeepAnOpenKeyOpen(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{RequestTimeout: 50 * time.Millisecond})
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	c.open.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
	}
	var phase atomic.Int32
	holdThenAnswer(fc, &phase, func(req *tallypb.SubmitRequest) *tallypb.SubmitResponse {
		return &tallypb.SubmitResponse{Results: []*tallypb.OpResult{{Code: string(ledger.CodeUnavailable), Message: "not recorded"}}}
	})
	op := credit("alice", "pay-1", "10")
	leaveIndeterminate(t, c, op)

	phase.Store(1)
	for i, d := range []time.Duration{time.Minute, 55 * time.Second, 10 * time.Second, openKeyTTL - time.Second} {
		advance(d)
		r, err := c.Apply(testCtx(t), op)
		assert.True(t, r.Indeterminate, "re-send %d: no recorded answer ever came: %+v", i, r)
		assert.True(t, IsIndeterminate(err), "re-send %d: %v", i, err)
	}
	advance(openKeyTTL)
	r, err := c.Apply(testCtx(t), op)
	assert.False(t, r.Indeterminate, "left alone for openKeyTTL: %+v", r)
	assert.False(t, IsIndeterminate(err), "%v", err)
	assert.True(t, c.open.empty())
}

// TestDefineAssetKeyIsSettledOnlyByDefineAsset: DefineAsset applies on
// every shard, so its key is recorded apart from any shard's: a Submit's
// recorded answer under the same key does not settle it, nor does a
// DefineAsset's recorded answer settle a Submit's key.
func TestDefineAssetKeyIsSettledOnlyByDefineAsset(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	fc.hint = false
	c := dial(t, fc, Config{RequestTimeout: 50 * time.Millisecond})
	var phase atomic.Int32 // 0: hold; 1: answer; 2: NOT_LEADER
	fc.mu.Lock()
	fc.defineHook = func(ctx context.Context) (*tallypb.DefineAssetResponse, error, bool) {
		switch phase.Load() {
		case 0:
			<-ctx.Done()
			return nil, ctx.Err(), true
		case 2:
			loseLeader(fc)
			return nil, tallyErr(codes.FailedPrecondition, ledger.CodeNotLeader, "not the leader", nil), true
		}
		return &tallypb.DefineAssetResponse{Result: &tallypb.OpResult{Code: string(ledger.CodeOK), Seq: 3}}, nil, true
	}
	fc.mu.Unlock()
	holdThenAnswer(fc, &phase, func(req *tallypb.SubmitRequest) *tallypb.SubmitResponse {
		if phase.Load() == 1 {
			return &tallypb.SubmitResponse{Results: []*tallypb.OpResult{{Code: string(ledger.CodeOK), Seq: 4}}}
		}
		return &tallypb.SubmitResponse{Results: []*tallypb.OpResult{{Code: string(ledger.CodeUnavailable), Message: "not recorded"}}}
	})
	ctx, cancel := context.WithTimeout(testCtx(t), 150*time.Millisecond)
	_, err := c.DefineAsset(ctx, testProgram, "CNY", 2, "k-define")
	cancel()
	require.True(t, IsIndeterminate(err), "%v", err)
	leaveIndeterminate(t, c, credit("alice", "k-credit", "1"))

	phase.Store(1) // each key's recorded answer from the other call
	_, err = c.Apply(testCtx(t), credit("alice", "k-define", "1"))
	require.NoError(t, err)
	_, err = c.DefineAsset(testCtx(t), testProgram, "CNY", 2, "k-credit")
	require.NoError(t, err)

	phase.Store(2) // unrecorded answers: both keys are still open
	ctx, cancel = context.WithTimeout(testCtx(t), 300*time.Millisecond)
	_, err = c.DefineAsset(ctx, testProgram, "CNY", 2, "k-define")
	cancel()
	assert.True(t, IsIndeterminate(err), "a Submit's answer settled a DefineAsset key: %v", err)
	fc.setLeader(0, 0, false)
	r, err := c.Apply(testCtx(t), credit("alice", "k-credit", "1"))
	assert.True(t, r.Indeterminate, "a DefineAsset's answer settled a Submit key: %+v", r)
	assert.True(t, IsIndeterminate(err), "%v", err)
}

// TestClientRefusalOfAnOpenKeyIsIndeterminate: a call the client refuses
// before sending (one key twice, an oversize op, a linked call over
// members, a capture of a non-positive amount) applied nothing, but an
// earlier call with one of its keys may still apply: its error is
// indeterminate too, as an unrecorded answer from the ledger would be.
func TestClientRefusalOfAnOpenKeyIsIndeterminate(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{RequestTimeout: 50 * time.Millisecond})
	var phase atomic.Int32
	holdThenAnswer(fc, &phase, func(req *tallypb.SubmitRequest) *tallypb.SubmitResponse {
		t.Errorf("sent: %v", req.Ops)
		return nil
	})
	leaveIndeterminate(t, c, credit("alice", "pay-1", "10"))
	phase.Store(1)
	oversize := func(key string) Op {
		op := credit("alice", key, "10")
		op.Memo = strings.Repeat("m", MaxOpBytes)
		return op
	}
	for _, tc := range []struct {
		name string
		call func(key string) error
	}{
		{"key used twice", func(key string) error {
			_, err := c.Submit(testCtx(t), []Op{credit("alice", key, "10"), credit("bob", key, "1")}, false)
			return err
		}},
		{"oversize op", func(key string) error {
			_, err := c.Apply(testCtx(t), oversize(key))
			return err
		}},
		{"linked over members", func(key string) error {
			_, err := c.Submit(testCtx(t), []Op{credit("alice", key, "10"), credit("bob", key+"-b", "1")}, true)
			return err
		}},
		{"capture of zero", func(key string) error {
			_, err := c.CaptureHold(testCtx(t), testProgram, "alice", "hold-1", decimal.Zero, key)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call("pay-1")
			require.Error(t, err)
			assert.True(t, IsIndeterminate(err), "refused with an open key: %v", err)
			err = tc.call("pay-2")
			require.Error(t, err)
			assert.False(t, IsIndeterminate(err), "refused with no open key: %v", err)
		})
	}
	assert.False(t, c.open.empty(), "a client refusal settles nothing")
}

// TestChunkErrorBeyondItsOpsNamesNoOp: a chunk's error whose op_index is
// past the chunk names no op of it; it named an op of a later chunk.
func TestChunkErrorBeyondItsOpsNamesNoOp(t *testing.T) {
	fc := newFakeCluster(t, 1, 1)
	c := dial(t, fc, Config{MaxBatchOps: 2})
	fc.setHook(func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool) {
		return nil, tallyErr(codes.InvalidArgument, ledger.CodeInvalidArgument, "op 3: bad", map[string]string{"op_index": "3"}), true
	})
	ops := []Op{credit("alice", "a1", "1"), credit("alice", "a2", "1"), credit("alice", "a3", "1"), credit("alice", "a4", "1")}
	_, err := c.Submit(testCtx(t), ops, false)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, ledger.CodeInvalidArgument, e.Code)
	assert.Equal(t, -1, e.OpIndex, "%v", e)
}
