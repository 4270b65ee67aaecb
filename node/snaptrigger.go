package node

import (
	"errors"
	"time"

	"github.com/hashicorp/raft"
)

// snapshotCheckTick is how often a shard compares its log with its last
// snapshot. The check reads one counter.
const snapshotCheckTick = time.Second

// snapshotLoop snapshots the shard when the log it has applied since its last
// snapshot is at least as big as that snapshot, and at least minBytes.
//
// A snapshot copies the whole shard, and the shard only grows (records are
// kept as long as the journal), so a schedule by entry count or by time makes
// snapshot work grow with the state: at a few million operations, one
// 200-300 MB snapshot per shard every 30-60 s wrote several times more bytes
// than the log itself (docs/BENCHMARKS.md). Tying it to log bytes bounds the
// bytes snapshots write to about the bytes the log writes, whatever the size
// of the state; the price is a log of up to max(minBytes, snapshot size) per
// shard between snapshots, plus TrailingLogs. hashicorp/raft's own
// entry-count trigger stays as a backstop (RaftTuning.SnapshotThreshold).
func (s *shard) snapshotLoop(minBytes uint64) {
	defer s.wg.Done()
	t := time.NewTicker(snapshotCheckTick)
	defer t.Stop()
	newest := func() (index, size uint64) {
		metas, err := s.snaps.List()
		if err != nil || len(metas) == 0 {
			return 0, 0
		}
		return metas[0].Index, uint64(metas[0].Size)
	}
	// After a restart the log since the newest snapshot is replayed through
	// the FSM, so counting from zero counts it.
	var base uint64
	lastIndex, lastSize := newest()
	for {
		select {
		case <-t.C:
		case <-s.stop:
			return
		}
		applied := s.fsm.LogBytes()
		if !snapshotDue(applied-base, minBytes, lastSize) {
			continue
		}
		// Raft may have snapshotted on its own (the entry-count backstop):
		// then the log is measured from now.
		if index, size := newest(); index != lastIndex {
			lastIndex, lastSize, base = index, size, applied
			continue
		}
		err := s.raft.Snapshot().Error()
		switch {
		case err == nil, errors.Is(err, raft.ErrNothingNewToSnapshot):
			base = applied
			lastIndex, lastSize = newest()
		case errors.Is(err, raft.ErrRaftShutdown):
			return
		default:
			// Retried on a later tick; the log keeps growing meanwhile.
			s.n.logger.Warn("snapshot failed", "shard", s.id, "error", err)
		}
	}
}

// snapshotDue reports whether logBytes of log since the last snapshot (of
// lastSize bytes; 0 if none) call for the next one.
func snapshotDue(logBytes, minBytes, lastSize uint64) bool {
	return logBytes >= max(minBytes, lastSize)
}
