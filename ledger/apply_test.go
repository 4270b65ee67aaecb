package ledger

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

type ruleCase struct {
	name      string
	setup     []Op  // applied first; each must succeed
	advanceMs int64 // log time moves by this much after setup
	op        Op
	want      Code
	// mutates marks failures that legitimately write: a capture or release
	// of a hold past its expiry expires it.
	mutates bool
	check   func(t *testing.T, f *fixture, r Result)
}

func runRuleCases(t *testing.T, cases []ruleCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.must(tc.setup...)
			f.timeMs += tc.advanceMs
			before := snap(f.s)
			seqBefore := f.s.LastSeq()
			op := f.keyed([]Op{tc.op})[0]
			h, held, _ := f.s.Hold(op.Program, op.Member, op.HoldKey)
			r := f.applyOne(op)
			require.Equal(t, tc.want, r.Code, "message: %s", r.Message)
			require.False(t, r.Replayed)
			require.Equal(t, f.timeMs, r.TimeMs)

			// Success or failure, the outcome is recorded under a new seq,
			// after the journal entry (Version3) of a hold it expired.
			expired := 0
			if held && h.State == HoldOpen && r.Code == CodeHoldExpired && f.version >= Version3 {
				expired = 1
			}
			require.Equal(t, seqBefore+1+uint64(expired), f.s.LastSeq())
			require.Equal(t, f.s.LastSeq(), r.Seq)
			rec, found, err := f.s.Record(op.Program, op.IdempotencyKey)
			require.NoError(t, err)
			require.True(t, found)
			require.Equal(t, r, rec.Result)
			require.Equal(t, fingerprintFor(f.version, &op, false), rec.Fingerprint)

			if r.Code != CodeOK {
				require.NotEmpty(t, r.Message, "every failure explains itself")
				if !tc.mutates {
					require.Equal(t, before, snap(f.s), "a failure changes nothing")
				}
			}
			checkInvariants(t, f.s)
			if tc.check != nil {
				tc.check(t, f, r)
			}
		})
	}
}

func TestDefineAndOpen(t *testing.T) {
	runRuleCases(t, []ruleCase{
		{name: "define new asset", op: mkDefine("GROWTH", 3), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				a, found, _ := f.s.Asset(tProg, "GROWTH")
				require.True(t, found)
				require.Equal(t, Asset{Program: tProg, Code: "GROWTH", Scale: 3}, a)
				require.Equal(t, Account{}, r.Account)
			}},
		{name: "define again with same scale is a no-op", op: mkDefine(tCNY, 2), want: CodeOK},
		{name: "define again with other scale", op: mkDefine(tCNY, 0), want: CodeAssetExists,
			check: func(t *testing.T, f *fixture, r Result) {
				a, _, _ := f.s.Asset(tProg, tCNY)
				require.Equal(t, uint8(2), a.Scale)
			}},
		{name: "open", op: mkOpen("carol", tCNY, 5000), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				want := Account{Key: AccountKey{tProg, "carol", tCNY}, State: StateActive, MaxBalanceMinor: 5000,
					OpenedAtMs: f.timeMs, UpdatedAtMs: f.timeMs}
				require.Equal(t, want, r.Account)
				require.Equal(t, want, f.account("carol", tCNY))
			}},
		{name: "open with unknown asset", op: mkOpen("carol", "GOLD", 0), want: CodeUnknownAsset},
		{name: "open existing", op: mkOpen("alice", tPts, 0), want: CodeAccountExists,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, int64(100), r.Account.PostedMinor)
			}},
		{name: "open closed account again", setup: []Op{mkState(OpClose, "bob", tPts)},
			op: mkOpen("bob", tPts, 0), want: CodeAccountExists},
	})
}

