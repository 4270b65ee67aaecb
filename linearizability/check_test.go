package linearizability

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// fakeLookup answers GetOperation from a map of key -> stored entry.
type fakeLookup map[string]client.JournalEntry

func (f fakeLookup) GetOperation(_ context.Context, _, _, key string) (bool, client.JournalEntry, error) {
	e, ok := f[key]
	return ok, e, nil
}

// TestResolvedNotFoundWriteIsNotApplied: a write that gave up
// indeterminate and is not in the store after the run never applied. Left
// indeterminate, the model could apply it to explain a read of it (a dirty
// read of a freeze that never committed, undone by a later unfreeze).
func TestResolvedNotFoundWriteIsNotApplied(t *testing.T) {
	entries := []Entry{
		{Input: Input{Kind: KindFreeze, Member: "a", Asset: Asset, Key: "f1"}, Output: indeterminate, CallNs: 20, ReturnNs: ReturnNever},
		{Input: Input{Kind: KindRead, Member: "a", Asset: Asset}, Output: read(0, 0, true), CallNs: 30, ReturnNs: 40},
		{Input: Input{Kind: KindUnfreeze, Member: "a", Asset: Asset, Key: "u1"}, Output: Output{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 200},
			CallNs: 45, ReturnNs: 48},
		{Input: Input{Kind: KindRead, Member: "a", Asset: Asset}, Output: read(0, 0, false), CallNs: 50, ReturnNs: 60},
	}
	lookup := fakeLookup{"u1": {Seq: 1, Op: toClientOp(entries[2].Input), Result: client.Result{Code: ledger.CodeOK, Seq: 1, TimeMs: 200}}}

	res, applied, notApplied := checkExactlyOnce(context.Background(), lookup, entries)
	require.True(t, res.OK, res.Detail)
	assert.Equal(t, 0, applied)
	assert.Equal(t, 1, notApplied)
	assert.Equal(t, NotApplied, entries[0].Output.Status)

	lin, _ := checkLinearizable(t.Context(), entries, []string{"a"}, 10*time.Second, t.TempDir(), nil)
	assert.False(t, lin.OK, "a read of a freeze that never applied passed: %s", lin.Detail)
}

// TestUndecidedHistoryFailsTheCheck: a history porcupine cannot decide in
// time is not proven linearizable; it used to pass with a note.
func TestUndecidedHistoryFailsTheCheck(t *testing.T) {
	r, _ := checkLinearizable(t.Context(), undecidable("a"), []string{"a"}, 200*time.Millisecond, t.TempDir(), nil)
	assert.False(t, r.OK, r.Detail)
	assert.Len(t, r.Unknown, 1)
}

// undecidable is a history of member that porcupine cannot decide in any
// reasonable time: concurrent indeterminate credits of distinct amounts
// (2^40 subsets to try) before a read that none of them explains.
func undecidable(member string) []Entry {
	entries := []Entry{{Input: Input{Kind: KindCredit, Member: member, Asset: Asset, Key: member + "-c0", Amount: 1},
		Output: Output{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 1, HasAccount: true, State: ledger.StateActive, Asset: Asset, Posted: 1}, CallNs: 0, ReturnNs: 1}}
	for i := range 40 {
		entries = append(entries, Entry{Input: Input{Kind: KindCredit, Member: member, Asset: Asset, Key: fmt.Sprint(member, "-k", i), Amount: int64(1) << i},
			Output: indeterminate, CallNs: 10, ReturnNs: ReturnNever})
	}
	// Posted can never be 0 after the acknowledged credit of 1.
	return append(entries, Entry{Input: Input{Kind: KindRead, Member: member, Asset: Asset}, Output: read(0, 0, false), CallNs: 20, ReturnNs: 30})
}

// linearizable is a short history of member that porcupine decides at once.
func linearizable(member string) []Entry {
	return []Entry{
		{Input: Input{Kind: KindCredit, Member: member, Asset: Asset, Key: member + "-c1", Amount: 5},
			Output: Output{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 1, HasAccount: true, State: ledger.StateActive, Asset: Asset, Posted: 5}, CallNs: 0, ReturnNs: 10},
		{Input: Input{Kind: KindRead, Member: member, Asset: Asset}, Output: read(5, 0, false), CallNs: 20, ReturnNs: 30},
	}
}

