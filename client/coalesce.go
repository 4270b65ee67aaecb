package client

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// Coalescing: each shard has a queue of groups (one caller's unlinked ops of
// that shard) and Config.MaxInflightPerShard sender goroutines. A sender takes
// every queued group that fits in one request (up to MaxBatchOps ops, whole
// groups only, so one caller's ops stay in order and in one request), sends
// it with the usual retries, and hands each group its slice of the results.
// There is no timer: an idle sender sends a lone op at once, and while all
// senders are busy the queue grows into the next, larger batch. Goroutines
// per shard are fixed; ops cost a queue slot and a channel, not a goroutine.

// Group states. A group moves from queued to taken (a sender owns it; it may
// reach a server) or to abandoned (its caller gave up first; it is never
// sent). The compare-and-swap between the two decides whether a caller whose
// context ends gets a plain or an indeterminate error.
const (
	groupQueued int32 = iota
	groupTaken
	groupAbandoned
)

type group struct {
	ctx   context.Context
	ops   []*tallypb.Op
	state atomic.Int32
	done  chan groupOutcome // buffered: a sender never blocks on a caller
}

type groupOutcome struct {
	results []*tallypb.OpResult
	err     *Error // OpIndex relative to the group
}

type shardQueue struct {
	c     *Client
	shard int

	mu     sync.Mutex
	cond   sync.Cond
	groups []*group
	closed bool
	// abandoned counts groups abandoned since the queue was last
	// compacted (forget): an upper bound of those still in groups.
	abandoned int
	// queued is the number of ops in groups, whatever their state: it
	// bounds the queue (Config.MaxQueuedOps).
	queued int
}

// queueFull is the error of a call refused because its shard's queue holds
// queued ops already: nothing of it was sent.
func queueFull(shard, queued int) *Error {
	e := newError(ledger.CodeUnavailable, shard, "the client's queue for shard %d holds %d operations; retry later with the same keys", shard, queued)
	e.notProposed, e.overloaded = true, true
	return e
}

// queue returns shard's queue, starting it (and its senders) on first use.
func (c *Client) queue(shard int) (*shardQueue, *Error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, giveUpError(ErrClosed, shard, nil, false)
	}
	q, ok := c.queues[shard]
	if !ok {
		q = &shardQueue{c: c, shard: shard}
		q.cond.L = &q.mu
		c.queues[shard] = q
		for range c.cfg.MaxInflightPerShard {
			go q.sender()
		}
	}
	return q, nil
}

// submit queues ops as one group and waits for their results.
func (q *shardQueue) submit(ctx context.Context, ops []*tallypb.Op) ([]*tallypb.OpResult, *Error) {
	ctx, cancel := q.c.bounded(ctx)
	defer cancel()
	if err := ctx.Err(); err != nil {
		return nil, giveUpError(err, q.shard, nil, false)
	}
	g := &group{ctx: ctx, ops: ops, done: make(chan groupOutcome, 1)}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil, giveUpError(ErrClosed, q.shard, nil, false)
	}
	if q.queued > 0 && q.queued+len(ops) > q.c.cfg.MaxQueuedOps {
		queued := q.queued
		q.mu.Unlock()
		return nil, queueFull(q.shard, queued)
	}
	q.groups = append(q.groups, g)
	q.queued += len(ops)
	q.cond.Signal()
	q.mu.Unlock()

	select {
	case out := <-g.done:
		return out.results, q.settle(ctx, out.err)
	case <-ctx.Done():
	}
	if g.state.CompareAndSwap(groupQueued, groupAbandoned) {
		q.forget()
		return nil, giveUpError(ctx.Err(), q.shard, nil, false)
	}
	select {
	case out := <-g.done: // finished meanwhile: the outcome beats a guess
		return out.results, q.settle(ctx, out.err)
	default:
	}
	return nil, giveUpError(ctx.Err(), q.shard, nil, true)
}

// forget counts a group abandoned in the queue and, once such groups may be
// half of it, drops them all. take drops them too, but a sender can retry
// one batch for as long as a caller of it waits (a shard with no leader, a
// caller with no deadline), and meanwhile every caller that gave up in the
// queue left its group there, ops and all: a review found 1,998 of 2,000
// piled up behind one such batch. Halving keeps the cost linear.
func (q *shardQueue) forget() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.abandoned++
	if 2*q.abandoned < len(q.groups) {
		return
	}
	q.groups = slices.DeleteFunc(q.groups, func(g *group) bool {
		gone := g.state.Load() != groupQueued
		if gone {
			q.queued -= len(g.ops)
		}
		return gone
	})
	q.abandoned = 0
}