func TestCredit(t *testing.T) {
	runRuleCases(t, []ruleCase{
		{name: "ok", op: mkCredit("alice", tPts, 50), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, int64(150), r.Account.PostedMinor)
				require.Equal(t, r.Account, f.account("alice", tPts))
				require.Equal(t, f.timeMs, r.Account.UpdatedAtMs)
				require.Equal(t, int64(-150), f.control(tPts))
			}},
		{name: "lost account takes credits", setup: []Op{mkState(OpReportLost, "alice", tPts)},
			op: mkCredit("alice", tPts, 5), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, int64(105), f.account("alice", tPts).PostedMinor)
				require.Equal(t, StateLost, r.Account.State)
			}},
		{name: "unknown asset", op: mkCredit("alice", "GOLD", 5), want: CodeUnknownAsset},
		{name: "unknown asset before missing account", op: mkCredit("nobody", "GOLD", 5), want: CodeUnknownAsset},
		{name: "scale mismatch", op: func() Op { o := mkCredit("alice", tCNY, 5); o.Scale = 0; return o }(),
			want: CodeScaleMismatch},
		{name: "scale mismatch before missing account",
			op: func() Op { o := mkCredit("nobody", tCNY, 5); o.Scale = 1; return o }(), want: CodeScaleMismatch},
		{name: "account not found", op: mkCredit("nobody", tPts, 5), want: CodeAccountNotFound,
			check: func(t *testing.T, f *fixture, r Result) { require.Equal(t, Account{}, r.Account) }},
		{name: "frozen", setup: []Op{mkState(OpFreeze, "alice", tPts)},
			op: mkCredit("alice", tPts, 5), want: CodeAccountFrozen,
			check: func(t *testing.T, f *fixture, r Result) { require.Equal(t, StateFrozen, r.Account.State) }},
		{name: "closed", setup: []Op{mkState(OpClose, "bob", tPts)},
			op: mkCredit("bob", tPts, 5), want: CodeAccountClosed},
		{name: "frozen before limit", setup: []Op{mkState(OpFreeze, "bob", tPts)},
			op: mkCredit("bob", tPts, 501), want: CodeAccountFrozen},
		{name: "up to the limit", op: mkCredit("bob", tPts, 500), want: CodeOK},
		{name: "over the limit", op: mkCredit("bob", tPts, 501), want: CodeLimitExceeded},
		{name: "over the limit in steps", setup: []Op{mkCredit("bob", tPts, 400)},
			op: mkCredit("bob", tPts, 101), want: CodeLimitExceeded},
		{name: "posted overflows", op: mkCredit("alice", tPts, math.MaxInt64), want: CodeOverflow},
		{name: "control overflows", setup: []Op{mkOpen("dave", tPts, 0)},
			op: mkCredit("dave", tPts, math.MaxInt64), want: CodeOverflow},
		{name: "control at its limit", setup: []Op{mkOpen("dave", tPts, 0)},
			op: mkCredit("dave", tPts, math.MaxInt64-99), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, int64(math.MinInt64), f.control(tPts))
			}},
	})
}

func TestDebit(t *testing.T) {
	runRuleCases(t, []ruleCase{
		{name: "ok", op: mkDebit("alice", tPts, 30), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, int64(70), r.Account.PostedMinor)
				require.Equal(t, int64(70), f.account("alice", tPts).PostedMinor)
				require.Equal(t, int64(-70), f.control(tPts))
			}},
		{name: "everything", op: mkDebit("alice", tPts, 100), want: CodeOK},
		{name: "insufficient", op: mkDebit("alice", tPts, 101), want: CodeInsufficientFunds,
			check: func(t *testing.T, f *fixture, r Result) { require.Equal(t, int64(100), r.Account.PostedMinor) }},
		{name: "held value is not available", setup: []Op{mkHold("h1", "alice", tPts, 80, 1000)},
			op: mkDebit("alice", tPts, 21), want: CodeInsufficientFunds},
		{name: "available after hold", setup: []Op{mkHold("h1", "alice", tPts, 80, 1000)},
			op: mkDebit("alice", tPts, 20), want: CodeOK},
		{name: "unknown asset", op: mkDebit("alice", "GOLD", 1), want: CodeUnknownAsset},
		{name: "scale mismatch", op: func() Op { o := mkDebit("alice", tPts, 1); o.Scale = 2; return o }(),
			want: CodeScaleMismatch},
		{name: "account not found", op: mkDebit("nobody", tPts, 1), want: CodeAccountNotFound},
		{name: "frozen", setup: []Op{mkState(OpFreeze, "alice", tPts)}, op: mkDebit("alice", tPts, 1),
			want: CodeAccountFrozen},
		{name: "frozen before insufficient", setup: []Op{mkState(OpFreeze, "alice", tPts)},
			op: mkDebit("alice", tPts, 1000), want: CodeAccountFrozen},
		{name: "lost", setup: []Op{mkState(OpReportLost, "alice", tPts)}, op: mkDebit("alice", tPts, 1),
			want: CodeAccountLost},
		{name: "closed", setup: []Op{mkState(OpClose, "bob", tPts)}, op: mkDebit("bob", tPts, 1),
			want: CodeAccountClosed},
		{name: "not found before state", op: mkDebit("carol", tPts, 1), want: CodeAccountNotFound},
	})
}

