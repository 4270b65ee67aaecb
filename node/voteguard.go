package node

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tally-ledger/tally/api/tallypb"
)

// voteGuard keeps a shard's replica out of elections until it holds what
// it may have helped commit before. A replica that starts with no Raft
// state for the shard (its data wiped, or a node that never had any) or
// whose log tail was repaired (--repair-log-tail) has lost entries, and
// its vote record, that it may have acknowledged; hashicorp/raft would let
// it vote at once, for any candidate (with an empty configuration it
// checks no membership either), and run for leader with its short log. Its
// vote could elect a node that lacks an entry a majority had stored (2 of
// 3 with this node), or its own short log could win the votes of such a
// node; either way that entry, a client's acknowledged write, would be
// lost. While the guard is on, the replica answers votes and pre-votes
// "no" and sends none (its transport refuses to), until one of:
//
//   - it has caught up with a leader of the current term: a leader is
//     known, its log's last entry is of the current term (so by Raft's log
//     matching it holds that leader's log up to there, which holds every
//     entry committed in earlier terms: leader completeness), and its last
//     index reaches both the highest commit index a leader sent it (entries
//     committed in this term) and every applied index the other replicas
//     reported since it started; or
//   - the shard is new: every replica (this one included) answers and
//     holds no Raft log beyond the bootstrap configuration (last index at
//     most 1, log or snapshot), so nothing was ever committed to lose
//     (every replica of a new cluster starts guarded, and this lifts it
//     once all have started). A majority is not enough: two of three
//     replicas wiped look like a new majority whether the third, which
//     holds the log, answers or is down, and lifting then let them elect
//     one of themselves and replace the third's log, every acknowledged
//     write with it. They stay guarded instead (no leader until an
//     operator restores them from the third, README). The price: a new
//     cluster takes no writes until every node has started once.
//     The Raft log, not the FSM's applied index: a replica whose state DB
//     lost its unsynced writes reports applied index 0 with a full log
//     (found by review: counting it as new lost a write). A replica of a
//     binary that does not report its log (builds before raft_last_index)
//     counts as new when it has applied nothing, as those builds' own
//     guard had it: the lost-writes case stays open for them alone; or
//   - the cluster has one node.
//
// After it lifts, votes in terms up to the one current then are still
// refused: the replica may have voted in those before it lost its record.
// Refusing a vote never breaks safety; it can only delay an election.
//
// Its acknowledgements are guarded too. A stale leader (one paused or cut
// off while the others elected a successor and committed with this
// replica's old self) that reaches this replica while the up-to-date one
// is down would otherwise commit with its help at indexes the successor
// had committed: those writes lost. So until the append gate opens, the
// replica answers a leader's AppendEntries and InstallSnapshot with an
// error (raft retries after a backoff) unless its term T is confirmed:
// enough other replicas report a current term of at most T that no term
// above T can have had a majority, however this replica voted before it
// lost its state (N - majority + 1 of the others: both others of three).
// Terms only grow, so such a report, taken any time after, proves that
// no leader of a later term was elected before it. The gate opens for
// good once the replica holds an entry of a confirmed term (it persists
// its term and log from then on, and raft itself refuses older leaders),
// or with the new-shard and one-node rules above. Heartbeats pass the gate
// too (ackTransport.SetHeartbeatHandler): they carry no entries, but a
// leader counts their success as a confirmation of its leadership for
// reads.
type voteGuard struct {
	on       atomic.Bool
	liftTerm atomic.Uint64
	// maxCommit is the highest commit index an AppendEntries carried
	// (hashicorp/raft's heartbeats carry none; replication sends one at
	// least every CommitTimeout), 0 before any.
	maxCommit atomic.Uint64
	// peerApplied is the highest applied index a peer reported.
	peerApplied atomic.Uint64

	// appendOpen is set once the append gate has opened (for good);
	// leaderTerm is the highest term of the entries and snapshots offered
	// while it was shut, and confirmedTerm a term the other replicas
	// confirmed (see voteGuard).
	appendOpen    atomic.Bool
	leaderTerm    atomic.Uint64
	confirmedTerm atomic.Uint64
}

// errAppendGuarded answers a guarded replica's entries and snapshots from
// a leader whose term is not confirmed yet.
var errAppendGuarded = errors.New("node: this replica lost its Raft state and takes no entries until the other replicas confirm the leader's term")