// settle picks the error a caller sees. An indeterminate failure that comes
// back once the caller's own context has ended was caused by it (a batch is
// cancelled when its last caller leaves), so the caller is told its own
// reason (context.DeadlineExceeded or Canceled), still as indeterminate,
// whichever of the two it noticed first.
func (q *shardQueue) settle(ctx context.Context, err *Error) *Error {
	if err != nil && err.Indeterminate && ctx.Err() != nil {
		return giveUpError(ctx.Err(), q.shard, err, true)
	}
	return err
}

// close fails queued groups with ErrClosed and stops the senders.
func (q *shardQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for _, g := range q.groups {
		if g.state.CompareAndSwap(groupQueued, groupTaken) {
			g.done <- groupOutcome{err: giveUpError(ErrClosed, q.shard, nil, false)}
		}
	}
	q.groups = nil
	q.queued = 0
	q.cond.Broadcast()
}

func (q *shardQueue) sender() {
	for {
		batch := q.take()
		if batch == nil {
			return
		}
		q.send(batch)
	}
}

// take blocks until groups are queued and takes as many whole groups as fit
// in one request (at least one). It returns nil once the queue is closed,
// and only then: a sender that gets nil exits.
//
// Groups whose callers gave up while they waited are dropped here. If every
// queued group was, take waits for more instead of returning the empty
// batch: it used to return it, its sender took that for a closed queue and
// exited, and once every sender of a shard had gone (a few rounds of callers
// timing out in the queue, which faults cause) every write to that shard
// waited in the queue until its caller gave up, for good. A chaos run lost a
// shard's writes that way for minutes while its reads, which have their own
// queue, worked.
func (q *shardQueue) take() []*group {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		for len(q.groups) == 0 && !q.closed {
			q.cond.Wait()
		}
		if q.closed {
			return nil
		}
		var (
			batch []*group
			keys  map[string]bool // the batch's idempotency keys, once it has two groups
			later []*group        // groups left for the next batch
		)
		nOps, k, scanned := 0, 0, 0
		for ; k < len(q.groups); k++ {
			g := q.groups[k]
			if len(batch) > 0 && nOps+len(g.ops) > q.c.cfg.MaxBatchOps {
				break
			}
			scanned += len(g.ops)
			if len(batch) > 0 {
				if keys == nil {
					keys = make(map[string]bool, 2*nOps)
					addKeys(keys, batch[0].ops)
				}
				// Two callers sending one key at once (a webhook delivered
				// twice) must not share a request: the server refuses a
				// request with a key twice. Sent in separate requests (one
				// after the other with one sender per shard; with more,
				// possibly at once, and the shard's log orders them), the
				// later gets the earlier's result, replayed, or
				// IDEMPOTENCY_KEY_REUSED.
				if hasKey(keys, g.ops) {
					later = append(later, g)
					continue
				}
			}
			if g.state.CompareAndSwap(groupQueued, groupTaken) {
				batch = append(batch, g)
				nOps += len(g.ops)
				if keys != nil {
					addKeys(keys, g.ops)
				}
			}
		}
		// Taken and dropped groups leave the queue; those left for later
		// stay in it.
		for _, g := range later {
			scanned -= len(g.ops)
		}
		q.queued -= scanned
		n := copy(q.groups, later)
		n += copy(q.groups[n:], q.groups[k:])
		clear(q.groups[n:])
		q.groups = q.groups[:n]
		if len(q.groups) > 0 {
			q.cond.Signal() // more for another idle sender
		}
		if len(batch) > 0 {
			return batch
		}
	}
}

func addKeys(keys map[string]bool, ops []*tallypb.Op) {
	for _, op := range ops {
		keys[op.GetIdempotencyKey()] = true
	}
}

func hasKey(keys map[string]bool, ops []*tallypb.Op) bool {
	for _, op := range ops {
		if keys[op.GetIdempotencyKey()] {
			return true
		}
	}
	return false
}

