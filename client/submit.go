package client

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// Submit applies ops and returns one result per op, in the order of ops.
//
// The ops are split by shard; each shard's part goes to that shard's leader,
// all parts concurrently. A part larger than Config.MaxBatchOps is sent as
// consecutive chunks, one after another, so that the ops of one member apply
// in the order given: as the ledger does within one request, once an op of a
// member is answered UNAVAILABLE (not applied, not recorded), that member's
// ops in later chunks are not sent and hold UNAVAILABLE, "not sent". With
// linked=true all ops must be on one member (one program and member) and at
// most MaxBatchOps: they apply all or none. With Config.Coalesce, unlinked
// parts may share a request with other callers' ops; each caller still gets
// exactly its own results.
//
// Retries follow the package doc. The error is request-level: nil when every
// part got its results (check each Result's Code), else an *Error (or several
// joined, one per failed part). Invalid input that the client can see (no
// ops, DEFINE_ASSET, a linked request over members or MaxBatchOps, a key used
// twice, an oversize op) is refused before anything is sent, with nil
// results and the op's index in the error (an indeterminate error if a key
// of the call is still open: see the package doc); what only the server
// checks comes back as results.
// Any other error still returns len(ops) results: ops of parts that
// completed hold their outcomes, the others hold their part's error code,
// and Result.Indeterminate where that error is indeterminate (they may have
// applied); ops of chunks after a failed chunk were never sent and hold
// UNAVAILABLE, not indeterminate. Parts succeed or fail independently: an
// error, definite or not, says nothing about the ops of other parts, so read
// the Results, not the error, to learn what applied. A result can be
// Indeterminate with a nil error too: an op answered UNAVAILABLE (not
// applied, not recorded) after an earlier attempt of its request whose
// outcome is unknown (see Result.Indeterminate). An answer that records
// nothing for a key that an earlier call left indeterminate is Indeterminate
// too, and so is its part's error if it has one (see the package doc).
// Config.MaxCallDuration bounds the whole call.
func (c *Client) Submit(ctx context.Context, ops []Op, linked bool) ([]Result, error) {
	if len(ops) == 0 {
		return nil, newError(ledger.CodeInvalidArgument, -1, "submit: no operations")
	}
	shards := c.Shards()
	if linked && len(ops) > c.cfg.MaxBatchOps {
		return nil, c.refusedLocally(newError(ledger.CodeInvalidArgument, -1,
			"submit: %d linked operations is above the maximum %d of one request", len(ops), c.cfg.MaxBatchOps), ops, shards)
	}
	wire := make([]*tallypb.Op, len(ops))
	parts := make(map[int][]int) // shard -> indices into ops, in order
	var order []int              // shards in order of first appearance
	// A key is deduplicated on its member's shard only, so the ledger cannot
	// see one key used twice when the ops go to different shards (docs/
	// ARCHITECTURE.md, Known limits). Within one call the client can. By the
	// key alone, as the server checks a request (ledger.ValidateRequest);
	// an empty key is left for the server to refuse as missing.
	var keys map[string]int
	if len(ops) > 1 {
		keys = make(map[string]int, len(ops))
	}
	holds := make([]flightHold, 0, len(ops))
	for i, op := range ops {
		if op.Kind == ledger.OpDefineAsset {
			e := newError(ledger.CodeInvalidArgument, -1, "submit: DEFINE_ASSET applies on every shard: use DefineAsset")
			e.OpIndex = i
			return nil, c.refusedLocally(e, ops, shards)
		}
		if linked && (op.Program != ops[0].Program || op.Member != ops[0].Member) {
			e := newError(ledger.CodeInvalidArgument, -1, "submit: linked operations must all be on one member")
			e.OpIndex = i
			return nil, c.refusedLocally(e, ops, shards)
		}
		if keys != nil && op.IdempotencyKey != "" {
			if j, dup := keys[op.IdempotencyKey]; dup {
				e := newError(ledger.CodeInvalidArgument, -1, "submit: op %d: idempotency key %q is also used by op %d", i, op.IdempotencyKey, j)
				e.OpIndex = i
				return nil, c.refusedLocally(e, ops, shards)
			}
			keys[op.IdempotencyKey] = i
		}
		wire[i] = opToProto(op)
		if n := proto.Size(wire[i]); n > MaxOpBytes {
			// Only an op with over-long fields is this big. Refused here,
			// a request of them could exceed the node's message bound and
			// come back RESOURCE_EXHAUSTED, which reads as "maybe applied".
			e := newError(ledger.CodeInvalidArgument, -1, "submit: op %d is %d bytes on the wire, above the maximum %d of a valid op", i, n, MaxOpBytes)
			e.OpIndex = i
			return nil, c.refusedLocally(e, ops, shards)
		}
		s := ledger.ShardOf(op.Program, op.Member, shards)
		if _, ok := parts[s]; !ok {
			order = append(order, s)
		}
		parts[s] = append(parts[s], i)
		holds = c.open.inflight.add(holds, openKey{program: op.Program, key: op.IdempotencyKey, shard: s})
	}
	// Held until the answers are settled (the deferred end runs after
	// settleOpenKeys): see inflight.go.
	fl := c.open.inflight.take(holds)
	defer fl.end()

	// Config.MaxCallDuration bounds the call, not each request of it: a
	// part sent as many chunks must not hold its caller once per chunk.
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	results := make([]Result, len(ops))
	errs := make([]error, len(order))
	runPart := func(k int) {
		shard := order[k]
		idx := parts[shard]
		partOps := make([]*tallypb.Op, len(idx))
		for j, i := range idx {
			partOps[j] = wire[i]
		}
		out, e := c.submitPart(ctx, shard, partOps, linked)
		res := out.results
		if e == nil && len(res) != len(idx) {
			e = newError(ledger.CodeInternal, shard, "internal: %d results for %d operations", len(res), len(idx))
		}
		if e != nil && e.OpIndex >= 0 {
			if e.OpIndex < len(idx) {
				e.OpIndex = idx[e.OpIndex]
			} else {
				e.OpIndex = -1 // names no op of this part: no op of the call either
			}
		}
		for j, i := range idx {
			if j < len(res) && res[j] != nil {
				r, err := resultFromProto(res[j])
				if err != nil {
					// The server took the op and stored an outcome this
					// client cannot read: it may have applied.
					r = Result{Code: ledger.CodeInternal, Message: "bad result from server: " + err.Error(), Indeterminate: true}
					if e == nil {
						e = newError(ledger.CodeInternal, shard, "op %d: bad result from server: %v", i, err)
						e.OpIndex = i
						e.Indeterminate = true
					}
				}
				if j < len(out.unsettled) && out.unsettled[j] {
					r.Indeterminate = true
				}
				r.Shard = uint32(shard)
				results[i] = r
				continue
			}
			if e == nil {
				e = newError(ledger.CodeInternal, shard, "internal: no result for op %d", i)
			}
			if j >= out.unsent {
				// A chunk after the one that failed: never sent, so not
				// applied, whatever the failed chunk's outcome.
				results[i] = Result{Code: ledger.CodeUnavailable, Shard: uint32(shard),
					Message: "not sent: an earlier chunk of this shard's operations failed"}
				continue
			}
			results[i] = Result{Code: e.Code, Message: e.Message, Shard: uint32(shard), Indeterminate: e.Indeterminate}
		}
		if e != nil {
			errs[k] = e
		}
	}
	if len(order) == 1 {
		runPart(0)
	} else {
		var wg sync.WaitGroup
		for k := range order {
			wg.Go(func() { runPart(k) })
		}
		wg.Wait()
	}
	if !c.open.empty() || anyIndeterminate(results) || fl.anyOverlapped() {
		c.settleOpenKeys(ops, results, order, parts, errs, fl)
	}
	return results, joinErrors(errs)
}

