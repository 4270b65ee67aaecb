package node

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tally-ledger/tally/fsm"
	"github.com/tally-ledger/tally/ledger"
)

const (
	// proposeQueueLen bounds requests waiting for the proposer of one shard;
	// a full queue pushes back on handlers instead of growing memory.
	proposeQueueLen = 8192
	// maxQueuedOps bounds the operations of the requests waiting for a
	// shard's proposer, in its queue or for a place in it. The queue's
	// length bounds requests, and one may hold 8,000 operations: without
	// this, an overload could hold gigabytes of decoded requests before
	// anything pushed back. 2^18 operations (a few hundred bytes each
	// decoded) is tens of MB per shard, and over 16 entries' worth at
	// MaxOpsPerEntry: far above what the benchmarks queue (16 clients of
	// 1,000 operations at most).
	maxQueuedOps = 1 << 18
	// applyTimeout bounds how long Raft may take to accept an entry.
	applyTimeout = 5 * time.Second
	// expiryTick is how often a leader checks for holds past their expiry.
	expiryTick = 250 * time.Millisecond
	// answerTimeout bounds the wait for Raft to answer a future it accepted.
	// hashicorp/raft answers each one in the normal course (applied,
	// leadership lost, shut down), but an open report (hashicorp/raft#498)
	// has Apply futures that never complete around leader changes, and the
	// completion loop waits for entries in order: one unanswered future
	// would stop the shard's writes on this node for good. So after this
	// long its entry is answered UNAVAILABLE and the next one is waited for.
	// That is a true answer: the outcome is unknown, and clients retrying
	// with the same idempotency keys learn it. A commit normally takes
	// milliseconds, and a leader that cannot reach a quorum steps down
	// within its lease (0.5-1 s), answering its entries.
	answerTimeout = 10 * time.Second
)

// errNotAnswered is awaitFuture's error when Raft did not answer in time.
var errNotAnswered = errors.New("raft did not answer the entry in time; its outcome is unknown")

// awaitFuture waits for f at most timeout, or until stop is closed
// (ErrRaftShutdown). A future that is never answered leaves one goroutine
// blocked in its Error for good: the price of not blocking the caller.
func awaitFuture(f raft.Future, timeout time.Duration, stop <-chan struct{}) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errNotAnswered
	case <-stop:
		return raft.ErrRaftShutdown
	}
}

// await is awaitFuture with the shard's timeout and stop channel; it counts
// the futures Raft did not answer in time (tally_raft_unanswered_total).
func (s *shard) await(f raft.Future) error {
	err := awaitFuture(f, s.answerTimeout, s.stop)
	if errors.Is(err, errNotAnswered) {
		s.n.metrics.unanswered.Inc()
	}
	return err
}

// proposal is one client request waiting to be packed into a log entry.
type proposal struct {
	// ctx is the caller's: a proposal whose caller has gone before it is
	// packed is not proposed (see dropAbandoned).
	ctx context.Context
	req ledger.Request
	res chan proposalResult // buffered: the waiter never blocks
}

type proposalResult struct {
	results []ledger.Result
	err     error
}

// entry is one log entry in flight with the proposals it packs.
type entry struct {
	fut       raft.ApplyFuture
	proposals []*proposal
	ops       int
	start     time.Time
}

// shard is one Raft group on this node.
type shard struct {
	id    uint32
	n     *Node
	raft  *raft.Raft
	fsm   *fsm.FSM
	snaps raft.SnapshotStore
	trans *ackTransport

	// restores counts the FSM's snapshot restores, so a failed Restore
	// call can tell whether raft got as far as this node's state.
	restores atomic.Uint64

	proposeCh chan *proposal
	// queuedOps counts the operations of requests in proposeCh or waiting
	// to enter it (reserveQueue); maxQueued bounds it (maxQueuedOps).
	queuedOps atomic.Int64
	maxQueued int64
	inflight  chan *entry
	// answerTimeout is the package's answerTimeout; tests shorten it.
	answerTimeout time.Duration

	// ready tracks the term in which this node, as leader, has applied
	// every entry of earlier terms (a Barrier completed); reads need it.
	ready  termBarrier
	verify verifier
	// fullState admits one full state hash (ShardState with full) at a
	// time: each walks the whole shard and holds its balances in memory,
	// and any client may ask for one.
	fullState chan struct{}
	// checks is this node's comparisons of the shard's consistency checks
	// while it leads (consistency.go).
	checks replicaChecks

	stop chan struct{}
	wg   sync.WaitGroup
}