func TestHoldRules(t *testing.T) {
	runRuleCases(t, []ruleCase{
		{name: "ok", op: mkHold("h1", "alice", tPts, 40, 5000), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				want := Hold{Program: tProg, Member: "alice", Key: "h1", Asset: tPts, AmountMinor: 40,
					State: HoldOpen, CreatedAtMs: f.timeMs, ExpiresAtMs: f.timeMs + 5000}
				require.Equal(t, want, r.Hold)
				require.Equal(t, want, f.hold("alice", "h1"))
				a := f.account("alice", tPts)
				require.Equal(t, int64(100), a.PostedMinor)
				require.Equal(t, int64(40), a.HeldMinor)
				require.Equal(t, int64(60), a.AvailableMinor())
				require.Equal(t, a, r.Account)
				require.Equal(t, int64(-100), f.control(tPts), "a hold moves no value")
			}},
		{name: "everything", op: mkHold("h1", "alice", tPts, 100, 5000), want: CodeOK},
		{name: "insufficient", op: mkHold("h1", "alice", tPts, 101, 5000), want: CodeInsufficientFunds},
		{name: "insufficient after other hold", setup: []Op{mkHold("h0", "alice", tPts, 50, 5000)},
			op: mkHold("h1", "alice", tPts, 51, 5000), want: CodeInsufficientFunds},
		{name: "frozen", setup: []Op{mkState(OpFreeze, "alice", tPts)},
			op: mkHold("h1", "alice", tPts, 1, 5000), want: CodeAccountFrozen},
		{name: "lost", setup: []Op{mkState(OpReportLost, "alice", tPts)},
			op: mkHold("h1", "alice", tPts, 1, 5000), want: CodeAccountLost},
		{name: "closed", setup: []Op{mkState(OpClose, "bob", tPts)},
			op: mkHold("h1", "bob", tPts, 1, 5000), want: CodeAccountClosed},
		{name: "unknown asset", op: mkHold("h1", "alice", "GOLD", 1, 5000), want: CodeUnknownAsset},
		{name: "account not found", op: mkHold("h1", "nobody", tPts, 1, 5000), want: CodeAccountNotFound},
		{name: "scale mismatch", op: func() Op { o := mkHold("h1", "alice", tCNY, 1, 5000); o.Scale = 0; return o }(),
			want: CodeScaleMismatch},
	})
}

func TestCaptureHold(t *testing.T) {
	holdPts := mkHold("h1", "alice", tPts, 40, 5000)
	holdCNY := mkHold("hc", "alice", tCNY, 300, 5000)
	runRuleCases(t, []ruleCase{
		{name: "whole", setup: []Op{holdPts}, op: mkCapture("alice", "h1", 0, 0), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, int64(40), r.CapturedMinor)
				require.Equal(t, int64(0), r.ReleasedMinor)
				require.Equal(t, HoldCaptured, r.Hold.State)
				require.Equal(t, HoldCaptured, f.hold("alice", "h1").State)
				a := f.account("alice", tPts)
				require.Equal(t, int64(60), a.PostedMinor)
				require.Equal(t, int64(0), a.HeldMinor)
				require.Equal(t, int64(-60), f.control(tPts))
			}},
		{name: "partial", setup: []Op{holdPts}, op: mkCapture("alice", "h1", 15, 0), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, int64(15), r.CapturedMinor)
				require.Equal(t, int64(25), r.ReleasedMinor)
				a := f.account("alice", tPts)
				require.Equal(t, int64(85), a.PostedMinor)
				require.Equal(t, int64(0), a.HeldMinor)
				require.Equal(t, int64(-85), f.control(tPts))
			}},
		{name: "exact amount", setup: []Op{holdPts}, op: mkCapture("alice", "h1", 40, 0), want: CodeOK},
		{name: "more than held", setup: []Op{holdPts}, op: mkCapture("alice", "h1", 41, 0), want: CodeInvalidAmount},
		{name: "not found", op: mkCapture("alice", "nope", 0, 0), want: CodeHoldNotFound},
		{name: "other member's hold", setup: []Op{holdPts}, op: mkCapture("bob", "h1", 0, 0), want: CodeHoldNotFound},
		{name: "captured", setup: []Op{holdPts, mkCapture("alice", "h1", 0, 0)},
			op: mkCapture("alice", "h1", 0, 0), want: CodeHoldClosed},
		{name: "released", setup: []Op{holdPts, mkRelease("alice", "h1")},
			op: mkCapture("alice", "h1", 0, 0), want: CodeHoldClosed},
		{name: "expired by time", setup: []Op{holdPts}, advanceMs: 5000,
			op: mkCapture("alice", "h1", 0, 0), want: CodeHoldExpired, mutates: true,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, HoldExpired, f.hold("alice", "h1").State)
				require.Equal(t, HoldExpired, r.Hold.State)
				a := f.account("alice", tPts)
				require.Equal(t, int64(100), a.PostedMinor)
				require.Equal(t, int64(0), a.HeldMinor, "the held value returns")
				require.Equal(t, f.timeMs, a.UpdatedAtMs)
			}},
		{name: "one ms before expiry", setup: []Op{holdPts}, advanceMs: 4999,
			op: mkCapture("alice", "h1", 0, 0), want: CodeOK},
		{name: "frozen", setup: []Op{holdPts, mkState(OpFreeze, "alice", tPts)},
			op: mkCapture("alice", "h1", 0, 0), want: CodeAccountFrozen},
		{name: "lost", setup: []Op{holdPts, mkState(OpReportLost, "alice", tPts)},
			op: mkCapture("alice", "h1", 0, 0), want: CodeAccountLost},
		{name: "expired before frozen", setup: []Op{holdPts, mkState(OpFreeze, "alice", tPts)}, advanceMs: 6000,
			op: mkCapture("alice", "h1", 0, 0), want: CodeHoldExpired, mutates: true},
		{name: "frozen before amount", setup: []Op{holdPts, mkState(OpFreeze, "alice", tPts)},
			op: mkCapture("alice", "h1", 1000, 0), want: CodeAccountFrozen},
		{name: "scale mismatch", setup: []Op{holdCNY}, op: mkCapture("alice", "hc", 100, 0), want: CodeScaleMismatch},
		{name: "scale before closed hold", setup: []Op{holdCNY, mkRelease("alice", "hc")},
			op: mkCapture("alice", "hc", 100, 1), want: CodeScaleMismatch},
		{name: "partial at scale", setup: []Op{holdCNY}, op: mkCapture("alice", "hc", 100, 2), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, int64(900), f.account("alice", tCNY).PostedMinor)
				require.Equal(t, int64(200), r.ReleasedMinor)
			}},
		{name: "whole without scale", setup: []Op{holdCNY}, op: mkCapture("alice", "hc", 0, 0), want: CodeOK},
		{name: "whole with scale", setup: []Op{holdCNY}, op: mkCapture("alice", "hc", 0, 2), want: CodeOK},
		{name: "whole with wrong scale", setup: []Op{holdCNY}, op: mkCapture("alice", "hc", 0, 1), want: CodeScaleMismatch},
	})
}