// TestLinearizableCheckStopsWithItsContext: the check returns when its
// context ends, even with a per-account limit far beyond it, and fails
// saying how many accounts it left unchecked and why. Before, it ignored
// its context, and a run whose accounts all timed out could overrun the
// test binary's -timeout.
func TestLinearizableCheckStopsWithItsContext(t *testing.T) {
	const perAccount = time.Hour // only ctx can stop the slow histories
	// promptly allows for the race detector on a shared two-CPU machine;
	// without ctx the first undecidable account alone takes perAccount.
	const promptly = 10 * time.Second
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()

	for _, tc := range []struct {
		name      string
		ctx       func(t *testing.T) context.Context
		entries   []Entry
		members   []string
		ok        bool
		checked   int    // AccountResults returned
		unchecked string // in Detail; "" for none
		cutShort  bool   // an account undecided because ctx's deadline cut its limit
	}{
		{
			name:    "decidable, ample time",
			ctx:     func(t *testing.T) context.Context { return t.Context() },
			entries: slices.Concat(linearizable("a"), linearizable("b")),
			members: []string{"a", "b"},
			ok:      true, checked: 2,
		},
		{
			name:      "already cancelled",
			ctx:       func(*testing.T) context.Context { return cancelled },
			entries:   slices.Concat(linearizable("a"), linearizable("b"), linearizable("c")),
			members:   []string{"a", "b", "c"},
			unchecked: "3 of 3 members not checked: context canceled",
		},
		{
			name: "deadline passes during a slow account",
			ctx: func(t *testing.T) context.Context {
				ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
				t.Cleanup(cancel)
				return ctx
			},
			entries:   slices.Concat(linearizable("a"), undecidable("b"), undecidable("c"), linearizable("d")),
			members:   []string{"a", "b", "c", "d"},
			checked:   2, // a decided, b cut short
			unchecked: "2 of 4 members not checked: context deadline exceeded",
			cutShort:  true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			began := time.Now()
			r, accounts := checkLinearizable(tc.ctx(t), tc.entries, tc.members, perAccount, t.TempDir(), nil)
			took := time.Since(began)
			assert.Less(t, took, promptly, "the check did not stop with its context")
			assert.Equal(t, tc.ok, r.OK, "%s: %v", r.Detail, r.Findings)
			assert.Len(t, accounts, tc.checked)
			if tc.unchecked == "" {
				assert.NotContains(t, r.Detail, "not checked")
			} else {
				assert.Contains(t, r.Detail, tc.unchecked)
				assert.Contains(t, r.Unknown, tc.unchecked)
			}
			if tc.cutShort {
				require.NotEmpty(t, r.Findings)
				assert.Contains(t, r.Findings[0], "b: undecided within")
				assert.Contains(t, r.Findings[0], "cut short by the context's deadline")
			}
		})
	}
}

// TestExactlyOnceCatchesLies: the exactly-once check fails when the store
// disagrees with what the client saw: an acknowledged write stored with
// another sequence, missing, or a different operation under its key, and a
// write the client was told certainly failed found applied.
func TestExactlyOnceCatchesLies(t *testing.T) {
	acked := Entry{Input: Input{Kind: KindCredit, Member: "a", Asset: Asset, Key: "c1", Amount: 5},
		Output: Output{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 100}, CallNs: 0, ReturnNs: 10}
	failed := Entry{Input: Input{Kind: KindDebit, Member: "a", Asset: Asset, Key: "d1", Amount: 5},
		Output: Output{Status: NotApplied, Code: ledger.CodeNotLeader}, CallNs: 0, ReturnNs: 10}
	stored := func(e Entry, seq uint64) client.JournalEntry {
		return client.JournalEntry{Seq: seq, Op: toClientOp(e.Input), Result: client.Result{Code: ledger.CodeOK, Seq: seq, TimeMs: 100}}
	}
	other := stored(acked, 1)
	other.Op.Amount = other.Op.Amount.Add(other.Op.Amount)
	otherAsset := stored(acked, 1)
	otherAsset.Op.Asset = "XYZ"
	otherBalance := stored(acked, 1) // the record's account after the op is not what the client saw
	otherBalance.Result.Account = &client.Account{Asset: Asset, State: "ACTIVE", Posted: decimal.NewFromInt(10)}

	for name, tc := range map[string]struct {
		entries []Entry
		lookup  fakeLookup
	}{
		"honest":               {[]Entry{acked, failed}, fakeLookup{"c1": stored(acked, 1)}},
		"acked, other seq":     {[]Entry{acked}, fakeLookup{"c1": stored(acked, 2)}},
		"acked, missing":       {[]Entry{acked}, fakeLookup{}},
		"acked, other op":      {[]Entry{acked}, fakeLookup{"c1": other}},
		"acked, other asset":   {[]Entry{acked}, fakeLookup{"c1": otherAsset}},
		"acked, other balance": {[]Entry{acked}, fakeLookup{"c1": otherBalance}},
		"failed but stored":    {[]Entry{failed}, fakeLookup{"d1": stored(failed, 3)}},
	} {
		t.Run(name, func(t *testing.T) {
			res, _, _ := checkExactlyOnce(context.Background(), tc.lookup, append([]Entry(nil), tc.entries...))
			assert.Equal(t, name == "honest", res.OK, "%s: %v", res.Detail, res.Findings)
		})
	}
}

// fakeJournal lists a fixed journal per member, in one page.
type fakeJournal map[string][]client.JournalEntry

func (f fakeJournal) ListJournal(_ context.Context, _, member, _ string, _ int, _ uint64) ([]client.JournalEntry, uint64, error) {
	return f[member], 0, nil
}