func newShard(n *Node, id uint32, f *fsm.FSM) *shard {
	s := &shard{
		id:        id,
		n:         n,
		fsm:       f,
		proposeCh: make(chan *proposal, proposeQueueLen),
		maxQueued: maxQueuedOps,
		inflight:  make(chan *entry, n.cfg.MaxInflightEntries),
		fullState: make(chan struct{}, 1),
		stop:      make(chan struct{}),

		answerTimeout: answerTimeout,
	}
	s.verify.s = s
	s.ready.term = s.raftTerm
	s.ready.barrier = s.barrier
	return s
}

func (s *shard) start() {
	if s.trans != nil && s.trans.guard != nil {
		s.wg.Add(1)
		go s.guardLoop()
	}
	s.wg.Add(7)
	go s.consistencyLoop()
	go s.proposeLoop()
	go s.completeLoop()
	go s.expiryLoop()
	go s.observeLoop()
	go s.versionLoop()
	minBytes := s.n.cfg.Raft.SnapshotLogBytes
	shards := s.n.cfg.Shards
	slot := s.n.peerRank()*shards + int(s.id)
	go s.snapshotLoop(minBytes, snapshotStagger(minBytes, slot, len(s.n.cfg.Peers)*shards))
}

func (s *shard) stopLoops() {
	close(s.stop)
	s.wg.Wait()
}

// propose submits a validated request and waits for its results.
func (s *shard) propose(ctx context.Context, req ledger.Request) ([]ledger.Result, error) {
	if err := s.n.refuseIfMisconfigured(); err != nil {
		return nil, notProposed(err)
	}
	if s.raft.State() != raft.Leader {
		return nil, s.notLeader()
	}
	if err := s.reserveQueue(len(req.Ops)); err != nil {
		return nil, err
	}
	p := &proposal{ctx: ctx, req: req, res: make(chan proposalResult, 1)}
	select {
	case s.proposeCh <- p: // proposeLoop gives its place back when it takes it
	case <-ctx.Done():
		s.releaseQueue(len(req.Ops))
		return nil, notProposed(ctx.Err())
	case <-s.stop:
		s.releaseQueue(len(req.Ops))
		return nil, notProposed(errUnavailable("node is shutting down"))
	}
	select {
	case r := <-p.res:
		return r.results, r.err
	case <-ctx.Done():
		// The request may still apply; the client resolves it by retrying
		// with the same idempotency key.
		return nil, ctx.Err()
	case <-s.stop:
		// Its entry may have been proposed (UNAVAILABLE: the outcome is
		// unknown), and the loops that would answer it are stopping.
		return nil, errUnavailable("node is shutting down")
	}
}

// reserveQueue takes a place for ops operations among those waiting for the
// proposer, or answers UNAVAILABLE when the shard has maxQueued waiting
// already: nothing of the request was proposed, and the client backs off
// and retries with the same keys.
func (s *shard) reserveQueue(ops int) error {
	if s.queuedOps.Add(int64(ops)) > s.maxQueued {
		s.queuedOps.Add(-int64(ops))
		s.n.metrics.overloaded.Inc()
		err := notProposed(errUnavailable(fmt.Sprintf("shard %d is overloaded: over %d operations wait for their entry; retry later with the same keys", s.id, s.maxQueued)))
		err.(*domainError).meta[metaOverloaded] = "true"
		return err
	}
	return nil
}

// releaseQueue gives back the place of ops operations.
func (s *shard) releaseQueue(ops int) { s.queuedOps.Add(-int64(ops)) }

