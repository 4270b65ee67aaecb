package node

import (
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// ackTransport is a shard's Raft transport with a record, per follower, of
// the newest AppendEntries (heartbeat or replication) that the follower
// accepted: when this node sent it and in which term.
//
// Linearizable reads need it because hashicorp/raft's VerifyLeader counts
// the answer to any heartbeat that arrives after the check was registered,
// including one sent before: a leader paused (GC, SIGSTOP, a stalled VM)
// with a heartbeat in flight wakes up, reads the follower's old "yes" from
// the socket, and VerifyLeader succeeds although the others elected a new
// leader meanwhile. The fault harness caught exactly that: a read served
// 3.6 s stale state by the old leader of a shard 5 ms after SIGCONT
// (tally-chaos seed 2322). A follower's acceptance of a request sent after
// the read arrived is real evidence; one sent before is not.
type ackTransport struct {
	*raft.NetworkTransport

	// maxAppendBytes bounds the entries of one AppendEntries RPC (see
	// appendEntries); send is the RPC (NetworkTransport's; tests fake it).
	maxAppendBytes int
	send           func(raft.ServerID, raft.ServerAddress, *raft.AppendEntriesRequest, *raft.AppendEntriesResponse) error
	// logger tells of a broken part, which raft does not see as a failure.
	logger hclog.Logger

	// guard, when set, refuses this replica's votes until it may vote
	// (voteGuard); guardStop ends its consumer when the transport closes.
	guard     *voteGuard
	guardStop chan struct{}
	closeOnce sync.Once

	mu   sync.Mutex
	acks map[raft.ServerID]ack
	// wake is closed when an acceptance is recorded, if anyone waits for
	// one (waitAckedSince); made on demand so acks cost nothing otherwise.
	wake chan struct{}
}

type ack struct {
	sent time.Time // when the accepted request was sent (monotonic)
	term uint64    // the term it was sent in
}

// defaultMaxAppendBytes is the most entry data one AppendEntries RPC
// carries, unless RaftTuning.MaxAppendBytes says otherwise.
// hashicorp/raft bounds a request by entry count only (MaxAppendEntries),
// and under batched load an entry holds up to ~24,000 ops at ~85 bytes
// each (ledger's TestEntryBytesPerOp): a follower catching up could be
// sent MaxAppendEntries (64) such entries, about 130 MB, in one RPC (1 GB
// at 512, a setting used before), which must fit the
// follower's memory and arrive within the transport's 10 s timeout or be
// retried whole, for ever, on a slow link.
// In steady state a request carries the few entries in flight (at most
// MaxInflightEntries+2, ~12 MB at the largest), so 16 MB splits only
// catch-up.
const defaultMaxAppendBytes = 16 << 20

func newAckTransport(t *raft.NetworkTransport) *ackTransport {
	tr := &ackTransport{NetworkTransport: t, acks: map[raft.ServerID]ack{}, maxAppendBytes: defaultMaxAppendBytes,
		logger: hclog.NewNullLogger()}
	if t != nil {
		tr.send = t.AppendEntries
	}
	return tr
}

// Consumer implements raft.Transport: the RPCs for raft, less the votes
// the guard refuses (it answers those itself).
func (t *ackTransport) Consumer() <-chan raft.RPC {
	if t.guard == nil {
		return t.NetworkTransport.Consumer()
	}
	return guardedConsumer(t.NetworkTransport.Consumer(), t.guard, t.guardStop)
}

// SetHeartbeatHandler implements raft.Transport. hashicorp/raft answers
// heartbeats off the RPC channel, so they would bypass the guard's consumer;
// on a guarded replica they pass the append gate as entries do. A leader
// counts a heartbeat's success as a fresh confirmation of its leadership
// (AppendEntries above, waitAckedSince): a stale leader's heartbeat answered
// by a wiped replica, whose term is 0, would otherwise let that leader and
// the replica make a majority and serve reads without writes a later term
// committed (found by review: a read answered posted=10 after a credit to
// 110 was acknowledged, TestWipedReplicaConfirmsNoStaleLeaderRead).
func (t *ackTransport) SetHeartbeatHandler(cb func(raft.RPC)) {
	if t.guard == nil || cb == nil {
		t.NetworkTransport.SetHeartbeatHandler(cb)
		return
	}
	g := t.guard
	t.NetworkTransport.SetHeartbeatHandler(func(rpc raft.RPC) {
		if req, ok := rpc.Command.(*raft.AppendEntriesRequest); ok && !g.admits(req.Term) {
			rpc.Respond(nil, errAppendGuarded)
			return
		}
		cb(rpc)
	})
}

// RequestVote implements raft.Transport: a guarded replica does not run
// for leader (voteGuard), whatever its log; raft counts the error as a
// vote not granted.
func (t *ackTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	if t.guard != nil && t.guard.on.Load() {
		return errGuarded
	}
	return t.NetworkTransport.RequestVote(id, target, args, resp)
}

// RequestPreVote implements raft.WithPreVote, as RequestVote.
func (t *ackTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if t.guard != nil && t.guard.on.Load() {
		return errGuarded
	}
	return t.NetworkTransport.RequestPreVote(id, target, args, resp)
}

// Close implements raft.WithClose.
func (t *ackTransport) Close() error {
	t.closeOnce.Do(func() {
		if t.guardStop != nil {
			close(t.guardStop)
		}
	})
	return t.NetworkTransport.Close()
}

// AppendEntries implements raft.Transport and records accepted requests.
func (t *ackTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress,
	args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	sent := time.Now()
	err := t.appendEntries(id, target, args, resp)
	if err == nil && resp.Success && resp.Term == args.Term {
		t.record(id, ack{sent: sent, term: args.Term})
	}
	return err
}

// AppendEntriesPipeline implements raft.Transport: never. The transport
// already has pipelining off (transport.noPipelining, hashicorp/raft #612);
// this keeps it so whatever the transport's config, because a pipelined
// request would bypass appendEntries and its byte bound.
func (t *ackTransport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

// appendEntries sends args as consecutive RPCs of at most maxAppendBytes
// of entries each (a single entry goes whole, whatever its size). Each part
// is an AppendEntries of its own: its previous entry is the last of the
// part before it, and its commit index is clamped to its last entry, as
// the Raft paper has it (commitIndex = min(leaderCommit, index of last new
// entry)); hashicorp/raft's follower takes min(leaderCommit, its own last
// index), which would let a part commit a stale tail the follower still
// holds beyond it. The answer is the first part's that fails, else the
// last part's: raft needs only Success, Term and LastLog, and on success
// it advances by args' own last entry, which the parts have all stored.
// A part that fails to be sent at all (a broken connection) after earlier
// parts were stored ends the request as a success for those parts alone:
// args.Entries is cut to them, so raft advances to their last entry (it
// reads args after the call) and sends the rest from there, instead of
// the whole request again, which on a link too slow to carry every part
// between failures would never finish.
func (t *ackTransport) appendEntries(id raft.ServerID, target raft.ServerAddress,
	args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	if len(args.Entries) < 2 || t.maxAppendBytes <= 0 {
		return t.send(id, target, args, resp)
	}
	var stored raft.AppendEntriesResponse // the last part's that succeeded
	part := func(i, j int) (ok bool, err error) {
		err = t.sendPart(id, target, args, i, j, resp)
		if err != nil && i > 0 {
			t.logger.Warn("appendEntries: a part failed; raft resumes after the parts stored",
				"peer", id, "stored_through", args.Entries[i-1].Index, "error", err)
			args.Entries, *resp = args.Entries[:i], stored
			return false, nil
		}
		if err != nil || !resp.Success {
			return false, err
		}
		stored = *resp
		return true, nil
	}
	first, size := 0, 0
	for i, e := range args.Entries {
		n := len(e.Data) + len(e.Extensions)
		if i > first && size+n > t.maxAppendBytes {
			if ok, err := part(first, i); !ok {
				return err
			}
			first, size = i, 0
		}
		size += n
	}
	if first == 0 {
		return t.send(id, target, args, resp)
	}
	_, err := part(first, len(args.Entries))
	return err
}

// sendPart sends args.Entries[i:j] as one AppendEntries.
func (t *ackTransport) sendPart(id raft.ServerID, target raft.ServerAddress,
	args *raft.AppendEntriesRequest, i, j int, resp *raft.AppendEntriesResponse) error {
	part := *args
	part.Entries = args.Entries[i:j]
	if i > 0 {
		prev := args.Entries[i-1]
		part.PrevLogEntry, part.PrevLogTerm = prev.Index, prev.Term
	}
	part.LeaderCommitIndex = min(args.LeaderCommitIndex, part.Entries[len(part.Entries)-1].Index)
	*resp = raft.AppendEntriesResponse{}
	return t.send(id, target, &part, resp)
}

func (t *ackTransport) record(id raft.ServerID, a ack) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.acks[id]; !ok || old.term < a.term || (old.term == a.term && old.sent.Before(a.sent)) {
		t.acks[id] = a
	}
	if t.wake != nil {
		close(t.wake)
		t.wake = nil
	}
}

// waitAckedSince waits up to timeout for need followers to have accepted
// this node as leader of term in requests sent at or after since. Only the
// followers in voters count (nil: any).
func (t *ackTransport) waitAckedSince(term uint64, since time.Time, voters map[raft.ServerID]bool, need int, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		t.mu.Lock()
		if t.ackedSinceLocked(term, since, voters) >= need {
			t.mu.Unlock()
			return true
		}
		if t.wake == nil {
			t.wake = make(chan struct{})
		}
		wake := t.wake
		t.mu.Unlock()
		select {
		case <-wake:
		case <-timer.C:
			return false
		}
	}
}

// ackedSinceLocked counts the followers that accepted this node as leader of
// term in a request sent at or after since. The caller holds mu.
func (t *ackTransport) ackedSinceLocked(term uint64, since time.Time, voters map[raft.ServerID]bool) int {
	n := 0
	for id, a := range t.acks {
		if voters != nil && !voters[id] {
			continue
		}
		if a.term == term && !a.sent.Before(since) {
			n++
		}
	}
	return n
}