// TestJournalCheckCatchesLies: the journal check fails on a key or a
// sequence used twice, an entry no client sent, an acknowledged success
// missing, and a final balance the postings do not explain.
func TestJournalCheckCatchesLies(t *testing.T) {
	credit := func(key string, seq uint64, amount int64) (Entry, client.JournalEntry) {
		e := Entry{Input: Input{Kind: KindCredit, Member: "a", Asset: Asset, Key: key, Amount: amount},
			Output: Output{Status: Known, Code: ledger.CodeOK, Seq: seq, TimeMs: 100}}
		return e, client.JournalEntry{Seq: seq, Op: toClientOp(e.Input), Result: client.Result{Code: ledger.CodeOK, Seq: seq}}
	}
	e1, j1 := credit("c1", 1, 5)
	e2, j2 := credit("c2", 2, 7)
	_, j3 := credit("c3", 3, 1)
	entries := []Entry{e1, e2}
	for name, tc := range map[string]struct {
		journal []client.JournalEntry
		final   int64
	}{
		"honest":         {[]client.JournalEntry{j2, j1}, 12},
		"key twice":      {[]client.JournalEntry{j2, j1, j1}, 17},
		"seq twice":      {[]client.JournalEntry{j2, {Seq: 2, Op: j1.Op, Result: j1.Result}}, 12},
		"unsent entry":   {[]client.JournalEntry{j3, j2, j1}, 13},
		"ack missing":    {[]client.JournalEntry{j1}, 5},
		"balance is off": {[]client.JournalEntry{j2, j1}, 13},
	} {
		t.Run(name, func(t *testing.T) {
			res := checkJournal(context.Background(), fakeJournal{"a": tc.journal}, nil, entries, []string{"a"}, map[string]int64{"a/" + Asset: tc.final}, nil)
			assert.Equal(t, name == "honest", res.OK, "%s: %v", res.Detail, res.Findings)
		})
	}
}

// TestExactlyOnceLinked: the keys of a linked request are checked one by
// one, an indeterminate request is resolved only when all its keys are
// stored (or none), and one stored in part fails the check.
func TestExactlyOnceLinked(t *testing.T) {
	in := Input{Kind: KindLinked, Member: "a", Ops: []Input{
		{Kind: KindCredit, Member: "a", Asset: Asset, Key: "l1", Amount: 5},
		{Kind: KindDebit, Member: "a", Asset: Asset, Key: "l2", Amount: 9},
	}}
	stored := func(i int, code ledger.Code) client.JournalEntry {
		seq := uint64(10 + i)
		return client.JournalEntry{Seq: seq, Op: toClientOp(in.Ops[i]), Result: client.Result{Code: code, Seq: seq, TimeMs: 100}}
	}
	failedLookup := fakeLookup{"l1": stored(0, ledger.CodeLinkedFailed), "l2": stored(1, ledger.CodeInsufficientFunds)}
	acked := Entry{Input: in, Output: linkedOutput([]client.Result{failedLookup["l1"].Result, failedLookup["l2"].Result}, in.Ops), ReturnNs: 10}
	require.Equal(t, ledger.CodeInsufficientFunds, acked.Output.Code, "the request's code is the failing op's")
	pending := Entry{Input: in, Output: indeterminate, ReturnNs: ReturnNever}

	for name, tc := range map[string]struct {
		entry  Entry
		lookup fakeLookup
		ok     bool
		status Status // after the check
	}{
		"acked, stored":             {acked, failedLookup, true, Known},
		"acked, one key missing":    {acked, fakeLookup{"l2": failedLookup["l2"]}, false, Known},
		"acked, another outcome":    {acked, fakeLookup{"l1": stored(0, ledger.CodeOK), "l2": stored(1, ledger.CodeOK)}, false, Known},
		"indeterminate, all stored": {pending, failedLookup, true, Known},
		"indeterminate, none":       {pending, fakeLookup{}, true, NotApplied},
		"indeterminate, in part":    {pending, fakeLookup{"l1": failedLookup["l1"]}, false, Indeterminate},
	} {
		t.Run(name, func(t *testing.T) {
			entries := []Entry{tc.entry}
			res, _, _ := checkExactlyOnce(context.Background(), tc.lookup, entries)
			assert.Equal(t, tc.ok, res.OK, "%s: %v", res.Detail, res.Findings)
			assert.Equal(t, tc.status, entries[0].Output.Status)
			if name == "indeterminate, all stored" {
				assert.Equal(t, acked.Output, entries[0].Output, "resolved to the stored results")
				assert.True(t, entries[0].Resolved)
			}
		})
	}
}

// TestJournalCheckLinked: the ops of a linked request that applied are
// each in the journal with their own sequence; the ops of one that failed
// must not be.
func TestJournalCheckLinked(t *testing.T) {
	ops := []Input{
		{Kind: KindCredit, Member: "a", Asset: Asset, Key: "l1", Amount: 5},
		{Kind: KindDebit, Member: "a", Asset: Asset, Key: "l2", Amount: 2},
	}
	res := func(seq uint64, code ledger.Code) client.Result {
		return client.Result{Code: code, Seq: seq, TimeMs: 100}
	}
	applied := Entry{Input: Input{Kind: KindLinked, Member: "a", Ops: ops},
		Output: linkedOutput([]client.Result{res(1, ledger.CodeOK), res(2, ledger.CodeOK)}, ops)}
	failed := applied
	failed.Output = linkedOutput([]client.Result{res(1, ledger.CodeLinkedFailed), res(2, ledger.CodeInsufficientFunds)}, ops)
	j := func(i int, seq uint64) client.JournalEntry {
		return client.JournalEntry{Seq: seq, Op: toClientOp(ops[i]), Result: res(seq, ledger.CodeOK)}
	}
	for name, tc := range map[string]struct {
		entry   Entry
		journal []client.JournalEntry
		final   int64
		ok      bool
	}{
		"applied, in the journal":  {applied, []client.JournalEntry{j(1, 2), j(0, 1)}, 3, true},
		"applied, one op missing":  {applied, []client.JournalEntry{j(0, 1)}, 5, false},
		"applied, seqs swapped":    {applied, []client.JournalEntry{j(1, 1), j(0, 2)}, 3, false},
		"failed, not in it":        {failed, nil, 0, true},
		"failed, but one op in it": {failed, []client.JournalEntry{j(0, 1)}, 5, false},
	} {
		t.Run(name, func(t *testing.T) {
			r := checkJournal(context.Background(), fakeJournal{"a": tc.journal}, nil, []Entry{tc.entry}, []string{"a"}, map[string]int64{"a/" + Asset: tc.final}, nil)
			assert.Equal(t, tc.ok, r.OK, "%s: %v", r.Detail, r.Findings)
		})
	}
}

