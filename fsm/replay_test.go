package fsm

import (
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// slowFirstBatch holds up the first batch it is given, so that a snapshot
// requested meanwhile is taken during the replay that follows a restart.
type slowFirstBatch struct {
	*FSM
	once    sync.Once
	started chan struct{}
}

func (s *slowFirstBatch) ApplyBatch(logs []*raft.Log) []interface{} {
	r := s.FSM.ApplyBatch(logs)
	s.once.Do(func() { close(s.started); time.Sleep(200 * time.Millisecond) })
	return r
}

// startRaft runs a one-node hashicorp/raft over fsm that snapshots only
// when asked and hands the FSM one entry at a time.
func startRaft(t *testing.T, fsm raft.BatchingFSM, logs *raft.InmemStore, snaps raft.SnapshotStore, bootstrap bool) *raft.Raft {
	t.Helper()
	c := raft.DefaultConfig()
	c.LocalID = "n1"
	c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotThreshold, c.SnapshotInterval, c.TrailingLogs = 1<<40, time.Hour, 1<<20
	c.MaxAppendEntries = 1
	c.NoSnapshotRestoreOnStart = true // the state DB holds the state (as the node decides when it does)
	c.LogOutput = io.Discard
	_, trans := raft.NewInmemTransport("n1")
	if bootstrap {
		require.NoError(t, raft.BootstrapCluster(c, logs, logs, snaps, trans,
			raft.Configuration{Servers: []raft.Server{{ID: "n1", Address: trans.LocalAddr()}}}))
	}
	r, err := raft.NewRaft(c, fsm, logs, logs, snaps, trans)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return r.State() == raft.Leader }, 5*time.Second, 10*time.Millisecond)
	return r
}

// A node restarts with its state applied to A, past its newest snapshot S,
// and Raft replays S+1.. through the FSM, which skips them. A snapshot
// taken then was labelled with the last entry replayed, below A, but held
// the state at A, and Restore refuses that: no follower could install it
// (found by review: "snapshot at raft index 21 holds state applied to
// 64"). The FSM now refuses to snapshot until the replay reaches A, and the
// snapshot after it restores.
func TestSnapshotWaitsForTheReplay(t *testing.T) {
	dir := t.TempDir()
	snaps, err := raft.NewFileSnapshotStore(t.TempDir(), 2, io.Discard)
	require.NoError(t, err)
	logs := raft.NewInmemStore()

	db, f := openFSM(t, dir, 0)
	r := startRaft(t, f, logs, snaps, true)
	for i, l := range randomLogs(5, 60) {
		require.NoError(t, r.Apply(l.Data, 5*time.Second).Error())
		if i == 10 {
			require.NoError(t, r.Snapshot().Error())
		}
	}
	require.NoError(t, r.Barrier(5*time.Second).Error())
	applied := f.AppliedIndex()
	require.NoError(t, r.Shutdown().Error())
	require.NoError(t, db.Flush()) // the state is durable at applied
	require.NoError(t, db.Close())

	db, f = openFSM(t, dir, 0)
	defer db.Close()
	require.Equal(t, applied, f.AppliedIndex())
	w := &slowFirstBatch{FSM: f, started: make(chan struct{})}
	r = startRaft(t, w, logs, snaps, false)
	<-w.started
	require.ErrorContains(t, r.Snapshot().Error(), "no snapshot while the log replays")
	require.NoError(t, r.Barrier(5*time.Second).Error())
	require.NoError(t, r.Snapshot().Error(), "after the replay")
	require.NoError(t, r.Shutdown().Error())

	metas, err := snaps.List()
	require.NoError(t, err)
	require.GreaterOrEqual(t, metas[0].Index, applied)
	meta, rc, err := snaps.Open(metas[0].ID)
	require.NoError(t, err)
	_, g := openFSM(t, t.TempDir(), 0)
	require.NoError(t, g.Restore(indexedReader{rc, meta.Index}))
	require.Equal(t, applied, g.AppliedIndex())
}