func anyIndeterminate(results []Result) bool {
	for _, r := range results {
		if r.Indeterminate {
			return true
		}
	}
	return false
}

// settleOpenKeys applies a Submit's answers to the record of open keys
// (openkeys.go): the keys of Indeterminate results are recorded, recorded
// answers settle theirs, and an answer that records nothing for a key still
// open, or for a key that another call of this Client sent during this one
// (fl, inflight.go), is made Indeterminate, with its part's error, if any,
// made indeterminate too (IsIndeterminate then holds for Apply's error).
// Every mutating call but DefineAsset goes through Submit, so this is the
// one place that applies the rule to ops.
func (c *Client) settleOpenKeys(ops []Op, results []Result, order []int, parts map[int][]int, errs []error, fl flight) {
	o := c.open
	now := o.lock()
	defer o.unlock()
	for k, shard := range order {
		marked := false
		for _, i := range parts[shard] {
			a := answerUnrecorded
			switch {
			case results[i].Indeterminate:
				a = answerUnknown
			case recordedOutcome(results[i].Replayed, results[i].Seq, results[i].Code):
				a = answerRecorded
			}
			k := openKey{program: ops[i].Program, key: ops[i].IdempotencyKey, shard: shard}
			if o.answerLocked(k, a, now) || (a == answerUnrecorded && fl.overlapped(k)) {
				results[i].Indeterminate = true
				marked = true
			}
		}
		if e, ok := errs[k].(*Error); ok && marked && !e.Indeterminate {
			errs[k] = stillOpen(e)
		}
	}
}