// TestExactlyOnceLinkedShortOps: a Known linked entry whose Ops are fewer
// than its Input.Ops must be a finding, not a panic.
func TestExactlyOnceLinkedShortOps(t *testing.T) {
	in := Input{Kind: KindLinked, Member: "a", Ops: []Input{
		{Kind: KindCredit, Member: "a", Asset: Asset, Key: "l1", Amount: 5},
		{Kind: KindCredit, Member: "a", Asset: Asset, Key: "l2", Amount: 9},
	}}
	st := func(i int) client.JournalEntry {
		return client.JournalEntry{Seq: uint64(i + 1), Op: toClientOp(in.Ops[i]), Result: client.Result{Code: ledger.CodeOK, Seq: uint64(i + 1), TimeMs: 100}}
	}
	e := Entry{Input: in, Output: Output{Status: Known, Code: ledger.CodeOK, Ops: []Output{{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 100}}}}
	res, _, _ := checkExactlyOnce(context.Background(), fakeLookup{"l1": st(0), "l2": st(1)}, []Entry{e})
	if res.OK {
		t.Fatal("accepted")
	}
}

// TestJournalCheckTwoAssets: postings are summed per account, a capture's to
// the account its result names, each at its asset's scale; a capture booked
// to the other account fails the check.
func TestJournalCheckTwoAssets(t *testing.T) {
	write := func(in Input, seq uint64) Entry {
		in.Member = "a"
		return Entry{Input: in, Output: Output{Status: Known, Code: ledger.CodeOK, Seq: seq, TimeMs: 100}}
	}
	cr := write(Input{Kind: KindCredit, Asset: StoredValue, Key: "c1", Amount: 137}, 1)
	cp := write(Input{Kind: KindCredit, Asset: Asset, Key: "c2", Amount: 5}, 2)
	h := write(Input{Kind: KindHold, Asset: StoredValue, Key: "h1", Amount: 30, TTLMs: 1000}, 3)
	capt := write(Input{Kind: KindCapture, Asset: StoredValue, Key: "k4", HoldKey: "h1"}, 4)
	j := func(e Entry, res client.Result) client.JournalEntry {
		res.Code, res.Seq = ledger.CodeOK, e.Output.Seq
		return client.JournalEntry{Seq: e.Output.Seq, Op: toClientOp(e.Input), Result: res}
	}
	entries := []Entry{cr, cp, h, capt}
	final := map[string]int64{"a/" + StoredValue: 107, "a/" + Asset: 5}
	for name, tc := range map[string]struct {
		account *client.Account // the capture's
		final   map[string]int64
		ok      bool
	}{
		"honest":                   {&client.Account{Member: "a", Asset: StoredValue, Scale: 2}, final, true},
		"capture on the other":     {&client.Account{Member: "a", Asset: Asset}, final, false},
		"capture names no account": {nil, final, false},
		"balances swapped":         {&client.Account{Member: "a", Asset: StoredValue, Scale: 2}, map[string]int64{"a/" + StoredValue: 5, "a/" + Asset: 107}, false},
		"stored value in points":   {&client.Account{Member: "a", Asset: StoredValue, Scale: 2}, map[string]int64{"a/" + StoredValue: 10700, "a/" + Asset: 5}, false},
	} {
		t.Run(name, func(t *testing.T) {
			journal := []client.JournalEntry{j(capt, client.Result{Account: tc.account, Captured: decimal.RequireFromString("0.30")}),
				j(h, client.Result{}), j(cp, client.Result{}), j(cr, client.Result{})}
			res := checkJournal(context.Background(), fakeJournal{"a": journal}, nil, entries, []string{"a"}, tc.final, nil)
			assert.Equal(t, tc.ok, res.OK, "%s: %v", res.Detail, res.Findings)
		})
	}
}

