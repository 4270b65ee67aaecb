package node

import (
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// ackedSince is ackedSinceLocked under the lock, for the tests.
func (t *ackTransport) ackedSince(term uint64, since time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ackedSinceLocked(term, since, nil)
}

// Only acceptances of requests sent at or after the read's start, in its
// term, count; an older one that is answered late (the paused-leader case)
// does not.
func TestAckedSinceCountsOnlyFreshAcceptances(t *testing.T) {
	tr := newAckTransport(nil)
	t0 := time.Now()
	read := t0.Add(10 * time.Millisecond)

	tr.record("n2", ack{sent: t0, term: 5}) // sent before the read
	require.Equal(t, 0, tr.ackedSince(5, read))

	tr.record("n2", ack{sent: read, term: 5})
	require.Equal(t, 1, tr.ackedSince(5, read))
	require.Equal(t, 0, tr.ackedSince(6, read), "another term's acceptance is no evidence")

	// A late answer to an older request does not overwrite a newer one.
	tr.record("n2", ack{sent: t0, term: 5})
	require.Equal(t, 1, tr.ackedSince(5, read))

	tr.record("n3", ack{sent: read.Add(time.Millisecond), term: 5})
	require.Equal(t, 2, tr.ackedSince(5, read))

	// A newer term replaces the record whatever its time.
	tr.record("n3", ack{sent: t0, term: 6})
	require.Equal(t, 1, tr.ackedSince(5, read))
	require.Equal(t, 0, tr.ackedSince(6, read))
	require.Equal(t, 1, tr.ackedSince(6, t0))

	_, err := tr.AppendEntriesPipeline("n2", "addr")
	require.ErrorIs(t, err, raft.ErrPipelineReplicationNotSupported, "no pipeline can bypass the byte bound")
	var _ raft.Transport = tr // still a full transport (AppendEntries overridden)
	var _ raft.WithPreVote = tr
	var _ raft.WithClose = tr
}

// waitAckedSince returns once enough fresh acceptances are recorded, and
// gives up after its timeout when they are not.
func TestWaitAckedSince(t *testing.T) {
	tr := newAckTransport(nil)
	start := time.Now()
	tr.record("n2", ack{sent: start.Add(-time.Millisecond), term: 3}) // stale
	require.False(t, tr.waitAckedSince(3, start, nil, 1, 20*time.Millisecond))

	done := make(chan bool)
	go func() { done <- tr.waitAckedSince(3, start, nil, 2, 10*time.Second) }()
	tr.record("n2", ack{sent: start, term: 3})
	time.Sleep(5 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("returned with one of two acceptances")
	default:
	}
	tr.record("n3", ack{sent: start.Add(time.Millisecond), term: 3})
	select {
	case ok := <-done:
		require.True(t, ok)
	case <-time.After(5 * time.Second):
		t.Fatal("not woken by the second acceptance")
	}
}

// TestAppendEntriesSplitsByBytes: a request whose entries exceed the byte
// bound goes out as consecutive parts, each chained to the one before and
// committing no further than its own last entry; a part that fails ends
// the request with its answer; one entry larger than the bound goes whole.
func TestAppendEntriesSplitsByBytes(t *testing.T) {
	entries := func(sizes ...int) []*raft.Log {
		var es []*raft.Log
		for i, n := range sizes {
			es = append(es, &raft.Log{Index: uint64(11 + i), Term: 3, Data: make([]byte, n)})
		}
		return es
	}
	errBroken := errors.New("connection reset")
	for _, tc := range []struct {
		name   string
		sizes  []int
		failAt int         // part that answers !Success (-1: none)
		errAt  int         // part whose send fails (-1: none)
		parts  [][2]uint64 // first and last index of each part sent
		// answered: the last index raft is told was stored (0: none, and
		// the call's error or failure is raft's answer)
		answered uint64
	}{
		{"fits", []int{10, 10, 10}, -1, -1, [][2]uint64{{11, 13}}, 13},
		{"split", []int{40, 40, 40, 40, 40}, -1, -1, [][2]uint64{{11, 12}, {13, 14}, {15, 15}}, 15},
		{"oversized entries go alone", []int{500, 10, 500}, -1, -1, [][2]uint64{{11, 11}, {12, 12}, {13, 13}}, 13},
		{"a failed part ends it", []int{60, 60, 60}, 1, -1, [][2]uint64{{11, 11}, {12, 12}}, 0},
		{"one entry", []int{500}, -1, -1, [][2]uint64{{11, 11}}, 11},
		{"a broken first part is an error", []int{60, 60, 60}, -1, 0, [][2]uint64{{11, 11}}, 0},
		{"a broken later part keeps the stored ones", []int{60, 60, 60}, -1, 2, [][2]uint64{{11, 11}, {12, 12}, {13, 13}}, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newAckTransport(nil)
			tr.maxAppendBytes = 100
			var sent []*raft.AppendEntriesRequest
			tr.send = func(_ raft.ServerID, _ raft.ServerAddress, a *raft.AppendEntriesRequest, r *raft.AppendEntriesResponse) error {
				require.Equal(t, raft.AppendEntriesResponse{}, *r, "each part starts from a fresh response")
				sent = append(sent, a)
				last := a.Entries[len(a.Entries)-1].Index
				if len(sent)-1 == tc.errAt {
					return errBroken
				}
				*r = raft.AppendEntriesResponse{Term: 3, LastLog: last, Success: len(sent)-1 != tc.failAt}
				return nil
			}
			args := &raft.AppendEntriesRequest{Term: 3, PrevLogEntry: 10, PrevLogTerm: 2, Entries: entries(tc.sizes...), LeaderCommitIndex: 99}
			var resp raft.AppendEntriesResponse
			err := tr.AppendEntries("n2", "addr", args, &resp)
			if tc.errAt == 0 {
				require.ErrorIs(t, err, errBroken)
			} else {
				require.NoError(t, err)
			}
			require.Len(t, sent, len(tc.parts))
			prev, prevTerm := uint64(10), uint64(2)
			for i, p := range sent {
				require.Equal(t, tc.parts[i], [2]uint64{p.Entries[0].Index, p.Entries[len(p.Entries)-1].Index}, "part %d", i)
				require.Equal(t, prev, p.PrevLogEntry, "part %d chains to the one before", i)
				require.Equal(t, prevTerm, p.PrevLogTerm)
				if len(sent) == 1 && tc.failAt < 0 && tc.errAt < 0 {
					require.Same(t, args, p, "an unsplit request goes as it is")
				} else {
					require.Equal(t, p.Entries[len(p.Entries)-1].Index, p.LeaderCommitIndex, "part %d commits no further than its last entry", i)
				}
				prev, prevTerm = p.Entries[len(p.Entries)-1].Index, p.Entries[len(p.Entries)-1].Term
			}
			if tc.answered == 0 {
				require.False(t, resp.Success)
				require.Zero(t, tr.ackedSince(3, time.Time{}), "a request not stored is no acceptance")
				return
			}
			// raft advances by args' last entry: cut to what was stored.
			require.True(t, resp.Success)
			require.Equal(t, tc.answered, args.Entries[len(args.Entries)-1].Index)
			require.Equal(t, tc.answered, resp.LastLog)
			require.Equal(t, 1, tr.ackedSince(3, time.Time{}), "a stored request is an acceptance")
		})
	}
}

// Only the followers in the voter set count: acceptances from a server
// outside the shard's Raft configuration make no majority.
func TestAckedSinceCountsOnlyVoters(t *testing.T) {
	tr := newAckTransport(nil)
	read := time.Now()
	tr.record("n2", ack{sent: read, term: 5})
	tr.record("old", ack{sent: read, term: 5})
	voters := map[raft.ServerID]bool{"n2": true, "n3": true}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	require.Equal(t, 1, tr.ackedSinceLocked(5, read, voters))
	require.Equal(t, 2, tr.ackedSinceLocked(5, read, nil))
}

// A read round's majority comes from the voters of the shard's Raft
// configuration (not --peers): on the leader of a three-voter shard, the two
// others, of whom one must accept.
func TestFollowerVotersComeFromRaft(t *testing.T) {
	c := newTestCluster(t, 3, 1, func(cfg *Config) { cfg.BalanceInterval = -1 })
	c.waitLeaders()
	s := c.nodes[c.leaderOf(0)].shards[0]
	voters, need := s.followerVoters()
	require.Len(t, voters, 2)
	require.False(t, voters[raft.ServerID(s.n.cfg.ID)], "this node is not its own follower")
	require.Equal(t, 1, need)
}
