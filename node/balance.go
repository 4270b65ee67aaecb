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
	// balanceBackoffRounds is how many balancing rounds a shard waits after
	// a transfer before this node tries another (30 s at the default 2 s
	// interval); the wait doubles with each transfer until the preferred
	// node is seen leading, up to balanceBackoffMaxRounds (10 min).
	balanceBackoffRounds    = 15
	balanceBackoffMaxRounds = 300
)

// balanceLoop spreads leadership evenly: shard i prefers Peers[i mod N]. A
// node leading a shard whose preferred node is up and caught up hands the
// shard over, one shard per round so writes barely notice.
func (n *Node) balanceLoop() {
	defer n.balancing.Done()
	t := time.NewTicker(n.cfg.BalanceInterval)
	defer t.Stop()
	retryAt := make([]time.Time, len(n.shards))
	backoff := make([]time.Duration, len(n.shards))
	minBackoff := balanceBackoffRounds * n.cfg.BalanceInterval
	maxBackoff := balanceBackoffMaxRounds * n.cfg.BalanceInterval
	stopping := func() bool {
		select {
		case <-n.stop:
			return true
		default:
			return false
		}
	}
	for {
		select {
		case <-t.C:
		case <-n.stop:
			return
		}
		for i, s := range n.shards {
			pref := n.cfg.Peers[i%len(n.cfg.Peers)]
			if _, id := s.raft.LeaderWithID(); string(id) == pref.ID {
				// A transfer worked, or was not needed: the doubling starts
				// over. The wait already set stays, so a preferred node that
				// wins but cannot hold the shard (a lease lapsing on a busy
				// box) gets it back at most once per wait, not every round.
				backoff[i] = 0
			}
			if s.raft.State() != raft.Leader || time.Now().Before(retryAt[i]) {
				continue
			}
			// stopping is asked again after caughtUp, which may wait 300 ms.
			if pref.ID == n.cfg.ID || stopping() || !n.caughtUp(pref, s) || stopping() {
				continue
			}
			// A nil answer only means this node stepped down, not that
			// pref leads: hashicorp/raft returns nil once the target's
			// higher term arrives, even if the target then loses its
			// election (a node that can receive but not send, say). So
			// every transfer backs off, failed or not, and keeps doubling
			// until pref is seen leading; otherwise a shard whose preferred
			// node cannot win would go leaderless every round.
			if err := s.raft.LeadershipTransferToServer(raft.ServerID(pref.ID), raft.ServerAddress(pref.RaftAddr)).Error(); err != nil {
				n.logger.Debug("leadership transfer failed", "shard", i, "to", pref.ID, "error", err)
			}
			backoff[i] = min(max(2*backoff[i], minBackoff), maxBackoff)
			retryAt[i] = time.Now().Add(backoff[i])
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
	// A replica under its vote guard cannot win an election: a transfer
	// to it costs the shard an election and wins nothing (found by review).
	return !st.GetVoteGuarded() && st.GetAppliedIndex()+balanceCatchUpEntries >= s.fsm.AppliedIndex()
}