// TestReadCannotSeeAnExpiryNotDue: a read answered long before a hold's
// expiry cannot show it expired. Reads carry no log time, and the model
// used to try every pending expiry, so a hold lost after a member's last
// write passed as expired (found by review).
func TestReadCannotSeeAnExpiryNotDue(t *testing.T) {
	c1 := Input{Kind: KindCredit, Member: "a", Asset: Asset, Key: "c1", Amount: 100}
	h1 := Input{Kind: KindHold, Member: "a", Asset: Asset, Key: "h1", Amount: 30, TTLMs: longTTLMs}
	for _, tc := range []struct {
		wallMs int64
		ok     bool
	}{{1_020, false}, {1_010 + longTTLMs + 1, true}} {
		gone := read(100, 0, false)
		gone.WallMs = tc.wallMs
		entries := []Entry{
			{Input: c1, Output: ok(1, 1_000, 100, 0), CallNs: 1, ReturnNs: 2},
			{Input: h1, Output: ok(2, 1_010, 100, 30), CallNs: 3, ReturnNs: 4},
			{Input: Input{Kind: KindRead, Member: "a", Asset: Asset}, Output: gone, CallNs: 5, ReturnNs: 6},
		}
		lin, _ := checkLinearizable(t.Context(), entries, []string{"a"}, 10*time.Second, t.TempDir(), nil)
		assert.Equal(t, tc.ok, lin.OK, "read at %d ms of a hold expiring at %d: %s", tc.wallMs, 1_010+longTTLMs, lin.Detail)
	}
}

// TestResolvedWriteIsPinnedBeforeFinalReads: a write found in the store
// after the run had applied before the final reads; one that misses its
// effect fails. Its return stayed at +infinity, and a lost freeze passed.
func TestResolvedWriteIsPinnedBeforeFinalReads(t *testing.T) {
	c1 := Input{Kind: KindCredit, Member: "a", Asset: Asset, Key: "c1", Amount: 100}
	f1 := Input{Kind: KindFreeze, Member: "a", Asset: Asset, Key: "f1"}
	entries := []Entry{
		{Input: c1, Output: ok(1, 10, 100, 0), CallNs: 1, ReturnNs: 2},
		{Input: f1, Output: indeterminate, CallNs: 3, ReturnNs: ReturnNever},
	}
	lookup := fakeLookup{
		"c1": {Seq: 1, Op: toClientOp(c1), Result: client.Result{Code: ledger.CodeOK, Seq: 1, TimeMs: 10,
			Account: &client.Account{Program: Program, Member: "a", Asset: Asset, State: "ACTIVE", Posted: decimal.NewFromInt(100),
				Held: decimal.Zero, Available: decimal.NewFromInt(100)}}},
		"f1": {Seq: 2, Op: toClientOp(f1), Result: client.Result{Code: ledger.CodeOK, Seq: 2, TimeMs: 20,
			Account: &client.Account{Program: Program, Member: "a", Asset: Asset, State: "FROZEN", Posted: decimal.NewFromInt(100),
				Held: decimal.Zero, Available: decimal.NewFromInt(100)}}},
	}
	ex, applied, _ := checkExactlyOnce(context.Background(), lookup, entries)
	require.True(t, ex.OK, ex.Detail)
	require.Equal(t, 1, applied)
	pinResolved(entries, 50)
	require.Equal(t, int64(50), entries[1].ReturnNs)
	for _, tc := range []struct {
		final Output
		ok    bool
	}{{read(100, 0, true), true}, {read(100, 0, false), false}} {
		es := append(slices.Clone(entries), Entry{ClientID: 9, Input: Input{Kind: KindRead, Member: "a", Asset: Asset}, Output: tc.final, CallNs: 100, ReturnNs: 101})
		lin, _ := checkLinearizable(t.Context(), es, []string{"a"}, 10*time.Second, t.TempDir(), nil)
		assert.Equal(t, tc.ok, lin.OK, "final read frozen=%v: %s", tc.final.State == ledger.StateFrozen, lin.Detail)
	}
}

// TestRunFloors: a history where nothing applied, faults that did nothing
// or never happened, and silent links fail their checks; a healthy one
// passes.
func TestRunFloors(t *testing.T) {
	var healthy, refused []Entry
	for i := range 100 {
		in := Input{Kind: KindCredit, Member: "a", Asset: Asset, Key: fmt.Sprintf("k%d", i), Amount: 5}
		healthy = append(healthy, Entry{Input: in, Output: ok(uint64(i+1), int64(i), 5, 0)},
			Entry{Input: readIn, Output: read(5, 0, false)})
		refused = append(refused, Entry{Input: in, Output: Output{Status: NotApplied, Code: ledger.CodeInvalidArgument}},
			Entry{Input: readIn, Output: read(0, 0, false)})
	}
	assert.True(t, checkWorkload(healthy).OK)
	assert.False(t, checkWorkload(refused).OK, "every write refused passed")
	// Closes refused on their merits (a balance left) are answered: fine.
	var closes []Entry
	for i := range 100 {
		closes = append(closes, healthy[2*i], Entry{Input: Input{Kind: KindClose, Member: "a", Asset: Asset, Key: fmt.Sprintf("x%d", i)},
			Output: Output{Status: Known, Code: ledger.CodeBalanceNotZero, Seq: uint64(200 + i)}})
	}
	assert.True(t, checkWorkload(closes).OK, "closes refused BALANCE_NOT_ZERO failed the floor")

	cfg := Config{Faults: []FaultKind{FaultKill, FaultPartition}, FaultRounds: 2}
	ev := func(k FaultKind, err string) TimelineEvent { return TimelineEvent{Kind: k, What: "x", Err: err} }
	good := []TimelineEvent{ev(FaultKill, ""), ev(FaultKill, ""), ev(FaultPartition, ""), ev(FaultPartition, "")}
	assert.True(t, checkFaults(cfg, good, nil).OK)
	assert.False(t, checkFaults(cfg, good[:3], nil).OK, "a kind injected too few times")
	quiet := ev(FaultPartition, "")
	quiet.NoEffect = true
	assert.True(t, checkFaults(cfg, append(slices.Clone(good), quiet), nil).OK, "one partition between two quiet followers")
	assert.False(t, checkFaults(cfg, []TimelineEvent{good[0], good[1], quiet, quiet}, nil).OK, "no partition hindered anything")
	assert.False(t, checkFaults(cfg, good, []string{"n1 <-> n2"}).OK, "a silent pair")
}

