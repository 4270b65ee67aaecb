package loadtest

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// fakeRun runs a short closed-loop run against a fake ledger.
func fakeRun(t *testing.T, f *fakeLedger, cfg Config) *Report {
	t.Helper()
	if cfg.Workload.Members == 0 {
		cfg.Workload.Members = 200
	}
	if cfg.Duration == 0 {
		cfg.Duration = 300 * time.Millisecond
	}
	if cfg.Clients == 0 {
		cfg.Clients = 8
	}
	cfg.Warmup = 50 * time.Millisecond
	cfg.Seed = testSeed
	cfg.RunID = "t"
	rep, err := Run(context.Background(), f, false, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestRunAgainstFakePasses(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"uniform single ops", Config{}},
		{"flash-sale batches", Config{Workload: Workload{Scenario: FlashSale}, Batch: 50}},
		{"zipf open loop", Config{Workload: Workload{Scenario: Zipf}, RatePerSec: 2000, Clients: 16}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeLedger(4)
			rep := fakeRun(t, f, tc.cfg)
			v := rep.Verification
			if !rep.OK || rep.LostAcks != 0 || !rep.InvariantOK || v.BalanceMismatch != 0 {
				var b strings.Builder
				Summary(&b, rep)
				t.Fatalf("run failed:\n%s", b.String())
			}
			if rep.Ops == 0 || v.AckedOps == 0 || v.VerifiedOps != v.AckedOps || v.VerifyMode != "all" {
				t.Errorf("ops %d, acked %d, verified %d (%s)", rep.Ops, v.AckedOps, v.VerifiedOps, v.VerifyMode)
			}
			if v.AccountsChecked != 201 || v.ShardsChecked != 4 {
				t.Errorf("checked %d accounts, %d shards; want 201, 4", v.AccountsChecked, v.ShardsChecked)
			}
			if int64(len(f.applied)) < v.AckedOps {
				t.Errorf("fake applied %d ops, run acked %d", len(f.applied), v.AckedOps)
			}
			if tc.cfg.RatePerSec > 0 && rep.Mode != "open" {
				t.Errorf("mode %s", rep.Mode)
			}
		})
	}
}

// verifyFake runs the load against f, then lets lie change f before the
// verifier looks.
func verifyFake(t *testing.T, f *fakeLedger, lie func(log []ackRecord), extra ...ackRecord) *Verification {
	t.Helper()
	cfg := Config{Workload: Workload{Members: 200}, Clients: 4, Duration: 200 * time.Millisecond, Seed: testSeed, RunID: "t"}.withDefaults()
	if err := setup(context.Background(), f, cfg); err != nil {
		t.Fatal(err)
	}
	r := newRunner(cfg, cfg.Workload, f)
	r.load(context.Background(), &Report{})
	var log []ackRecord
	for _, l := range r.logs {
		log = append(log, l...)
	}
	if len(log) == 0 {
		t.Fatal("no ops")
	}
	lie(log)
	log = append(log, extra...)
	vf := &Verifier{L: f, W: cfg.Workload, Program: cfg.Program(), RunID: cfg.RunID, SeedMinor: seedOf(cfg.Workload), OpOf: r.op,
		MaxOps: 1 << 30, MaxAccounts: 1 << 30, Concurrency: 8, ConvergeTimeout: 200 * time.Millisecond, Seed: testSeed}
	return vf.Verify(context.Background(), log)
}

func firstAcked(log []ackRecord, kind Kind) *ackRecord {
	for i := range log {
		if log[i].state == stateAcked && log[i].spec.Kind == kind && log[i].code == "OK" {
			return &log[i]
		}
	}
	return nil
}

