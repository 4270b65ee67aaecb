package node

import (
	"context"
	"time"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// versionCheckInterval is how often the leader of a shard below the newest
// rules version asks the other nodes whether they may apply it.
const versionCheckInterval = 2 * time.Second

// maxVersion is the newest rules version this node lets its shards be raised
// to: its binary's newest, or less if Config.MaxVersion holds it back.
func (n *Node) maxVersion() uint32 {
	if n.cfg.MaxVersion != 0 {
		return min(n.cfg.MaxVersion, ledger.MaxVersion)
	}
	return ledger.MaxVersion
}

// versionLoop raises the shard's rules version (ledger.Version1) to the
// newest one every node may apply. Only the leader proposes, and the raise is
// an entry of the log like any other, so every replica switches rules at the
// same index; until every node reports a binary that applies the new rules,
// the shard keeps the old ones, so a rolling upgrade never has replicas
// disagree about an entry. A node that does not answer counts as one that
// cannot, since it may run an old binary. Once the shard is at this node's
// newest version the loop has nothing left to do and ends.
func (s *shard) versionLoop() {
	defer s.wg.Done()
	label := shardLabel(s.id)
	t := time.NewTicker(versionCheckInterval)
	defer t.Stop()
	for {
		v := s.fsm.Version()
		s.n.metrics.version.WithLabelValues(label).Set(float64(v))
		if v >= s.n.maxVersion() {
			return
		}
		running, leads := s.leaderTick(t)
		if !running {
			return
		}
		if !leads {
			continue
		}
		target := s.n.clusterMaxVersion(s.id)
		if target <= s.fsm.Version() {
			continue
		}
		c := ledger.AppendCommand(nil, ledger.Command{TimeMs: time.Now().UnixMilli(), SetVersion: target})
		if err := s.await(s.raft.Apply(c, applyTimeout)); err != nil {
			s.n.logger.Warn("raising the shard's version failed; will retry", "shard", s.id, "version", target, "error", err)
			continue
		}
		s.n.logger.Info("raised the shard's rules version", "shard", s.id, "from", v, "to", target)
	}
}

// clusterMaxVersion is the newest rules version every node may apply to the
// shard: the least of the nodes' maxVersion, and version 1 if any node does
// not answer or predates versions (it reports 0).
func (n *Node) clusterMaxVersion(shard uint32) uint32 {
	v := n.maxVersion()
	for _, p := range n.cfg.Peers {
		if p.ID == n.cfg.ID {
			continue
		}
		c, err := n.peers.get(p.GRPCAddr)
		if err != nil {
			return ledger.Version1
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := c.ShardState(ctx, &tallypb.ShardStateRequest{Shard: shard})
		cancel()
		if err != nil {
			return ledger.Version1
		}
		v = min(v, max(st.GetMaxVersion(), ledger.Version1))
	}
	return v
}