func TestReleaseHold(t *testing.T) {
	holdPts := mkHold("h1", "alice", tPts, 40, 5000)
	runRuleCases(t, []ruleCase{
		{name: "ok", setup: []Op{holdPts}, op: mkRelease("alice", "h1"), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, int64(40), r.ReleasedMinor)
				require.Equal(t, int64(0), r.CapturedMinor)
				require.Equal(t, HoldReleased, f.hold("alice", "h1").State)
				a := f.account("alice", tPts)
				require.Equal(t, int64(100), a.PostedMinor)
				require.Equal(t, int64(0), a.HeldMinor)
				require.Equal(t, int64(-100), f.control(tPts))
			}},
		{name: "frozen account", setup: []Op{holdPts, mkState(OpFreeze, "alice", tPts)},
			op: mkRelease("alice", "h1"), want: CodeOK},
		{name: "lost account", setup: []Op{holdPts, mkState(OpReportLost, "alice", tPts)},
			op: mkRelease("alice", "h1"), want: CodeOK},
		{name: "not found", op: mkRelease("alice", "h1"), want: CodeHoldNotFound},
		{name: "released", setup: []Op{holdPts, mkRelease("alice", "h1")}, op: mkRelease("alice", "h1"),
			want: CodeHoldClosed},
		{name: "captured", setup: []Op{holdPts, mkCapture("alice", "h1", 1, 0)}, op: mkRelease("alice", "h1"),
			want: CodeHoldClosed},
		{name: "expired", setup: []Op{holdPts}, advanceMs: 5000, op: mkRelease("alice", "h1"),
			want: CodeHoldExpired, mutates: true,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, HoldExpired, f.hold("alice", "h1").State)
				require.Equal(t, int64(0), f.account("alice", tPts).HeldMinor)
			}},
	})
}

func TestStateTransitions(t *testing.T) {
	// bob's POINTS account is empty, so every state, Closed included, is
	// reachable from the fixture.
	reach := map[AccountState][]Op{
		StateActive: nil,
		StateFrozen: {mkState(OpFreeze, "bob", tPts)},
		StateLost:   {mkState(OpReportLost, "bob", tPts)},
		StateClosed: {mkState(OpClose, "bob", tPts)},
	}
	type want struct {
		code Code
		to   AccountState
	}
	const (
		A = StateActive
		F = StateFrozen
		L = StateLost
		C = StateClosed
	)
	matrix := map[OpKind]map[AccountState]want{
		OpFreeze:      {A: {CodeOK, F}, F: {CodeOK, F}, L: {CodeInvalidState, L}, C: {CodeAccountClosed, C}},
		OpUnfreeze:    {A: {CodeOK, A}, F: {CodeOK, A}, L: {CodeInvalidState, L}, C: {CodeAccountClosed, C}},
		OpReportLost:  {A: {CodeOK, L}, F: {CodeInvalidState, F}, L: {CodeOK, L}, C: {CodeAccountClosed, C}},
		OpReportFound: {A: {CodeOK, A}, F: {CodeInvalidState, F}, L: {CodeOK, A}, C: {CodeAccountClosed, C}},
		OpClose:       {A: {CodeOK, C}, F: {CodeOK, C}, L: {CodeOK, C}, C: {CodeAccountClosed, C}},
	}
	var cases []ruleCase
	for _, kind := range []OpKind{OpFreeze, OpUnfreeze, OpReportLost, OpReportFound, OpClose} {
		for _, from := range []AccountState{A, F, L, C} {
			w := matrix[kind][from]
			cases = append(cases, ruleCase{
				name: kind.String() + " from " + from.String(), setup: reach[from],
				op: mkState(kind, "bob", tPts), want: w.code,
				check: func(t *testing.T, f *fixture, r Result) {
					a := f.account("bob", tPts)
					require.Equal(t, w.to, a.State)
					require.Equal(t, a, r.Account)
				},
			})
		}
	}
	cases = append(cases,
		ruleCase{name: "close with balance", op: mkState(OpClose, "alice", tPts), want: CodeBalanceNotZero},
		ruleCase{name: "close with a hold", setup: []Op{mkCredit("bob", tPts, 5), mkHold("h1", "bob", tPts, 5, 1000)},
			op: mkState(OpClose, "bob", tPts), want: CodeBalanceNotZero},
		ruleCase{name: "close after spending everything", setup: []Op{mkDebit("alice", tPts, 100)},
			op: mkState(OpClose, "alice", tPts), want: CodeOK},
		ruleCase{name: "unknown asset", op: mkState(OpFreeze, "bob", "GOLD"), want: CodeUnknownAsset},
		ruleCase{name: "account not found", op: mkState(OpFreeze, "carol", tPts), want: CodeAccountNotFound},
		ruleCase{name: "state change stamps time", advanceMs: 777, op: mkState(OpFreeze, "alice", tPts), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, f.timeMs, f.account("alice", tPts).UpdatedAtMs)
			}},
		ruleCase{name: "no-op keeps time", advanceMs: 777, op: mkState(OpUnfreeze, "alice", tPts), want: CodeOK,
			check: func(t *testing.T, f *fixture, r Result) {
				require.Equal(t, t0, f.account("alice", tPts).UpdatedAtMs)
			}},
	)
	runRuleCases(t, cases)
}

