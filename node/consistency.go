package node

import (
	"bytes"
	"context"
	"encoding/hex"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/fsm"
)

// Replica consistency. Every replica hashes its state at the same log
// indexes (fsm/check.go, Config.CheckEvery); the shard's leader asks the
// other replicas for their hash at its own newest check's index and
// compares. A replica whose hash differs holds other balances than the
// leader for the same log: the leader logs it as an error and counts it
// (tally_replica_checks_total{result="mismatch"}, and
// tally_replicas_diverged, which stays up until a later check matches or
// the node stops leading the shard), and ShardState reports it. Nothing
// is repaired automatically: which side is wrong takes a third replica's
// hash or an operator (README, "Replica consistency checks"): a diverged
// replica is rebuilt from the others by wiping its data, or the shard
// restored from a backup.

// consistencyInterval is how often a shard's leader looks for a newer
// check of its own to compare, and asks replicas that had not finished
// theirs.
const consistencyInterval = 5 * time.Second

// replicaChecks is a leader's record of its comparisons.
type replicaChecks struct {
	mu sync.Mutex
	// byNode is each other replica's newest comparison.
	byNode map[string]*tallypb.ReplicaCheck
}

// record keeps a comparison and reports how many replicas' newest one did
// not match (a different hash, or a walk that failed).
func (rc *replicaChecks) record(c *tallypb.ReplicaCheck) (diverged int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.byNode == nil {
		rc.byNode = map[string]*tallypb.ReplicaCheck{}
	}
	rc.byNode[c.NodeId] = c
	for _, r := range rc.byNode {
		if !r.Match {
			diverged++
		}
	}
	return diverged
}

// reset forgets every comparison and reports whether there were any.
func (rc *replicaChecks) reset() bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	had := len(rc.byNode) > 0
	rc.byNode = nil
	return had
}

// compared returns the index each replica was last compared at.
func (rc *replicaChecks) compared(node string) uint64 {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if r, ok := rc.byNode[node]; ok {
		return r.Index
	}
	return 0
}

// list returns the comparisons, by node ID.
func (rc *replicaChecks) list() []*tallypb.ReplicaCheck {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := make([]*tallypb.ReplicaCheck, 0, len(rc.byNode))
	for _, r := range rc.byNode {
		out = append(out, &tallypb.ReplicaCheck{NodeId: r.NodeId, Index: r.Index, Match: r.Match, Error: r.Error})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NodeId < out[j].NodeId })
	return out
}

// observeCheck counts one of this replica's consistency checks, and logs
// one that failed.
func (n *Node) observeCheck(shard uint32, c fsm.Check) {
	result := "ok"
	switch {
	case c.Err != nil:
		result = "error"
		n.logger.Warn("consistency check failed", "shard", shard, "index", c.Index, "error", c.Err)
	case c.Conservation != nil:
		result = "conservation"
		n.logger.Error("consistency check: the shard's state breaks conservation", "shard", shard, "index", c.Index,
			"error", c.Conservation)
	default:
		n.metrics.checkTime.Observe(c.Took.Seconds())
	}
	n.metrics.checks.WithLabelValues(shardLabel(shard), result).Inc()
}

// consistencyLoop compares, while this node leads the shard, its newest
// consistency check with each other replica's at the same index.
func (s *shard) consistencyLoop() {
	defer s.wg.Done()
	ctx, cancel := untilClosed(s.stop)
	defer cancel()
	t := time.NewTicker(s.n.cfg.consistencyInterval())
	defer t.Stop()
	for {
		running, leads := s.leaderTick(t)
		if !running {
			return
		}
		if !leads {
			// The next leader compares afresh; this node's gauge must
			// not hold a verdict nobody updates any more.
			if s.checks.reset() {
				s.n.metrics.replicasDiverged.WithLabelValues(shardLabel(s.id)).Set(0)
			}
			continue
		}
		own, ok := s.fsm.LastCheck()
		if !ok || own.Err != nil || own.Hash == nil {
			continue
		}
		s.compareReplicas(ctx, own)
	}
}