// stillOpen is e, a "not applied" answer, made indeterminate because an
// earlier call may have left an op's key open (openkeys.go), or another
// call sent the key meanwhile (inflight.go).
func stillOpen(e *Error) *Error {
	ec := *e
	ec.Indeterminate = true
	ec.Message += "; nothing was recorded under the key, and another call of this client with the same key (one with an unknown outcome, or one sent meanwhile) may have applied it or may still apply it"
	return &ec
}

// refusedLocally is e, the refusal of ops by the client before anything
// was sent, made indeterminate if a key of ops is open, or held by a call in
// progress (inflight.go): like an unrecorded answer, it says only that this
// call applied nothing.
func (c *Client) refusedLocally(e *Error, ops []Op, shards int) *Error {
	keys := make([]openKey, len(ops))
	for i, op := range ops {
		keys[i] = openKey{program: op.Program, key: op.IdempotencyKey, shard: defineAssetShard}
		if op.Kind != ledger.OpDefineAsset {
			keys[i].shard = ledger.ShardOf(op.Program, op.Member, shards)
		}
	}
	if c.open.anyOpen(keys) || c.open.inflight.held(keys) {
		return stillOpen(e)
	}
	return e
}

// recordsAnswer reports whether the ledger recorded r under its op's key, so
// that an earlier attempt of the op would replay it: exactly a replay or an
// answer with a sequence number, which the ledger stamps on every outcome it
// records (refusals included) and on nothing else; an answer it does not
// record (UNAVAILABLE, a fresh LINKED_FAILED of a linked request that
// records nothing, a request that fails validation at apply) has none.
// IDEMPOTENCY_KEY_REUSED is not recorded for this op, but the key is
// recorded for another, so this op can never apply under it: that settles
// it too.
func recordsAnswer(r *tallypb.OpResult) bool {
	return recordedOutcome(r.GetReplayed(), r.GetSeq(), ledger.Code(r.GetCode()))
}

// recordedOutcome is recordsAnswer's rule, for a result already read (a
// Result keeps the three fields it looks at; one the client made up for a
// failed or unsent op has no sequence number).
func recordedOutcome(replayed bool, seq uint64, code ledger.Code) bool {
	return replayed || seq != 0 || code == ledger.CodeIdempotencyKeyReused
}

// partOutcome is what one shard's part of a Submit got back.
type partOutcome struct {
	// results holds one result per op of the part, nil where none came
	// back (the part, or its chunk, failed).
	results []*tallypb.OpResult
	// unsettled, nil or one per op, marks results that leave their op's
	// outcome open (see unsettled).
	unsettled []bool
	// unsent is the index of the first op never sent, len(ops) if every op
	// was: the chunks after a failed one are not sent.
	unsent int
}

// submitPart sends ops of one shard and returns their results. On error the
// results of the chunks that completed are returned (nil entries for the
// rest) and the error's OpIndex is relative to ops.
func (c *Client) submitPart(ctx context.Context, shard int, ops []*tallypb.Op, linked bool) (partOutcome, *Error) {
	if c.cfg.Coalesce && !linked && len(ops) <= c.cfg.MaxBatchOps {
		q, err := c.queue(shard)
		if err != nil {
			return partOutcome{unsent: len(ops)}, err
		}
		res, unknown, err := q.submit(ctx, ops)
		return partOutcome{results: res, unsettled: unsettled(res, unknown), unsent: len(ops)}, err
	}
	out := partOutcome{results: make([]*tallypb.OpResult, 0, len(ops)), unsent: len(ops)}
	// Within one request the ledger answers the later ops of a member
	// UNAVAILABLE (unrecorded) after one of its ops was (rules version 4),
	// so that they apply in order or not at all. Across chunks the client
	// does the same: a later chunk does not send the ops of a member with
	// an op answered UNAVAILABLE in an earlier one. Sent, a Capture could
	// be refused HOLD_NOT_FOUND, recorded, for want of the Hold deferred
	// before it, its key spent (found by review).
	var deferred map[memberRef]bool
	for start := 0; start < len(ops); start += c.cfg.MaxBatchOps {
		end := min(start+c.cfg.MaxBatchOps, len(ops))
		chunk := ops[start:end]
		sent, pos := heldBack(chunk, deferred)
		var (
			res     []*tallypb.OpResult
			unknown bool
			e       *Error
		)
		if len(sent) > 0 {
			res, unknown, e = c.submitDirect(ctx, shard, sent, linked)
		}
		if e != nil && e.OpIndex >= len(sent) {
			e.OpIndex = -1 // names no op that was sent
		}
		marks := unsettled(res, unknown)
		// chunkRes is res spread over chunk: the held-back ops get their
		// "not sent" answer, even when the chunk failed.
		chunkRes := res
		if pos != nil {
			chunkRes = make([]*tallypb.OpResult, len(chunk))
			for j := range chunkRes {
				chunkRes[j] = &tallypb.OpResult{Code: string(ledger.CodeUnavailable),
					Message: "not sent: an earlier op of this member in the call was not applied; send it again with the same key"}
			}
			var spread []bool
			if marks != nil {
				spread = make([]bool, len(chunk))
			}
			for n, j := range pos {
				chunkRes[j] = nil
				if e == nil {
					chunkRes[j] = res[n]
				}
				if marks != nil {
					spread[j] = marks[n]
				}
			}
			marks = spread
			if e != nil && e.OpIndex >= 0 {
				e.OpIndex = pos[e.OpIndex]
			}
		}
		if e != nil {
			if e.OpIndex >= 0 {
				e.OpIndex += start
			}
			tail := make([]*tallypb.OpResult, len(ops)-start)
			if pos != nil {
				copy(tail, chunkRes) // the held-back answers; nil for the rest
			}
			out.results = append(out.results, tail...)
			out.unsent = end
			return out, e
		}
		if marks != nil {
			if out.unsettled == nil {
				out.unsettled = make([]bool, len(ops))
			}
			copy(out.unsettled[start:], marks)
		}
		out.results = append(out.results, chunkRes...)
		for j, r := range chunkRes {
			if r.GetCode() == string(ledger.CodeUnavailable) && !r.GetReplayed() {
				if deferred == nil {
					deferred = make(map[memberRef]bool)
				}
				deferred[memberRef{program: chunk[j].GetProgram(), member: chunk[j].GetMember()}] = true
			}
		}
	}
	return out, nil
}

