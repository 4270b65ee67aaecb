package linearizability

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// The workload's program and assets: points (scale 0: whole points) and
// stored value (scale 2: amounts in fen). Every member has an account in
// each, and the model's amounts are minor units of the op's asset.
const (
	Program     = "chaos"
	Asset       = "PTS"
	StoredValue = "CNY"
)

// assetScales are the workload's assets, their scales, and the balance
// limit each member's account of the asset opens with (minor units; 0:
// none). Stored-value cards are capped, as prepaid cards are by law in many
// places: 25.00 CNY is low enough that a run's recharges reach it, so
// credits and linked requests fail with LIMIT_EXCEEDED under faults too.
var assetScales = [...]struct {
	code       string
	scale      int32
	maxBalance int64
}{{Asset, 0, 0}, {StoredValue, 2, 2500}}

// scaleOf is asset's scale; ok is false for an asset the workload does not
// use.
func scaleOf(asset string) (scale int32, ok bool) {
	if i := accountIndex(asset); i >= 0 {
		return assetScales[i].scale, true
	}
	return 0, false
}

// minorUnits converts an amount of an asset of the given scale to minor
// units. An amount with more decimals than the scale (which the server must
// never report) becomes badAmount, which no state of the model matches.
func minorUnits(d decimal.Decimal, scale int32) int64 {
	m := d.Shift(scale)
	if !m.IsInteger() || !m.Equal(decimal.NewFromInt(m.IntPart())) {
		return badAmount
	}
	return m.IntPart()
}

// badAmount stands for an amount that is not a whole number of minor units.
const badAmount = math.MinInt64

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
	// hedgeMinMs and hedgeMaxMs bound how long a hedging worker waits for
	// its first call before it sends the second.
	hedgeMinMs = 2
	hedgeMaxMs = 60
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
// so that stale or lost state is observed; freezes and lost cards are rare
// and unfreezes and found cards a little more common, so accounts are mostly
// active (a frozen account refuses reports of a lost card and a lost one
// refuses freezes: INVALID_STATE). Closes are rarer still: most find money
// in the account (BALANCE_NOT_ZERO), and one that succeeds, mostly on a
// fresh account, ends it for the rest of its epoch (ACCOUNT_CLOSED).
var opWeights = [...]struct {
	kind   Kind
	weight int
}{
	{KindRead, 25}, {KindCredit, 20}, {KindDebit, 18}, {KindHold, 13},
	{KindCapture, 9}, {KindRelease, 7}, {KindFreeze, 2}, {KindUnfreeze, 6},
	{KindReportLost, 1}, {KindReportFound, 5}, {KindClose, 1}, {KindLinked, 8},
}

// linkedWeights is the mix of the ops within a linked request: what a
// payment system links (a recharge and its bonus, a spend and its points, an
// authorization and its capture), with debits large enough that some
// requests fail and must leave nothing behind. A rare close mostly finds
// money in the account and fails the whole request (BALANCE_NOT_ZERO); one
// that succeeds, mostly on a fresh account, closes it with the request.
var linkedWeights = [...]struct {
	kind   Kind
	weight int
}{
	{KindCredit, 30}, {KindDebit, 30}, {KindHold, 18}, {KindCapture, 10}, {KindRelease, 5},
	{KindFreeze, 2}, {KindUnfreeze, 5}, {KindReportLost, 1}, {KindReportFound, 2}, {KindClose, 1},
}

// Linked requests have minLinked to maxLinked ops.
const (
	minLinked = 2
	maxLinked = 4
)

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
	asset  string
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
	// many members so that each member's history stays small enough to
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
	// taken are the worker's holds the pending linked request settles:
	// closed if it applied (or may have), back to holds if it did not.
	taken []heldHold
	seq   int
	// impatient workers make one short call per key and never re-send.
	impatient bool
	// hedging workers send each write a second time, with the same key and
	// client, when the first call has not answered within hedgeMinMs to
	// hedgeMaxMs (hedged).
	hedging bool
	// last is the account the worker's last single op reported, on
	// lastMember's account: what a cash-out empties.
	last       Output
	lastMember string
}