func TestVerifierCatchesLies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lie   func(f *fakeLedger, log []ackRecord)
		check func(v *Verification) bool
	}{
		{"missing op", func(f *fakeLedger, log []ackRecord) {
			r := firstAcked(log, KindCredit)
			f.hideKeys[keyOf("t", r.client, r.spec.Seq)] = true
		}, func(v *Verification) bool {
			return v.LostAcks == 1 && strings.Contains(v.LostAckExamples[0], "not found")
		}},
		{"wrong seq", func(f *fakeLedger, log []ackRecord) {
			r := firstAcked(log, KindDebit)
			f.wrongSeqKeys[keyOf("t", r.client, r.spec.Seq)] = true
		}, func(v *Verification) bool {
			return v.LostAcks == 1 && strings.Contains(v.LostAckExamples[0], "stored OK seq")
		}},
		{"client saw another code", func(f *fakeLedger, log []ackRecord) {
			firstAcked(log, KindHold).code = "INSUFFICIENT_FUNDS"
		}, func(v *Verification) bool { return v.LostAcks == 1 }},
		{"stored as another op", func(f *fakeLedger, log []ackRecord) {
			firstAcked(log, KindCredit).spec.AmountMinor++ // what the client sent is not what is stored
		}, func(v *Verification) bool {
			return v.LostAcks == 1 && strings.Contains(v.LostAckExamples[0], "stored as another op")
		}},
		{"stored with another result", func(f *fakeLedger, log []ackRecord) {
			r := firstAcked(log, KindDebit)
			f.skewResult[keyOf("t", r.client, r.spec.Seq)] = 1
		}, func(v *Verification) bool {
			return v.LostAcks == 1 && strings.Contains(v.LostAckExamples[0], "another result")
		}},
		{"a failed op is stored", func(f *fakeLedger, log []ackRecord) {
			r := firstAcked(log, KindCredit)
			r.state, r.code, r.seq = stateFailed, ledger.CodeUnavailable, 0
		}, func(v *Verification) bool {
			return v.FailedStored == 1 && v.FailedChecked >= 1 && strings.Contains(v.FailedExamples[0], "told UNAVAILABLE, stored OK")
		}},
		{"an unexpected code", func(f *fakeLedger, log []ackRecord) {
			r := firstAcked(log, KindHold)
			r.state, r.code = stateFailed, ledger.CodeAccountNotFound
		}, func(v *Verification) bool {
			return v.UnexpectedCodes == 1 && strings.Contains(v.UnexpectedExamples[0], "ACCOUNT_NOT_FOUND")
		}},
		{"balance off", func(f *fakeLedger, log []ackRecord) {
			f.skewMember["m7"] = 1
		}, func(v *Verification) bool {
			return v.LostAcks == 0 && v.BalanceMismatch == 1 && strings.HasPrefix(v.BalanceExamples[0], "m7/POINTS")
		}},
		{"replica hash differs", func(f *fakeLedger, log []ackRecord) { f.badHashNode = 2 },
			func(v *Verification) bool { return !v.ReplicasEqual && v.ConservationOK && !v.InvariantOK }},
		{"conservation broken", func(f *fakeLedger, log []ackRecord) { f.badConsNode = 3 },
			func(v *Verification) bool { return !v.ConservationOK && !v.InvariantOK }},
		{"replica never converges", func(f *fakeLedger, log []ackRecord) { f.lagNode = 1 },
			func(v *Verification) bool {
				return !v.InvariantOK && strings.Contains(v.InvariantDetails[0], "did not reach one applied index")
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeLedger(4)
			v := verifyFake(t, f, func(log []ackRecord) { tc.lie(f, log) })
			if !tc.check(v) || v.OK() {
				t.Errorf("verification did not catch it: %+v", v)
			}
		})
	}
}

// mangleDebits sends every member debit against the wrong asset: the ledger
// refuses each with ACCOUNT_NOT_FOUND, and no debit moves a balance.
type mangleDebits struct {
	*fakeLedger
	asset string
}

func (m mangleDebits) Submit(ctx context.Context, ops []client.Op, linked bool) ([]client.Result, error) {
	ops = append([]client.Op(nil), ops...)
	for i := range ops {
		if ops[i].Kind == ledger.OpDebit && ops[i].Member != BudgetMember && strings.HasPrefix(ops[i].IdempotencyKey, "t-") {
			ops[i].Asset = m.asset
		}
	}
	return m.fakeLedger.Submit(ctx, ops, linked)
}