// send sends a batch and delivers each group its outcome. The batch lives as
// long as one of its callers still waits (and the client is open), and each
// attempt carries only the ops of callers that still wait. A caller that
// gave up after its group was taken has been told "indeterminate" and may
// settle the operation itself (by re-sending it with its keys); were
// the sender to go on re-sending that op for the callers that still wait,
// it could apply long after the caller settled it, and a caller with no
// deadline would keep it alive for good.
//
// A request rejected on its merits (INVALID_ARGUMENT, UNKNOWN_ASSET, ...) was
// not applied, so one caller's bad op must not fail the others: the blamed
// group gets the error and the rest is re-sent; a rejection that blames no op
// falls back to sending each group on its own.
func (q *shardQueue) send(batch []*group) {
	life := newBatchLife(q.c.ctx, batch, func(g *group) context.Context { return g.ctx })
	defer life.end()
	ctx, cancel := life.ctx, life.cancel
	// answer hands group k its outcome; its caller no longer waits.
	answer := func(k int, out groupOutcome) {
		batch[k].done <- out
		life.answered(k)
	}

	pending := make([]int, len(batch)) // indexes into batch not yet answered
	for k := range batch {
		pending[k] = k
	}
	// unknown: an attempt of this batch may have applied. invoke knows it
	// per round only, and a later round (after a blamed op is taken out)
	// carries groups that were in that attempt: an error they get then is
	// no proof that nothing applied (the attempt may still commit), so it
	// stays indeterminate.
	unknown := false
	for len(pending) > 0 {
		sent, res, e := q.attempt(ctx, cancel, batch, pending)
		if e != nil {
			unknown = unknown || e.Indeterminate
			if unknown && !e.Indeterminate {
				ec := *e
				ec.Indeterminate = true
				e = &ec
			}
		}
		if sent == nil {
			// No attempt was made (the client closed, or no leader was
			// found before the batch ended): every pending group shares
			// the outcome, which says nothing was sent.
			sent = pending
		}
		// Groups left out of the last attempt gave up before it: they hold
		// "indeterminate" if an earlier attempt carried them, and this
		// answer is only there so that every group gets exactly one.
		inSent := make(map[int]bool, len(sent))
		for _, k := range sent {
			inSent[k] = true
		}
		for _, k := range pending {
			if !inSent[k] {
				answer(k, groupOutcome{err: giveUpError(context.Cause(batch[k].ctx), q.shard, e, true)})
			}
		}
		if e == nil {
			off := 0
			for _, k := range sent {
				n := len(batch[k].ops)
				answer(k, groupOutcome{results: res[off : off+n]})
				off += n
			}
			return
		}
		// A rejection that blames an op isolates it even after an
		// attempt whose outcome was unknown (a timeout, an election), and
		// the rest are sent again with the same keys: they apply once or
		// replay. Failing them all instead told innocent callers
		// "INVALID_ARGUMENT" for ops that were fine, one bad capture
		// failing up to a whole batch. Until one gets a result, its
		// outcome stays unknown (unknown, above): the earlier attempt may
		// still commit (a capture refused later for want of a hold that
		// attempt opened, say).
		if len(sent) <= 1 || !e.rejected() {
			deliverError(batch, sent, e, answer)
			return
		}
		if e.OpIndex < 0 {
			for _, k := range sent {
				if err := context.Cause(batch[k].ctx); err != nil {
					// Gone meanwhile. The request just refused applied
					// nothing, but an earlier attempt that carried these
					// ops may still commit: e is indeterminate then
					// (unknown, above), and so is this answer.
					answer(k, groupOutcome{err: giveUpError(err, q.shard, e, e.Indeterminate)})
					continue
				}
				// Only while this group's caller waits: once it has been
				// told "indeterminate", its ops must not be sent again.
				gctx, gcancel := context.WithCancel(ctx)
				stop := context.AfterFunc(batch[k].ctx, gcancel)
				res, e := q.c.submitDirect(gctx, q.shard, batch[k].ops, false)
				stop()
				gcancel()
				if e != nil && unknown && !e.Indeterminate {
					ec := *e
					ec.Indeterminate = true
					e = &ec
				}
				if e != nil {
					deliverError(batch, []int{k}, e, answer)
				} else {
					answer(k, groupOutcome{results: res})
				}
			}
			return
		}
		blamed, off := -1, 0
		for j, k := range sent {
			if e.OpIndex < off+len(batch[k].ops) {
				blamed = j
				break
			}
			off += len(batch[k].ops)
		}
		if blamed < 0 { // an index past the request: trust nothing
			deliverError(batch, sent, e, answer)
			return
		}
		ge := *e
		ge.OpIndex -= off
		answer(sent[blamed], groupOutcome{err: &ge})
		pending = append(sent[:blamed:blamed], sent[blamed+1:]...)
	}
}

