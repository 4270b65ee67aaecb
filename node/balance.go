package node

import (
	"context"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tally-ledger/tally/api/tallypb"
)

const (
	// balanceCatchUpEntries is how far behind a preferred node may be and
	// still receive leadership; a transfer to a lagging node stalls writes.
	balanceCatchUpEntries = 1000
	// balanceBackoff is how long a shard waits after a failed transfer.
	balanceBackoff = 30 * time.Second
)

// balanceLoop spreads leadership evenly: shard i prefers Peers[i mod N]. A
// node leading a shard whose preferred node is up and caught up hands the
// shard over, one shard per round so writes barely notice.
func (n *Node) balanceLoop() {
	defer n.balancing.Done()
	t := time.NewTicker(n.cfg.BalanceInterval)
	defer t.Stop()
	retryAt := make([]time.Time, len(n.shards))
	for {
		select {
		case <-t.C:
		case <-n.stop:
			return
		}
		for i, s := range n.shards {
			if s.raft.State() != raft.Leader || time.Now().Before(retryAt[i]) {
				continue
			}
			pref := n.cfg.Peers[i%len(n.cfg.Peers)]
			if pref.ID == n.cfg.ID || !n.caughtUp(pref, s) {
				continue
			}
			if err := s.raft.LeadershipTransferToServer(raft.ServerID(pref.ID), raft.ServerAddress(pref.RaftAddr)).Error(); err != nil {
				n.logger.Debug("leadership transfer failed", "shard", i, "to", pref.ID, "error", err)
				retryAt[i] = time.Now().Add(balanceBackoff)
			}
			break
		}
	}
}

func (n *Node) caughtUp(p Peer, s *shard) bool {
	c, err := n.peers.get(p.GRPCAddr)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	st, err := c.ShardState(ctx, &tallypb.ShardStateRequest{Shard: s.id})
	if err != nil {
		return false
	}
	return st.GetAppliedIndex()+balanceCatchUpEntries >= s.fsm.AppliedIndex()
}