// TestRunFailsOnUnexpectedCodes: a run whose debits all came back with a
// code the workload never provokes used to pass, its refusals counted as
// throughput and its balances predicted from the refusals. (Found by
// review.)
func TestRunFailsOnUnexpectedCodes(t *testing.T) {
	for _, tc := range []struct {
		asset string
		code  ledger.Code
	}{
		{BudgetAsset, ledger.CodeAccountNotFound}, // recorded under the key
		{"", ledger.CodeInvalidArgument},          // refused before the log
	} {
		t.Run(string(tc.code), func(t *testing.T) {
			f := newFakeLedger(4)
			rep, err := Run(context.Background(), mangleDebits{f, tc.asset}, false, Config{Workload: Workload{Members: 200}, Clients: 8,
				Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond, Seed: testSeed, RunID: "t"})
			if err != nil {
				t.Fatal(err)
			}
			v := rep.Verification
			if rep.OK || v.UnexpectedCodes == 0 || !strings.Contains(v.UnexpectedExamples[0], string(tc.code)) {
				var b strings.Builder
				Summary(&b, rep)
				t.Errorf("every debit refused %s and the run passed:\n%s", tc.code, b.String())
			}
		})
	}
}

// TestVerifierResolvesIndeterminateOps: ops of unknown outcome are settled
// by re-sending them with their keys: one that applied replays (and must
// not apply twice, or the balance check fails), one that never reached the
// ledger applies now, and one the ledger refuses is checked as failed (and
// fails the run: the workload never sends an op the rules refuse).
func TestVerifierResolvesIndeterminateOps(t *testing.T) {
	f := newFakeLedger(4)
	f.rejectKeys["t-98-1"] = true
	v := verifyFake(t, f, func(log []ackRecord) {
		a := firstAcked(log, KindCredit)
		a.state, a.code, a.seq = stateIndeterminate, "UNAVAILABLE", 0
	}, ackRecord{client: 99, spec: Spec{Kind: KindDebit, Account: 5, AmountMinor: 10, Seq: 1}, state: stateIndeterminate},
		ackRecord{client: 98, spec: Spec{Kind: KindCredit, Account: 6, AmountMinor: 10, Seq: 1}, state: stateIndeterminate})
	if v.Indeterminate != 3 || v.ResolvedApplied != 2 || v.ResolvedRefused != 1 || v.UnresolvedOps != 0 ||
		v.LostAcks != 0 || v.FailedStored != 0 || v.BalanceMismatch != 0 || !v.InvariantOK {
		t.Errorf("want all three settled (two recorded, one refused) and every balance right: %+v", v)
	}
	if v.OK() || v.UnexpectedCodes != 1 {
		t.Errorf("the refused op must fail the run as an unexpected code: ok=%v unexpected=%v", v.OK(), v.UnexpectedExamples)
	}
	if _, ok := f.applied["t-99-1"]; !ok {
		t.Error("the op that never reached the ledger was not applied by its re-send")
	}
	if v.FailedChecked == 0 {
		t.Error("the refused op was not checked as failed")
	}
}

// TestVerifierSettlesLateApplies: an op whose first attempt applies only
// after a lookup has said "not found" (it was still queued at a leader) is
// settled by its re-send. The verifier used to look it up, call it failed,
// then find it stored and fail the run.
func TestVerifierSettlesLateApplies(t *testing.T) {
	f := newFakeLedger(2)
	cfg := Config{Workload: Workload{Members: 50}, Clients: 2, Duration: 100 * time.Millisecond, Seed: testSeed, RunID: "t"}.withDefaults()
	log := fakeLoad(t, f, cfg)
	late := ackRecord{client: 77, spec: Spec{Kind: KindCredit, Account: 3, AmountMinor: 4, Seq: 1}, state: stateIndeterminate}
	opOf := (&runner{cfg: cfg, w: cfg.Workload, program: cfg.Program()}).op
	l := &lateLedger{fakeLedger: f, lateKey: keyOf("t", 77, 1), lateOp: opOf(77, late.spec)}
	vf := &Verifier{L: l, W: cfg.Workload, Program: cfg.Program(), RunID: "t", SeedMinor: seedOf(cfg.Workload), OpOf: opOf,
		MaxOps: 1 << 30, MaxAccounts: 1 << 30, Concurrency: 2, ConvergeTimeout: time.Second, Seed: 1}
	v := vf.Verify(context.Background(), append(log, late))
	if !v.OK() || v.ResolvedApplied != 1 || v.FailedStored != 0 {
		t.Errorf("want the late op settled as recorded and a pass: %+v", v)
	}
	if n := l.lateApplied.Load(); n != 1 {
		t.Errorf("the late attempt applied %d times", n)
	}
}

