package fsm

import (
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// The filter must never miss an added key, and should rarely claim others.
func TestRecordFilterHasNoFalseNegatives(t *testing.T) {
	f := newRecordFilter(1000)
	for i := 0; i < 50000; i++ {
		f.add([]byte(fmt.Sprintf("key-%d", i)))
	}
	for i := 0; i < 50000; i++ {
		require.True(t, f.mayContain([]byte(fmt.Sprintf("key-%d", i))), "key-%d", i)
	}
	falsePos := 0
	for i := 0; i < 10000; i++ {
		if f.mayContain([]byte(fmt.Sprintf("other-%d", i))) {
			falsePos++
		}
	}
	require.Less(t, falsePos, 500, "false positives out of 10000 at %d keys", f.count)
	require.False(t, f.full())
}

// Dedup must survive a reopen (filter rebuilt from the DB) and a filter that
// fills up (rebuilt bigger mid-run).
func TestDedupAcrossFilterRebuilds(t *testing.T) {
	dir := t.TempDir()
	db, f := openFSM(t, dir, 0)
	logs := randomLogs(7, 200)
	f.ApplyBatch(logs[:100])
	f.store.records.capacity = f.store.records.count + 1 // force a rebuild on the next batch
	f.ApplyBatch(logs[100:150])
	require.Greater(t, f.store.records.capacity, f.store.records.count)
	before, err := f.State()
	require.NoError(t, err)
	require.NoError(t, db.Flush())
	require.NoError(t, db.Close())

	db, f = openFSM(t, dir, 0)
	defer db.Close()
	// Re-proposing every earlier command under new log indexes: all replays.
	next := f.AppliedIndex() + 1
	for _, l := range logs[2:150] {
		c := *l
		c.Index = next
		next++
		resp := f.ApplyBatch([]*raft.Log{&c})[0]
		for _, rs := range results(t, resp) {
			for _, r := range rs {
				require.True(t, r.Replayed, "entry %d: an op applied again (%s)", l.Index, r.Code)
			}
		}
	}
	after, err := f.State()
	require.NoError(t, err)
	require.NoError(t, after.Conservation)
	require.Equal(t, before.LastTimeMs, after.LastTimeMs)
}