func TestDedup(t *testing.T) {
	t.Run("same op replays", func(t *testing.T) {
		f := newFixture(t)
		op := mkCredit("alice", tPts, 7)
		op.IdempotencyKey = "pay-1"
		first := f.applyOne(op)
		require.Equal(t, CodeOK, first.Code)
		before, seq := snap(f.s), f.s.LastSeq()
		f.timeMs += 1000
		again := f.applyOne(op)
		require.True(t, again.Replayed)
		first.Replayed = true
		require.Equal(t, first, again, "same Seq, same TimeMs, same account snapshot")
		require.Equal(t, before, snap(f.s))
		require.Equal(t, seq, f.s.LastSeq(), "nothing recorded")
		require.Equal(t, int64(107), f.account("alice", tPts).PostedMinor)
	})
	t.Run("failure replays even after it would succeed", func(t *testing.T) {
		f := newFixture(t)
		op := mkDebit("alice", tPts, 150)
		op.IdempotencyKey = "pay-1"
		first := f.applyOne(op)
		require.Equal(t, CodeInsufficientFunds, first.Code)
		f.must(mkCredit("alice", tPts, 100))
		again := f.applyOne(op)
		require.Equal(t, CodeInsufficientFunds, again.Code)
		require.True(t, again.Replayed)
		require.Equal(t, first.Seq, again.Seq)
		require.Equal(t, int64(200), f.account("alice", tPts).PostedMinor)
	})
	t.Run("same key other op", func(t *testing.T) {
		f := newFixture(t)
		op := mkCredit("alice", tPts, 7)
		op.IdempotencyKey = "pay-1"
		first := f.applyOne(op)
		before, seq := snap(f.s), f.s.LastSeq()
		for _, other := range []Op{
			func() Op { o := op; o.AmountMinor = 8; return o }(),
			func() Op { o := op; o.Memo = "x"; return o }(),
			func() Op { o := op; o.Kind = OpDebit; return o }(),
			func() Op { o := op; o.Member = "bob"; return o }(),
		} {
			r := f.applyOne(other)
			require.Equal(t, CodeIdempotencyKeyReused, r.Code)
			require.NotEmpty(t, r.Message)
			require.False(t, r.Replayed)
			require.Zero(t, r.Seq)
			require.Equal(t, before, snap(f.s))
			require.Equal(t, seq, f.s.LastSeq(), "not recorded")
			rec, _, _ := f.s.Record(tProg, "pay-1")
			require.Equal(t, first, rec.Result, "the first record stands")
		}
	})
	t.Run("keys are per program", func(t *testing.T) {
		f := newFixture(t)
		f.must(Op{Kind: OpDefineAsset, Program: "other", Asset: tPts, IdempotencyKey: "k"})
		r := f.applyOne(Op{Kind: OpDefineAsset, Program: "third", Asset: tPts, IdempotencyKey: "k"})
		require.Equal(t, CodeOK, r.Code)
		require.False(t, r.Replayed)
	})
	t.Run("invalid requests are not recorded", func(t *testing.T) {
		f := newFixture(t)
		seq := f.s.LastSeq()
		bad := mkCredit("alice", tPts, 0)
		res := f.apply(bad, mkCredit("alice", tPts, 1))
		require.Equal(t, CodeInvalidAmount, res[0].Code)
		require.Equal(t, CodeInvalidAmount, res[1].Code, "the whole request is refused")
		require.Contains(t, res[0].Message, "op 0")
		require.Equal(t, seq, f.s.LastSeq())
		require.Equal(t, int64(100), f.account("alice", tPts).PostedMinor)
	})
	t.Run("journal lists successes newest first", func(t *testing.T) {
		f := newFixture(t)
		f.apply(mkCredit("alice", tPts, 1), mkDebit("alice", tPts, 1000), mkDebit("alice", tPts, 2))
		j := f.s.Journal(tProg, "alice")
		require.Len(t, j, 6) // 2 opens, 2 credits, then credit 1 and debit 2
		require.Equal(t, OpDebit, j[0].Op.Kind)
		require.Equal(t, int64(2), j[0].Op.AmountMinor)
		require.Equal(t, OpCredit, j[1].Op.Kind)
		for i := 1; i < len(j); i++ {
			require.Greater(t, j[i-1].Seq, j[i].Seq)
		}
	})
}

