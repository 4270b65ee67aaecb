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
	require.Less(t, falsePos, 100, "false positives out of 10000 at %d keys", f.count())
	require.Equal(t, 50000, f.count())
}

// Growing adds layers, each twice the last, and keeps every key.
func TestRecordFilterGrowsByLayers(t *testing.T) {
	f := newRecordFilter(0)
	n := 2*minFilterKeys + 17
	for i := 0; i < n; i++ {
		f.add([]byte(fmt.Sprintf("key-%d", i)))
	}
	require.Equal(t, 2, len(f.layers)) // 64k + 128k
	require.Equal(t, n, f.count())
	for i := 0; i < n; i += 7 {
		require.True(t, f.mayContain([]byte(fmt.Sprintf("key-%d", i))), "key-%d", i)
	}
	falsePos := 0
	for i := 0; i < 20000; i++ {
		if f.mayContain([]byte(fmt.Sprintf("other-%d", i))) {
			falsePos++
		}
	}
	require.Less(t, falsePos, 200, "false positives out of 20000")
}

// Dedup must survive a reopen (filter rebuilt from the DB) and a filter that
// fills up (grown by a layer mid-run).
func TestDedupAcrossFilterRebuilds(t *testing.T) {
	dir := t.TempDir()
	db, f := openFSM(t, dir, 0)
	logs := randomLogs(7, 200)
	f.ApplyBatch(logs[:100])
	last := &f.store.records.layers[len(f.store.records.layers)-1]
	last.capacity = last.count + 1 // force a new layer on the next batch
	f.ApplyBatch(logs[100:150])
	require.Greater(t, len(f.store.records.layers), 1)
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
