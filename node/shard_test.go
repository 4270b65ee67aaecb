package node

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/fsm"
	"github.com/tally-ledger/tally/ledger"
)

// fakeFuture is a raft.ApplyFuture that is answered when answer is called,
// or never.
type fakeFuture struct {
	ch   chan error
	resp interface{}
}

func newFakeFuture() *fakeFuture { return &fakeFuture{ch: make(chan error, 1)} }

func (f *fakeFuture) answer(err error, resp interface{}) {
	f.resp = resp
	f.ch <- err
}

func (f *fakeFuture) Error() error          { return <-f.ch }
func (f *fakeFuture) Index() uint64         { return 0 }
func (f *fakeFuture) Response() interface{} { return f.resp }

var _ raft.ApplyFuture = (*fakeFuture)(nil)

func TestAwaitFuture(t *testing.T) {
	stop := make(chan struct{})
	answered := newFakeFuture()
	answered.answer(raft.ErrLeadershipLost, nil)
	require.ErrorIs(t, awaitFuture(answered, time.Second, stop), raft.ErrLeadershipLost)

	require.ErrorIs(t, awaitFuture(newFakeFuture(), 20*time.Millisecond, stop), errNotAnswered)

	close(stop)
	require.ErrorIs(t, awaitFuture(newFakeFuture(), time.Minute, stop), raft.ErrRaftShutdown)
}

// A future Raft never answers must cost its own requests an UNAVAILABLE
// after the timeout, and must not hold up the entries behind it: before the
// bound, the completion loop waited for it forever and every later write of
// the shard on this node timed out.
func TestCompleteLoopSurvivesUnansweredFuture(t *testing.T) {
	n := &Node{logger: hclog.NewNullLogger(), cfg: Config{MaxInflightEntries: 4}}
	n.metrics = newMetrics(n)
	s := newShard(n, 0, nil)
	s.answerTimeout = 50 * time.Millisecond
	s.wg.Add(1)
	go s.completeLoop()
	defer s.stopLoops()

	newProposal := func() *proposal { return &proposal{res: make(chan proposalResult, 1)} }
	stuck, next := newProposal(), newProposal()
	s.inflight <- &entry{fut: newFakeFuture(), proposals: []*proposal{stuck}, start: time.Now()}
	f := newFakeFuture()
	want := []ledger.Result{{Code: ledger.CodeOK, Seq: 7}}
	f.answer(nil, fsm.Results{want})
	s.inflight <- &entry{fut: f, proposals: []*proposal{next}, start: time.Now()}

	wait := func(p *proposal) proposalResult {
		select {
		case r := <-p.res:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no answer")
			return proposalResult{}
		}
	}
	r := wait(stuck)
	var de *domainError
	require.True(t, errors.As(r.err, &de), "%v", r.err)
	require.Equal(t, ledger.CodeUnavailable, de.code)
	r = wait(next)
	require.NoError(t, r.err)
	require.Equal(t, want, r.results)
	var m dto.Metric
	require.NoError(t, n.metrics.unanswered.Write(&m))
	require.Equal(t, 1.0, m.GetCounter().GetValue())
}

// TestNoCommandsBetween: a restart skips restoring a snapshot only when every
// entry between the durable applied index and the snapshot is still in the
// log, changes no state, and is the snapshot's own history (same term at its
// index).
func TestNoCommandsBetween(t *testing.T) {
	logs := raft.NewInmemStore()
	types := []raft.LogType{raft.LogCommand, raft.LogNoop, raft.LogBarrier, raft.LogConfiguration, raft.LogCommand, raft.LogNoop}
	for i, typ := range types {
		term := uint64(1)
		if i+1 == 6 {
			term = 2 // a leader change: the new leader's no-op
		}
		require.NoError(t, logs.StoreLog(&raft.Log{Index: uint64(i + 1), Term: term, Type: typ}))
	}
	for _, tc := range []struct {
		applied, snap, snapTerm uint64
		want                    bool
	}{
		{1, 4, 1, true},  // no-op, barrier, configuration
		{1, 5, 1, false}, // a command at 5
		{5, 6, 2, true},
		{4, 4, 1, false}, // not behind: the caller does not ask
		{0, 1, 1, false}, // a command at 1
		{6, 8, 2, false}, // entries 7 and 8 are not in the log
		// The snapshot's entry 4 or 6 was written in another term than the
		// local one: the local entries are a deposed leader's tail, and the
		// snapshot's history may hold commands there.
		{1, 4, 3, false},
		{5, 6, 3, false},
	} {
		assert.Equal(t, tc.want, noCommandsBetween(logs, tc.applied, tc.snap, tc.snapTerm), "(%d, %d] term %d", tc.applied, tc.snap, tc.snapTerm)
	}
	require.NoError(t, logs.DeleteRange(1, 2))
	assert.False(t, noCommandsBetween(logs, 1, 4, 1), "entry 2 compacted away")
}

// TestDropAbandonedProposals: a proposal whose caller has gone is answered
// with its caller's reason and left out of the entry; the others keep
// their order, and the entry's op count follows.
func TestDropAbandonedProposals(t *testing.T) {
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	mk := func(ctx context.Context, ops int) *proposal {
		return &proposal{ctx: ctx, req: ledger.Request{Ops: make([]ledger.Op, ops)}, res: make(chan proposalResult, 1)}
	}
	a, b, c, d := mk(context.Background(), 2), mk(gone, 3), mk(nil, 1), mk(gone, 4)
	ps, ops := dropAbandoned([]*proposal{a, b, c, d}, 10)
	require.Equal(t, []*proposal{a, c}, ps)
	require.Equal(t, 3, ops)
	for _, p := range []*proposal{b, d} {
		select {
		case r := <-p.res:
			require.ErrorIs(t, r.err, context.Canceled)
		default:
			t.Fatal("an abandoned proposal was not answered")
		}
	}
	require.Empty(t, a.res)
	ps, ops = dropAbandoned([]*proposal{mk(gone, 5)}, 5)
	require.Empty(t, ps)
	require.Zero(t, ops)
}

