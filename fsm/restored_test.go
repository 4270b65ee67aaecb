package fsm

import (
	"bytes"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

type indexedReader struct {
	io.ReadCloser
	index uint64
}

func (r indexedReader) SnapshotIndex() uint64 { return r.index }

// wrapped is how hashicorp/raft hands a stream to Restore.
type wrapped struct{ io.ReadCloser }

func (w wrapped) WrappedReadCloser() io.ReadCloser { return w.ReadCloser }

var _ raft.ReadCloserWrapper = wrapped{}

// TestRestoreRecordsSnapshotIndexPastApplied: a snapshot at Raft index S
// whose meta says applied index A < S leaves a state known to be at S,
// across a reopen, until the state moves on; the replicated state (hash,
// applied index) is the snapshot's, unchanged.
func TestRestoreRecordsSnapshotIndexPastApplied(t *testing.T) {
	_, src := openFSM(t, t.TempDir(), 3)
	logs := randomLogs(7, 20)
	src.ApplyBatch(logs)
	a := src.AppliedIndex()
	want, err := src.State()
	require.NoError(t, err)
	data := snapshotBytes(t, src)
	s := a + 3 // the snapshot ended on three non-command entries

	dir := t.TempDir()
	db, dst := openFSM(t, dir, 3)
	require.NoError(t, dst.Restore(wrapped{indexedReader{io.NopCloser(bytes.NewReader(data)), s}}))
	require.Equal(t, a, dst.AppliedIndex())
	require.Equal(t, s, dst.StateIndex())
	require.False(t, dst.NeedsRestore(s))
	require.True(t, dst.NeedsRestore(s+1))
	got, err := dst.State()
	require.NoError(t, err)
	require.Equal(t, want.Hash, got.Hash, "the record is not part of the shard's state")

	require.NoError(t, db.Close())
	db, dst = openFSM(t, dir, 3)
	require.Equal(t, s, dst.StateIndex(), "the record is durable")

	// A command after S moves the state past the record.
	dst.ApplyBatch([]*raft.Log{logOf(s+1, cmd(1<<40, define("late", "LTE", 0)))})
	require.Equal(t, s+1, dst.StateIndex())

	// A stream that does not say its index, or a snapshot at its applied
	// index, clears the record.
	require.NoError(t, dst.Restore(wrapped{indexedReader{io.NopCloser(bytes.NewReader(data)), s}}))
	require.Equal(t, s, dst.StateIndex())
	require.NoError(t, dst.Restore(io.NopCloser(bytes.NewReader(data))))
	require.Equal(t, a, dst.StateIndex())
	require.NoError(t, dst.Restore(wrapped{indexedReader{io.NopCloser(bytes.NewReader(data)), s}}))
	require.NoError(t, dst.Restore(indexedReader{io.NopCloser(bytes.NewReader(data)), a}))
	require.Equal(t, a, dst.StateIndex())
	require.NoError(t, db.Close())
	db, dst = openFSM(t, dir, 3)
	defer db.Close()
	require.Equal(t, a, dst.StateIndex())
}
