package client

import (
	"context"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// AccountRead is one answer of GetAccounts: the account, or Found false
// (ACCOUNT_NOT_FOUND).
type AccountRead struct {
	Found   bool
	Account Account
}

// GetAccounts reads many accounts linearizably: one GetAccounts request per
// shard and up to MaxBatchOps accounts (sent concurrently, each at one
// linearizable point of its shard, not one point across shards or
// requests), answers in input order. When a request fails, the error says
// so and its entries stay zero (Found false); an unreadable answer for one
// account spoils only its entry and its error's OpIndex names it: a caller
// must check the error before reading Found as "no such account".
//
// Config.MaxCallDuration bounds the whole call, not each request of it.
func (c *Client) GetAccounts(ctx context.Context, keys []ledger.AccountKey) ([]AccountRead, error) {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	byShard := map[int][]int{}
	var order []int
	for i, k := range keys {
		sh := c.ShardOf(k.Program, k.Member)
		if _, ok := byShard[sh]; !ok {
			order = append(order, sh)
		}
		byShard[sh] = append(byShard[sh], i)
	}
	out := make([]AccountRead, len(keys))
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(e *Error) {
		mu.Lock()
		errs = append(errs, e)
		mu.Unlock()
	}
	for _, sh := range order {
		idx := byShard[sh]
		for start := 0; start < len(idx); start += c.cfg.MaxBatchOps {
			part := idx[start:min(start+c.cfg.MaxBatchOps, len(idx))]
			wg.Add(1)
			go func() {
				defer wg.Done()
				refs := make([]*tallypb.AccountRef, len(part))
				for n, i := range part {
					refs[n] = &tallypb.AccountRef{Program: keys[i].Program, Member: keys[i].Member, Asset: keys[i].Asset}
				}
				reads, e := c.getAccountsPart(ctx, sh, refs)
				if e != nil {
					if e.OpIndex >= 0 && e.OpIndex < len(part) {
						e.OpIndex = part[e.OpIndex] // an index into keys
					} else {
						e.OpIndex = -1 // names no read of this request: no key either
					}
					fail(e)
					return
				}
				// A bad answer for one account names it and spoils
				// only its own entry.
				for n, i := range part {
					if out[i], e = accountReadFromProto(reads[n], sh); e != nil {
						e.OpIndex = i
						fail(e)
					}
				}
			}()
		}
	}
	wg.Wait()
	return out, joinErrors(errs)
}

func (c *Client) getAccountsPart(ctx context.Context, shard int, refs []*tallypb.AccountRef) ([]*tallypb.AccountRead, *Error) {
	req := &tallypb.GetAccountsRequest{Accounts: refs}
	var resp *tallypb.GetAccountsResponse
	if e := c.invoke(ctx, shard, false, false, func(actx context.Context, lc tallypb.LedgerClient) error {
		r, err := lc.GetAccounts(actx, req)
		if err != nil {
			return err
		}
		resp = r
		return nil
	}); e != nil {
		return nil, e
	}
	if len(resp.GetResults()) != len(refs) {
		return nil, newError(ledger.CodeInternal, shard, "get accounts: %d answers for %d accounts", len(resp.GetResults()), len(refs))
	}
	return resp.GetResults(), nil
}

func accountReadFromProto(r *tallypb.AccountRead, shard int) (AccountRead, *Error) {
	if r.GetCode() != string(ledger.CodeOK) {
		if r.GetCode() == string(ledger.CodeAccountNotFound) {
			return AccountRead{}, nil
		}
		return AccountRead{}, newError(ledger.Code(r.GetCode()), shard, "get accounts: %s", r.GetCode())
	}
	a, err := accountFromProto(r.GetAccount())
	if err != nil || a == nil {
		return AccountRead{}, newError(ledger.CodeInternal, shard, "get accounts: bad answer from server: %v", err)
	}
	return AccountRead{Found: true, Account: *a}, nil
}

// Read coalescing (Config.Coalesce): concurrent GetAccount calls of one
// shard are queued and sent as one GetAccounts by a fixed set of sender
// goroutines per shard, with no timer, exactly as writes are. Reads change
// nothing, so a caller that gives up simply stops waiting; a batch is
// retried as long as one of its callers waits, as a lone GetAccount would be.
// A read rejected on its merits fails only its own caller (GetAccount checks
// its input before it queues, so that is rare).

type pendingRead struct {
	ctx  context.Context
	ref  *tallypb.AccountRef
	done chan readOutcome // buffered
}

type readOutcome struct {
	read *tallypb.AccountRead
	err  *Error
}

type readQueue struct {
	c     *Client
	shard int

	mu      sync.Mutex
	cond    sync.Cond
	pending []*pendingRead
	closed  bool
	gone    int // reads given up since the last forget compaction
}

func (c *Client) readQueueFor(shard int) (*readQueue, *Error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, giveUpError(ErrClosed, shard, nil, false)
	}
	q, ok := c.readQueues[shard]
	if !ok {
		q = &readQueue{c: c, shard: shard}
		q.cond.L = &q.mu
		c.readQueues[shard] = q
		for range c.cfg.MaxInflightPerShard {
			go q.sender()
		}
	}
	return q, nil
}

