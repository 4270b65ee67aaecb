package loadtest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"time"

	"github.com/shopspring/decimal"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// fakeLedger implements Ledger in memory with the real rules: one
// ledger.MemStore per shard, each Submit part applied as one command. It can
// be told to lie, so the verifier's checks can be seen to fail.
type fakeLedger struct {
	shards int
	nodes  int

	mu     sync.Mutex
	stores []*ledger.MemStore
	prog   []ledger.Progress

	// Lies.
	hideKeys     map[string]bool   // GetOperation: not found
	wrongSeqKeys map[string]bool   // GetOperation: seq off by one
	skewMember   map[string]int64  // GetAccount: posted off by this many minor units
	otherReads   bool              // GetAccount: answers with another member's name
	staleMs      int64             // GetAccount: reports the account updated this much earlier
	skewResult   map[string]int64  // GetOperation: the account after it off by this many units
	indetKeys    map[string]bool   // Submit applies, then reports indeterminate (once per key)
	rejectKeys   map[string]bool   // Submit rejects the request (nothing applied)
	badHashNode  int               // ShardState: this node (1-based) has another hash
	badConsNode  int               // ShardState: this node reports broken conservation
	lagNode      int               // ShardState: this node never catches up
	submitDelay  time.Duration     // each Submit sleeps this long
	calls        map[string]int    // per method
	applied      map[string]uint64 // key -> seq of every op applied (for assertions)
}

func newFakeLedger(shards int) *fakeLedger {
	f := &fakeLedger{shards: shards, nodes: 3, hideKeys: map[string]bool{}, wrongSeqKeys: map[string]bool{},
		skewMember: map[string]int64{}, skewResult: map[string]int64{}, indetKeys: map[string]bool{}, rejectKeys: map[string]bool{},
		calls: map[string]int{}, applied: map[string]uint64{}}
	for range shards {
		f.stores = append(f.stores, ledger.NewMemStore())
		f.prog = append(f.prog, ledger.Progress{Version: ledger.MaxVersion})
	}
	return f
}

func (f *fakeLedger) count(method string) {
	f.calls[method]++
}

// apply applies one request on one shard (f.mu held).
func (f *fakeLedger) apply(shard int, req ledger.Request) []ledger.Result {
	cmd := ledger.Command{TimeMs: time.Now().UnixMilli(), Requests: []ledger.Request{req}}
	p, res, err := ledger.ApplyCommand(f.stores[shard], f.prog[shard], cmd)
	if err != nil {
		panic(err)
	}
	f.prog[shard] = p
	return res[0]
}

func (f *fakeLedger) DefineAsset(ctx context.Context, program, asset string, scale uint8, key string) (client.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count("DefineAsset")
	var r ledger.Result
	for s := range f.shards {
		r = f.apply(s, ledger.Request{Ops: []ledger.Op{{Kind: ledger.OpDefineAsset, Program: program, Asset: asset, Scale: scale, IdempotencyKey: key}}})[0]
	}
	return client.Result{Code: r.Code, Seq: r.Seq}, nil
}