// TestShardOrderCheck: across members of a shard, a write sent after
// another returned must have a later seq and no earlier log time.
func TestShardOrderCheck(t *testing.T) {
	// Two members of one shard (of 1), three writes in real-time order.
	w := func(member, key string, call, ret int64, seq uint64, timeMs int64) Entry {
		return Entry{Input: Input{Kind: KindCredit, Member: member, Asset: Asset, Key: key, Amount: 1},
			Output: Output{Status: Known, Code: ledger.CodeOK, Seq: seq, TimeMs: timeMs}, CallNs: call, ReturnNs: ret}
	}
	inOrder := []Entry{w("a", "k1", 1, 2, 1, 10), w("b", "k2", 3, 4, 2, 10), w("a", "k3", 5, 6, 3, 11)}
	assert.True(t, checkShardOrder(inOrder, 1).OK)
	overlapping := []Entry{w("a", "k1", 1, 4, 2, 10), w("b", "k2", 2, 3, 1, 10)} // concurrent: any order
	assert.True(t, checkShardOrder(overlapping, 1).OK)
	seqBack := []Entry{w("a", "k1", 1, 2, 5, 10), w("b", "k2", 3, 4, 4, 10)}
	assert.False(t, checkShardOrder(seqBack, 1).OK, "a later write with an earlier seq")
	timeBack := []Entry{w("a", "k1", 1, 2, 1, 10), w("b", "k2", 3, 4, 2, 9)}
	assert.False(t, checkShardOrder(timeBack, 1).OK, "a later write with an earlier log time")
}

// holdOfA is member a's hold h1 of 30 (seq 1, log time 100) as its client
// saw it, and its journal entry.
func holdOfA() (Entry, client.JournalEntry) {
	h := Entry{Input: Input{Kind: KindHold, Member: "a", Asset: Asset, Key: "h1", Amount: 30, TTLMs: 1000},
		Output: Output{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 100}}
	return h, client.JournalEntry{Seq: 1, Op: toClientOp(h.Input), Result: client.Result{Code: ledger.CodeOK, Seq: 1}}
}

// expiryOfA is the ledger's journal entry (at seq) of the expiry of member
// a's hold, releasing amount.
func expiryOfA(hold string, seq uint64, amount int64) client.JournalEntry {
	amt := decimal.NewFromInt(amount)
	return client.JournalEntry{Seq: seq, Op: client.Op{Kind: ledger.OpExpireHold, Program: Program, Member: "a", Asset: Asset,
		IdempotencyKey: ledger.ExpiryKey(hold), HoldKey: hold, Amount: amt}, Result: client.Result{Code: ledger.CodeOK, Seq: seq, Released: amt}}
}

// TestJournalExpiryEntries: a hold's expiry, journaled by the ledger, must
// be of a hold the member opened, under its key, releasing all of it.
func TestJournalExpiryEntries(t *testing.T) {
	h, jh := holdOfA()
	expiry := expiryOfA
	for name, tc := range map[string]struct {
		journal []client.JournalEntry
		ok      bool
	}{
		"honest":          {[]client.JournalEntry{expiry("h1", 2, 30), jh}, true},
		"unknown hold":    {[]client.JournalEntry{expiry("h9", 2, 30), jh}, false},
		"partial release": {[]client.JournalEntry{expiry("h1", 2, 20), jh}, false},
		"before its hold": {[]client.JournalEntry{jh, expiry("h1", 1, 30)}, false},
		"twice":           {[]client.JournalEntry{expiry("h1", 3, 30), expiry("h1", 2, 30), jh}, false},
	} {
		t.Run(name, func(t *testing.T) {
			res := checkJournal(context.Background(), fakeJournal{"a": tc.journal}, nil, []Entry{h}, []string{"a"}, map[string]int64{"a/" + Asset: 0}, nil)
			assert.Equal(t, tc.ok, res.OK, "%s: %v", res.Detail, res.Findings)
		})
	}
}

// fakeReplicas answers ShardState from a fixed table: node -> state.
type fakeReplicas []client.ShardState

func (f fakeReplicas) ShardState(_ context.Context, node int, _ uint32) (client.ShardState, error) {
	return f[node], nil
}

func (f fakeReplicas) NodeID(node int) string { return fmt.Sprintf("n%d", node+1) }