func TestLinked(t *testing.T) {
	t.Run("all succeed", func(t *testing.T) {
		f := newFixture(t)
		seq := f.s.LastSeq()
		// The debit needs the credit before it: reads see the batch's writes.
		res := f.applyReq(true, mkCredit("alice", tPts, 50), mkDebit("alice", tPts, 140),
			mkHold("lh", "alice", tPts, 10, 1000),
			mkCapture("alice", "lh", 0, 0))
		for i, r := range res {
			require.Equal(t, CodeOK, r.Code, "op %d: %s", i, r.Message)
			require.Equal(t, seq+uint64(i)+1, r.Seq)
		}
		a := f.account("alice", tPts)
		require.Equal(t, int64(0), a.PostedMinor)
		require.Equal(t, int64(0), a.HeldMinor)
		require.Equal(t, HoldCaptured, f.hold("alice", "lh").State)
		require.Equal(t, a, res[3].Account)
		require.Equal(t, seq+4, f.s.LastSeq())
		checkInvariants(t, f.s)
	})
	t.Run("one fails, none apply", func(t *testing.T) {
		f := newFixture(t)
		before, seq := snap(f.s), f.s.LastSeq()
		ops := f.keyed([]Op{mkCredit("alice", tPts, 10), mkHold("lh", "alice", tPts, 5, 1000),
			mkDebit("alice", tPts, 1000), mkDebit("alice", tPts, 1)})
		res := f.applyReq(true, ops...)
		require.Equal(t, CodeLinkedFailed, res[0].Code)
		require.Equal(t, CodeLinkedFailed, res[1].Code)
		require.Equal(t, CodeInsufficientFunds, res[2].Code)
		require.Equal(t, CodeLinkedFailed, res[3].Code)
		require.Contains(t, res[0].Message, "op 2")
		require.Equal(t, Account{}, res[2].Account, "uncommitted state is not reported")
		require.Equal(t, before, snap(f.s), "nothing applied")
		_, found, _ := f.s.Hold(tProg, "alice", "lh")
		require.False(t, found)
		// Every op is recorded, in order, so a retry sees the same outcome.
		require.Equal(t, seq+4, f.s.LastSeq())
		for i, r := range res {
			require.Equal(t, seq+uint64(i)+1, r.Seq)
		}
		again := f.applyReq(true, ops...)
		for i := range res {
			require.True(t, again[i].Replayed, "op %d", i)
			res[i].Replayed = true
			require.Equal(t, res[i], again[i])
		}
		require.Equal(t, seq+4, f.s.LastSeq())
		for _, rec := range f.s.Journal(tProg, "alice") {
			for _, op := range ops {
				require.NotEqual(t, op.IdempotencyKey, rec.Op.IdempotencyKey, "failed ops are not in the journal")
			}
		}
	})
	for _, v := range []uint32{Version1, Version2} {
		t.Run(fmt.Sprintf("v%d reused key fails the batch", v), func(t *testing.T) {
			f := newFixture(t)
			f.version = v
			prior := mkCredit("alice", tPts, 1)
			prior.IdempotencyKey = "used"
			f.must(prior)
			seq := f.s.LastSeq()
			clash := mkCredit("alice", tPts, 2)
			clash.IdempotencyKey = "used"
			ops := f.keyed([]Op{mkCredit("alice", tPts, 3), clash, mkCredit("alice", tPts, 4)})
			res := f.applyReq(true, ops...)
			require.Equal(t, []Code{CodeLinkedFailed, CodeIdempotencyKeyReused, CodeLinkedFailed},
				[]Code{res[0].Code, res[1].Code, res[2].Code})
			require.Zero(t, res[1].Seq, "the reused key is never recorded")
			rec, _, _ := f.s.Record(tProg, "used")
			require.Equal(t, int64(1), rec.Op.AmountMinor)
			require.Equal(t, int64(101), f.account("alice", tPts).PostedMinor)
			again := f.applyReq(true, ops...)
			require.Equal(t, CodeIdempotencyKeyReused, again[1].Code, "a retry gets the same answer")
			ops[1].IdempotencyKey = "fresh"
			fixed := f.applyReq(true, ops...)
			if v == Version1 {
				// The others were recorded as failed: their keys are spent.
				require.Equal(t, seq+2, f.s.LastSeq()-1)
				require.True(t, again[0].Replayed)
				require.Equal(t, CodeLinkedFailed, fixed[0].Code)
				require.Equal(t, int64(101), f.account("alice", tPts).PostedMinor)
				return
			}
			// Nothing was recorded, so the corrected request applies.
			require.Zero(t, res[0].Seq)
			require.False(t, again[0].Replayed)
			for i, r := range fixed {
				require.Equal(t, CodeOK, r.Code, "op %d: %s", i, r.Message)
				require.Equal(t, seq+uint64(i)+1, r.Seq)
			}
			require.Equal(t, int64(110), f.account("alice", tPts).PostedMinor)
		})
	}
	t.Run("replayed ops keep their outcome", func(t *testing.T) {
		for _, v := range []uint32{Version1, Version2} {
			f := newFixture(t)
			f.version = v
			done := f.keyed([]Op{mkCredit("alice", tPts, 1)})[0]
			var first Result
			if v == Version1 {
				first = f.must(done)[0]
			} else {
				// From version 2 an op replays only in a request of its kind.
				first = f.applyReq(true, done, mkCredit("alice", tPts, 1))[0]
			}
			posted := f.account("alice", tPts).PostedMinor
			res := f.applyReq(true, done, mkDebit("alice", tPts, 500))
			require.Equal(t, CodeOK, res[0].Code, "v%d", v)
			require.True(t, res[0].Replayed)
			require.Equal(t, first.Seq, res[0].Seq)
			require.Equal(t, CodeInsufficientFunds, res[1].Code)
			require.Equal(t, posted, f.account("alice", tPts).PostedMinor)
		}
	})
	t.Run("replayed success with new ops commits", func(t *testing.T) {
		for _, v := range []uint32{Version1, Version2} {
			f := newFixture(t)
			f.version = v
			done := f.keyed([]Op{mkCredit("alice", tPts, 1)})[0]
			if v == Version1 {
				f.must(done)
			} else {
				f.applyReq(true, done, mkCredit("alice", tPts, 1))
			}
			res := f.applyReq(true, done, mkDebit("alice", tPts, f.account("alice", tPts).PostedMinor))
			require.Equal(t, CodeOK, res[1].Code, res[1].Message)
			require.Equal(t, int64(0), f.account("alice", tPts).PostedMinor)
		}
	})
	t.Run("must be one member", func(t *testing.T) {
		f := newFixture(t)
		res := f.applyReq(true, mkCredit("alice", tPts, 1), mkCredit("bob", tPts, 1))
		require.Equal(t, CodeInvalidArgument, res[0].Code)
		require.Equal(t, int64(0), f.account("bob", tPts).PostedMinor)
	})
	t.Run("failure of expired capture rolls back the expiry", func(t *testing.T) {
		f := newFixture(t)
		f.must(mkHold("h1", "alice", tPts, 10, 100))
		f.timeMs += 100
		res := f.applyReq(true, mkCredit("alice", tPts, 1), mkCapture("alice", "h1", 0, 0))
		require.Equal(t, CodeHoldExpired, res[1].Code)
		require.Equal(t, HoldOpen, f.hold("alice", "h1").State, "ExpireHolds will take it")
		_, _, err := applyAt(f.s, f.timeMs, Command{TimeMs: f.timeMs})
		require.NoError(t, err)
		require.Equal(t, HoldExpired, f.hold("alice", "h1").State)
		checkInvariants(t, f.s)
	})
}