// proposeLoop packs whatever requests are queued into one log entry, then
// hands the entry to completeLoop, so while Raft replicates one entry the
// next one fills up: batching without a timer.
func (s *shard) proposeLoop() {
	defer s.wg.Done()
	maxOps := s.n.cfg.MaxOpsPerEntry
	var buf []byte
	for {
		var first *proposal
		select {
		case first = <-s.proposeCh:
			s.releaseQueue(len(first.req.Ops))
		case <-s.stop:
			return
		}
		ps := []*proposal{first}
		ops := len(first.req.Ops)
	drain:
		for ops < maxOps {
			select {
			case p := <-s.proposeCh:
				s.releaseQueue(len(p.req.Ops))
				ps = append(ps, p)
				ops += len(p.req.Ops)
			default:
				break drain
			}
		}
		if ps, ops = dropAbandoned(ps, ops); len(ps) == 0 {
			continue
		}
		nowMs, err := s.n.stampMs()
		if err != nil {
			failAll(ps, notProposed(err))
			continue
		}
		cmd := ledger.Command{TimeMs: nowMs, Requests: make([]ledger.Request, len(ps))}
		for i, p := range ps {
			cmd.Requests[i] = p.req
		}
		buf = ledger.AppendCommand(buf[:0], cmd)
		data := append([]byte(nil), buf...) // Raft keeps the slice
		e := &entry{proposals: ps, ops: ops, start: time.Now()}
		e.fut = s.raft.Apply(data, applyTimeout)
		s.n.metrics.entryOps.Observe(float64(ops))
		select {
		case s.inflight <- e:
		case <-s.stop:
			failAll(ps, errUnavailable("node is shutting down"))
			return
		}
	}
}

// dropAbandoned answers, and leaves out of the entry, the proposals whose
// callers have gone (their deadline passed while they queued, as under
// overload), and returns the rest and their op count. Nobody waits for
// those any more, and their callers were told the outcome is unknown, so
// not applying them is one of the outcomes they allow: it saves the work
// under overload, and it keeps a request from applying long after its
// caller gave up on it. (One packed before its caller leaves still may:
// clients settle an unknown outcome by re-sending with the same keys.)
func dropAbandoned(ps []*proposal, ops int) ([]*proposal, int) {
	live := ps[:0]
	for _, p := range ps {
		if p.ctx != nil && p.ctx.Err() != nil {
			p.res <- proposalResult{err: p.ctx.Err()}
			ops -= len(p.req.Ops)
			continue
		}
		live = append(live, p)
	}
	clear(ps[len(live):])
	return live, ops
}

// completeLoop waits for entries in proposal order and answers their
// proposals. Raft completes futures in log order, so waiting in order costs
// nothing.
func (s *shard) completeLoop() {
	defer s.wg.Done()
	for {
		var e *entry
		select {
		case e = <-s.inflight:
		case <-s.stop:
			// Drain what is in flight: Raft shutdown fails their futures.
			for {
				select {
				case e := <-s.inflight:
					failAll(e.proposals, errUnavailable("node is shutting down"))
				default:
					return
				}
			}
		}
		err := s.await(e.fut)
		if errors.Is(err, errNotAnswered) {
			s.n.logger.Error("raft did not answer a log entry; its requests get UNAVAILABLE",
				"shard", s.id, "after", s.answerTimeout, "requests", len(e.proposals), "ops", e.ops, "state", s.raftState())
			failAll(e.proposals, errUnavailable(err.Error()))
			continue
		}
		if err != nil {
			failAll(e.proposals, s.raftError(err))
			continue
		}
		s.n.metrics.commitLatency.Observe(time.Since(e.start).Seconds())
		results, ok := e.fut.Response().(fsm.Results)
		if !ok || len(results) != len(e.proposals) {
			failAll(e.proposals, errInternal("apply returned no results"))
			continue
		}
		for i, p := range e.proposals {
			p.res <- proposalResult{results: results[i]}
		}
	}
}