func (f *fakeLedger) Submit(ctx context.Context, ops []client.Op, linked bool) ([]client.Result, error) {
	if f.submitDelay > 0 {
		time.Sleep(f.submitDelay)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count("Submit")
	out := make([]client.Result, len(ops))
	parts := map[int][]int{}
	var order []int
	for i, op := range ops {
		if f.rejectKeys[op.IdempotencyKey] {
			for j := range out {
				out[j] = client.Result{Code: ledger.CodeInvalidArgument}
			}
			return out, &client.Error{Code: ledger.CodeInvalidArgument, Shard: -1, OpIndex: i}
		}
		s := ledger.ShardOf(op.Program, op.Member, f.shards)
		if _, ok := parts[s]; !ok {
			order = append(order, s)
		}
		parts[s] = append(parts[s], i)
	}
	var indet bool
	for _, s := range order {
		req := ledger.Request{Linked: linked}
		for _, i := range parts[s] {
			op := ops[i]
			lo := ledger.Op{Kind: op.Kind, Program: op.Program, Member: op.Member, Asset: op.Asset,
				IdempotencyKey: op.IdempotencyKey, HoldKey: op.HoldKey, HoldTTLMs: op.HoldTTL.Milliseconds(), Memo: op.Memo}
			asset := op.Asset
			if op.Kind == ledger.OpCaptureHold {
				h, _, _ := f.stores[s].Hold(op.Program, op.Member, op.HoldKey)
				asset = h.Asset
			}
			if a, ok, _ := f.stores[s].Asset(op.Program, asset); ok && op.Kind != ledger.OpOpenAccount {
				lo.Scale = a.Scale
				lo.AmountMinor = op.Amount.Shift(int32(a.Scale)).IntPart()
			}
			req.Ops = append(req.Ops, lo)
		}
		res := f.apply(s, req)
		for j, i := range parts[s] {
			out[i] = f.result(s, res[j])
			f.applied[ops[i].IdempotencyKey] = res[j].Seq
			if f.indetKeys[ops[i].IdempotencyKey] {
				indet = true
				delete(f.indetKeys, ops[i].IdempotencyKey) // once: a re-send learns the outcome
			}
		}
	}
	if indet {
		// As the client marks the ops of a part whose outcome is unknown.
		for i := range out {
			out[i] = client.Result{Code: ledger.CodeUnavailable, Indeterminate: true}
		}
		return out, &client.Error{Code: ledger.CodeUnavailable, Shard: -1, OpIndex: -1, Indeterminate: true}
	}
	return out, nil
}

func (f *fakeLedger) GetAccount(ctx context.Context, program, member, asset string) (client.Account, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count("GetAccount")
	s := ledger.ShardOf(program, member, f.shards)
	a, ok, _ := f.stores[s].Account(ledger.AccountKey{Program: program, Member: member, Asset: asset})
	if !ok {
		return client.Account{}, &client.Error{Code: ledger.CodeAccountNotFound, Shard: s, OpIndex: -1}
	}
	as, _, _ := f.stores[s].Asset(program, asset)
	posted := a.PostedMinor + f.skewMember[member]
	if f.otherReads {
		member += "-other"
	}
	return client.Account{Program: program, Member: member, Asset: asset, Scale: as.Scale,
		Posted: decimal.New(posted, -int32(as.Scale)), Held: decimal.New(a.HeldMinor, -int32(as.Scale)),
		Available: decimal.New(posted-a.HeldMinor, -int32(as.Scale)), UpdatedAtMs: a.UpdatedAtMs - f.staleMs}, nil
}

func (f *fakeLedger) GetOperation(ctx context.Context, program, member, key string) (bool, client.JournalEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count("GetOperation")
	if f.hideKeys[key] {
		return false, client.JournalEntry{}, nil
	}
	s := ledger.ShardOf(program, member, f.shards)
	rec, ok, _ := f.stores[s].Record(program, key)
	if !ok {
		return false, client.JournalEntry{}, nil
	}
	seq := rec.Seq
	r := f.result(s, rec.Result)
	if f.wrongSeqKeys[key] {
		seq++
		r.Seq = seq
	}
	if d := f.skewResult[key]; d != 0 && r.Account != nil {
		r.Account.Posted = r.Account.Posted.Add(decimal.New(d, 0))
	}
	o := rec.Op
	op := client.Op{Kind: o.Kind, Program: o.Program, Member: o.Member, Asset: o.Asset, IdempotencyKey: o.IdempotencyKey,
		HoldKey: o.HoldKey, HoldTTL: time.Duration(o.HoldTTLMs) * time.Millisecond, Memo: o.Memo}
	if o.AmountMinor != 0 {
		op.Amount = decimal.New(o.AmountMinor, -int32(o.Scale))
	}
	return true, client.JournalEntry{Seq: seq, Op: op, Result: r}, nil
}

// result is what the client library makes of a stored result on shard s:
// the account after the op in decimals of its asset's scale.
func (f *fakeLedger) result(s int, r ledger.Result) client.Result {
	out := client.Result{Code: r.Code, Message: r.Message, Seq: r.Seq, TimeMs: r.TimeMs, Shard: uint32(s)}
	if a := r.Account; a.Key.Asset != "" {
		as, _, _ := f.stores[s].Asset(a.Key.Program, a.Key.Asset)
		out.Account = &client.Account{Program: a.Key.Program, Member: a.Key.Member, Asset: a.Key.Asset, Scale: as.Scale,
			State: a.State.String(), Posted: decimal.New(a.PostedMinor, -int32(as.Scale)), Held: decimal.New(a.HeldMinor, -int32(as.Scale)),
			Available: decimal.New(a.PostedMinor-a.HeldMinor, -int32(as.Scale)), UpdatedAtMs: a.UpdatedAtMs}
		out.Captured = decimal.New(r.CapturedMinor, -int32(as.Scale))
		out.Released = decimal.New(r.ReleasedMinor, -int32(as.Scale))
	}
	return out
}

func (f *fakeLedger) ClusterInfo(ctx context.Context) (client.ClusterInfo, error) {
	info := client.ClusterInfo{Shards: f.shards}
	for n := 1; n <= f.nodes; n++ {
		info.Nodes = append(info.Nodes, client.Node{ID: fmt.Sprintf("n%d", n), GRPCAddr: fmt.Sprintf("node%d", n)})
	}
	return info, nil
}

func (f *fakeLedger) ShardState(ctx context.Context, addr string, shard uint32) (client.ShardState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count("ShardState")
	var node int
	if _, err := fmt.Sscanf(addr, "node%d", &node); err != nil {
		return client.ShardState{}, err
	}
	st := f.stores[shard]
	h := sha256.New()
	for _, b := range st.Balances() {
		fmt.Fprintf(h, "%s/%s/%s=%d;", b.Program, b.Member, b.Asset, b.PostedMinor)
	}
	ss := client.ShardState{Shard: shard, AppliedIndex: st.LastSeq(), StateHash: h.Sum(nil), ConservationOK: true}
	if err := ledger.Conservation(st.Balances()); err != nil {
		ss.ConservationOK, ss.ConservationError = false, err.Error()
	}
	if node == f.badHashNode {
		ss.StateHash = append([]byte(nil), ss.StateHash...)
		ss.StateHash[0] ^= 1
	}
	if node == f.badConsNode {
		ss.ConservationOK, ss.ConservationError = false, "fake: broken"
	}
	if node == f.lagNode {
		ss.AppliedIndex--
	}
	return ss, nil
}