// lateLedger delivers the first attempt of lateOp late, as a request still
// queued at a leader would: just after the first lookup of its key has
// answered "not found", or just before its first re-send.
type lateLedger struct {
	*fakeLedger
	lateKey     string
	lateOp      client.Op
	lateApplied atomic.Int64
}

func (l *lateLedger) deliver(ctx context.Context) {
	if l.lateApplied.CompareAndSwap(0, 1) {
		if _, err := l.fakeLedger.Submit(ctx, []client.Op{l.lateOp}, false); err != nil {
			panic(err)
		}
	}
}

func (l *lateLedger) GetOperation(ctx context.Context, program, member, key string) (bool, client.JournalEntry, error) {
	found, e, err := l.fakeLedger.GetOperation(ctx, program, member, key)
	if key == l.lateKey {
		l.deliver(ctx)
	}
	return found, e, err
}

func (l *lateLedger) Submit(ctx context.Context, ops []client.Op, linked bool) ([]client.Result, error) {
	if len(ops) == 1 && ops[0].IdempotencyKey == l.lateKey {
		l.deliver(ctx)
	}
	return l.fakeLedger.Submit(ctx, ops, linked)
}

// fakeLoad sets up and runs cfg's load phase against f and returns the log
// of every op sent, for a Verifier.
func fakeLoad(t *testing.T, f *fakeLedger, cfg Config) []ackRecord {
	t.Helper()
	if err := setup(context.Background(), f, cfg); err != nil {
		t.Fatal(err)
	}
	r := newRunner(cfg, cfg.Workload, f)
	r.load(context.Background(), &Report{})
	var log []ackRecord
	for _, l := range r.logs {
		log = append(log, l...)
	}
	return log
}

func TestVerifierSamplesLargeRuns(t *testing.T) {
	f := newFakeLedger(2)
	cfg := Config{Workload: Workload{Members: 50}, Clients: 4, Duration: 200 * time.Millisecond, Seed: testSeed, RunID: "t"}.withDefaults()
	log := fakeLoad(t, f, cfg)
	before := f.calls["GetOperation"]
	vf := &Verifier{L: f, W: cfg.Workload, Program: cfg.Program(), RunID: "t", SeedMinor: seedOf(cfg.Workload),
		MaxOps: 10, MaxAccounts: 5, Concurrency: 2, ConvergeTimeout: time.Second, Seed: 1}
	v := vf.Verify(context.Background(), log)
	if !v.OK() || v.VerifyMode != "sample" || v.VerifiedOps != 10 || f.calls["GetOperation"]-before != 10 {
		t.Errorf("want a passing sample of 10 lookups: %+v, %d lookups", v, f.calls["GetOperation"]-before)
	}
	// A time budget that runs out at once leaves a (tiny) sample.
	vf.MaxOps, vf.OpsBudget = 1<<30, time.Nanosecond
	v = vf.Verify(context.Background(), log)
	if v.VerifyMode != "sample" || v.VerifiedOps >= v.AckedOps || v.LostAcks != 0 {
		t.Errorf("budget: want a sample with no lost acks: %+v", v)
	}
	if v.AccountsChecked != 5+1 { // the sample and the budget (maybe one of them)
		if v.AccountsChecked != 5 {
			t.Errorf("checked %d accounts, want 5 or 6", v.AccountsChecked)
		}
	}
}

