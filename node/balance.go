package node

import (
	"context"
	"slices"
	"strings"
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

// balanceLoop spreads leadership evenly: shard i prefers the (i mod N)th
// peer in ID order (peersByID). A node leading a shard whose preferred node
// is up and caught up hands the shard over, one shard per round so writes
// barely notice. A node that refuses requests (misconfigured) hands every
// shard it leads to a peer that serves, the preferred one first: a shard
// it kept would refuse every request though the others could serve it.
func (n *Node) balanceLoop() {
	defer n.balancing.Done()
	t := time.NewTicker(n.cfg.BalanceInterval)
	defer t.Stop()
	order := peersByID(n.cfg.Peers)
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
		refusing := n.refusal() != nil
		for i, s := range n.shards {
			pref := order[i%len(order)]
			if _, id := s.raft.LeaderWithID(); string(id) == pref.ID {
				// A transfer worked, or was not needed: the doubling starts
				// over. The wait already set stays, so a preferred node that
				// wins but cannot hold the shard (a lease lapsing on a busy
				// box) gets it back at most once per wait, not every round.
				backoff[i] = 0
			}
			if s.raft.State() != raft.Leader || time.Now().Before(retryAt[i]) || stopping() {
				continue
			}
			// stopping is asked again after balanceTarget, whose caughtUp
			// calls may each wait 300 ms.
			to, ok := n.balanceTarget(s, order, i, refusing)
			if !ok || stopping() {
				continue
			}
			// A nil answer only means this node stepped down, not that
			// the target leads: hashicorp/raft returns nil once the
			// target's higher term arrives, even if the target then loses
			// its election (a node that can receive but not send, say). So
			// every transfer backs off, failed or not, and keeps doubling
			// until pref is seen leading; otherwise a shard whose preferred
			// node cannot win would go leaderless every round.
			if err := s.raft.LeadershipTransferToServer(raft.ServerID(to.ID), raft.ServerAddress(to.RaftAddr)).Error(); err != nil {
				n.logger.Debug("leadership transfer failed", "shard", i, "to", to.ID, "error", err)
			}
			backoff[i] = min(max(2*backoff[i], minBackoff), maxBackoff)
			retryAt[i] = time.Now().Add(backoff[i])
			break
		}
	}
}

// peersByID returns peers sorted by ID: the balancer's preference must be
// the same on every node whatever order each lists --peers in, or two nodes
// that prefer each other for a shard hand it back and forth for ever
// (found by review).
func peersByID(peers []Peer) []Peer {
	sorted := slices.Clone(peers)
	slices.SortFunc(sorted, func(a, b Peer) int { return strings.Compare(a.ID, b.ID) })
	return sorted
}

// balanceTarget picks the peer this node, leading shard s (index i), should
// hand it to, if any: its preferred node when that is another, caught-up
// one; while this node refuses requests, the first caught-up peer from the
// preferred one on, since any leader that serves beats this one.
func (n *Node) balanceTarget(s *shard, order []Peer, i int, refusing bool) (Peer, bool) {
	tries := 1
	if refusing {
		tries = len(order)
	}
	for k := 0; k < tries; k++ {
		select {
		case <-n.stop: // each caughtUp may wait 300 ms, and close waits for this loop
			return Peer{}, false
		default:
		}
		p := order[(i+k)%len(order)]
		if p.ID != n.cfg.ID && n.caughtUp(p, s) {
			return p, true
		}
	}
	return Peer{}, false
}

func (n *Node) caughtUp(p Peer, s *shard) bool {
	c, err := n.peers.get(p.GRPCAddr)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	st, err := c.ShardState(ctx, &tallypb.ShardStateRequest{Shard: s.id})
	if err != nil || !answersAs(st.GetNodeId(), p.ID) {
		return false
	}
	// A replica under its vote guard cannot win an election: a transfer
	// to it costs the shard an election and wins nothing (found by review).
	// A misconfigured one refuses every request: leading, it would leave the
	// shard unserved though this node could serve it (found by review).
	return !st.GetVoteGuarded() && !st.GetMisconfigured() && st.GetAppliedIndex()+balanceCatchUpEntries >= s.fsm.AppliedIndex()
}