// compareReplicas compares own, the leader's newest check, with every
// other member of the shard not yet compared at its index. A member with
// no result there (it lags behind, or skipped that index while walking
// the one before) is compared at its own newest instead, if the leader
// keeps that one.
func (s *shard) compareReplicas(ctx context.Context, own fsm.Check) {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	grpcAddr := make(map[raft.ServerID]string, len(s.n.cfg.Peers))
	for _, p := range s.n.cfg.Peers {
		grpcAddr[raft.ServerID(p.ID)] = p.GRPCAddr
	}
	for _, srv := range f.Configuration().Servers {
		id := string(srv.ID)
		if id == s.n.cfg.ID || s.checks.compared(id) >= own.Index {
			continue
		}
		addr, ok := grpcAddr[srv.ID]
		if !ok {
			continue
		}
		c, err := s.n.peers.get(addr)
		if err != nil {
			continue
		}
		// ask returns the member's check at index (nil: its newest); nil
		// when it does not answer, or answers as another node.
		ask := func(index *uint64) *tallypb.ShardStateResponse {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			st, err := c.ShardState(rctx, &tallypb.ShardStateRequest{Shard: s.id, CheckIndex: index})
			if err != nil || st.GetNodeId() != id {
				return nil // down, an older binary, or another node at its address
			}
			return st
		}
		index := own.Index
		mine, st := own, ask(&index)
		if st == nil {
			continue
		}
		if st.GetCheckIndex() != own.Index {
			if st = ask(nil); st == nil || st.GetCheckIndex() <= s.checks.compared(id) {
				continue // asked again next tick
			}
			if mine, ok = s.fsm.CheckAt(st.GetCheckIndex()); !ok || mine.Hash == nil {
				continue
			}
		}
		s.compareReplica(id, mine, st)
	}
}

// compareReplica records and reports how replica id's answer st compares
// with the leader's check mine, at the same index.
func (s *shard) compareReplica(id string, mine fsm.Check, st *tallypb.ShardStateResponse) {
	label := shardLabel(s.id)
	r := &tallypb.ReplicaCheck{NodeId: id, Index: mine.Index}
	switch {
	case len(st.GetCheckHash()) == 0:
		// Its walk failed (reading its DB): no state to compare, and a
		// replica that cannot read its state is not a healthy one.
		r.Error = st.GetCheckError()
		if r.Error == "" {
			r.Error = "no hash"
		}
	default:
		r.Match = bytes.Equal(st.GetCheckHash(), mine.Hash)
	}
	diverged := s.checks.record(r)
	s.n.metrics.replicasDiverged.WithLabelValues(label).Set(float64(diverged))
	switch {
	case r.Error != "":
		s.n.metrics.replicaChecks.WithLabelValues(label, "error").Inc()
		s.n.logger.Warn("a replica's consistency check failed", "shard", s.id, "replica", id,
			"index", mine.Index, "error", r.Error)
	case r.Match:
		s.n.metrics.replicaChecks.WithLabelValues(label, "match").Inc()
		s.n.logger.Info("replica state matches", "shard", s.id, "replica", id, "index", mine.Index)
	default:
		s.n.metrics.replicaChecks.WithLabelValues(label, "mismatch").Inc()
		s.n.logger.Error(divergedMessage, "shard", s.id, "replica", id, "index", mine.Index,
			"leader_hash", hex.EncodeToString(mine.Hash), "replica_hash", hex.EncodeToString(st.GetCheckHash()),
			"replica_error", st.GetCheckError())
	}
}

// divergedMessage starts the error a leader logs for a replica whose state
// differs from its own; the chaos harness looks for its first words in
// node logs (linearizability/check.go, checkFailureMarkers), as it does
// for observeCheck's and compareReplica's warnings.
const divergedMessage = "REPLICA STATE DIFFERS: a replica's state hash differs from the leader's after the same log entries; " +
	"compare a third replica's, then rebuild the wrong one (README, \"Replica consistency checks\")"