func TestPredictFollowsOutcomes(t *testing.T) {
	w := Workload{Members: 2}.WithDefaults()
	vf := &Verifier{W: w, SeedMinor: func(int) int64 { return 100 }}
	log := []ackRecord{
		{spec: Spec{Kind: KindCredit, Account: 0, AmountMinor: 5}, state: stateAcked, code: "OK"},
		{spec: Spec{Kind: KindDebit, Account: 0, AmountMinor: 500}, state: stateAcked, code: "INSUFFICIENT_FUNDS"},
		{spec: Spec{Kind: KindHold, Account: 0, AmountMinor: 30}, state: stateAcked, code: "OK"},
		{spec: Spec{Kind: KindCapture, Account: 0, AmountMinor: 30}, state: stateAcked, code: "OK"},
		{spec: Spec{Kind: KindHold, Account: 1, AmountMinor: 7}, state: stateAcked, code: "OK"},
		{spec: Spec{Kind: KindHold, Account: 1, AmountMinor: 9}, state: stateAcked, code: "OK"},
		{spec: Spec{Kind: KindCapture, Account: 1, AmountMinor: 9}, state: stateAcked, code: "HOLD_EXPIRED"},
		{spec: Spec{Kind: KindDebit, Account: 1, AmountMinor: 1}, state: stateFailed, code: "INVALID_ARGUMENT"},
		{spec: Spec{Kind: KindDraw, Account: 2, AmountMinor: 1}, state: stateIndeterminate},
	}
	p := vf.Predict(log)
	if p[0] != (predicted{postedMinor: 75}) || p[1] != (predicted{postedMinor: 100, heldMinor: 7}) || !p[2].unknown {
		t.Errorf("predicted %+v", p)
	}
}

// lookupDown applied everything but cannot answer GetOperation or Submit
// (a shard without a leader while the verifier runs, say).
type lookupDown struct{ *fakeLedger }

func (l lookupDown) GetOperation(ctx context.Context, program, member, key string) (bool, client.JournalEntry, error) {
	return false, client.JournalEntry{}, errors.New("shard unavailable")
}

func (l lookupDown) Submit(ctx context.Context, ops []client.Op, linked bool) ([]client.Result, error) {
	return nil, &client.Error{Code: ledger.CodeUnavailable, Shard: -1, OpIndex: -1, Indeterminate: true}
}

// TestVerifierFailsWhatItCannotCheck: every op came back indeterminate and
// none can be looked up, so nothing was verified and every account was
// skipped; a wrong balance went unseen and the run used to PASS. A run
// whose ops all have their own keys must also never see
// IDEMPOTENCY_KEY_REUSED.
func TestVerifierFailsWhatItCannotCheck(t *testing.T) {
	f := newFakeLedger(4)
	cfg := Config{Workload: Workload{Members: 200}, Clients: 4, Duration: 200 * time.Millisecond, Seed: testSeed, RunID: "t"}.withDefaults()
	log := fakeLoad(t, f, cfg)
	verify := func(l Ledger, log []ackRecord) *Verification {
		vf := &Verifier{L: l, W: cfg.Workload, Program: cfg.Program(), RunID: cfg.RunID, SeedMinor: seedOf(cfg.Workload),
			OpOf: (&runner{cfg: cfg, w: cfg.Workload, program: cfg.Program()}).op, ResendTries: 1,
			MaxOps: 1 << 30, MaxAccounts: 1 << 30, Concurrency: 8, ConvergeTimeout: 200 * time.Millisecond, Seed: testSeed}
		return vf.Verify(context.Background(), log)
	}
	if v := verify(f, append([]ackRecord(nil), log...)); !v.OK() {
		t.Fatalf("the honest run fails: %+v", v)
	}

	reused := append([]ackRecord(nil), log...)
	reused[len(reused)/2].state, reused[len(reused)/2].code = stateFailed, ledger.CodeIdempotencyKeyReused
	if v := verify(f, reused); v.OK() || v.KeysReused != 1 {
		t.Errorf("IDEMPOTENCY_KEY_REUSED passed: ok=%v keys_reused=%d", v.OK(), v.KeysReused)
	}

	for i := range log {
		log[i].state, log[i].code, log[i].seq = stateIndeterminate, ledger.CodeUnavailable, 0
	}
	f.skewMember["m7"] = 1_000
	v := verify(lookupDown{f}, log)
	if v.OK() {
		t.Errorf("passed with %d unresolved ops, %d accounts checked, %d skipped", v.UnresolvedOps, v.AccountsChecked, v.AccountsSkipped)
	}
}

// writesDown answers reads but refuses every write, as a cluster whose
// every shard lost its leader would (certainly not applied).
type writesDown struct{ *fakeLedger }

func (l writesDown) Submit(ctx context.Context, ops []client.Op, linked bool) ([]client.Result, error) {
	return nil, &client.Error{Code: ledger.CodeUnavailable, Shard: -1, OpIndex: -1}
}