// TestProposalQueueIsBoundedByOperations: a shard takes requests while the
// operations waiting for its proposer stay within maxQueued and refuses the
// next (UNAVAILABLE, counted), whatever their number; giving back places
// lets requests in again. Before, only the request count was bounded
// (8,192 of up to 8,000 operations each).
func TestProposalQueueIsBoundedByOperations(t *testing.T) {
	n := &Node{logger: hclog.NewNullLogger(), cfg: Config{MaxInflightEntries: 4}}
	n.metrics = newMetrics(n)
	s := newShard(n, 3, nil)
	s.maxQueued = 10_000
	require.NoError(t, s.reserveQueue(8_000))
	require.NoError(t, s.reserveQueue(2_000))
	err := s.reserveQueue(1)
	var de *domainError
	require.True(t, errors.As(err, &de), "%v", err)
	require.Equal(t, ledger.CodeUnavailable, de.code)
	require.Contains(t, err.Error(), "shard 3 is overloaded")
	require.Equal(t, map[string]string{metaNotApplied: "true", metaOverloaded: "true"}, de.meta, "the client must learn nothing applied")
	require.Equal(t, int64(10_000), s.queuedOps.Load(), "a refused request keeps no place")
	s.releaseQueue(8_000)
	require.NoError(t, s.reserveQueue(8_000))
	var m dto.Metric
	require.NoError(t, n.metrics.overloaded.Write(&m))
	require.Equal(t, 1.0, m.GetCounter().GetValue())
}

// A read that needs its term's Barrier leaves at its own deadline even while
// the Barrier cannot complete (it used to wait for it, up to 10 s), the
// reads that arrive meanwhile share the one Barrier, and once it completes
// no read of that term runs another.
func TestTermBarrierHonoursDeadlines(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	var term atomic.Uint64
	term.Store(3)
	b := termBarrier{
		term: term.Load,
		barrier: func() error {
			calls.Add(1)
			<-release
			return nil
		},
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	require.ErrorIs(t, b.wait(ctx, 3), context.DeadlineExceeded)
	require.Less(t, time.Since(start), 5*time.Second)

	waited := make(chan error, 2)
	for range 2 {
		go func() { waited <- b.wait(context.Background(), 3) }()
	}
	close(release)
	for range 2 {
		select {
		case err := <-waited:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("no answer after the barrier completed")
		}
	}
	require.NoError(t, b.wait(context.Background(), 3))
	require.Equal(t, int32(1), calls.Load(), "one Barrier for the term")

	// A new term needs a new Barrier; one that fails fails its reads.
	term.Store(4)
	failed := errors.New("leadership lost")
	b.barrier = func() error { calls.Add(1); return failed }
	require.ErrorIs(t, b.wait(context.Background(), 4), failed)
	require.Equal(t, int32(2), calls.Load())

	// A read of term 4 that meets a Barrier begun in term 5 knows its
	// leadership changed.
	term.Store(5)
	b.barrier = func() error { return nil }
	var de *domainError
	require.True(t, errors.As(b.wait(context.Background(), 4), &de))
	require.Equal(t, ledger.CodeUnavailable, de.code)

	// A read of term 7 that joins a Barrier begun in term 6, which then
	// fails (leadership lost in 6), runs one of its own instead of taking
	// that failure (found by review: one spurious failure per change).
	term.Store(6)
	unblock := make(chan struct{})
	var runs atomic.Int32
	b.barrier = func() error {
		if runs.Add(1) == 1 {
			<-unblock
			return failed
		}
		return nil
	}
	first := make(chan error, 1)
	go func() { first <- b.wait(context.Background(), 6) }()
	require.Eventually(t, func() bool { return runs.Load() == 1 }, 10*time.Second, time.Millisecond)
	term.Store(7)
	second := make(chan error, 1)
	go func() { second <- b.wait(context.Background(), 7) }()
	time.Sleep(20 * time.Millisecond) // let it join the term-6 run (it would also pass if not yet)
	close(unblock)
	require.ErrorIs(t, <-first, failed)
	require.NoError(t, <-second)
	require.Equal(t, int32(2), runs.Load())
}

// TestRaftErrorSaysWhatWasNotAppended: a failed Apply is marked not_applied
// exactly when hashicorp/raft certainly did not append the entry.
func TestRaftErrorSaysWhatWasNotAppended(t *testing.T) {
	s := &shard{}
	for _, tc := range []struct {
		err        error
		notApplied bool
	}{
		{raft.ErrEnqueueTimeout, true},
		{raft.ErrLeadershipTransferInProgress, true},
		{fmt.Errorf("barrier: %w", raft.ErrEnqueueTimeout), true},
		{raft.ErrLeadershipLost, false},
		{raft.ErrRaftShutdown, false},
		{raft.ErrAbortedByRestore, false},
		{errors.New("something else"), false},
	} {
		var de *domainError
		require.True(t, errors.As(s.raftError(tc.err), &de), "%v", tc.err)
		require.Equal(t, ledger.CodeUnavailable, de.code, "%v", tc.err)
		require.Equal(t, tc.notApplied, de.meta[metaNotApplied] == "true", "%v", tc.err)
	}
}