// storeMax raises v to x if x is higher, and returns the value it leaves.
func storeMax(v *atomic.Uint64, x uint64) uint64 {
	for {
		cur := v.Load()
		if x <= cur {
			return cur
		}
		if v.CompareAndSwap(cur, x) {
			return x
		}
	}
}

// admits reports whether the append gate lets an AppendEntries or
// InstallSnapshot of term through: open, or term is the newest offered
// and confirmed.
func (g *voteGuard) admits(term uint64) bool {
	if g.appendOpen.Load() {
		return true
	}
	newest := storeMax(&g.leaderTerm, term)
	return term == newest && term <= g.confirmedTerm.Load()
}

// termConfirmed reports whether the terms the other replicas reported
// (one each) confirm term t in a cluster of voters: at least
// voters - majority + 1 of them report at most t, so no majority can have
// gone past t even counting this replica's lost self.
func termConfirmed(reported []uint64, voters int, t uint64) bool {
	need := voters - (voters/2 + 1) + 1
	n := 0
	for _, r := range reported {
		if r <= t {
			n++
		}
	}
	return t > 0 && n >= need
}

// open lifts both the append gate and the vote guard.
func (g *voteGuard) open(term uint64) {
	g.appendOpen.Store(true)
	g.liftTerm.Store(term)
	g.on.Store(false)
}

// voteGuardPoll is how often a guarded replica asks the others for their
// applied index and checks whether it may lift the guard.
const voteGuardPoll = 250 * time.Millisecond

// guardReport is how often a replica still guarded logs what it waits for.
const guardReport = 30 * time.Second

// errGuarded is what a guarded replica's transport answers raft's own vote
// and pre-vote requests with: raft counts an error as a vote not granted.
var errGuarded = errors.New("node: this replica may lack committed entries and does not run for leader until it has caught up")

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
	if ae, ok := cmd.(*raft.AppendEntriesRequest); ok {
		storeMax(&g.maxCommit, ae.LeaderCommitIndex)
	}
}

// filter answers the votes, pre-votes, entries and snapshots the guard
// refuses; it reports whether it answered rpc (which then must not reach
// raft).
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
	case *raft.AppendEntriesRequest:
		if !g.admits(req.Term) {
			rpc.Respond(nil, errAppendGuarded)
			return true
		}
		g.observe(req)
	case *raft.InstallSnapshotRequest:
		// Answered without reading the snapshot: the transport then finds
		// the rest of the stream where it expects the next request, and
		// drops the connection; raft sends the snapshot again later.
		if !g.admits(req.Term) {
			rpc.Respond(nil, errAppendGuarded)
			return true
		}
	}
	return false
}

// replicaLog is what mayLift needs to know of the replica's Raft state.
type replicaLog struct {
	leaderKnown         bool
	lastIndex, lastTerm uint64 // of the last entry, in the log or the snapshot
	currentTerm         uint64
	fresh, voters       int      // replicas with no log beyond the bootstrap configuration (this one included), of voters
	seasoned            int      // replicas that answered with a log beyond it
	peerTerms           []uint64 // the current terms the other replicas reported
}

// newShard reports whether the replicas look like those of a new shard:
// every one answered and holds no log beyond the bootstrap configuration
// (see voteGuard).
func (r replicaLog) newShard() bool { return r.fresh == r.voters && r.seasoned == 0 }

// newShardLastIndex is the most a replica of a new shard holds: the
// bootstrap configuration entry.
const newShardLastIndex = 1

// lastEntry reads a replica's last entry (index and term, in its log or
// its snapshot, whichever is later, as raft's own vote check does) and its
// current term from one raft.Stats: a snapshot install leaves the log's
// last entry behind (found by review: a replica caught up by snapshot on a
// quiet shard compared a stale entry's term and never lifted).
func lastEntry(stats map[string]string) (index, term, current uint64, ok bool) {
	get := func(k string) (uint64, bool) {
		v, err := strconv.ParseUint(stats[k], 10, 64)
		return v, err == nil
	}
	logIndex, ok1 := get("last_log_index")
	logTerm, ok2 := get("last_log_term")
	snapIndex, ok3 := get("last_snapshot_index")
	snapTerm, ok4 := get("last_snapshot_term")
	current, ok5 := get("term")
	if !(ok1 && ok2 && ok3 && ok4 && ok5) {
		return 0, 0, 0, false
	}
	if snapIndex > logIndex {
		return snapIndex, snapTerm, current, true
	}
	return logIndex, logTerm, current, true
}