// TestRunWithNoAckedWriteFails: a run that sent writes and got none
// acknowledged proves nothing; it used to pass (found by review).
func TestRunWithNoAckedWriteFails(t *testing.T) {
	f := newFakeLedger(2)
	cfg := Config{Workload: Workload{Members: 50}, Clients: 2, Duration: 100 * time.Millisecond, Seed: testSeed, RunID: "t"}.withDefaults()
	require.NoError(t, setup(context.Background(), f, cfg))
	l := writesDown{f}
	r := newRunner(cfg, cfg.Workload, l)
	r.load(context.Background(), &Report{})
	var log []ackRecord
	for _, lg := range r.logs {
		log = append(log, lg...)
	}
	require.NotEmpty(t, log)
	vf := &Verifier{L: l, W: cfg.Workload, Program: cfg.Program(), RunID: "t", SeedMinor: seedOf(cfg.Workload), OpOf: r.op,
		MaxOps: 1 << 30, MaxAccounts: 1 << 30, Concurrency: 2, ConvergeTimeout: time.Second, Seed: 1}
	v := vf.Verify(context.Background(), log)
	require.Zero(t, v.AckedOps)
	require.Equal(t, int64(len(log)), v.SentWrites)
	require.False(t, v.OK(), "no write acknowledged, and the run passed: %+v", v)
}

// ctxLedger is the fake ledger honouring its context, as gRPC does.
type ctxLedger struct{ *fakeLedger }

func (c ctxLedger) GetOperation(ctx context.Context, p, m, k string) (bool, client.JournalEntry, error) {
	if err := ctx.Err(); err != nil {
		return false, client.JournalEntry{}, err
	}
	return c.fakeLedger.GetOperation(ctx, p, m, k)
}

// An interrupted run (Ctrl-C) is still verified. It used to verify with
// the cancelled context, and every acked op's failed lookup counted as a
// lost ack.
func TestInterruptedRunIsVerified(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(500*time.Millisecond, cancel)
	rep, err := Run(ctx, ctxLedger{newFakeLedger(2)}, false, Config{Workload: Workload{Members: 200, Mix: Mix{Credit: 1}},
		Clients: 4, Duration: 5 * time.Second, Seed: 3})
	require.NoError(t, err)
	v := rep.Verification
	require.Positive(t, v.AckedOps)
	require.Zero(t, rep.LostAcks, "%v", v.LostAckExamples)
	require.Zero(t, v.LookupFailed)
	require.Equal(t, v.AckedOps, v.VerifiedOps)
	require.True(t, rep.OK)
	require.True(t, rep.Interrupted, "the report must say the window was cut short")
	var b strings.Builder
	Summary(&b, rep)
	require.Contains(t, b.String(), "interrupted:")
}

// A lookup that fails proves neither that the op is stored nor that it is
// lost: the run fails, with no lost ack claimed.
func TestFailedLookupFailsTheRunWithoutLostAcks(t *testing.T) {
	v := &Verification{AckedOps: 10, VerifiedOps: 9, LookupFailed: 1, AccountsChecked: 1, InvariantOK: true}
	require.False(t, v.OK())
	v.LookupFailed, v.VerifiedOps = 0, 10
	require.True(t, v.OK())
}

// deadReads is the fake ledger with every read after the load failing
// (setup's probe of the program is answered: no such account).
type deadReads struct {
	*fakeLedger
	reads  atomic.Int64
	probed atomic.Bool
}

func (d *deadReads) GetOperation(context.Context, string, string, string) (bool, client.JournalEntry, error) {
	d.reads.Add(1)
	return false, client.JournalEntry{}, errors.New("unreachable")
}

func (d *deadReads) GetAccount(context.Context, string, string, string) (client.Account, error) {
	if !d.probed.Swap(true) {
		return client.Account{}, &client.Error{Code: ledger.CodeAccountNotFound, Shard: -1, OpIndex: -1}
	}
	d.reads.Add(1)
	return client.Account{}, errors.New("unreachable")
}