// raftState is the shard's Raft state for logs; tests run without Raft.
func (s *shard) raftState() string {
	if s.raft == nil {
		return "none"
	}
	return s.raft.State().String()
}

func failAll(ps []*proposal, err error) {
	for _, p := range ps {
		p.res <- proposalResult{err: err}
	}
}

// raftError maps a failed Apply to what the client should do. NOT_LEADER is
// returned only when the entry was certainly not appended, and so is
// UNAVAILABLE marked not_applied (notProposed): hashicorp/raft (v1.8.0)
// answers ErrEnqueueTimeout when the entry never reached its queue (ApplyLog's
// timer) and ErrLeadershipTransferInProgress from the leader loop before it
// dispatches the entry; the balancer's transfers make the second common, and
// unmarked it read as "may have applied". Anything else is UNAVAILABLE,
// and the client, retrying with the same idempotency keys, learns the
// outcome either way (ErrRaftShutdown, say, also answers entries already
// appended).
func (s *shard) raftError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return s.notLeader()
	case errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return notProposed(errUnavailable(err.Error()))
	}
	return errUnavailable(err.Error())
}

func (s *shard) notLeader() error {
	_, id := s.raft.LeaderWithID()
	addr := ""
	if p, ok := s.n.cfg.peerByID(string(id)); ok && string(id) != s.n.cfg.ID {
		addr = p.GRPCAddr
	}
	return errNotLeader(s.id, addr)
}

// linearizable returns once a read served from local state now reflects
// every operation acknowledged before the call: this node is leader, has
// applied everything committed in earlier terms, and a quorum confirmed its
// leadership after the call began. Operations acknowledged in this term were
// applied here before their acknowledgement.
func (s *shard) linearizable(ctx context.Context) error {
	if err := s.n.refuseIfMisconfigured(); err != nil {
		return err
	}
	if UnsafeReadsBuilt && s.n.cfg.UnsafeLocalReads {
		return nil
	}
	if s.raft.State() != raft.Leader {
		return s.notLeader()
	}
	term := s.raft.CurrentTerm()
	if err := s.ready.wait(ctx, term); err != nil {
		return err
	}
	if err := s.verify.wait(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return s.raftError(err)
	}
	// The round confirmed the term it began in, which may be later than
	// the one whose barrier was checked above (a read that waited while
	// this node lost and won leadership again). Entries of the terms in
	// between may not be applied here yet; only a round in term itself
	// vouches for this read, and then the term is still term now.
	if s.raft.CurrentTerm() != term {
		return errUnavailable("leadership changed during the read")
	}
	return nil
}

func (s *shard) raftTerm() uint64 { return s.raft.CurrentTerm() }

// barrier commits and applies a Barrier entry: once it returns nil, every
// entry before it, those of earlier terms included, is applied here.
func (s *shard) barrier() error {
	if err := s.await(s.raft.Barrier(applyTimeout)); err != nil {
		return s.raftError(fmt.Errorf("barrier: %w", err)) // errNotAnswered too: UNAVAILABLE
	}
	return nil
}

// termBarrier runs at most one Barrier at a time for the reads that need
// one (the first reads of a term), in its own goroutine, so each waiting
// read still leaves at its own deadline: a Barrier can take up to
// applyTimeout (10 s) when the shard cannot commit.
type termBarrier struct {
	// term reads the current Raft term; barrier runs one Barrier.
	term    func() uint64
	barrier func() error

	ready atomic.Uint64 // the term of the last Barrier that completed
	mu    sync.Mutex
	run   *barrierRun // in flight, or nil
}

type barrierRun struct {
	term uint64 // the Raft term when it started
	done chan struct{}
	err  error
}