func TestApplyCommandTimeAndExpiry(t *testing.T) {
	t.Run("time never goes backwards", func(t *testing.T) {
		f := newFixture(t)
		op := f.keyed([]Op{mkCredit("alice", tPts, 1)})[0]
		now, res, err := applyAt(f.s, t0+5000, Command{TimeMs: t0 + 4000, Requests: []Request{{Ops: []Op{op}}}})
		require.NoError(t, err)
		require.Equal(t, t0+5000, now)
		require.Equal(t, t0+5000, res[0][0].TimeMs)
		require.Equal(t, t0+5000, f.account("alice", tPts).UpdatedAtMs)
		now, _, err = applyAt(f.s, now, Command{TimeMs: t0 + 6000})
		require.NoError(t, err)
		require.Equal(t, t0+6000, now)
	})
	t.Run("hold expires at its time", func(t *testing.T) {
		f := newFixture(t)
		f.must(mkHold("h1", "alice", tPts, 30, 1000), mkHold("h2", "alice", tPts, 20, 2000))
		f.must(mkState(OpFreeze, "alice", tPts)) // expiry ignores account state
		now, _, err := applyAt(f.s, t0, Command{TimeMs: t0 + 999})
		require.NoError(t, err)
		require.Equal(t, HoldOpen, f.hold("alice", "h1").State)
		require.Equal(t, int64(50), f.account("alice", tPts).HeldMinor)

		now, _, err = applyAt(f.s, now, Command{TimeMs: t0 + 1000})
		require.NoError(t, err)
		require.Equal(t, HoldExpired, f.hold("alice", "h1").State)
		require.Equal(t, HoldOpen, f.hold("alice", "h2").State)
		a := f.account("alice", tPts)
		require.Equal(t, int64(20), a.HeldMinor)
		require.Equal(t, int64(100), a.PostedMinor)
		require.Equal(t, now, a.UpdatedAtMs)

		// Expiry runs before the requests of the same command.
		f.must(mkState(OpUnfreeze, "alice", tPts))
		capture := f.keyed([]Op{mkCapture("alice", "h2", 0, 0)})[0]
		_, res, err := applyAt(f.s, now, Command{TimeMs: t0 + 2000, Requests: []Request{{Ops: []Op{capture}}}})
		require.NoError(t, err)
		require.Equal(t, CodeHoldExpired, res[0][0].Code)
		require.Equal(t, int64(0), f.account("alice", tPts).HeldMinor)
		checkInvariants(t, f.s)
	})
	t.Run("bounded expiries per entry", func(t *testing.T) {
		f := newFixture(t)
		f.must(mkCredit("alice", tPts, 10_000))
		var ops []Op
		for i := 0; i < MaxExpiriesPerEntry+5; i++ {
			ops = append(ops, mkHold("", "alice", tPts, 1, 10))
		}
		f.must(ops...)
		now, _, err := applyAt(f.s, t0, Command{TimeMs: t0 + 10})
		require.NoError(t, err)
		require.Equal(t, int64(5), f.account("alice", tPts).HeldMinor)
		_, _, err = applyAt(f.s, now, Command{TimeMs: t0 + 10})
		require.NoError(t, err)
		require.Equal(t, int64(0), f.account("alice", tPts).HeldMinor)
		checkInvariants(t, f.s)
	})
	t.Run("results per request", func(t *testing.T) {
		f := newFixture(t)
		c := Command{TimeMs: t0, Requests: []Request{
			{Ops: f.keyed([]Op{mkCredit("alice", tPts, 1), mkCredit("bob", tPts, 2)})},
			{Ops: f.keyed([]Op{mkDebit("alice", tPts, 1000)})},
		}}
		_, res, err := applyAt(f.s, t0, c)
		require.NoError(t, err)
		require.Len(t, res, 2)
		require.Len(t, res[0], 2)
		require.Len(t, res[1], 1)
		require.Equal(t, int64(2), res[0][1].Account.PostedMinor)
		require.Equal(t, CodeInsufficientFunds, res[1][0].Code)
	})
}