// A cluster that stops answering fails the verification in bounded time:
// past maxReadFailures failed reads the rest are not tried, and none of
// them is claimed as a lost ack or a balance mismatch.
func TestUnansweredReadsFailTheRunSoon(t *testing.T) {
	d := &deadReads{fakeLedger: newFakeLedger(2)}
	rep, err := Run(context.Background(), d, false, Config{Workload: Workload{Members: 200, Mix: Mix{Credit: 1}},
		Clients: 4, Duration: 300 * time.Millisecond, Seed: 5})
	require.NoError(t, err)
	v := rep.Verification
	require.Positive(t, v.AckedOps)
	require.False(t, rep.OK)
	require.Zero(t, rep.LostAcks)
	require.Zero(t, v.BalanceMismatch)
	require.GreaterOrEqual(t, v.LookupFailed, v.AckedOps)
	require.LessOrEqual(t, d.reads.Load(), int64(maxReadFailures+verifyConcurrency))
}

func TestToMinorIsExact(t *testing.T) {
	for _, tc := range []struct {
		in    string
		scale int32
		want  int64
		ok    bool
	}{
		{"12.50", 2, 1250, true},
		{"12.5", 2, 1250, true},
		{"0", 0, 0, true},
		{"-3.25", 2, -325, true},
		{"12.505", 2, 0, false}, // a third decimal is not truncated away
		{"92233720368547758.08", 2, 0, false},
	} {
		got, ok := toMinor(decimal.RequireFromString(tc.in), tc.scale)
		require.Equal(t, tc.ok, ok, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
}

// TestReusedRunIDIsRefused: a second run with the same run id would replay
// the first one's operations (cheap dedup hits, counted as throughput), so
// its setup fails (found by review).
func TestReusedRunIDIsRefused(t *testing.T) {
	f := newFakeLedger(2)
	rep := fakeRun(t, f, Config{})
	if !rep.OK {
		t.Fatal("first run failed")
	}
	cfg := Config{Workload: Workload{Members: 200}, Duration: 100 * time.Millisecond, Warmup: 10 * time.Millisecond, Clients: 2,
		Seed: testSeed, RunID: "t"}
	if _, err := Run(context.Background(), f, false, cfg); err == nil || !strings.Contains(err.Error(), "already set up") {
		t.Fatalf("second run with the same run id: %v", err)
	}
}

// TestSampledPassSaysSo: a run whose acks were looked up by sample passes,
// but its result line says it was a sample.
func TestSampledPassSaysSo(t *testing.T) {
	f := newFakeLedger(2)
	rep := fakeRun(t, f, Config{VerifyOps: 5})
	var b strings.Builder
	Summary(&b, rep)
	if !rep.OK || !strings.Contains(b.String(), "result: PASS (acks sampled: 5 of") {
		t.Fatalf("summary:\n%s", b.String())
	}
}

// TestReadsOfAnotherAccountFail: a read answered with another account is
// no answer: the run fails and names it (found by review: reads were
// checked for their code only).
func TestReadsOfAnotherAccountFail(t *testing.T) {
	f := newFakeLedger(2)
	f.otherReads = true
	rep := fakeRun(t, f, Config{Workload: Workload{Mix: Mix{Read: 100}}})
	var b strings.Builder
	Summary(&b, rep)
	if rep.OK || rep.Verification.UnexpectedCodes == 0 || !strings.Contains(b.String(), "answered with") {
		t.Fatalf("summary:\n%s", b.String())
	}
	if rep.AnsweredOps != 0 {
		t.Errorf("%d wrong reads counted as answered", rep.AnsweredOps)
	}
}

// TestRunResolvesIndeterminateBatches: a batch the ledger applied but
// answered as indeterminate (its ops marked so, as the client marks the
// ops of a part whose outcome is unknown) is settled by re-sending: its
// ops are recorded, not lost, and the run passes.
func TestRunResolvesIndeterminateBatches(t *testing.T) {
	f := newFakeLedger(4)
	for seq := range uint64(20) {
		f.indetKeys[keyOf("t", 0, seq)] = true
	}
	rep := fakeRun(t, f, Config{Batch: 10, Clients: 2})
	v := rep.Verification
	var b strings.Builder
	Summary(&b, rep)
	if !rep.OK || v.Indeterminate == 0 || v.ResolvedApplied != v.Indeterminate || v.FailedStored != 0 {
		t.Fatalf("indeterminate %d, resolved applied %d, failed stored %d:\n%s", v.Indeterminate, v.ResolvedApplied, v.FailedStored, b.String())
	}
}
