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
// the node stops leading the shard), and ShardState reports it. Nothing is repaired automatically: which side is
// wrong takes a third replica's hash or an operator (README, "Replica
// consistency checks"): a diverged replica is rebuilt from the others by
// wiping its data, or the shard restored from a backup.

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

// record keeps a comparison and reports how many replicas differ now.
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
		out = append(out, &tallypb.ReplicaCheck{NodeId: r.NodeId, Index: r.Index, Match: r.Match})
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

// compareReplicas asks every other member of the shard that was not yet
// compared at own.Index for its check there.
func (s *shard) compareReplicas(ctx context.Context, own fsm.Check) {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	grpcAddr := make(map[raft.ServerID]string, len(s.n.cfg.Peers))
	for _, p := range s.n.cfg.Peers {
		grpcAddr[raft.ServerID(p.ID)] = p.GRPCAddr
	}
	label := shardLabel(s.id)
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
		index := own.Index
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := c.ShardState(rctx, &tallypb.ShardStateRequest{Shard: s.id, CheckIndex: &index})
		cancel()
		if err != nil || st.GetNodeId() != id || st.GetCheckIndex() != own.Index {
			// Down, an older binary, another node at its address, or
			// its walk not done (or skipped): asked again next tick
			// while this is the leader's newest check.
			continue
		}
		if st.GetCheckError() != "" && len(st.GetCheckHash()) == 0 {
			s.n.logger.Warn("a replica's consistency check failed", "shard", s.id, "replica", id,
				"index", own.Index, "error", st.GetCheckError())
			s.n.metrics.replicaChecks.WithLabelValues(label, "error").Inc()
			continue
		}
		match := bytes.Equal(st.GetCheckHash(), own.Hash)
		diverged := s.checks.record(&tallypb.ReplicaCheck{NodeId: id, Index: own.Index, Match: match})
		s.n.metrics.replicasDiverged.WithLabelValues(label).Set(float64(diverged))
		if match {
			s.n.metrics.replicaChecks.WithLabelValues(label, "match").Inc()
			s.n.logger.Info("replica state matches", "shard", s.id, "replica", id, "index", own.Index)
			continue
		}
		s.n.metrics.replicaChecks.WithLabelValues(label, "mismatch").Inc()
		s.n.logger.Error("REPLICA STATE DIFFERS: a replica's state hash differs from the leader's after the same log entries; "+
			"compare a third replica's, then rebuild the wrong one (README, \"Replica consistency checks\")",
			"shard", s.id, "replica", id, "index", own.Index,
			"leader_hash", hex.EncodeToString(own.Hash), "replica_hash", hex.EncodeToString(st.GetCheckHash()),
			"replica_error", st.GetCheckError())
	}
}
