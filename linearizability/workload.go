package linearizability

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/shopspring/decimal"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// The workload's program and asset. Scale 0: amounts are whole points.
const (
	Program = "chaos"
	Asset   = "PTS"
)

// Limits of one operation of the workload.
const (
	// opAttemptTimeout bounds one call of the client library (its own
	// retries included): long enough to ride out an election, short enough
	// that a worker stuck behind a paused leader gives up and re-sends.
	opAttemptTimeout = 3 * time.Second
	// impatientTimeout is the one call an impatient worker makes before it
	// leaves the outcome to reconciliation: it makes indeterminate
	// operations common under faults, which is what the model must handle.
	impatientTimeout = 700 * time.Millisecond
	// maxOpCalls bounds the calls made with one idempotency key: a payment
	// system re-sends an indeterminate request with the same key a few
	// times, then leaves it for reconciliation.
	maxOpCalls = 3
	// requestTimeout is the client library's per-RPC timeout: a node that
	// does not answer within it is presumed gone.
	requestTimeout = time.Second
	// shortTTL* bound the lifetime of holds meant to expire during the run;
	// longTTL is for holds meant to be captured or released.
	shortTTLMinMs = 200
	shortTTLMaxMs = 2500
	longTTLMs     = 10 * 60 * 1000
)

// opWeights is the mix of operations (out of the sum). Reads are frequent
// so that stale or lost state is observed; freezes are rare and unfreezes
// a little more common, so accounts are mostly active.
var opWeights = [...]struct {
	kind   Kind
	weight int
}{
	{KindRead, 25}, {KindCredit, 20}, {KindDebit, 18}, {KindHold, 13},
	{KindCapture, 9}, {KindRelease, 7}, {KindFreeze, 2}, {KindUnfreeze, 6},
}

// Members returns n member names, each starting with prefix, spread over
// the shards as evenly as the names allow: every shard gets at least
// n/shards of them.
func Members(prefix string, n, shards int) []string {
	per := make([][]string, shards)
	want := (n + shards - 1) / shards
	for i := 0; len(flatten(per)) < n && i < 100*n; i++ {
		m := fmt.Sprintf("%sm%03d", prefix, i)
		s := ledger.ShardOf(Program, m, shards)
		if len(per[s]) < want {
			per[s] = append(per[s], m)
		}
	}
	return flatten(per)[:n]
}

func flatten(per [][]string) []string {
	var out []string
	for _, p := range per {
		out = append(out, p...)
	}
	return out
}

// heldHold is a hold a worker created (or may have) and may settle later.
type heldHold struct {
	member string
	key    string
	amount int64
}

// worker issues operations one at a time and records each in the history.
type worker struct {
	id  int
	rng *rand.Rand
	cl  *client.Client
	// epochs are the member sets the worker uses in turn, epochLen each
	// (the last one until the end): a long run spreads its operations over
	// many accounts so that each account's history stays small enough to
	// check.
	epochs   [][]string
	epochLen time.Duration
	began    time.Time
	hist     *History
	// direct, when set, are raw connections to every node: reads go to a
	// random node, bypassing routing (the broken variant's read path).
	direct []tallypb.LedgerClient
	holds  []heldHold
	closed []heldHold // settled holds, to try once more (HOLD_CLOSED)
	seq    int
	// impatient workers make one short call per key and never re-send.
	impatient bool
}

func newDirectClients(addrs []string) ([]tallypb.LedgerClient, []*grpc.ClientConn, error) {
	var lcs []tallypb.LedgerClient
	var ccs []*grpc.ClientConn
	for _, a := range addrs {
		cc, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			for _, c := range ccs {
				c.Close()
			}
			return nil, nil, err
		}
		ccs = append(ccs, cc)
		lcs = append(lcs, tallypb.NewLedgerClient(cc))
	}
	return lcs, ccs, nil
}

func (w *worker) pickKind() Kind {
	total := 0
	for _, x := range opWeights {
		total += x.weight
	}
	r := w.rng.IntN(total)
	for _, x := range opWeights {
		if r < x.weight {
			return x.kind
		}
		r -= x.weight
	}
	return KindRead
}

// next generates the next operation.
func (w *worker) next() Input {
	w.seq++
	key := fmt.Sprintf("w%d-%d", w.id, w.seq)
	members := w.epochs[0]
	if w.epochLen > 0 {
		members = w.epochs[min(int(time.Since(w.began)/w.epochLen), len(w.epochs)-1)]
	}
	in := Input{Kind: w.pickKind(), Member: members[w.rng.IntN(len(members))], Key: key}
	switch in.Kind {
	case KindRead:
		in.Key = ""
	case KindCredit:
		in.Amount = 1 + w.rng.Int64N(100)
	case KindDebit:
		in.Amount = 1 + w.rng.Int64N(120)
	case KindHold:
		in.Amount = 1 + w.rng.Int64N(60)
		if w.rng.IntN(2) == 0 {
			in.TTLMs = shortTTLMinMs + w.rng.Int64N(shortTTLMaxMs-shortTTLMinMs)
		} else {
			in.TTLMs = longTTLMs
		}
	case KindCapture, KindRelease:
		switch r := w.rng.IntN(20); {
		case r == 0:
			// A hold that never existed: HOLD_NOT_FOUND.
			in.HoldKey = fmt.Sprintf("ghost-%d-%d", w.id, w.seq)
		case r == 1 && len(w.closed) > 0:
			h := w.closed[w.rng.IntN(len(w.closed))]
			in.Member, in.HoldKey = h.member, h.key
		case len(w.holds) > 0:
			i := w.rng.IntN(len(w.holds))
			h := w.holds[i]
			w.holds = append(w.holds[:i], w.holds[i+1:]...)
			w.closed = append(w.closed, h)
			in.Member, in.HoldKey = h.member, h.key
			if in.Kind == KindCapture && w.rng.IntN(4) == 0 && h.amount > 1 {
				in.Amount = 1 + w.rng.Int64N(h.amount-1) // partial capture
			}
		default:
			return Input{Kind: KindCredit, Member: in.Member, Key: key, Amount: 1 + w.rng.Int64N(100)}
		}
	}
	return in
}