// mayLift reports whether the guard may lift (see voteGuard).
func (g *voteGuard) mayLift(r replicaLog) bool {
	if r.voters <= 1 || r.newShard() {
		return true
	}
	commit := g.maxCommit.Load()
	return g.appendOpen.Load() && r.leaderKnown && commit > 0 && r.lastTerm == r.currentTerm &&
		r.lastIndex >= max(commit, g.peerApplied.Load())
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
	// An operator who finds a shard without a leader should learn why from
	// the log, not only from tallyctl state: say what the guard waits for
	// every guardReport while it lasts.
	nextReport := time.Now().Add(guardReport)
	for g.on.Load() {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		r := replicaLog{voters: len(s.n.cfg.Peers)}
		_, leader := s.raft.LeaderWithID()
		r.leaderKnown = leader != ""
		var ok bool
		if r.lastIndex, r.lastTerm, r.currentTerm, ok = lastEntry(s.raft.Stats()); !ok {
			continue
		}
		offered := g.leaderTerm.Load() // before the poll: see voteGuard
		if r.voters > 1 {
			r.fresh, r.seasoned, r.peerTerms = s.pollPeers(g)
			if r.lastIndex <= newShardLastIndex {
				r.fresh++
			}
		}
		if !g.appendOpen.Load() {
			// (A new shard or a one-node cluster opens it below, with
			// the vote guard.)
			switch {
			case g.confirmedTerm.Load() > 0 && r.lastTerm >= g.confirmedTerm.Load():
				// It holds an entry of a confirmed term: from here on
				// its own persisted term and log guard it.
				g.appendOpen.Store(true)
				s.n.logger.Info("replica takes entries again", "shard", s.id, "term", g.confirmedTerm.Load())
			case offered > g.confirmedTerm.Load() && termConfirmed(r.peerTerms, r.voters, offered):
				g.confirmedTerm.Store(offered)
			}
		}
		if !g.mayLift(r) {
			if now := time.Now(); now.After(nextReport) {
				nextReport = now.Add(guardReport)
				s.n.logger.Warn("replica still refuses to vote: it waits to catch up with a leader, or for every replica to answer as new",
					"shard", s.id, "leader_known", r.leaderKnown, "last_index", r.lastIndex, "replicas_new", r.fresh,
					"replicas_with_log", r.seasoned, "replicas", r.voters, "takes_entries", g.appendOpen.Load())
			}
			continue
		}
		g.open(r.currentTerm)
		s.n.logger.Info("replica may vote again", "shard", s.id, "last_index", r.lastIndex, "last_term", r.lastTerm,
			"new_shard", r.newShard(), "commit_seen", g.maxCommit.Load(),
			"peer_applied", g.peerApplied.Load(), "votes_refused_up_to_term", r.currentTerm)
	}
}

// pollPeers asks every other replica for its view of the shard, records
// the highest applied index in g, and returns how many of them hold no log
// beyond the bootstrap configuration and how many hold more.
func (s *shard) pollPeers(g *voteGuard) (fresh, seasoned int, terms []uint64) {
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
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
			if err != nil || !answersAs(resp.GetNodeId(), p.ID) {
				return // another node's answer would count that node twice
			}
			storeMax(&g.peerApplied, resp.GetAppliedIndex())
			if resp.RaftLastIndex == nil {
				// A binary from before raft_last_index: its applied index
				// is all it tells, as the guard of those builds used it.
				// Nothing applied counts as new (so a new cluster with
				// such a node starts, as deploy/upgrade-check.sh does),
				// although a state DB that lost its unsynced writes says
				// 0 too; anything applied proves the shard is not new.
				mu.Lock()
				if resp.GetAppliedIndex() == 0 {
					fresh++
				} else {
					seasoned++
				}
				mu.Unlock()
				return
			}
			mu.Lock()
			if resp.RaftTerm != nil {
				terms = append(terms, resp.GetRaftTerm())
			}
			if resp.GetRaftLastIndex() <= newShardLastIndex {
				fresh++
			} else {
				seasoned++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return fresh, seasoned, terms
}
