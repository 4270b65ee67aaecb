package node

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// ackedSince is ackedSinceLocked under the lock, for the tests.
func (t *ackTransport) ackedSince(term uint64, since time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ackedSinceLocked(term, since)
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
	require.False(t, tr.waitAckedSince(3, start, 1, 20*time.Millisecond))

	done := make(chan bool)
	go func() { done <- tr.waitAckedSince(3, start, 2, 10*time.Second) }()
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