// run issues operations until stop is closed.
func (w *worker) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		in := w.next()
		e := w.do(in)
		w.hist.Add(e)
		if in.Kind == KindHold && e.Output.Status != NotApplied &&
			(e.Output.Status == Indeterminate || e.Output.Code == ledger.CodeOK) {
			w.holds = append(w.holds, heldHold{member: in.Member, key: in.Key, amount: in.Amount})
		}
	}
}

// do performs one operation: calls with the same idempotency key until the
// outcome is known, certainly not applied, or maxOpCalls calls were made.
func (w *worker) do(in Input) Entry {
	e := Entry{ClientID: w.id, Input: in, CallNs: w.hist.Now()}
	if in.Kind == KindRead {
		e.Attempts = 1
		ctx, cancel := context.WithTimeout(context.Background(), opAttemptTimeout)
		out, err := w.read(ctx, in.Member)
		cancel()
		e.ReturnNs = w.hist.Now()
		if err != nil {
			// A failed read has no effect: recorded, never constrains.
			e.Output = Output{Status: Indeterminate, Code: client.CodeOf(err)}
			e.Err = err.Error()
			e.ReturnNs = ReturnNever
			return e
		}
		e.Output = out
		return e
	}
	calls, timeout := maxOpCalls, opAttemptTimeout
	if w.impatient {
		calls, timeout = 1, impatientTimeout
	}
	indeterminate := false
	for e.Attempts < calls {
		e.Attempts++
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		res, err := w.cl.Apply(ctx, toClientOp(in))
		cancel()
		var ce *client.Error
		if err == nil || !errors.As(err, &ce) {
			// The op got a result (OK or a domain code).
			e.ReturnNs = w.hist.Now()
			e.Output = outputOf(res)
			e.Err = ""
			return e
		}
		e.Err = err.Error()
		if client.IsIndeterminate(err) {
			indeterminate = true
			continue
		}
		if !indeterminate {
			e.ReturnNs = w.hist.Now()
			e.Output = Output{Status: NotApplied, Code: ce.Code}
			return e
		}
		// Certainly not applied now, but an earlier call may have been.
	}
	e.ReturnNs = ReturnNever
	e.Output = Output{Status: Indeterminate, Code: ledger.CodeUnavailable}
	return e
}

func (w *worker) read(ctx context.Context, member string) (Output, error) {
	if w.direct != nil {
		lc := w.direct[w.rng.IntN(len(w.direct))]
		resp, err := lc.GetAccount(ctx, &tallypb.GetAccountRequest{Program: Program, Member: member, Asset: Asset})
		if err != nil {
			return Output{}, err
		}
		a := resp.GetAccount()
		return readOutput(a.GetPosted(), a.GetHeld(), a.GetState())
	}
	a, err := w.cl.GetAccount(ctx, Program, member, Asset)
	if err != nil {
		return Output{}, err
	}
	return Output{Status: Known, Code: ledger.CodeOK, HasAccount: true,
		Posted: a.Posted.IntPart(), Held: a.Held.IntPart(), Frozen: a.State == "FROZEN"}, nil
}

func readOutput(posted, held, state string) (Output, error) {
	p, err := decimal.NewFromString(posted)
	if err != nil {
		return Output{}, fmt.Errorf("posted %q: %w", posted, err)
	}
	h, err := decimal.NewFromString(held)
	if err != nil {
		return Output{}, fmt.Errorf("held %q: %w", held, err)
	}
	return Output{Status: Known, Code: ledger.CodeOK, HasAccount: true,
		Posted: p.IntPart(), Held: h.IntPart(), Frozen: state == "FROZEN"}, nil
}

func toClientOp(in Input) client.Op {
	op := client.Op{Program: Program, Member: in.Member, Asset: Asset, IdempotencyKey: in.Key}
	switch in.Kind {
	case KindCredit:
		op.Kind, op.Amount = ledger.OpCredit, decimal.NewFromInt(in.Amount)
	case KindDebit:
		op.Kind, op.Amount = ledger.OpDebit, decimal.NewFromInt(in.Amount)
	case KindHold:
		op.Kind, op.Amount, op.HoldTTL = ledger.OpHold, decimal.NewFromInt(in.Amount), time.Duration(in.TTLMs)*time.Millisecond
	case KindCapture:
		op.Kind, op.HoldKey, op.Asset = ledger.OpCaptureHold, in.HoldKey, ""
		if in.Amount > 0 {
			op.Amount = decimal.NewFromInt(in.Amount)
		}
	case KindRelease:
		op.Kind, op.HoldKey, op.Asset = ledger.OpReleaseHold, in.HoldKey, ""
	case KindFreeze:
		op.Kind = ledger.OpFreeze
	case KindUnfreeze:
		op.Kind = ledger.OpUnfreeze
	}
	return op
}

// outputOf converts an operation's result.
func outputOf(r client.Result) Output {
	out := Output{Status: Known, Code: r.Code, Seq: r.Seq, TimeMs: r.TimeMs, Replayed: r.Replayed}
	if r.Account != nil {
		out.HasAccount = true
		out.Posted, out.Held, out.Frozen = r.Account.Posted.IntPart(), r.Account.Held.IntPart(), r.Account.State == "FROZEN"
	}
	return out
}
