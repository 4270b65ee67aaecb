package node

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tally-ledger/tally/api/tallypb"
)

// voteGuard keeps a shard's replica from voting until it holds what it may
// have helped commit before. A replica that starts with no Raft state for
// the shard (its data wiped, or a node that never had any) or whose log
// tail was repaired (--repair-log-tail) has lost entries, and its vote
// record, that it may have acknowledged; hashicorp/raft would let it vote
// at once, for any candidate (with an empty configuration it checks no
// membership either), so its vote could elect a node that lacks an entry
// a majority had stored (2 of 3 with this node), and that entry, a client's
// acknowledged write, would be lost. The guard refuses its votes and
// pre-votes until one of:
//
//   - it has caught up: its log reaches the highest of the first commit
//     index a leader sent it and every applied index the other replicas
//     reported since it started (every entry it helped commit is at or
//     below both); or
//   - the shard is new: a majority of the replicas (this one included)
//     report an applied index of 0, so nothing was ever committed to lose
//     (every replica of a new cluster starts guarded, and this lifts it).
//
// After it lifts, votes in terms up to the one current then are still
// refused: the replica may have voted in those before it lost its record.
// Refusing a vote never breaks safety; it can only delay an election.
type voteGuard struct {
	on       atomic.Bool
	liftTerm atomic.Uint64
	// firstCommit is the commit index of the first AppendEntries that
	// carried one (heartbeats included), 0 before any.
	firstCommit atomic.Uint64
	// peerApplied is the highest applied index a peer reported.
	peerApplied atomic.Uint64
}

// voteGuardPoll is how often a guarded replica asks the others for their
// applied index and checks whether it may lift the guard.
const voteGuardPoll = 250 * time.Millisecond

func newVoteGuard() *voteGuard {
	g := &voteGuard{}
	g.on.Store(true)
	return g
}

// refuses reports whether a vote (or pre-vote) for term must be refused.
func (g *voteGuard) refuses(term uint64) bool {
	return g.on.Load() || term <= g.liftTerm.Load()
}

// observe notes what an incoming RPC tells the guard.
func (g *voteGuard) observe(cmd any) {
	if ae, ok := cmd.(*raft.AppendEntriesRequest); ok && ae.LeaderCommitIndex > 0 {
		g.firstCommit.CompareAndSwap(0, ae.LeaderCommitIndex)
	}
}

// filter answers a vote or pre-vote the guard refuses; it reports whether
// it answered rpc (which then must not reach raft).
func (g *voteGuard) filter(rpc raft.RPC) bool {
	switch req := rpc.Command.(type) {
	case *raft.RequestVoteRequest:
		if g.refuses(req.Term) {
			// The candidate's own term: a refusal that neither raises
			// its term nor counts as a vote.
			rpc.Respond(&raft.RequestVoteResponse{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax},
				Term: req.Term, Granted: false}, nil)
			return true
		}
	case *raft.RequestPreVoteRequest:
		if g.refuses(req.Term) {
			rpc.Respond(&raft.RequestPreVoteResponse{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax},
				Term: req.Term, Granted: false}, nil)
			return true
		}
	default:
		g.observe(rpc.Command)
	}
	return false
}

// mayLift reports whether the guard may lift, given this replica's last
// log index, and whether the shard is new (fresh: replicas that reported
// an applied index of 0, this one included, of voters).
func (g *voteGuard) mayLift(lastIndex uint64, fresh, voters int) bool {
	if 2*fresh > voters {
		return true
	}
	first := g.firstCommit.Load()
	return first > 0 && lastIndex >= max(first, g.peerApplied.Load())
}

// guardedConsumer passes the transport's RPCs on to raft, answering the
// votes the guard refuses, until stop is closed.
func guardedConsumer(in <-chan raft.RPC, g *voteGuard, stop <-chan struct{}) <-chan raft.RPC {
	out := make(chan raft.RPC)
	go func() {
		for {
			select {
			case rpc := <-in:
				if g.filter(rpc) {
					continue
				}
				select {
				case out <- rpc:
				case <-stop:
					return
				}
			case <-stop:
				return
			}
		}
	}()
	return out
}

// guardLoop lifts s's vote guard once it may (see voteGuard), asking the
// other replicas for their applied index every voteGuardPoll.
func (s *shard) guardLoop() {
	defer s.wg.Done()
	g := s.trans.guard
	t := time.NewTicker(voteGuardPoll)
	defer t.Stop()
	for g.on.Load() {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		fresh := s.pollPeersApplied(g)
		if g.mayLift(s.raft.LastIndex(), fresh, len(s.n.cfg.Peers)) {
			g.liftTerm.Store(s.raft.CurrentTerm())
			g.on.Store(false)
			s.n.logger.Info("replica may vote again", "shard", s.id, "last_index", s.raft.LastIndex(),
				"new_shard", 2*fresh > len(s.n.cfg.Peers), "first_commit_seen", g.firstCommit.Load(),
				"peer_applied", g.peerApplied.Load(), "votes_refused_up_to_term", g.liftTerm.Load())
		}
	}
}

// pollPeersApplied asks every other replica for its applied index of the
// shard, records the highest in g, and returns how many replicas, this one
// included, reported 0. This one counts only while it has applied nothing.
func (s *shard) pollPeersApplied(g *voteGuard) int {
	var (
		mu    sync.Mutex
		fresh int
		wg    sync.WaitGroup
	)
	if s.fsm.AppliedIndex() == 0 {
		fresh = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), voteGuardPoll)
	defer cancel()
	for _, p := range s.n.cfg.Peers {
		if p.ID == s.n.cfg.ID {
			continue
		}
		c, err := s.n.peers.get(p.GRPCAddr)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.ShardState(ctx, &tallypb.ShardStateRequest{Shard: s.id})
			if err != nil {
				return
			}
			applied := resp.GetAppliedIndex()
			for {
				cur := g.peerApplied.Load()
				if applied <= cur || g.peerApplied.CompareAndSwap(cur, applied) {
					break
				}
			}
			if applied == 0 {
				mu.Lock()
				fresh++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return fresh
}