// failingStore fails every write after a number of successful ones.
type failingStore struct {
	*MemStore
	writesLeft int
}

var errDisk = errors.New("disk on fire")

func (s *failingStore) write() error {
	if s.writesLeft == 0 {
		return errDisk
	}
	s.writesLeft--
	return nil
}

func (s *failingStore) PutAccount(a Account) error {
	if err := s.write(); err != nil {
		return err
	}
	return s.MemStore.PutAccount(a)
}

func (s *failingStore) PutRecord(r Record) error {
	if err := s.write(); err != nil {
		return err
	}
	return s.MemStore.PutRecord(r)
}

func TestFatalErrors(t *testing.T) {
	t.Run("store failure", func(t *testing.T) {
		for writes := 0; writes < 2; writes++ {
			f := newFixture(t)
			s := &failingStore{MemStore: f.s, writesLeft: writes}
			op := f.keyed([]Op{mkCredit("alice", tPts, 1)})[0]
			_, _, err := applyAt(s, t0, Command{TimeMs: t0, Requests: []Request{{Ops: []Op{op}}}})
			require.ErrorIs(t, err, errDisk)
			require.Equal(t, CodeInternal, CodeOf(err))
		}
	})
	t.Run("corrupt account", func(t *testing.T) {
		f := newFixture(t)
		a := f.account("alice", tPts)
		a.HeldMinor = a.PostedMinor + 1
		require.NoError(t, f.s.PutAccount(a))
		_, err := Apply(f.s, t0, MaxVersion, Request{Ops: f.keyed([]Op{mkCredit("alice", tPts, 1)})})
		require.ErrorIs(t, err, ErrInvariant)
	})
	t.Run("expiry index out of step", func(t *testing.T) {
		f := newFixture(t)
		require.NoError(t, f.s.PutHold(Hold{Program: tProg, Member: "ghost", Key: "g", Asset: tPts,
			AmountMinor: 1, State: HoldOpen, ExpiresAtMs: t0}))
		_, _, err := applyAt(f.s, t0, Command{TimeMs: t0})
		require.ErrorIs(t, err, ErrInvariant)
	})
}

func TestCheckAccount(t *testing.T) {
	ok := Account{Key: AccountKey{"p", "m", "A"}, State: StateActive, PostedMinor: 10, HeldMinor: 4, MaxBalanceMinor: 10}
	require.NoError(t, CheckAccount(ok))
	for name, mut := range map[string]func(*Account){
		"unknown state":  func(a *Account) { a.State = StateUnknown },
		"bad state":      func(a *Account) { a.State = 9 },
		"negative held":  func(a *Account) { a.HeldMinor = -1 },
		"held > posted":  func(a *Account) { a.HeldMinor = 11 },
		"negative max":   func(a *Account) { a.MaxBalanceMinor = -1 },
		"above max":      func(a *Account) { a.MaxBalanceMinor = 9 },
		"closed nonzero": func(a *Account) { a.State = StateClosed },
	} {
		a := ok
		mut(&a)
		err := CheckAccount(a)
		require.ErrorIs(t, err, ErrInvariant, name)
		require.Contains(t, err.Error(), "p/m/A", name)
	}
}
