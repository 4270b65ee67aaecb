package linearizability

// Histories a buggy server could produce that the checks used to accept
// (found by review); each test asserts the check now rejects them, and
// accepts the honest answers next to them.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// TestCheckRefusalCodes: a write refused without effect must be refused
// with a code that can legitimately refuse it before the rules run. An edge
// that refuses a payable debit with INSUFFICIENT_FUNDS (and so on) applies
// nothing, which the model accepts; the refusals check does not. An op the
// rules answered UNAVAILABLE (a backlog deferral) is unexplained in this
// workload, however it was recorded.
func TestCheckRefusalCodes(t *testing.T) {
	credit := Entry{Input: Input{Kind: KindCredit, Member: "a", Asset: Asset, Key: "c1", Amount: 100},
		Output: ok(1, 1000, 100, 0)}
	refused := func(code ledger.Code) Entry {
		return Entry{Input: Input{Kind: KindDebit, Member: "a", Asset: Asset, Key: "d1", Amount: 50},
			Output: Output{Status: NotApplied, Code: code}}
	}
	for _, code := range []ledger.Code{ledger.CodeInsufficientFunds, ledger.CodeUnknownAsset,
		ledger.CodeAccountNotFound, ledger.CodeInvalidAmount, ledger.CodeInternal} {
		// The model alone accepts it: only its effect is judged there.
		require.True(t, porcupine.CheckOperations(Model(), []porcupine.Operation{
			op(0, 0, 10, debit("d1", 50), Output{Status: NotApplied, Code: code})}))
		r := checkRefusals([]Entry{credit, refused(code)})
		assert.False(t, r.OK, "%s refusal of a payable debit accepted", code)
		require.Len(t, r.Findings, 1, "%s", code)
		assert.Contains(t, r.Findings[0], "d1")
		assert.Contains(t, r.Findings[0], string(code))
	}

	// The legitimate refusals, and a write the lookups after the run found
	// never applied (its code is the last attempt's, not a refusal).
	resolved := refused(ledger.CodeInternal)
	resolved.Resolved = true
	linked := Entry{Input: Input{Kind: KindLinked, Member: "a", Ops: []Input{{Kind: KindCapture, Member: "a", Key: "l1", HoldKey: "h"}}},
		Output: Output{Status: NotApplied, Code: ledger.CodeHoldNotFound, Blamed: 1}}
	r := checkRefusals([]Entry{credit, refused(ledger.CodeNotLeader), refused(ledger.CodeUnavailable),
		refused(ledger.CodeHoldNotFound), linked, resolved})
	assert.True(t, r.OK, "%s %v", r.Detail, r.Findings)
	assert.Contains(t, r.Detail, "NOT_LEADER=1")

	// The op's own UNAVAILABLE: as the last answer, or before an answer
	// that settled the key, or in a linked request's results.
	opLevel := refused(ledger.CodeUnavailable)
	opLevel.OpUnavailable = 1
	later := credit
	later.OpUnavailable = 2
	deferred := Entry{Input: Input{Kind: KindLinked, Member: "a", Ops: []Input{{Kind: KindDebit, Member: "a", Key: "l2", Amount: 5}}},
		Output: Output{Status: Known, Code: ledger.CodeUnavailable, Ops: []Output{{Status: Known, Code: ledger.CodeUnavailable}}}}
	for name, e := range map[string]Entry{"not applied": opLevel, "then answered": later, "linked": deferred} {
		r := checkRefusals([]Entry{e})
		assert.False(t, r.OK, "%s: op-level UNAVAILABLE accepted", name)
		require.Len(t, r.Findings, 1, name)
		assert.Contains(t, r.Findings[0], "unexplained", name)
	}
}