// attempt sends the ops of the pending groups of batch whose callers still
// wait, with the usual retries, and reports which groups the last attempt
// carried (in order; the results and an error's OpIndex follow it). Every
// retry drops the groups whose callers have gone meanwhile. If none is left
// the call ends as given up (cancel ends ctx, which the callers' leaving
// is about to do anyway).
func (q *shardQueue) attempt(ctx context.Context, cancel context.CancelFunc, batch []*group, pending []int) (sent []int, res []*tallypb.OpResult, e *Error) {
	var (
		resp *tallypb.SubmitResponse
		ops  []*tallypb.Op
	)
	e = q.c.invoke(ctx, q.shard, true, false, func(actx context.Context, lc tallypb.LedgerClient) error {
		sent, ops = sent[:0], ops[:0]
		for _, k := range pending {
			if batch[k].ctx.Err() == nil {
				sent = append(sent, k)
				ops = append(ops, batch[k].ops...)
			}
		}
		if len(sent) == 0 {
			cancel()
			return ctx.Err()
		}
		r, err := lc.Submit(actx, &tallypb.SubmitRequest{Ops: ops})
		if err != nil {
			return err
		}
		resp = r
		return nil
	})
	if e != nil {
		return sent, nil, e
	}
	if got := len(resp.GetResults()); got != len(ops) {
		e := newError(ledger.CodeInternal, q.shard, "server returned %d results for %d operations", got, len(ops))
		e.Indeterminate = true // it did something; we cannot tell what
		return sent, nil, e
	}
	return sent, resp.GetResults(), nil
}

// deliverError answers each group of batch named in sent with its own copy
// of e, with OpIndex made relative to the group (or -1 if the blamed op is
// another group's).
func deliverError(batch []*group, sent []int, e *Error, answer func(int, groupOutcome)) {
	off := 0
	for _, k := range sent {
		g := batch[k]
		ge := *e
		ge.OpIndex = -1
		if e.OpIndex >= off && e.OpIndex < off+len(g.ops) {
			ge.OpIndex = e.OpIndex - off
		} else if e.rejected() && e.OpIndex >= 0 {
			// Another group's op was blamed. An indeterminate outcome
			// keeps a code that says so: a caller that reads the code
			// before IsIndeterminate must not take it for a refusal.
			ge.Code = ledger.CodeInvalidArgument
			if e.Indeterminate {
				ge.Code = ledger.CodeUnavailable
			}
			ge.Message = "another operation of the request was rejected: " + e.Message
		}
		off += len(g.ops)
		answer(k, groupOutcome{err: &ge})
	}
}

// batchLife is the context of one coalesced request: it ends when the
// client closes or when none of the batch's callers still waits (each
// caller leaves when its context ends or when it got its answer), so
// retries are made only for someone.
type batchLife struct {
	ctx    context.Context
	cancel context.CancelFunc
	live   atomic.Int32
	stops  []func() bool
}

// newBatchLife starts the life of batch, whose k-th caller waits under
// callerCtx(batch[k]).
// batchLifeKey marks a batch's context: it ends when its last caller
// leaves, and each caller's own context is already bounded, so
// Client.bounded leaves it alone (found by review: bounding it cut callers
// with a longer deadline of their own short).
type batchLifeKey struct{}

func newBatchLife[T any](parent context.Context, batch []T, callerCtx func(T) context.Context) *batchLife {
	b := &batchLife{stops: make([]func() bool, len(batch))}
	b.ctx, b.cancel = context.WithCancel(context.WithValue(parent, batchLifeKey{}, true))
	b.live.Store(int32(len(batch)))
	for k, c := range batch {
		b.stops[k] = context.AfterFunc(callerCtx(c), b.leave)
	}
	return b
}

func (b *batchLife) leave() {
	if b.live.Add(-1) == 0 {
		b.cancel()
	}
}

// answered records that caller k has its answer and no longer waits.
func (b *batchLife) answered(k int) {
	if b.stops[k]() { // else its context ended first and it already left
		b.leave()
	}
}

// end releases the batch's context and watchers.
func (b *batchLife) end() {
	for _, stop := range b.stops {
		stop()
	}
	b.cancel()
}