func (q *readQueue) read(ctx context.Context, ref *tallypb.AccountRef) (*tallypb.AccountRead, *Error) {
	ctx, cancel := q.c.bounded(ctx)
	defer cancel()
	p := &pendingRead{ctx: ctx, ref: ref, done: make(chan readOutcome, 1)}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil, giveUpError(ErrClosed, q.shard, nil, false)
	}
	if n := len(q.pending); n > 0 && n >= q.c.cfg.MaxQueuedOps {
		q.mu.Unlock()
		return nil, queueFull(q.shard, n)
	}
	q.pending = append(q.pending, p)
	q.cond.Signal()
	q.mu.Unlock()
	select {
	case out := <-p.done:
		return out.read, out.err
	case <-ctx.Done():
		q.forget()
		return nil, giveUpError(ctx.Err(), q.shard, nil, false)
	}
}

// forget counts a read whose caller gave up and, once such reads may be half
// of the queue, drops them (as shardQueue.forget does for writes): a sender
// retrying one batch for a caller with no deadline would otherwise leave
// every read that timed out behind it queued, and send them all later.
func (q *readQueue) forget() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.gone++
	if 2*q.gone < len(q.pending) {
		return
	}
	q.pending = slices.DeleteFunc(q.pending, func(p *pendingRead) bool { return p.ctx.Err() != nil })
	q.gone = 0
}

func (q *readQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for _, p := range q.pending {
		p.done <- readOutcome{err: giveUpError(ErrClosed, q.shard, nil, false)}
	}
	q.pending = nil
	q.cond.Broadcast()
}

func (q *readQueue) sender() {
	for {
		q.mu.Lock()
		for len(q.pending) == 0 && !q.closed {
			q.cond.Wait()
		}
		if q.closed {
			q.mu.Unlock()
			return
		}
		// Reads whose callers have gone are dropped, not sent.
		var batch []*pendingRead
		k := 0
		for ; k < len(q.pending) && len(batch) < q.c.cfg.MaxBatchOps; k++ {
			if p := q.pending[k]; p.ctx.Err() == nil {
				batch = append(batch, p)
			}
		}
		rest := copy(q.pending, q.pending[k:])
		clear(q.pending[rest:])
		q.pending = q.pending[:rest]
		if rest > 0 {
			q.cond.Signal()
		}
		q.mu.Unlock()

		if len(batch) > 0 {
			q.send(batch)
		}
	}
}

// send reads batch and answers each caller. A rejection that blames one read
// (INVALID_ARGUMENT, WRONG_SHARD) goes to that read's caller and the rest
// are sent again; one that blames none sends each read on its own.
func (q *readQueue) send(batch []*pendingRead) {
	life := newBatchLife(q.c.ctx, batch, func(p *pendingRead) context.Context { return p.ctx })
	defer life.end()
	ctx := life.ctx
	pending := make([]int, len(batch)) // indexes into batch not yet answered
	for k := range batch {
		pending[k] = k
	}
	for len(pending) > 0 {
		refs := make([]*tallypb.AccountRef, len(pending))
		for i, k := range pending {
			refs[i] = batch[k].ref
		}
		reads, e := q.c.getAccountsPart(ctx, q.shard, refs)
		switch {
		case e == nil:
			for i, k := range pending {
				batch[k].done <- readOutcome{read: reads[i]}
			}
			return
		case len(pending) == 1 || !e.rejected() || e.GRPCCode == codes.Unimplemented:
			// Unimplemented is the server's (one from before
			// GetAccounts), not any read's: every caller learns it now
			// and reads one by one, rather than each read being sent
			// alone to a server that cannot serve it.
			for _, k := range pending {
				pe := *e
				pe.OpIndex = -1
				batch[k].done <- readOutcome{err: &pe}
			}
			return
		case e.OpIndex < 0 || e.OpIndex >= len(pending):
			for _, k := range pending {
				q.send([]*pendingRead{batch[k]})
			}
			return
		}
		pe := *e
		pe.OpIndex = -1
		k := pending[e.OpIndex]
		batch[k].done <- readOutcome{err: &pe}
		// Its caller has its answer: the batch lives on only for the
		// others (it used to stay alive, and retrying, for this one).
		life.answered(k)
		pending = append(pending[:e.OpIndex:e.OpIndex], pending[e.OpIndex+1:]...)
	}
}