// memberRef names a member: the ledger orders the ops of one member.
type memberRef struct{ program, member string }

// heldBack returns the ops of chunk to send: all of them (pos nil) unless
// some are of deferred members, which are held back; pos then gives the
// index in chunk of each op sent.
func heldBack(chunk []*tallypb.Op, deferred map[memberRef]bool) (sent []*tallypb.Op, pos []int) {
	if len(deferred) == 0 {
		return chunk, nil
	}
	for j, op := range chunk {
		if !deferred[memberRef{program: op.GetProgram(), member: op.GetMember()}] {
			sent = append(sent, op)
			pos = append(pos, j)
		}
	}
	if len(pos) == len(chunk) {
		return chunk, nil
	}
	if pos == nil {
		pos = []int{} // none sent: every op held back
	}
	return sent, pos
}

// submitDirect sends one Submit RPC's worth of ops (<= MaxBatchOps) to the
// leader of shard, with retries. unknown reports that an attempt before the
// one that answered may have applied.
func (c *Client) submitDirect(ctx context.Context, shard int, ops []*tallypb.Op, linked bool) (res []*tallypb.OpResult, unknown bool, e *Error) {
	req := &tallypb.SubmitRequest{Ops: ops, Linked: linked}
	var resp *tallypb.SubmitResponse
	e, unknown = c.invokeTracked(ctx, shard, true, false, func(actx context.Context, lc tallypb.LedgerClient) error {
		r, err := lc.Submit(actx, req)
		if err != nil {
			return err
		}
		resp = r
		return nil
	})
	if e != nil {
		return nil, unknown, e
	}
	if got := len(resp.GetResults()); got != len(ops) {
		e := newError(ledger.CodeInternal, shard, "server returned %d results for %d operations", got, len(ops))
		e.Indeterminate = true // it did something; we cannot tell what
		return nil, true, e
	}
	return resp.GetResults(), unknown, nil
}

// unsettled marks the results of one request that leave their op's outcome
// open, given that an earlier attempt of the request may have applied
// (unknown); nil when none does.
//
// An answer the ledger did not record (recordsAnswer: an op answered
// UNAVAILABLE under rules version 4, refused only because expired holds
// wait to be released; the LINKED_FAILED of a linked request that records
// nothing; a request that fails validation at apply) leaves the op's key
// free, and the earlier attempt, if it still sits in the leader's queue or
// in an uncommitted Raft entry, may apply it afterwards. A recorded answer
// is what the earlier attempt would replay.
func unsettled(res []*tallypb.OpResult, unknown bool) []bool {
	if !unknown {
		return nil
	}
	var marks []bool
	for j, r := range res {
		if recordsAnswer(r) {
			continue
		}
		if marks == nil {
			marks = make([]bool, len(res))
		}
		marks[j] = true
	}
	return marks
}

// joinErrors returns nil, the one non-nil error, or all of them joined.
func joinErrors(errs []error) error {
	var nonNil []error
	for _, err := range errs {
		if err != nil {
			nonNil = append(nonNil, err)
		}
	}
	switch len(nonNil) {
	case 0:
		return nil
	case 1:
		return nonNil[0]
	}
	return errors.Join(nonNil...)
}