// TestAccountOutputIdentity: an account as reported must be the one asked
// for, with available = posted - held and the balance limit it was opened
// with; otherwise no state explains the answer (not an indeterminate read).
func TestAccountOutputIdentity(t *testing.T) {
	honest := client.Account{Program: Program, Member: "a", Asset: Asset, State: "ACTIVE",
		Posted: decimal.NewFromInt(100), Held: decimal.NewFromInt(30), Available: decimal.NewFromInt(70)}
	base := Output{Status: Known, Code: ledger.CodeOK}
	require.Empty(t, accountOutput(base, &honest, "a").Wrong)
	limit := decimal.NewFromInt(5)
	for name, lie := range map[string]func(a *client.Account){
		"member":      func(a *client.Account) { a.Member = "someone-else" },
		"program":     func(a *client.Account) { a.Program = "other-program" },
		"available":   func(a *client.Account) { a.Available = decimal.NewFromInt(100) },
		"max balance": func(a *client.Account) { a.MaxBalance = &limit },
	} {
		lying := honest
		lie(&lying)
		out := accountOutput(base, &lying, "a")
		assert.NotEmpty(t, out.Wrong, "%s accepted", name)

		// The model refuses it, as a read and as a write's result.
		hold := Input{Kind: KindHold, Member: "a", Asset: Asset, Key: "h1", Amount: 30, TTLMs: 60_000}
		h := []porcupine.Operation{
			op(0, 0, 10, credit("c1", 100), ok(1, 1000, 100, 0)),
			op(0, 20, 30, hold, ok(2, 1001, 100, 30)),
			op(0, 40, 50, readIn, out),
		}
		assert.False(t, porcupine.CheckOperations(Model(), h), "%s: read accepted", name)
		w := out
		w.Seq, w.TimeMs = 2, 1001
		h[1].Output, h = w, h[:2]
		assert.False(t, porcupine.CheckOperations(Model(), h), "%s: write result accepted", name)
		h[1].Output = accountOutput(Output{Status: Known, Code: ledger.CodeOK, Seq: 2, TimeMs: 1001}, &honest, "a")
		assert.True(t, porcupine.CheckOperations(Model(), h), "%s: honest write result refused", name)
	}

	// The points account has no limit; the stored-value one opens with one.
	sv := honest
	sv.Asset, sv.Scale = StoredValue, 2
	assert.NotEmpty(t, accountOutput(base, &sv, "a").Wrong, "stored value without its limit accepted")
	svLimit := decimal.RequireFromString("25.00")
	sv.MaxBalance = &svLimit
	assert.Empty(t, accountOutput(base, &sv, "a").Wrong)
}

// sameShardMembers are two members of the workload on one shard of shards.
func sameShardMembers(t *testing.T, shards int) (string, string) {
	ms := Members("", 4, 2)
	for i := range ms {
		for j := i + 1; j < len(ms); j++ {
			if ledger.ShardOf(Program, ms[i], shards) == ledger.ShardOf(Program, ms[j], shards) {
				return ms[i], ms[j]
			}
		}
	}
	t.Fatal("no two members on one shard")
	return "", ""
}

