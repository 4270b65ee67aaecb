package linearizability

import (
	"context"
	"fmt"
	"testing"
	"time"

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
		{Input: Input{Kind: KindFreeze, Member: "a", Key: "f1"}, Output: indeterminate, CallNs: 20, ReturnNs: ReturnNever},
		{Input: Input{Kind: KindRead, Member: "a"}, Output: read(0, 0, true), CallNs: 30, ReturnNs: 40},
		{Input: Input{Kind: KindUnfreeze, Member: "a", Key: "u1"}, Output: Output{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 200},
			CallNs: 45, ReturnNs: 48},
		{Input: Input{Kind: KindRead, Member: "a"}, Output: read(0, 0, false), CallNs: 50, ReturnNs: 60},
	}
	lookup := fakeLookup{"u1": {Seq: 1, Op: toClientOp(entries[2].Input), Result: client.Result{Code: ledger.CodeOK, Seq: 1, TimeMs: 200}}}

	res, applied, notApplied := checkExactlyOnce(context.Background(), lookup, entries)
	require.True(t, res.OK, res.Detail)
	assert.Equal(t, 0, applied)
	assert.Equal(t, 1, notApplied)
	assert.Equal(t, NotApplied, entries[0].Output.Status)

	lin, _ := checkLinearizable(entries, []string{"a"}, 10*time.Second, t.TempDir(), nil)
	assert.False(t, lin.OK, "a read of a freeze that never applied passed: %s", lin.Detail)
}

// TestUndecidedHistoryFailsTheCheck: a history porcupine cannot decide in
// time is not proven linearizable; it used to pass with a note.
func TestUndecidedHistoryFailsTheCheck(t *testing.T) {
	entries := []Entry{{Input: Input{Kind: KindCredit, Member: "a", Key: "c0", Amount: 1},
		Output: Output{Status: Known, Code: ledger.CodeOK, Seq: 1, TimeMs: 1, HasAccount: true, Posted: 1}, CallNs: 0, ReturnNs: 1}}
	for i := range 40 { // concurrent indeterminate credits of distinct amounts: a huge search
		entries = append(entries, Entry{Input: Input{Kind: KindCredit, Member: "a", Key: fmt.Sprint("k", i), Amount: int64(1) << i},
			Output: indeterminate, CallNs: 10, ReturnNs: ReturnNever})
	}
	// Posted can never be 0 after the acknowledged credit of 1.
	entries = append(entries, Entry{Input: Input{Kind: KindRead, Member: "a"}, Output: read(0, 0, false), CallNs: 20, ReturnNs: 30})
	r, _ := checkLinearizable(entries, []string{"a"}, 200*time.Millisecond, t.TempDir(), nil)
	assert.False(t, r.OK, r.Detail)
	assert.Len(t, r.Unknown, 1)
}