// TestReplicaChecksCatchLies: replicas-equal and conservation fail on the
// histories they exist to catch, and pass on an honest one.
func TestReplicaChecksCatchLies(t *testing.T) {
	st := func(index uint64, hash string, conserved bool) client.ShardState {
		return client.ShardState{AppliedIndex: index, StateHash: []byte(hash), ConservationOK: conserved}
	}
	for name, tc := range map[string]struct {
		replicas           fakeReplicas
		equalOK, conservOK bool
	}{
		"honest":                 {fakeReplicas{st(7, "h", true), st(7, "h", true), st(7, "h", true)}, true, true},
		"diverged at one index":  {fakeReplicas{st(7, "h", true), st(7, "x", true), st(7, "h", true)}, false, true},
		"unbalanced shard":       {fakeReplicas{st(7, "h", true), st(7, "h", false), st(7, "h", true)}, true, false},
		"a replica with no hash": {fakeReplicas{st(7, "", true), st(7, "", true), st(7, "", true)}, false, true},
	} {
		t.Run(name, func(t *testing.T) {
			require.Len(t, tc.replicas, ClusterSize)
			equal, conserv, _ := checkReplicas(context.Background(), tc.replicas, 1)
			assert.Equal(t, tc.equalOK, equal.OK, "%s: %v", equal.Detail, equal.Findings)
			assert.Equal(t, tc.conservOK, conserv.OK, "%s: %v", conserv.Detail, conserv.Findings)
		})
	}
}

// TestJournalExplainsHeldBalance: the final held balance must be what the
// journal's holds, captures, releases and expiries leave: a hold that
// expired without its EXPIRE_HOLD entry fails (found by review).
func TestJournalExplainsHeldBalance(t *testing.T) {
	h, jh := holdOfA()
	expiry := expiryOfA("h1", 2, 30)
	for name, tc := range map[string]struct {
		journal []client.JournalEntry
		held    int64
		ok      bool
	}{
		"hold still open":          {[]client.JournalEntry{jh}, 30, true},
		"expired, journaled":       {[]client.JournalEntry{expiry, jh}, 0, true},
		"expired, not journaled":   {[]client.JournalEntry{jh}, 0, false},
		"journaled, still held":    {[]client.JournalEntry{expiry, jh}, 30, false},
		"held more than any holds": {nil, 5, false},
	} {
		t.Run(name, func(t *testing.T) {
			var entries []Entry
			if tc.journal != nil {
				entries = []Entry{h}
			}
			res := checkJournal(context.Background(), fakeJournal{"a": tc.journal}, nil, entries, []string{"a"},
				map[string]int64{"a/" + Asset: 0}, map[string]int64{"a/" + Asset: tc.held})
			assert.Equal(t, tc.ok, res.OK, "%s: %v", res.Detail, res.Findings)
		})
	}
}

// TestJournalHoldSettledOnce: a hold ends once; a journal that also
// expires (or again captures) a captured hold is named as such, not only
// as a held sum that does not add up.
func TestJournalHoldSettledOnce(t *testing.T) {
	h, jh := holdOfA()
	c := Entry{Input: Input{Kind: KindCapture, Member: "a", Asset: Asset, Key: "c1", HoldKey: "h1"},
		Output: Output{Status: Known, Code: ledger.CodeOK, Seq: 2, TimeMs: 200, Captured: 30}}
	jc := client.JournalEntry{Seq: 2, Op: toClientOp(c.Input), Result: client.Result{Code: ledger.CodeOK, Seq: 2, Captured: decimal.NewFromInt(30),
		Account: &client.Account{Asset: Asset}}}
	expiry := expiryOfA("h1", 3, 30)
	final := map[string]int64{"a/" + Asset: 0}
	posted := map[string]int64{"a/" + Asset: -30}

	res := checkJournal(context.Background(), fakeJournal{"a": {jc, jh}}, nil, []Entry{h, c}, []string{"a"}, posted, final)
	assert.True(t, res.OK, "%s: %v", res.Detail, res.Findings)

	res = checkJournal(context.Background(), fakeJournal{"a": {expiry, jc, jh}}, nil, []Entry{h, c}, []string{"a"}, posted, final)
	assert.False(t, res.OK)
	assert.True(t, slices.ContainsFunc(res.Findings, func(s string) bool { return strings.Contains(s, "settled twice") }),
		"findings: %v", res.Findings)
}

// TestJournalListedAfterAnExpiry: a hold that expires between the final
// reads and the journal's listing is not a finding (the accounts are read
// again after it); balances that disagree with the journal on both sides
// of the listing, or never stop changing, are.
func TestJournalListedAfterAnExpiry(t *testing.T) {
	h, jh := holdOfA()
	expiry := expiryOfA("h1", 2, 30)
	journal := fakeJournal{"a": {expiry, jh}}
	// The final reads saw the hold open (held 30); the journal has its expiry.
	posted, held := map[string]int64{"a/" + Asset: 0}, map[string]int64{"a/" + Asset: 30}
	reads := 0
	for name, tc := range map[string]struct {
		reread accountReader
		ok     bool
	}{
		"expired since the final reads": {func(context.Context, string, string) (int64, int64, error) { return 0, 0, nil }, true},
		"trusted finals":                {nil, false},
		"held on both sides":            {func(context.Context, string, string) (int64, int64, error) { return 0, 30, nil }, false},
		"never settles": {func(context.Context, string, string) (int64, int64, error) {
			reads++
			return 0, int64(reads), nil
		}, false},
		"reads fail": {func(context.Context, string, string) (int64, int64, error) { return 0, 0, errors.New("down") }, false},
	} {
		t.Run(name, func(t *testing.T) {
			res := checkJournal(context.Background(), journal, tc.reread, []Entry{h}, []string{"a"}, maps.Clone(posted), maps.Clone(held))
			assert.Equal(t, tc.ok, res.OK, "%s: %v", res.Detail, res.Findings)
		})
	}
}

