package node

import (
	"bytes"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

func TestSyncingSnapshotsSyncWhileWriting(t *testing.T) {
	dir := t.TempDir()
	inner, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, nil)
	require.NoError(t, err)
	store := newSyncingSnapshots(inner, dir)
	store.bytesPerSync = 64 << 10

	sink, err := store.Create(raft.SnapshotVersionMax, 42, 3, raft.Configuration{}, 1, nil)
	require.NoError(t, err)
	data := bytes.Repeat([]byte("0123456789abcdef"), 20<<10) // 320 KiB
	for off := 0; off < len(data); off += 10 << 10 {
		_, err := sink.Write(data[off : off+10<<10])
		require.NoError(t, err)
	}
	ss := sink.(*syncingSink)
	require.False(t, ss.off, "the state file was found at %s", ss.path)
	require.Equal(t, 4, ss.syncs, "one sync per 64 KiB written (320 KiB, the last 64 left to Close)")
	require.NoError(t, sink.Close())

	metas, err := store.List()
	require.NoError(t, err)
	require.Len(t, metas, 1)
	require.Equal(t, uint64(42), metas[0].Index)
	_, rc, err := store.Open(metas[0].ID)
	require.NoError(t, err)
	got, err := io.ReadAll(rc)
	require.NoError(t, err)
	require.NoError(t, rc.Close())
	require.Equal(t, data, got, "the snapshot reads back whole")
}

func TestSyncingSnapshotsCancelLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	inner, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, nil)
	require.NoError(t, err)
	store := newSyncingSnapshots(inner, dir)
	store.bytesPerSync = 1
	sink, err := store.Create(raft.SnapshotVersionMax, 7, 1, raft.Configuration{}, 1, nil)
	require.NoError(t, err)
	_, err = sink.Write([]byte("partial"))
	require.NoError(t, err)
	require.NoError(t, sink.Cancel())
	metas, err := store.List()
	require.NoError(t, err)
	require.Empty(t, metas)
}

// TestSnapshotSinksBoundReads: the shard's incoming reads are bounded while
// any sink is open (a follower reads an installing snapshot's stream only
// between Create and Close or Cancel) and released on every path out,
// including a Create that fails.
func TestSnapshotSinksBoundReads(t *testing.T) {
	dir := t.TempDir()
	inner, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, nil)
	require.NoError(t, err)
	store := newSyncingSnapshots(inner, dir)
	holders := 0
	store.boundReads = func() func() {
		holders++
		done := false
		return func() {
			if !done {
				done = true
				holders--
			}
		}
	}
	a, err := store.Create(raft.SnapshotVersionMax, 7, 1, raft.Configuration{}, 1, nil)
	require.NoError(t, err)
	b, err := store.Create(raft.SnapshotVersionMax, 8, 1, raft.Configuration{}, 1, nil)
	require.NoError(t, err)
	require.Equal(t, 2, holders)
	require.NoError(t, a.Close())
	require.Equal(t, 1, holders)
	require.NoError(t, b.Cancel())
	require.Equal(t, 0, holders)
	_, err = store.Create(raft.SnapshotVersionMax+1, 9, 1, raft.Configuration{}, 1, nil)
	require.Error(t, err)
	require.Equal(t, 0, holders, "a failed Create keeps no bound")
}
