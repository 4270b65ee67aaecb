package client

import (
	"context"
	"errors"
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

// Group states. A sender moves a group from queued to taken when it takes
// it into a batch, and from taken to sending just before an attempt carries
// it. An attempt whose answer proves that it applied nothing (NOT_LEADER, a
// refusal before proposal or on the merits) moves the group back to taken,
// unless an earlier attempt may have applied it (unknown): it then stays
// sending. A caller whose context ends moves its group from queued or taken
// to abandoned and is told "not applied"; no attempt carries an abandoned
// group, so that answer stays true. A caller that finds its group sending is
// told "indeterminate". Each race between a caller and a sender is decided
// by one compare-and-swap: a group is abandoned or carried, never both.
//
// Deciding this at the queue alone (queued: not applied, otherwise
// indeterminate) told a caller "indeterminate" when its batch had found no
// leader to send to, or every answer had been "not applied".
const (
	groupQueued int32 = iota
	groupTaken
	groupSending
	groupAbandoned
)

type group struct {
	ctx   context.Context
	ops   []*tallypb.Op
	state atomic.Int32
	// unknown is set once an attempt that carried the group may have
	// applied it; it never clears. Only the sender sets it.
	unknown atomic.Bool
	// last is the error of the last attempt that carried the group, for the
	// message of a caller that gives up.
	last atomic.Pointer[Error]
	done chan groupOutcome // buffered: a sender never blocks on a caller
}

type groupOutcome struct {
	results []*tallypb.OpResult
	// unknown, with results: an attempt before the one that answered may
	// have applied the group (see unsettled).
	unknown bool
	err     *Error // OpIndex relative to the group
}

// carry reports whether the next attempt may carry g, and marks it sending
// if so: only while its caller waits (one that left may be settling the op
// itself), and never once it has been abandoned.
func (g *group) carry() bool {
	return g.ctx.Err() == nil && (g.state.CompareAndSwap(groupTaken, groupSending) || g.state.Load() == groupSending)
}

// attempted records the failed attempt that carried g: back to taken if it
// certainly applied nothing of g and no earlier one may have.
func (g *group) attempted(e *Error) {
	g.last.Store(e)
	if e.definitelyNotApplied() && !g.unknown.Load() {
		g.state.CompareAndSwap(groupSending, groupTaken)
		return
	}
	g.unknown.Store(true)
}

// leave is the answer of a taken group whose caller has gone (cause, its
// context's error): not applied if no attempt may have carried it (it is
// abandoned then, and never sent), indeterminate otherwise.
func (g *group) leave(cause error, shard int) *Error {
	if g.state.CompareAndSwap(groupTaken, groupAbandoned) || g.state.Load() == groupAbandoned {
		return giveUpError(cause, shard, g.last.Load(), false)
	}
	return giveUpError(cause, shard, g.last.Load(), true)
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

// submit queues ops as one group and waits for their results; unknown
// reports, with results, that an attempt before the one that answered may
// have applied them.
func (q *shardQueue) submit(ctx context.Context, ops []*tallypb.Op) (res []*tallypb.OpResult, unknown bool, e *Error) {
	ctx, cancel := q.c.bounded(ctx)
	defer cancel()
	if err := ctx.Err(); err != nil {
		return nil, false, giveUpError(err, q.shard, nil, false)
	}
	g := &group{ctx: ctx, ops: ops, done: make(chan groupOutcome, 1)}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil, false, giveUpError(ErrClosed, q.shard, nil, false)
	}
	if q.queued > 0 && q.queued+len(ops) > q.c.cfg.MaxQueuedOps {
		queued := q.queued
		q.mu.Unlock()
		return nil, false, queueFull(q.shard, queued)
	}
	q.groups = append(q.groups, g)
	q.queued += len(ops)
	q.cond.Signal()
	q.mu.Unlock()

	select {
	case out := <-g.done:
		return out.results, out.unknown, q.settle(ctx, out.err)
	case <-ctx.Done():
	}
	if g.state.CompareAndSwap(groupQueued, groupAbandoned) {
		q.forget()
		return nil, false, giveUpError(ctx.Err(), q.shard, nil, false)
	}
	select {
	case out := <-g.done: // finished meanwhile: the outcome beats a guess
		return out.results, out.unknown, q.settle(ctx, out.err)
	default:
	}
	return nil, false, g.leave(ctx.Err(), q.shard)
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

// settle picks the error a caller sees once its outcome has come. One that
// comes back after the caller's own context has ended was caused by it (a
// batch is cancelled when its last caller leaves), so the caller is told its
// own reason (context.DeadlineExceeded or Canceled), as errors.go promises,
// not the batch's internal Canceled; an indeterminate failure stays so.
func (q *shardQueue) settle(ctx context.Context, err *Error) *Error {
	cause := ctx.Err()
	if err == nil || cause == nil || errors.Is(err, ErrClosed) {
		return err
	}
	if errors.Is(err.Err, context.Canceled) || errors.Is(err.Err, context.DeadlineExceeded) {
		ec := *err
		ec.Err = cause
		return &ec
	}
	if err.Indeterminate {
		return giveUpError(cause, q.shard, err, true)
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
// gave up after an attempt carried its group has been told "indeterminate"
// and may settle the operation itself (by re-sending it with its keys); were
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
	// answer hands group k its outcome; its caller no longer waits.
	answer := func(k int, out groupOutcome) {
		batch[k].done <- out
		life.answered(k)
	}
	pending := make([]int, len(batch)) // indexes into batch not yet answered
	for k := range batch {
		pending[k] = k
	}
	q.sendGroups(life.ctx, life.cancel, batch, pending, answer)
}

// sendGroups sends the pending groups of batch under ctx (cancel ends it)
// until each has its answer.
//
// Whether a group's outcome is unknown is the group's own (group.unknown):
// invoke knows it per round only, and a later round (after a blamed op is
// taken out) carries groups that were in an attempt of an earlier one: an
// error they get then is no proof that nothing applied (the attempt may
// still commit), so it stays indeterminate.
func (q *shardQueue) sendGroups(ctx context.Context, cancel context.CancelFunc, batch []*group, pending []int, answer func(int, groupOutcome)) {
	for len(pending) > 0 {
		sent, res, e := q.attempt(ctx, cancel, batch, pending)
		// The last attempt's outcome answers the groups it carried or, if
		// no attempt was made (the client closed, or no leader was found
		// before the batch ended), every group whose caller still waits.
		// A group left out had its caller gone: leave answers it, as that
		// caller did itself (one answer per group all the same).
		inSent := make(map[int]bool, len(sent))
		for _, k := range sent {
			inSent[k] = true
		}
		var carried []int
		for _, k := range pending {
			g := batch[k]
			if inSent[k] || (sent == nil && g.ctx.Err() == nil) {
				carried = append(carried, k)
			} else {
				answer(k, groupOutcome{err: g.leave(g.ctx.Err(), q.shard)})
			}
		}
		if e == nil {
			off := 0
			for _, k := range sent {
				n := len(batch[k].ops)
				answer(k, groupOutcome{results: res[off : off+n], unknown: batch[k].unknown.Load()})
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
		// outcome stays unknown (group.unknown): the earlier attempt may
		// still commit (a capture refused later for want of a hold that
		// attempt opened, say).
		if len(carried) <= 1 || !e.rejected() {
			deliverError(batch, carried, e, answer)
			return
		}
		if e.OpIndex < 0 {
			for _, k := range sent {
				g := batch[k]
				if err := g.ctx.Err(); err != nil {
					answer(k, groupOutcome{err: g.leave(err, q.shard)})
					continue
				}
				// Only while this group's caller waits: once it has been
				// told "indeterminate", its ops must not be sent again.
				gctx, gcancel := context.WithCancel(ctx)
				stop := context.AfterFunc(g.ctx, gcancel)
				q.sendGroups(gctx, gcancel, batch, []int{k}, answer)
				stop()
				gcancel()
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
		g := batch[sent[blamed]]
		ge := *e
		ge.OpIndex -= off
		ge.Indeterminate = e.Indeterminate || g.unknown.Load()
		answer(sent[blamed], groupOutcome{err: &ge})
		pending = append(sent[:blamed:blamed], sent[blamed+1:]...)
	}
}

// attempt sends the ops of the pending groups of batch whose callers still
// wait, with the usual retries, and reports which groups the last attempt
// carried (in order; the results and an error's OpIndex follow it). Every
// retry drops the groups whose callers have gone meanwhile. If none is left
// the call ends as given up (cancel ends ctx, which the callers' leaving
// is about to do anyway). sent is nil if no attempt was made.
func (q *shardQueue) attempt(ctx context.Context, cancel context.CancelFunc, batch []*group, pending []int) (sent []int, res []*tallypb.OpResult, e *Error) {
	var (
		resp *tallypb.SubmitResponse
		ops  []*tallypb.Op
	)
	e = q.c.invoke(ctx, q.shard, true, false, func(actx context.Context, lc tallypb.LedgerClient) error {
		sent, ops = sent[:0], ops[:0]
		for _, k := range pending {
			if batch[k].carry() {
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
			// Classified as invoke does, before its next attempt reads
			// the states.
			ae := fromRPC(err, q.shard)
			for _, k := range sent {
				batch[k].attempted(ae)
			}
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
		for _, k := range sent {
			batch[k].unknown.Store(true)
		}
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
		ge.Indeterminate = e.Indeterminate || g.unknown.Load()
		if e.OpIndex >= off && e.OpIndex < off+len(g.ops) {
			ge.OpIndex = e.OpIndex - off
		} else if e.rejected() && e.OpIndex >= 0 {
			// Another group's op was blamed. An indeterminate outcome
			// keeps a code that says so: a caller that reads the code
			// before IsIndeterminate must not take it for a refusal.
			ge.Code = ledger.CodeInvalidArgument
			if ge.Indeterminate {
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