// wait returns once a Barrier that started in term has completed, joining
// the one in flight or starting one.
func (b *termBarrier) wait(ctx context.Context, term uint64) error {
	for b.ready.Load() != term {
		if b.term() > term {
			// This node lost and won leadership since the read began.
			return errUnavailable("leadership changed during the read")
		}
		b.mu.Lock()
		r := b.run
		if r == nil {
			r = &barrierRun{term: b.term(), done: make(chan struct{})}
			b.run = r
			go b.runOne(r)
		}
		b.mu.Unlock()
		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.err != nil && r.term >= term {
			return r.err
		}
		if r.term > term {
			// This node lost and won leadership since the read began.
			return errUnavailable("leadership changed during the read")
		}
		// A run that began in an earlier term vouches for nothing here,
		// and its failure (leadership lost then) says nothing of this
		// term either: go round and start one in this term.
	}
	return nil
}

func (b *termBarrier) runOne(r *barrierRun) {
	r.err = b.barrier()
	if r.err == nil {
		// A Barrier entry proposed in r.term or later: every entry of the
		// terms before r.term is applied.
		b.ready.Store(r.term)
	}
	b.mu.Lock()
	b.run = nil
	b.mu.Unlock()
	close(r.done)
}

// verifier shares one VerifyLeader round among all reads that arrive while
// another round is in flight: a read joins the next round, which starts
// after it arrived, so the confirmation is never older than the read. A
// round counts only once a quorum has accepted this node as leader in
// requests sent after the round started (ackTransport says why VerifyLeader
// alone is not enough).
type verifier struct {
	s       *shard
	mu      sync.Mutex
	running bool
	next    *verifyRound
}

type verifyRound struct {
	done chan struct{}
	err  error
}

