package loadtest

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// Each test here is a run that must fail: before its fix it passed (found
// by review).

// seqlessOK answers client 0's credits OK without applying or recording
// them: no seq, nothing in the journal.
type seqlessOK struct{ *fakeLedger }

func (s seqlessOK) Submit(ctx context.Context, ops []client.Op, linked bool) ([]client.Result, error) {
	if len(ops) == 1 && ops[0].Kind == ledger.OpCredit && strings.HasPrefix(ops[0].IdempotencyKey, "t-0-") {
		a, err := s.fakeLedger.GetAccount(ctx, ops[0].Program, ops[0].Member, ops[0].Asset)
		if err != nil {
			return nil, err
		}
		a.Posted = a.Posted.Add(ops[0].Amount)
		a.Available = a.Available.Add(ops[0].Amount)
		return []client.Result{{Code: ledger.CodeOK, Account: &a}}, nil
	}
	return s.fakeLedger.Submit(ctx, ops, linked)
}

// TestOutcomeWithoutSeqIsALostAck: the ledger stamps a seq on every outcome
// it records, so an OK without one was recorded nowhere.
func TestOutcomeWithoutSeqIsALostAck(t *testing.T) {
	rep, err := Run(context.Background(), seqlessOK{newFakeLedger(4)}, false, Config{Workload: Workload{Members: 200},
		Clients: 4, Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond, Seed: testSeed, RunID: "t"})
	require.NoError(t, err)
	require.False(t, rep.OK, "credits told OK and never stored passed")
	require.Positive(t, rep.LostAcks)
}

// readsDown fails every read the load makes (their calls are bounded by
// OpTimeout, 5 s here); the verifier's (30 s) are answered.
type readsDown struct{ *fakeLedger }

func (r readsDown) GetAccount(ctx context.Context, program, member, asset string) (client.Account, error) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < 10*time.Second {
		return client.Account{}, &client.Error{Code: ledger.CodeUnavailable, Shard: -1, OpIndex: -1}
	}
	return r.fakeLedger.GetAccount(ctx, program, member, asset)
}

// TestNoReadAnsweredFailsTheRun: reads that all fail are not a pass,
// neither alone (the reads cases of make bench) nor in the default mix.
func TestNoReadAnsweredFailsTheRun(t *testing.T) {
	for _, mix := range []Mix{{Read: 100}, DefaultMix} {
		rep, err := Run(context.Background(), readsDown{newFakeLedger(2)}, false, Config{Workload: Workload{Members: 200, Mix: mix},
			Clients: 4, Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond, Seed: testSeed, RunID: "t", OpTimeout: 5 * time.Second})
		require.NoError(t, err)
		require.False(t, rep.OK, "mix %s: no read answered, and the run passed", mix)
		require.Positive(t, rep.Verification.SentReads)
		require.Zero(t, rep.Verification.AnsweredReads)
	}
}

// toldOtherwise changes client 0's results in fields the digest leaves out
// (available is derived; max balance and scale belong to the account).
type toldOtherwise struct {
	*fakeLedger
	mangle func(r *client.Result)
}

func (l toldOtherwise) Submit(ctx context.Context, ops []client.Op, linked bool) ([]client.Result, error) {
	res, err := l.fakeLedger.Submit(ctx, ops, linked)
	for i := range res {
		if res[i].Seq > 0 && res[i].Account != nil && strings.HasPrefix(ops[i].IdempotencyKey, "t-0-") {
			a := *res[i].Account
			res[i].Account = &a
			l.mangle(&res[i])
		}
	}
	return res, err
}

// TestImpossibleWriteResultFailsTheRun: a write's result describing an
// account that cannot be is checked as a read's answer is.
func TestImpossibleWriteResultFailsTheRun(t *testing.T) {
	for name, m := range map[string]func(r *client.Result){
		"available": func(r *client.Result) {
			r.Account.Available = r.Account.Posted.Sub(r.Account.Held).Add(decimal.New(1000, 0))
		},
		"max balance below posted": func(r *client.Result) { mb := decimal.New(1, 0); r.Account.MaxBalance = &mb },
		"scale":                    func(r *client.Result) { r.Account.Scale = 7 },
	} {
		rep, err := Run(context.Background(), toldOtherwise{newFakeLedger(2), m}, false, Config{Workload: Workload{Members: 200},
			Clients: 4, Duration: 200 * time.Millisecond, Warmup: 20 * time.Millisecond, Seed: testSeed, RunID: "t"})
		require.NoError(t, err)
		require.False(t, rep.OK, "%s: results the ledger cannot give passed", name)
		require.Positive(t, rep.Verification.UnexpectedCodes, name)
	}
}

// TestConservationNotCheckedIsNotOK: with no shard's replicas converged,
// no shard's conservation was checked.
func TestConservationNotCheckedIsNotOK(t *testing.T) {
	f := newFakeLedger(4)
	f.lagNode = 1
	v := verifyFake(t, f, func([]ackRecord) {})
	require.Zero(t, v.ShardsChecked)
	require.False(t, v.ConservationOK)
	require.False(t, v.InvariantOK)
}

// flakyFirstRead fails the first GetAccount (setup's probe of the
// program), as an election at that moment would.
type flakyFirstRead struct {
	*fakeLedger
	failed *atomic.Bool
}

func (l flakyFirstRead) GetAccount(ctx context.Context, program, member, asset string) (client.Account, error) {
	if !l.failed.Swap(true) {
		return client.Account{}, &client.Error{Code: ledger.CodeUnavailable, Shard: -1, OpIndex: -1}
	}
	return l.fakeLedger.GetAccount(ctx, program, member, asset)
}

// TestReusedRunIDIsRefusedAfterAFailedProbe: one failed read of the program
// says nothing; setup asks again instead of replaying the earlier run.
func TestReusedRunIDIsRefusedAfterAFailedProbe(t *testing.T) {
	f := newFakeLedger(2)
	cfg := Config{Workload: Workload{Members: 200, Mix: Mix{Credit: 1, Debit: 1}}, Clients: 2, Duration: 100 * time.Millisecond,
		Warmup: 10 * time.Millisecond, Seed: testSeed, RunID: "t"}
	rep, err := Run(context.Background(), f, false, cfg)
	require.NoError(t, err)
	require.True(t, rep.OK)
	_, err = Run(context.Background(), flakyFirstRead{f, new(atomic.Bool)}, false, cfg)
	require.ErrorContains(t, err, "already set up")
}

// TestStaleReadFailsTheRun: a read sent after a write's acknowledgement
// that reports the account as last updated before that write is stale,
// however consistent its balances (a review named this a limit: stale reads passed).
func TestStaleReadFailsTheRun(t *testing.T) {
	for _, stale := range []int64{0, 5_000} {
		f := newFakeLedger(2)
		f.staleMs = stale
		rep, err := Run(context.Background(), f, false, Config{Workload: Workload{Scenario: FlashSale, Members: 200},
			Clients: 4, Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond, Seed: testSeed, RunID: "t"})
		require.NoError(t, err)
		require.Equal(t, stale == 0, rep.OK, "reads %d ms stale", stale)
	}
}
