package node

import (
	"sync"
	"time"

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

func newAckTransport(t *raft.NetworkTransport) *ackTransport {
	return &ackTransport{NetworkTransport: t, acks: map[raft.ServerID]ack{}}
}

// AppendEntries implements raft.Transport and records accepted requests.
func (t *ackTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress,
	args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	sent := time.Now()
	err := t.NetworkTransport.AppendEntries(id, target, args, resp)
	if err == nil && resp.Success && resp.Term == args.Term {
		t.record(id, ack{sent: sent, term: args.Term})
	}
	return err
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
// this node as leader of term in requests sent at or after since.
func (t *ackTransport) waitAckedSince(term uint64, since time.Time, need int, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		t.mu.Lock()
		if t.ackedSinceLocked(term, since) >= need {
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
func (t *ackTransport) ackedSinceLocked(term uint64, since time.Time) int {
	n := 0
	for _, a := range t.acks {
		if a.term == term && !a.sent.Before(since) {
			n++
		}
	}
	return n
}