// TestCheckShardLogOrder: along a shard's sequence, log time never
// decreases and no seq is given to two keys, whether or not the writes
// overlapped in real time and whatever members they act on.
func TestCheckShardLogOrder(t *testing.T) {
	a, b := sameShardMembers(t, 2)
	write := func(member, key string, seq uint64, timeMs, call, ret int64) Entry {
		return Entry{Input: Input{Kind: KindCredit, Member: member, Asset: Asset, Key: key},
			Output: Output{Status: Known, Code: ledger.CodeOK, Seq: seq, TimeMs: timeMs}, CallNs: call, ReturnNs: ret}
	}
	// Concurrent: the real-time rule has nothing to compare.
	r := checkShardOrder([]Entry{write(a, "x", 5, 2_000, 0, 100), write(b, "y", 6, 1_000, 10, 90)}, 2)
	assert.False(t, r.OK, "log time ran backwards along the shard's seq")
	require.Len(t, r.Findings, 1)
	assert.True(t, strings.Contains(r.Findings[0], "y (seq 6) has log time 1000"), r.Findings[0])

	r = checkShardOrder([]Entry{write(a, "x", 5, 1_000, 0, 100), write(b, "y", 5, 1_000, 10, 90)}, 2)
	assert.False(t, r.OK, "one seq given to two keys")
	assert.Contains(t, strings.Join(r.Findings, "\n"), "seq 5 was given to both x and y")

	// A linked request's ops, each with its seq, count too.
	linked := Entry{Input: Input{Kind: KindLinked, Member: b, Ops: []Input{{Key: "l1"}, {Key: "l2"}}},
		Output: Output{Status: Known, Code: ledger.CodeOK, Seq: 0, TimeMs: 1_500, Ops: []Output{
			{Status: Known, Code: ledger.CodeOK, Seq: 6, TimeMs: 1_500}, {Status: Known, Code: ledger.CodeOK, Seq: 7, TimeMs: 1_500}}},
		CallNs: 10, ReturnNs: 90}
	r = checkShardOrder([]Entry{write(a, "x", 5, 1_000, 0, 100), linked, write(a, "z", 8, 1_400, 20, 80)}, 2)
	assert.False(t, r.OK, "a linked op's time after the next seq's accepted")

	// In order, equal times included: fine.
	r = checkShardOrder([]Entry{write(a, "x", 5, 1_000, 0, 100), linked, write(a, "z", 8, 1_500, 20, 80)}, 2)
	assert.True(t, r.OK, "%s %v", r.Detail, r.Findings)
}

// TestCheckWriteTimes: a write's log time lies between the wall clock at
// its first call and at its last answer (with slack); a leader stamping
// entries 10 s ahead, or behind, is a finding.
func TestCheckWriteTimes(t *testing.T) {
	const call, ret = 1_700_000_000_000, 1_700_000_000_050
	write := func(timeMs int64) Entry {
		return Entry{Input: Input{Kind: KindHold, Member: "a", Asset: Asset, Key: "h1", Amount: 30, TTLMs: 10_000},
			Output: ok(2, timeMs, 100, 30), CallWallMs: call, ReturnWallMs: ret}
	}
	for _, timeMs := range []int64{call + 10_000, call - 10_000, ret + writeClockSlackMs + 1, call - writeClockSlackMs - 1} {
		r := checkWriteTimes([]Entry{write(timeMs)})
		assert.False(t, r.OK, "log time %+d ms from the call accepted", timeMs-call)
		require.Len(t, r.Findings, 1)
		assert.Contains(t, r.Findings[0], "h1 (seq 2)")
	}
	for _, timeMs := range []int64{call, ret, call + 20, ret + writeClockSlackMs, call - writeClockSlackMs} {
		r := checkWriteTimes([]Entry{write(timeMs)})
		assert.True(t, r.OK, "log time %+d ms from the call refused: %v", timeMs-call, r.Findings)
	}
	// Resolved after the run: it may have applied after its last answer,
	// never before its call.
	late := write(ret + 60_000)
	late.Resolved = true
	assert.True(t, checkWriteTimes([]Entry{late}).OK)
	early := write(call - 60_000)
	early.Resolved = true
	assert.False(t, checkWriteTimes([]Entry{early}).OK)
	// A linked request's ops are each bounded.
	linked := Entry{Input: Input{Kind: KindLinked, Member: "a", Ops: []Input{{Key: "l1"}, {Key: "l2"}}},
		Output: Output{Status: Known, Code: ledger.CodeOK, Ops: []Output{
			{Status: Known, Code: ledger.CodeOK, Seq: 6, TimeMs: call + 10_000}, {Status: Known, Code: ledger.CodeOK, Seq: 7, TimeMs: call + 10_000}}},
		CallWallMs: call, ReturnWallMs: ret}
	r := checkWriteTimes([]Entry{linked})
	assert.False(t, r.OK)
	assert.Len(t, r.Findings, 2)
}

