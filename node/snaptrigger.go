package node

import (
	"errors"
	"time"

	"github.com/hashicorp/raft"
)

// snapshotCheckTick is how often a shard compares its log with its last
// snapshot. The check reads one counter.
const snapshotCheckTick = time.Second

// snapshotRetryMax bounds the wait between attempts after failed
// snapshots. Each attempt streams the whole shard to disk: retried every
// tick, a full disk would have every shard stream a snapshot into ENOSPC
// every second, taking I/O from the Raft log and flooding the node's log
// with warnings. Doubling from one tick reaches the bound at the 9th
// failure in a row; a few minutes is short next to how long the log takes
// to outgrow a snapshot, so a fixed disk is soon used again.
const snapshotRetryMax = 4 * time.Minute

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
//
// firstExtra is added to the threshold of the shard's first snapshot only
// (snapshotStagger): it sets this replica's phase.
func (s *shard) snapshotLoop(minBytes, firstExtra uint64) {
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
	var retry snapshotRetry
	for {
		select {
		case <-t.C:
		case <-s.stop:
			return
		}
		retry.elapse(snapshotCheckTick)
		applied := s.fsm.LogBytes()
		need := applied - base
		if lastIndex == 0 {
			need = max(need, firstExtra) - firstExtra
		}
		if !snapshotDue(need, minBytes, lastSize) {
			continue
		}
		// Raft may have snapshotted on its own (the entry-count backstop):
		// then the log is measured from now, and any backoff ends, since
		// whatever made ours fail has passed.
		if index, size := newest(); index != lastIndex {
			lastIndex, lastSize, base = index, size, applied
			retry.succeeded()
			continue
		}
		if !retry.ready() {
			continue
		}
		err := s.raft.Snapshot().Error()
		switch {
		case err == nil, errors.Is(err, raft.ErrNothingNewToSnapshot):
			base = applied
			lastIndex, lastSize = newest()
			retry.succeeded()
		case errors.Is(err, raft.ErrRaftShutdown):
			return
		default:
			// Retried after a backoff; the log keeps growing meanwhile.
			wait := retry.failed()
			s.n.logger.Warn("snapshot failed", "shard", s.id, "error", err, "retry_in", wait)
		}
	}
}

// snapshotRetry spaces out snapshot attempts after failures: the wait
// starts at one check tick and doubles with each failure in a row, up to
// snapshotRetryMax; a success starts over.
type snapshotRetry struct {
	backoff time.Duration // the wait after the last failure; 0 after a success
	wait    time.Duration // left of it before the next attempt
}

// elapse counts time passing (a check tick).
func (r *snapshotRetry) elapse(d time.Duration) { r.wait = max(r.wait-d, 0) }

// ready reports whether an attempt may be made now.
func (r *snapshotRetry) ready() bool { return r.wait == 0 }

// failed records a failed attempt and returns the wait before the next.
func (r *snapshotRetry) failed() time.Duration {
	r.backoff = nextSnapshotRetry(r.backoff)
	r.wait = r.backoff
	return r.backoff
}

// succeeded ends the backoff.
func (r *snapshotRetry) succeeded() { *r = snapshotRetry{} }

// nextSnapshotRetry returns the wait after a failure that follows a wait of
// prev (0: the first failure).
func nextSnapshotRetry(prev time.Duration) time.Duration {
	if prev <= 0 {
		return snapshotCheckTick
	}
	return min(2*prev, snapshotRetryMax)
}

// snapshotDue reports whether logBytes of log since the last snapshot (of
// lastSize bytes; 0 if none) call for the next one.
func snapshotDue(logBytes, minBytes, lastSize uint64) bool {
	return logBytes >= max(minBytes, lastSize)
}

// snapshotStagger returns the log bytes a replica adds before its shard's
// first snapshot: slot/slots of minBytes. The caller numbers every (node,
// shard) pair, node by node in Peers order (the same on every node), so the
// replicas of a shard are 1/N of the minimum apart and the shards of one
// node 1/(N*shards).
//
// Every replica applies the same log, so a trigger on log bytes alone fires
// on all of them at the same entry: run 28 (docs/BENCHMARKS.md) saw all three
// nodes copy the same shard at once, 4-6 s each, and the open loop's p99
// went from 15-30 ms to 50-134 ms for those seconds. Staggered, one replica
// copies at a time: on separate machines the other two, a quorum, commit at
// full speed meanwhile; three nodes on one small box still share its CPUs,
// so there the burst is a third as big but comes three times. A shard's
// replicas do not overlap as long as its log takes longer to grow by
// minBytes/N than a snapshot takes (at the defaults, under ~4 MiB/s of log
// per shard; run 29's batched case, 41,133 ops/s at ~85 bytes each
// (ledger's TestEntryBytesPerOp) over 3 shards, wrote ~1.1 MiB/s per shard). Only the first
// threshold moves: each later one is measured from the replica's own last
// snapshot, so the phases hold (while the minimum sets the period, the
// replicas stay minBytes/N apart; once snapshot sizes set it, the period
// grows with the state and the replicas keep the ratio of their log
// positions), except on a replica that installed a leader's snapshot, which
// counts from that one.
func snapshotStagger(minBytes uint64, slot, slots int) uint64 {
	if slots <= 1 {
		return 0
	}
	return minBytes / uint64(slots) * uint64(slot%slots)
}