func (v *verifier) wait(ctx context.Context) error {
	v.mu.Lock()
	if v.next == nil {
		v.next = &verifyRound{done: make(chan struct{})}
	}
	r := v.next
	if !v.running {
		v.running = true
		v.next = nil
		go v.run(r)
	}
	v.mu.Unlock()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (v *verifier) run(r *verifyRound) {
	for r != nil {
		r.err = v.s.confirmLeader()
		close(r.done)
		v.mu.Lock()
		r = v.next
		v.next = nil
		if r == nil {
			v.running = false
		}
		v.mu.Unlock()
	}
}

// maxVerifyTries bounds the VerifyLeader calls of one round. The first may
// be answered by heartbeats sent before the round began; the heartbeats it
// triggers are sent after, so their answers (waited for up to freshAckWait)
// normally settle it.
const maxVerifyTries = 4

// errStaleConfirmation: a leader that could not get fresh confirmations
// does not serve the read; the client retries (perhaps elsewhere).
var errStaleConfirmation = errors.New("node: leadership not confirmed by requests sent after the read")

// confirmLeader returns nil once this node is confirmed as leader by a
// quorum of acceptances of requests sent after the call began, in the term
// it began in.
func (s *shard) confirmLeader() error {
	start := time.Now()
	term := s.raft.CurrentTerm()
	voters, need := s.followerVoters()
	s.n.metrics.readRounds.Inc()
	for try := 0; try < maxVerifyTries; try++ {
		err := s.await(s.raft.VerifyLeader())
		s.n.metrics.verifyRounds.Inc()
		if err != nil {
			return err
		}
		// If VerifyLeader was answered by heartbeats sent before start, the
		// heartbeats it triggered are sent after them and are normally on
		// their way: wait for those answers rather than trigger more.
		confirmed := s.trans.waitAckedSince(term, start, voters, need, freshAckWait)
		if s.raft.CurrentTerm() != term {
			return raft.ErrNotLeader
		}
		if confirmed {
			return nil
		}
	}
	return errStaleConfirmation
}

// followerVoters returns the voters of the shard's Raft configuration other
// than this node, and how many of them make a majority with it. From Raft's
// configuration, not --peers: a node restarted with a shorter --peers than
// the group it belongs to would otherwise count too few acceptances as a
// majority (found by review), and acceptances from servers outside the
// configuration count for nothing.
func (s *shard) followerVoters() (voters map[raft.ServerID]bool, need int) {
	self := raft.ServerID(s.n.cfg.ID)
	servers := s.raft.GetConfiguration().Configuration().Servers
	voters = make(map[raft.ServerID]bool, len(servers))
	for _, sv := range servers {
		if sv.Suffrage == raft.Voter && sv.ID != self {
			voters[sv.ID] = true
		}
	}
	// A majority of the len(voters)+1 voters, this node included.
	return voters, (len(voters) + 1) / 2
}

// freshAckWait bounds the wait for answers to the heartbeats a VerifyLeader
// call triggered, before the round calls it again.
const freshAckWait = 50 * time.Millisecond

// expiryLoop makes hold expiry happen without traffic: when an open hold's
// expiry time has passed, the leader proposes an empty command (a tick),
// whose apply releases expired holds at that entry's log time. An entry
// releases at most ledger.MaxExpiriesPerEntry, so while expired holds remain
// after a tick the loop proposes the next at once rather than at the next
// tick of the timer: until they are released, debits and holds that only
// they refuse are answered UNAVAILABLE (ledger.Version4).
func (s *shard) expiryLoop() {
	defer s.wg.Done()
	t := time.NewTicker(expiryTick)
	defer t.Stop()
	var buf []byte
	for {
		running, leads := s.leaderTick(t)
		if !running {
			return
		}
		// tickMs is the log time of the last tick proposed (none yet: no
		// bound): a hold that expired by then and is still open was left by
		// that tick's bound. Holds that expire after it, one by one, wait
		// for the timer: each would otherwise chain another entry.
		tickMs := int64(math.MaxInt64)
		for leads {
			next, ok, err := s.fsm.NextExpiryMs()
			// Log time, not this node's clock, says what has expired: a
			// leader whose clock is behind the last entry's time still
			// proposes ticks for holds expired by then (apply uses the later
			// of the two).
			// A node that refuses requests stamps no entry either: its
			// clock may be the reason.
			stamp, serr := s.n.stampMs()
			now := max(stamp, s.fsm.LastTimeMs())
			if serr != nil || err != nil || !ok || next > now || next > tickMs {
				break
			}
			tickMs = now
			buf = ledger.AppendCommand(buf[:0], ledger.Command{TimeMs: now})
			if err := s.await(s.raft.Apply(append([]byte(nil), buf...), applyTimeout)); err != nil {
				break // not the leader any more, or stopping: the timer's next tick looks again
			}
			select {
			case <-s.stop:
				return
			default:
			}
			leads = s.raft.State() == raft.Leader
		}
	}
}

// leaderTick waits for t's next tick. running is false once the shard stops;
// leads says whether this node leads the shard at the tick.
func (s *shard) leaderTick(t *time.Ticker) (running, leads bool) {
	select {
	case <-t.C:
	case <-s.stop:
		return false, false
	}
	return true, s.raft.State() == raft.Leader
}

// observeLoop counts the leaders this node sees take the shard over and keeps
// the leader gauge current. It watches raft's leader observations, not
// LeaderCh: LeaderCh tells only this node's own gains and losses, and
// merges quick flips into one.
func (s *shard) observeLoop() {
	defer s.wg.Done()
	ch := make(chan raft.Observation, 64)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	s.raft.RegisterObserver(obs)
	defer s.raft.DeregisterObserver(obs)
	label := shardLabel(s.id)
	// A change is a leader other than the last one seen, or the same one in
	// a new term. A follower whose heartbeat was late forgets its leader
	// and sees it again with no election (pre-vote changes no term): not a
	// change. The state is read from raft, not the observation, so an
	// observation dropped from a full channel heals at the next one.
	var lastLeader raft.ServerID
	var lastTerm uint64
	look := func() {
		_, id := s.raft.LeaderWithID()
		v := 0.0
		if string(id) == s.n.cfg.ID {
			v = 1
		}
		s.n.metrics.isLeader.WithLabelValues(label).Set(v)
		if id == "" {
			return
		}
		if term := s.raft.CurrentTerm(); id != lastLeader || term != lastTerm {
			s.n.metrics.leaderChanges.WithLabelValues(label).Inc()
			lastLeader, lastTerm = id, term
		}
	}
	look() // raft may have elected a leader before the observer was registered
	for {
		select {
		case <-ch:
			look()
		case <-s.stop:
			return
		}
	}
}