// TestReplicaChecksFailOnAnyMismatch: a mismatch or failed walk a node
// logged during the run fails the check even when the final leaders'
// comparisons all match (the node that saw it was restarted since), and so
// does one the final leaders report, or none at all from a shard that
// applied enough entries to have checked.
func TestReplicaChecksFailOnAnyMismatch(t *testing.T) {
	dir := t.TempDir()
	clean, dirty, failed := filepath.Join(dir, "n1.log"), filepath.Join(dir, "n2.log"), filepath.Join(dir, "n3.log")
	require.NoError(t, os.WriteFile(clean, []byte("2026-11-25T16:00:00Z [WARN]  something else\n"), 0o644))
	require.NoError(t, os.WriteFile(dirty, []byte("a\n2026-11-25T16:00:01Z [ERROR] REPLICA STATE DIFFERS: ... shard=1 replica=n3 index=512\nb\n"), 0o644))
	require.NoError(t, os.WriteFile(failed, []byte("2026-11-25T16:00:01Z [WARN]  consistency check failed: shard=1 index=512\n"), 0o644))
	equal := map[int][]ReplicaState{0: {{Node: "n1", Leader: true, AppliedIndex: 4096, CheckIndex: 4096,
		Compared: []client.ReplicaCheck{{NodeID: "n2", Index: 4096, Match: true}}}, {Node: "n2", AppliedIndex: 4096, CheckIndex: 4096}}}

	r := checkReplicaChecks(equal, []string{clean}, 256)
	require.True(t, r.OK, "%+v", r)
	require.Contains(t, r.Detail, "comparisons: 1")

	r = checkReplicaChecks(equal, []string{clean, dirty, failed}, 256)
	require.False(t, r.OK)
	require.Len(t, r.Findings, 2)
	require.Contains(t, r.Findings[0], "n2.log")
	require.Contains(t, r.Findings[0], "index=512")
	require.Contains(t, r.Findings[1], "n3.log")

	differ := map[int][]ReplicaState{0: {{Node: "n1", Compared: []client.ReplicaCheck{{NodeID: "n2", Index: 256, Match: true},
		{NodeID: "n3", Index: 256}, {NodeID: "n4", Index: 256, Error: "disk"}}}}}
	r = checkReplicaChecks(differ, []string{clean}, 256)
	require.False(t, r.OK)
	require.Equal(t, []string{"shard 0: leader n1 found n3's state different at index 256",
		"shard 0: leader n1: n4's check at index 256 failed: disk"}, r.Findings)

	// No check anywhere: none ran, though the shard applied enough.
	none := map[int][]ReplicaState{0: {{Node: "n1", AppliedIndex: 1024}, {Node: "n2", AppliedIndex: 1024}}}
	r = checkReplicaChecks(none, []string{clean}, 256)
	require.False(t, r.OK, "a shard past 4 check indexes with no check passed")
	require.True(t, checkReplicaChecks(none, []string{clean}, 257).OK, "a shard short of 4 check indexes needs no check")
	require.True(t, checkReplicaChecks(none, []string{clean}, 0).OK)

	// A leader that shares its newest check index with another replica
	// owes a comparison; one restarted since (no check yet), or whose
	// newest index no other replica has, does not.
	owed := map[int][]ReplicaState{0: {{Node: "n1", Leader: true, AppliedIndex: 1024, CheckIndex: 1024},
		{Node: "n2", AppliedIndex: 1024, CheckIndex: 1024}, {Node: "n3", AppliedIndex: 1024}}}
	r = checkReplicaChecks(owed, []string{clean}, 256)
	require.False(t, r.OK)
	require.Contains(t, r.Findings[0], "its leader reports no replica comparison")
	restarted := map[int][]ReplicaState{0: {{Node: "n1", Leader: true, AppliedIndex: 1030},
		{Node: "n2", AppliedIndex: 1030, CheckIndex: 1024}, {Node: "n3", AppliedIndex: 1030, CheckIndex: 1024}}}
	require.True(t, checkReplicaChecks(restarted, []string{clean}, 256).OK)
	alone := map[int][]ReplicaState{0: {{Node: "n1", Leader: true, AppliedIndex: 1030, CheckIndex: 1024},
		{Node: "n2", AppliedIndex: 1030}, {Node: "n3", AppliedIndex: 1030, CheckIndex: 768}}}
	require.True(t, checkReplicaChecks(alone, []string{clean}, 256).OK)

	r = checkReplicaChecks(equal, []string{filepath.Join(dir, "missing.log")}, 256)
	require.False(t, r.OK, "a log that cannot be read was taken as clean")
}
