package node

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/api/tallypb"
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

// TestRemoveCrashedSinks: the directory of a sink a crash left open is
// removed; finished snapshots, and anything that is not a sink's directory,
// are left alone.
func TestRemoveCrashedSinks(t *testing.T) {
	for _, tc := range []struct {
		name          string
		crashed, done int
		noStore       bool
	}{
		{"no store yet", 0, 0, true},
		{"nothing to remove", 0, 2, false},
		{"one crashed sink", 1, 0, false},
		{"crashed sinks beside finished snapshots", 2, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var want []string
			if !tc.noStore {
				inner, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, nil)
				require.NoError(t, err)
				store := newSyncingSnapshots(inner, dir)
				for i := 0; i < tc.done; i++ {
					sink, err := store.Create(raft.SnapshotVersionMax, uint64(10+i), 1, raft.Configuration{}, 1, nil)
					require.NoError(t, err)
					_, err = sink.Write([]byte("done"))
					require.NoError(t, err)
					require.NoError(t, sink.Close())
				}
				for i := 0; i < tc.crashed; i++ {
					// "Crash": written to, never closed or cancelled.
					sink, err := store.Create(raft.SnapshotVersionMax, uint64(20+i), 1, raft.Configuration{}, 1, nil)
					require.NoError(t, err)
					_, err = sink.Write(bytes.Repeat([]byte{7}, 64<<10))
					require.NoError(t, err)
					path := filepath.Join(dir, "snapshots", sink.ID()+".tmp")
					require.DirExists(t, path, "the store's layout changed")
					want = append(want, path)
				}
				// A file named like a sink is not one.
				require.NoError(t, os.WriteFile(filepath.Join(dir, "snapshots", "note.tmp"), nil, 0o644))
			}
			removed, err := removeCrashedSinks(dir)
			require.NoError(t, err)
			require.ElementsMatch(t, want, removed)
			for _, path := range want {
				require.NoDirExists(t, path)
			}
			if tc.noStore {
				return
			}
			require.FileExists(t, filepath.Join(dir, "snapshots", "note.tmp"))
			inner, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, nil)
			require.NoError(t, err)
			metas, err := inner.List()
			require.NoError(t, err)
			require.Len(t, metas, tc.done, "finished snapshots are kept")
		})
	}
}

// TestRestartRemovesCrashedSnapshotSink: a node killed while a shard's
// snapshot was written (or a leader's received) left the sink's directory;
// the restart removes it, and the shard serves.
func TestRestartRemovesCrashedSnapshotSink(t *testing.T) {
	c := newTestCluster(t, 1, 1, func(cfg *Config) { cfg.BalanceInterval = -1 })
	c.defineAsset("shop", "POINTS", 0)
	c.stop(0)
	snapDir := filepath.Join(c.cfgs[0].DataDir, "snapshots", "shard-000")
	inner, err := raft.NewFileSnapshotStoreWithLogger(snapDir, 2, nil)
	require.NoError(t, err)
	sink, err := inner.Create(raft.SnapshotVersionMax, 5, 1, raft.Configuration{}, 1, nil)
	require.NoError(t, err)
	_, err = sink.Write(bytes.Repeat([]byte{1}, 1<<20))
	require.NoError(t, err)
	planted := filepath.Join(snapDir, "snapshots", sink.ID()+".tmp")
	require.DirExists(t, planted)

	c.start(0)
	require.NoDirExists(t, planted, "the crashed sink's directory is left after the restart")
	c.waitLeaders()
	c.mustSubmit(op(tallypb.OpKind_OPEN_ACCOUNT, "o", "ann", "POINTS", ""))
}