// TestJournalCheckCatchesAHoldThatNeverExpires: a hold long past its expiry
// that the journal listed after the run still has open (no capture, release
// or expiry entry) is a finding; a reads-only model cannot see it, as a read
// has no lower bound on what has expired (found by review). A hold not yet
// due, or one whose expiry is journaled, passes.
func TestJournalCheckCatchesAHoldThatNeverExpires(t *testing.T) {
	now := time.Now().UnixMilli()
	for name, tc := range map[string]struct {
		ttlMs   int64
		expired bool // the journal has its expiry
		want    bool
	}{
		"a minute overdue, still open": {ttlMs: 1_000, want: false},
		"overdue, expiry journaled":    {ttlMs: 1_000, expired: true, want: true},
		"not due yet":                  {ttlMs: 120_000, want: true},
	} {
		t.Run(name, func(t *testing.T) {
			at := now - 61_000 // the hold's log time
			c := Entry{Input: Input{Kind: KindCredit, Member: "a", Asset: Asset, Key: "c1", Amount: 100},
				Output: ok(1, at-10, 100, 0), CallNs: 1, ReturnNs: 2}
			h := Entry{Input: Input{Kind: KindHold, Member: "a", Asset: Asset, Key: "h1", Amount: 30, TTLMs: tc.ttlMs},
				Output: ok(2, at, 100, 30), CallNs: 3, ReturnNs: 4}
			held := int64(30)
			journal := []client.JournalEntry{
				{Seq: 2, Op: toClientOp(h.Input), Result: client.Result{Code: ledger.CodeOK, Seq: 2, TimeMs: at}},
				{Seq: 1, Op: toClientOp(c.Input), Result: client.Result{Code: ledger.CodeOK, Seq: 1, TimeMs: at - 10}},
			}
			if tc.expired {
				held = 0
				exp := client.JournalEntry{Seq: 3, Op: client.Op{Kind: ledger.OpExpireHold, Program: Program, Member: "a", Asset: Asset,
					IdempotencyKey: ledger.ExpiryKey("h1"), HoldKey: "h1", Amount: decimal.NewFromInt(30)},
					Result: client.Result{Code: ledger.CodeOK, Seq: 3, TimeMs: at + tc.ttlMs, Released: decimal.NewFromInt(30)}}
				journal = append([]client.JournalEntry{exp}, journal...)
			}
			j := checkJournal(context.Background(), fakeJournal{"a": journal}, nil, []Entry{c, h}, []string{"a"},
				map[string]int64{"a/" + Asset: 100}, map[string]int64{"a/" + Asset: held})
			assert.Equal(t, tc.want, j.OK, "%s %v", j.Detail, j.Findings)
		})
	}
}

// TestCheckRefusalsJudgesFailedReads: a read that fails constrains nothing
// in the model, but ACCOUNT_NOT_FOUND (or another code that says the
// account is not there) for an account opened before the workload is a
// wrong answer; a timeout or NOT_LEADER is a failed read.
func TestCheckRefusalsJudgesFailedReads(t *testing.T) {
	readFailed := func(code ledger.Code) Entry {
		return Entry{Input: Input{Kind: KindRead, Member: "a", Asset: Asset},
			Output: Output{Status: Indeterminate, Code: code}, Err: string(code), CallNs: 1, ReturnNs: ReturnNever}
	}
	for code, want := range map[ledger.Code]bool{
		ledger.CodeUnavailable:     true,
		ledger.CodeNotLeader:       true,
		ledger.CodeInternal:        true,
		ledger.CodeAccountNotFound: false,
		ledger.CodeUnknownAsset:    false,
	} {
		r := checkRefusals([]Entry{readFailed(code)})
		assert.Equal(t, want, r.OK, "%s: %s %v", code, r.Detail, r.Findings)
	}
}