func newDirectClients(addrs []string, creds credentials.TransportCredentials) ([]tallypb.LedgerClient, []*grpc.ClientConn, error) {
	var lcs []tallypb.LedgerClient
	var ccs []*grpc.ClientConn
	for _, a := range addrs {
		cc, err := grpc.NewClient(a, grpc.WithTransportCredentials(creds))
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

func (w *worker) pickKind() Kind { return pickWeighted(w.rng, opWeights[:]) }

// pickAsset picks one of the member's accounts.
func (w *worker) pickAsset() string { return assetScales[w.rng.IntN(len(assetScales))].code }

// pickWeighted draws a kind with the given weights.
func pickWeighted(rng *rand.Rand, weights []struct {
	kind   Kind
	weight int
}) Kind {
	total := 0
	for _, x := range weights {
		total += x.weight
	}
	r := rng.IntN(total)
	for _, x := range weights {
		if r < x.weight {
			return x.kind
		}
		r -= x.weight
	}
	return weights[0].kind
}

// holdTTL is a hold's lifetime: half expire during the run, half are
// meant to be captured or released.
func (w *worker) holdTTL() int64 {
	if w.rng.IntN(2) == 0 {
		return shortTTLMinMs + w.rng.Int64N(shortTTLMaxMs-shortTTLMinMs)
	}
	return longTTLMs
}

func (w *worker) nextKey() string {
	w.seq++
	return fmt.Sprintf("w%d-%d", w.id, w.seq)
}

// next generates the next operation.
func (w *worker) next() Input {
	key := w.nextKey()
	if w.rng.IntN(cashOutEvery) == 0 {
		if in, ok := w.cashOut(key); ok {
			return in
		}
	}
	members := w.epochs[0]
	if w.epochLen > 0 {
		members = w.epochs[min(int(time.Since(w.began)/w.epochLen), len(w.epochs)-1)]
	}
	in := Input{Kind: w.pickKind(), Member: members[w.rng.IntN(len(members))], Asset: w.pickAsset(), Key: key}
	switch in.Kind {
	case KindRead:
		in.Key = ""
	case KindLinked:
		return w.nextLinked(in.Member, key)
	case KindCredit:
		in.Amount = 1 + w.rng.Int64N(100)
	case KindDebit:
		in.Amount = 1 + w.rng.Int64N(120)
	case KindHold:
		in.Amount, in.TTLMs = 1+w.rng.Int64N(60), w.holdTTL()
	case KindCapture, KindRelease:
		switch r := w.rng.IntN(20); {
		case r == 0:
			// A hold that never existed: HOLD_NOT_FOUND.
			in.HoldKey = fmt.Sprintf("ghost-%d-%d", w.id, w.seq)
		case r == 1 && len(w.closed) > 0:
			h := w.closed[w.rng.IntN(len(w.closed))]
			in.Member, in.Asset, in.HoldKey = h.member, h.asset, h.key
		case len(w.holds) > 0:
			i := w.rng.IntN(len(w.holds))
			h := w.holds[i]
			w.holds = append(w.holds[:i], w.holds[i+1:]...)
			w.closed = append(w.closed, h)
			in.Member, in.Asset, in.HoldKey = h.member, h.asset, h.key
			if in.Kind == KindCapture && w.rng.IntN(4) == 0 && h.amount > 1 {
				in.Amount = 1 + w.rng.Int64N(h.amount-1) // partial capture
			}
		default:
			return Input{Kind: KindCredit, Member: in.Member, Asset: in.Asset, Key: key, Amount: 1 + w.rng.Int64N(100)}
		}
	}
	return in
}

// nextLinked generates a linked request of minLinked to maxLinked ops on
// member's accounts, each op on either (a recharge of stored value with its
// bonus points, a spend that earns points); key is the first op's. A capture
// or release settles a hold of an earlier op of the request, or one the
// worker holds on member.
func (w *worker) nextLinked(member, key string) Input {
	in := Input{Kind: KindLinked, Member: member}
	var own []heldHold // holds opened by this request and not yet settled
	n := minLinked + w.rng.IntN(maxLinked-minLinked+1)
	for i := range n {
		if i > 0 {
			key = w.nextKey()
		}
		op := Input{Kind: pickWeighted(w.rng, linkedWeights[:]), Member: member, Asset: w.pickAsset(), Key: key}
		switch op.Kind {
		case KindCredit:
			op.Amount = 1 + w.rng.Int64N(100)
		case KindDebit:
			op.Amount = 1 + w.rng.Int64N(150)
		case KindHold:
			op.Amount, op.TTLMs = 1+w.rng.Int64N(60), w.holdTTL()
			own = append(own, heldHold{member: member, asset: op.Asset, key: key, amount: op.Amount})
		case KindCapture, KindRelease:
			h, ok := w.takeHold(member, &own)
			if !ok {
				op = Input{Kind: KindCredit, Member: member, Asset: op.Asset, Key: key, Amount: 1 + w.rng.Int64N(100)}
				break
			}
			op.Asset, op.HoldKey = h.asset, h.key
			if op.Kind == KindCapture && w.rng.IntN(4) == 0 && h.amount > 1 {
				op.Amount = 1 + w.rng.Int64N(h.amount-1) // partial capture
			}
		}
		in.Ops = append(in.Ops, op)
	}
	return in
}

// cashOutEvery: one op in cashOutEvery is a cash-out when the worker's
// last op allows one. Each that succeeds ends an account for the rest of
// its epoch, so they are rare: about one a minute. At one in 2,000, 120 s
// runs closed 4 accounts each this way, and one ended with 12 of its 64
// accounts closed (cash-outs and plain closes), which starves the rest of
// the workload of accounts.
const cashOutEvery = 4000

// cashOut generates "refund the balance and close the card": a linked
// debit of everything the worker's last op saw posted on its account, then
// the account's close. It succeeds when no other worker changed the
// account in between, so both the success and the BALANCE_NOT_ZERO or
// INSUFFICIENT_FUNDS that leaves nothing behind run under faults. ok is
// false when that account had nothing posted, something held, or was not
// active.
func (w *worker) cashOut(key string) (Input, bool) {
	a, member := w.last, w.lastMember
	if !a.HasAccount || a.Posted <= 0 || a.Held != 0 || a.State != ledger.StateActive {
		return Input{}, false
	}
	return Input{Kind: KindLinked, Member: member, Ops: []Input{
		{Kind: KindDebit, Member: member, Asset: a.Asset, Key: key, Amount: a.Posted},
		{Kind: KindClose, Member: member, Asset: a.Asset, Key: w.nextKey()},
	}}, true
}

// takeHold picks a hold on member to settle: one of own (the request's
// own, removed from it) or of the worker's (moved to taken).
func (w *worker) takeHold(member string, own *[]heldHold) (heldHold, bool) {
	var mine []int
	for i, h := range w.holds {
		if h.member == member {
			mine = append(mine, i)
		}
	}
	k := w.rng.IntN(len(*own) + len(mine) + 1)
	switch {
	case k < len(*own):
		h := (*own)[k]
		*own = append((*own)[:k], (*own)[k+1:]...)
		return h, true
	case k < len(*own)+len(mine):
		i := mine[k-len(*own)]
		h := w.holds[i]
		w.holds = append(w.holds[:i], w.holds[i+1:]...)
		w.taken = append(w.taken, h)
		return h, true
	}
	return heldHold{}, false
}

// opened returns the holds an operation may have left open: its own hold,
// or a linked request's holds that no later op of it settles.
func opened(in Input) []heldHold {
	if in.Kind == KindHold {
		return []heldHold{{member: in.Member, asset: in.Asset, key: in.Key, amount: in.Amount}}
	}
	var hs []heldHold
	for i, op := range in.Ops {
		if op.Kind != KindHold {
			continue
		}
		settled := false
		for _, later := range in.Ops[i+1:] {
			settled = settled || ((later.Kind == KindCapture || later.Kind == KindRelease) && later.HoldKey == op.Key)
		}
		if !settled {
			hs = append(hs, heldHold{member: op.Member, asset: op.Asset, key: op.Key, amount: op.Amount})
		}
	}
	return hs
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
		w.last, w.lastMember = Output{}, ""
		if in.Kind != KindLinked && e.Output.Status == Known {
			w.last, w.lastMember = e.Output, in.Member
		}
		if e.Output.Status == Indeterminate || (e.Output.Status == Known && e.Output.Code == ledger.CodeOK) {
			w.holds = append(w.holds, opened(in)...)
			w.closed = append(w.closed, w.taken...)
		} else {
			// A linked request that failed settled nothing: its holds stay
			// open, to be settled by a later operation.
			w.holds = append(w.holds, w.taken...)
		}
		w.taken = w.taken[:0]
	}
}

// do performs one operation: calls with the same idempotency key until the
// outcome is known, certainly not applied, or maxOpCalls calls were made.
func (w *worker) do(in Input) Entry {
	e := Entry{ClientID: w.id, Input: in, CallNs: w.hist.Now(), CallWallMs: time.Now().UnixMilli()}
	if in.Kind == KindRead {
		e.Attempts = 1
		ctx, cancel := context.WithTimeout(context.Background(), opAttemptTimeout)
		out, err := w.read(ctx, in.Member, in.Asset)
		cancel()
		e.ReturnNs = w.hist.Now()
		out.WallMs = time.Now().UnixMilli()
		e.ReturnWallMs = out.WallMs
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
		var out Output
		var err error
		if w.hedging {
			var twice bool
			if out, err, twice = w.hedged(timeout, in); twice {
				e.Hedged++
			}
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			out, err = w.call(ctx, in)
			cancel()
		}
		e.ReturnWallMs = time.Now().UnixMilli()
		if err == nil && out.Code == ledger.CodeUnavailable {
			// Answered but neither applied nor recorded: a refusal while
			// the shard releases a backlog of expired holds (ledger.Version4).
			// Like a refusal before the proposal, but counted apart
			// (OpUnavailable): checkRefusals fails the run on it, as this
			// workload cannot build such a backlog.
			e.Err = string(out.Code)
			e.OpUnavailable++
			if !indeterminate {
				e.ReturnNs = w.hist.Now()
				e.Output = Output{Status: NotApplied, Code: out.Code}
				return e
			}
			continue
		}
		if err == nil {
			// The op got a result (OK or a domain code).
			e.ReturnNs = w.hist.Now()
			e.Output = out
			e.Err = ""
			return e
		}
		e.Err = err.Error()
		var ce *client.Error
		if !errors.As(err, &ce) {
			// Not the client library's request-level error: nothing says
			// whether it applied.
			indeterminate = true
			continue
		}
		if client.IsIndeterminate(err) {
			indeterminate = true
			continue
		}
		if !indeterminate {
			e.ReturnNs = w.hist.Now()
			e.Output = Output{Status: NotApplied, Code: ce.Code}
			if in.Kind == KindLinked && ce.OpIndex >= 0 {
				e.Output.Blamed = ce.OpIndex + 1
			}
			return e
		}
		// Certainly not applied now, but an earlier call may have been.
	}
	e.ReturnNs = ReturnNever
	e.Output = Output{Status: Indeterminate, Code: ledger.CodeUnavailable}
	return e
}

// hedged is call as a payment service that hedges makes it (or a webhook
// delivered twice): a second call with the same key, on the same client,
// when the first has not answered within a random delay. A recorded outcome
// from either ends it at once (the other call can only replay it). Any
// other answer waits for the other call's, as a careful hedger must: the
// other call may still apply the op, so "not applied" holds only when both
// say so; a recorded outcome from the other wins, else either's
// indeterminate answer. (Taking the first "not applied" at once was
// unsound: a second call sent just before it, but counted in by the client
// only after it, may apply the op afterwards; found by review.) The client
// must not answer "not applied" for a key that another of its calls sent
// meanwhile (client/inflight.go): that call may have applied the op.
func (w *worker) hedged(timeout time.Duration, in Input) (out Output, err error, sentTwice bool) {
	type answer struct {
		out Output
		err error
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel() // the call still running, if one is
	answers := make(chan answer, 2)
	send := func() {
		out, err := w.call(ctx, in)
		answers <- answer{out, err}
	}
	go send()
	delay := time.NewTimer(time.Duration(hedgeMinMs+w.rng.IntN(hedgeMaxMs-hedgeMinMs)) * time.Millisecond)
	defer delay.Stop()
	select {
	case a := <-answers:
		return a.out, a.err, false // answered before the hedge was due
	case <-delay.C:
	}
	go send()
	first := <-answers
	if recordedAnswer(first.out, first.err) {
		return first.out, first.err, true
	}
	second := <-answers
	switch {
	case recordedAnswer(second.out, second.err):
		return second.out, second.err, true
	case indeterminateAnswer(first.err):
		return first.out, first.err, true
	case indeterminateAnswer(second.err):
		return second.out, second.err, true
	}
	return first.out, first.err, true
}

// recordedAnswer reports whether a call's answer is an outcome the ledger
// recorded under the key (a sequence number, or a replay), which any other
// call with the key can only replay.
func recordedAnswer(out Output, err error) bool {
	if err != nil {
		return false
	}
	if out.Seq != 0 || out.Replayed {
		return true
	}
	for _, o := range out.Ops {
		if o.Seq != 0 || o.Replayed {
			return true
		}
	}
	return false
}

// indeterminateAnswer reports whether a call's error leaves its outcome
// open: the client says so, or the error is not the client's.
func indeterminateAnswer(err error) bool {
	var ce *client.Error
	return err != nil && (!errors.As(err, &ce) || client.IsIndeterminate(err))
}

// call makes one call of the client library for a write: the result of an
// op or a linked request, or the request-level error (an *client.Error).
func (w *worker) call(ctx context.Context, in Input) (Output, error) {
	if in.Kind != KindLinked {
		res, err := w.cl.Apply(ctx, toClientOp(in))
		var ce *client.Error
		if err != nil && errors.As(err, &ce) {
			return Output{}, err
		}
		return outputOf(res, in.Member), nil
	}
	ops := make([]client.Op, len(in.Ops))
	for i, op := range in.Ops {
		ops[i] = toClientOp(op)
	}
	res, err := w.cl.Submit(ctx, ops, true)
	if err != nil {
		return Output{}, err
	}
	if len(res) != len(ops) {
		return Output{}, fmt.Errorf("linked request of %d ops got %d results", len(ops), len(res))
	}
	for _, r := range res {
		if r.Indeterminate {
			// Answered without a record (UNAVAILABLE, rules version 4)
			// after an attempt of unknown outcome, which may still apply
			// the request: its outcome is open, as the client says.
			return Output{}, &client.Error{Code: r.Code, Message: r.Message, Shard: int(r.Shard), OpIndex: -1, Indeterminate: true}
		}
	}
	return linkedOutput(res, in.Ops), nil
}

// linkedOutput is the outcome of a linked request of ops with results rs
// (one per op): Known, each op's output, and the request's code (OK, or the
// code of the op that failed: the others have LINKED_FAILED).
func linkedOutput(rs []client.Result, ops []Input) Output {
	out := Output{Status: Known, Code: ledger.CodeOK}
	for i, r := range rs {
		member := ""
		if i < len(ops) {
			member = ops[i].Member
		}
		o := outputOf(r, member)
		out.Ops = append(out.Ops, o)
		out.TimeMs = o.TimeMs
		if o.Code != ledger.CodeOK && (out.Code == ledger.CodeOK || out.Code == ledger.CodeLinkedFailed) {
			out.Code = o.Code
		}
		out.Replayed = out.Replayed || o.Replayed
	}
	return out
}

func (w *worker) read(ctx context.Context, member, asset string) (Output, error) {
	if w.direct != nil {
		lc := w.direct[w.rng.IntN(len(w.direct))]
		resp, err := lc.GetAccount(ctx, &tallypb.GetAccountRequest{Program: Program, Member: member, Asset: asset})
		if err != nil {
			return Output{}, err
		}
		return readOutput(resp.GetAccount(), member)
	}
	return readAccount(ctx, w.cl, member, asset)
}

// readAccount reads member's account of asset through the client library.
func readAccount(ctx context.Context, cl *client.Client, member, asset string) (Output, error) {
	a, err := cl.GetAccount(ctx, Program, member, asset)
	if err != nil {
		return Output{}, err
	}
	return accountOutput(Output{Status: Known, Code: ledger.CodeOK}, &a, member), nil
}

// accountOutput is out describing a, the account of member the op acts on,
// in minor units of the workload's scale for the asset the server reports
// (the model checks that asset is the one the op acts on), not the scale it
// reports: an account reported in an asset the workload does not use, in
// another scale or in a state it does not know, is badAmount, which no
// state matches. What the model keeps no state for is checked here and set
// in Wrong, which the model never accepts: the account is the program's
// and member's, its available balance is posted - held, and its balance
// limit is the one the harness opened it with.
func accountOutput(out Output, a *client.Account, member string) Output {
	sc, known := scaleOf(a.Asset)
	out.HasAccount, out.Asset = true, a.Asset
	out.Posted, out.Held = minorUnits(a.Posted, sc), minorUnits(a.Held, sc)
	out.State = ledger.StateUnknown
	for st := ledger.StateActive; st <= ledger.StateClosed; st++ {
		if st.String() == a.State {
			out.State = st
		}
	}
	if out.State == ledger.StateUnknown {
		known = false // "" or a state the ledger has no name for: not ACTIVE
	}
	if !known || int32(a.Scale) != sc {
		out.Posted, out.Held = badAmount, badAmount
	}
	out.Wrong = wrongAccount(a, member, out.Posted, out.Held, sc)
	return out
}

// wrongAccount says what a, reported for member's account with posted and
// held minor units at scale sc, gets wrong apart from its balances ("" if
// nothing): another program or member, an available balance other than
// posted - held, or a balance limit other than the one the harness opened
// the account with.
func wrongAccount(a *client.Account, member string, posted, held int64, sc int32) string {
	var wrong []string
	if a.Program != Program || a.Member != member {
		wrong = append(wrong, fmt.Sprintf("account of %s/%s, not %s/%s", a.Program, a.Member, Program, member))
	}
	if posted != badAmount && held != badAmount {
		if avail := minorUnits(a.Available, sc); avail != posted-held {
			wrong = append(wrong, fmt.Sprintf("available %s is not posted - held (%d - %d minor units)", a.Available, posted, held))
		}
	}
	if i := accountIndex(a.Asset); i >= 0 {
		want := assetScales[i].maxBalance
		switch {
		case want == 0 && a.MaxBalance != nil:
			wrong = append(wrong, fmt.Sprintf("max balance %s, opened with none", a.MaxBalance))
		case want != 0 && (a.MaxBalance == nil || minorUnits(*a.MaxBalance, sc) != want):
			wrong = append(wrong, fmt.Sprintf("max balance %v, opened with %d minor units", a.MaxBalance, want))
		}
	}
	return strings.Join(wrong, "; ")
}

// readOutput is a read of member's account as the server reported it on
// the wire (a), checked as accountOutput checks one from the client library.
func readOutput(a *tallypb.Account, member string) (Output, error) {
	ca := client.Account{Program: a.GetProgram(), Member: a.GetMember(), Asset: a.GetAsset(),
		// A scale beyond uint8 is a wrong one: kept wrong, not wrapped.
		Scale: uint8(min(a.GetScale(), math.MaxUint8)), State: a.GetState()}
	for _, d := range []struct {
		name, s string
		to      *decimal.Decimal
	}{{"posted", a.GetPosted(), &ca.Posted}, {"held", a.GetHeld(), &ca.Held}, {"available", a.GetAvailable(), &ca.Available}} {
		v, err := decimal.NewFromString(d.s)
		if err != nil {
			return Output{}, fmt.Errorf("%s %q: %w", d.name, d.s, err)
		}
		*d.to = v
	}
	if a.GetMaxBalance() != "" {
		v, err := decimal.NewFromString(a.GetMaxBalance())
		if err != nil {
			return Output{}, fmt.Errorf("max balance %q: %w", a.GetMaxBalance(), err)
		}
		ca.MaxBalance = &v
	}
	return accountOutput(Output{Status: Known, Code: ledger.CodeOK}, &ca, member), nil
}

// toClientOp is the op the workload sends for in: its amount at the scale of
// in.Asset, which for a capture is the asset of the hold (the edge finds it
// from the hold, so the op names none).
func toClientOp(in Input) client.Op {
	scale, _ := scaleOf(in.Asset)
	amount := decimal.New(in.Amount, -scale)
	op := client.Op{Program: Program, Member: in.Member, Asset: in.Asset, IdempotencyKey: in.Key}
	switch in.Kind {
	case KindCredit:
		op.Kind, op.Amount = ledger.OpCredit, amount
	case KindDebit:
		op.Kind, op.Amount = ledger.OpDebit, amount
	case KindHold:
		op.Kind, op.Amount, op.HoldTTL = ledger.OpHold, amount, time.Duration(in.TTLMs)*time.Millisecond
	case KindCapture:
		op.Kind, op.HoldKey, op.Asset = ledger.OpCaptureHold, in.HoldKey, ""
		if in.Amount > 0 {
			op.Amount = amount
		}
	case KindRelease:
		op.Kind, op.HoldKey, op.Asset = ledger.OpReleaseHold, in.HoldKey, ""
	case KindFreeze:
		op.Kind = ledger.OpFreeze
	case KindUnfreeze:
		op.Kind = ledger.OpUnfreeze
	case KindReportLost:
		op.Kind = ledger.OpReportLost
	case KindReportFound:
		op.Kind = ledger.OpReportFound
	case KindClose:
		op.Kind = ledger.OpClose
	}
	return op
}

// outputOf converts the result of an op on member's account.
func outputOf(r client.Result, member string) Output {
	out := Output{Status: Known, Code: r.Code, Seq: r.Seq, TimeMs: r.TimeMs, Replayed: r.Replayed}
	if r.Account != nil {
		out = accountOutput(out, r.Account, member)
	}
	if !r.Captured.IsZero() || !r.Released.IsZero() {
		// Only a capture or release moves a hold, and its result names the
		// account; without one the amounts cannot be placed.
		out.Captured, out.Released = badAmount, badAmount
		if r.Account != nil {
			if sc, known := scaleOf(r.Account.Asset); known {
				out.Captured, out.Released = minorUnits(r.Captured, sc), minorUnits(r.Released, sc)
			}
		}
	}
	return out
}
