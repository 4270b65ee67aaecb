package node

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// assetCache remembers asset definitions seen in each shard's local state.
// Assets never change once defined, so a cached definition is current
// until a restore from a backup takes the shard back to before it (and
// the asset may then be defined again at another scale): forgetShard
// drops the shard's definitions after every snapshot restore. Only
// absence must be confirmed by a linearizable read. It is kept per shard
// because each shard stores its own copy of every asset: DefineAsset
// defines it shard by shard and can stop part way (a deadline during an
// election), and an op let through on a shard that lacks its asset would
// be recorded as UNKNOWN_ASSET under its key, which then replays for good
// once the asset is there.
type assetCache struct {
	m sync.Map // assetCacheKey -> ledger.Asset
	// gen counts forgetShard calls. A definition read from a shard's state
	// is cached only if no restore came between the read and the put:
	// otherwise it may be the old state's, put after forgetShard ran.
	mu  sync.Mutex // serializes put and forgetShard
	gen atomic.Uint64
}

type assetCacheKey struct {
	shard         uint32
	program, code string
}

func (c *assetCache) get(shard uint32, program, code string) (ledger.Asset, bool) {
	v, ok := c.m.Load(assetCacheKey{shard, program, code})
	if !ok {
		return ledger.Asset{}, false
	}
	return v.(ledger.Asset), true
}

// generation is read before a definition is read from a shard's state,
// and handed to put with it.
func (c *assetCache) generation() uint64 { return c.gen.Load() }

func (c *assetCache) put(shard uint32, a ledger.Asset, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen.Load() == gen {
		c.m.Store(assetCacheKey{shard, a.Program, a.Code}, a)
	}
}

// forgetShard drops shard's definitions: its state was replaced.
func (c *assetCache) forgetShard(shard uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen.Add(1)
	c.m.Range(func(k, _ any) bool {
		if k.(assetCacheKey).shard == shard {
			c.m.Delete(k)
		}
		return true
	})
}

// asset returns the definition of (program, code) as shard s knows it. If
// the local state lacks it, the shard first catches up to a linearizable
// point, so an asset defined before this request is never reported missing.
func (n *Node) asset(ctx context.Context, s *shard, program, code string) (ledger.Asset, error) {
	if a, ok := n.assets.get(s.id, program, code); ok {
		return a, nil
	}
	for attempt := 0; attempt < 2; attempt++ {
		gen := n.assets.generation()
		a, found, err := s.fsm.Asset(program, code)
		if err != nil {
			return ledger.Asset{}, errInternal(err.Error())
		}
		if found {
			n.assets.put(s.id, a, gen)
			return a, nil
		}
		if attempt == 0 {
			if err := s.linearizable(ctx); err != nil {
				return ledger.Asset{}, err
			}
		}
	}
	return ledger.Asset{}, ledger.Errorf(ledger.CodeUnknownAsset, "program "+program+" has no asset "+code)
}

// requestHolds maps the holds that a request's ops open, (program, member,
// key), to their assets, as the request is converted op by op.
type requestHolds map[[3]string]string

// add notes op if it opens a hold, allocating the map on first use.
func (h *requestHolds) add(op *ledger.Op) {
	if op.Kind != ledger.OpHold {
		return
	}
	if *h == nil {
		*h = requestHolds{}
	}
	(*h)[[3]string{op.Program, op.Member, op.IdempotencyKey}] = op.Asset
}

// holdAsset returns the asset of an open or closed hold, for converting a
// capture amount. Holds never change asset, so local state is enough once
// it has it. A hold that is not in local state but that an earlier op of the
// same request opens (opened) takes that op's asset without a read, so
// "authorize and capture" in one request costs no leadership round. Else a
// miss is confirmed with a linearizable read before HOLD_NOT_FOUND.
//
// The request's own HOLD is trusted only for the scale: the ledger checks
// the capture against the hold it finds when it applies. If that HOLD fails,
// a linked request fails whole; unlinked, the capture is evaluated against
// whatever hold has the key by then, usually none (HOLD_NOT_FOUND, recorded
// under the capture's key). Unlinked, a HOLD that reuses the key of a hold
// this node has not applied yet may lend another scale: SCALE_MISMATCH,
// recorded (the HOLD itself is IDEMPOTENCY_KEY_REUSED; linked, the request is
// refused whole and nothing is recorded). With client coalescing, callers'
// ops share a request, so one caller's HOLD can serve another's capture of
// that key: the order is one the two concurrent calls allow.
func (n *Node) holdAsset(ctx context.Context, s *shard, program, member, key string, opened requestHolds) (ledger.Asset, error) {
	for attempt := 0; attempt < 2; attempt++ {
		h, found, err := s.fsm.Hold(program, member, key)
		if err != nil {
			return ledger.Asset{}, errInternal(err.Error())
		}
		if found {
			return n.asset(ctx, s, program, h.Asset)
		}
		if attempt > 0 {
			break
		}
		if asset, ok := opened[[3]string{program, member, key}]; ok {
			return n.asset(ctx, s, program, asset)
		}
		if err := s.linearizable(ctx); err != nil {
			return ledger.Asset{}, err
		}
	}
	return ledger.Asset{}, ledger.Errorf(ledger.CodeHoldNotFound, "no hold "+key+" for member "+member)
}

// toLedgerOp converts one API op at the edge: decimal amounts become minor
// units of the asset's scale, never rounded. opened are the holds the ops
// of the request before this one open.
func (n *Node) toLedgerOp(ctx context.Context, s *shard, p *tallypb.Op, opened requestHolds) (ledger.Op, error) {
	// The wire kind is an int32 and ledger.OpKind a uint8: an unknown kind
	// must not wrap into a known one (264 would be FREEZE).
	if k := p.GetKind(); k <= tallypb.OpKind_OP_KIND_UNSPECIFIED || k > tallypb.OpKind_EXPIRE_HOLD {
		return ledger.Op{}, ledger.Errorf(ledger.CodeInvalidArgument, fmt.Sprintf("kind: unknown operation kind %d", k))
	} else if k == tallypb.OpKind_EXPIRE_HOLD {
		return ledger.Op{}, ledger.Errorf(ledger.CodeInvalidArgument, "kind: EXPIRE_HOLD is written by the ledger when a hold expires; it cannot be sent")
	}
	op := ledger.Op{
		Kind:           ledger.OpKind(p.GetKind()),
		Program:        p.GetProgram(),
		Member:         p.GetMember(),
		Asset:          p.GetAsset(),
		IdempotencyKey: p.GetIdempotencyKey(),
		HoldKey:        p.GetHoldKey(),
		HoldTTLMs:      p.GetHoldTtlMs(),
		Memo:           p.GetMemo(),
	}
	if op.Kind == ledger.OpDefineAsset {
		return op, ledger.Errorf(ledger.CodeInvalidArgument, "define assets with the DefineAsset call")
	}
	// A field the kind does not use is refused, not dropped: an account
	// opened with an amount would otherwise open empty while its caller
	// believes it funded, and a retry that changed only that field would
	// replay rather than be IDEMPOTENCY_KEY_REUSED.
	if p.GetScale() != 0 {
		return op, ledger.Errorf(ledger.CodeInvalidArgument, "scale: not used by "+op.Kind.String()+" (the asset's scale applies)")
	}
	if p.GetMaxBalance() != "" && op.Kind != ledger.OpOpenAccount {
		return op, ledger.Errorf(ledger.CodeInvalidArgument, "max_balance: not used by "+op.Kind.String())
	}
	// Structural checks first, so a malformed op is rejected before any
	// lookup (amounts are checked below, after conversion).
	probe := op
	if needsAmount(op.Kind) {
		probe.AmountMinor = 1
	}
	if err := ledger.Validate(probe); err != nil {
		return op, err
	}
	switch op.Kind {
	case ledger.OpCredit, ledger.OpDebit, ledger.OpHold:
		a, err := n.asset(ctx, s, op.Program, op.Asset)
		if err != nil {
			return op, err
		}
		if op.AmountMinor, err = ledger.ParseAmount(p.GetAmount(), a.Scale); err != nil {
			return op, err
		}
		op.Scale = a.Scale
	case ledger.OpCaptureHold, ledger.OpReleaseHold:
		// The hold must exist (holds are never deleted, so a hold seen here
		// is there at apply), or an earlier op of the request must open it:
		// an unknown hold is HOLD_NOT_FOUND at the edge for captures and
		// releases alike, recorded nowhere, so a retry after the hold is
		// created can still succeed.
		a, err := n.holdAsset(ctx, s, op.Program, op.Member, op.HoldKey, opened)
		if err != nil {
			return op, err
		}
		// Only an empty amount means the whole hold: "0" is an amount that
		// is not positive (a computed amount that came out zero must not
		// take the whole hold), and a release takes no amount at all.
		if amt := p.GetAmount(); op.Kind == ledger.OpCaptureHold && amt != "" {
			if op.AmountMinor, err = ledger.ParseAmount(amt, a.Scale); err != nil {
				return op, err
			}
			op.Scale = a.Scale
		} else if amt != "" {
			return op, ledger.Errorf(ledger.CodeInvalidArgument, "amount: not used by "+op.Kind.String())
		}
	case ledger.OpOpenAccount:
		if p.GetAmount() != "" {
			return op, ledger.Errorf(ledger.CodeInvalidArgument, "amount: not used by "+op.Kind.String()+" (credit the account after opening it)")
		}
		// The asset is looked up even without a max balance: an open on a
		// shard that lacks it (before DefineAsset, or one that stopped part
		// way) is refused here like a credit, not recorded as UNKNOWN_ASSET
		// under its key, where it would replay for good (found by review).
		a, err := n.asset(ctx, s, op.Program, op.Asset)
		if err != nil {
			return op, err
		}
		if mb := p.GetMaxBalance(); mb != "" {
			if op.MaxBalanceMinor, err = ledger.ParseAmount(mb, a.Scale); err != nil {
				return op, err
			}
		}
	default:
		if p.GetAmount() != "" {
			return op, ledger.Errorf(ledger.CodeInvalidArgument, "amount: not used by "+op.Kind.String())
		}
	}
	// The converted op is validated again, with the rest of its request, by
	// ledger.ValidateRequest before it is proposed.
	return op, nil
}

func needsAmount(k ledger.OpKind) bool {
	return k == ledger.OpCredit || k == ledger.OpDebit || k == ledger.OpHold
}

// pbConv formats the ledger values of one shard for the API, each amount at
// its asset's scale. An asset it cannot read (a storage error, or a stored
// account or hold whose asset is missing, which breaks an invariant) is kept
// in err, and the caller answers INTERNAL instead: amounts formatted at a
// guessed scale would be off by a power of ten, and no client could tell.
type pbConv struct {
	n   *Node
	s   *shard
	err error
}

func (n *Node) pb(s *shard) *pbConv { return &pbConv{n: n, s: s} }

// scale is the scale of (program, code); code is never empty here.
func (c *pbConv) scale(program, code string) uint8 {
	if a, ok := c.n.assets.get(c.s.id, program, code); ok {
		return a.Scale
	}
	gen := c.n.assets.generation()
	a, found, err := c.s.fsm.Asset(program, code)
	switch {
	case err != nil:
		c.fail(fmt.Errorf("read asset %s/%s: %w", program, code, err))
		return 0
	case !found:
		c.fail(fmt.Errorf("asset %s/%s of a stored value is missing", program, code))
		return 0
	}
	c.n.assets.put(c.s.id, a, gen)
	return a.Scale
}

func (c *pbConv) fail(err error) {
	if c.err == nil {
		c.err = errInternal(fmt.Sprintf("shard %d: %v", c.s.id, err))
	}
}

func (c *pbConv) account(a ledger.Account) *tallypb.Account {
	if a.Key.Program == "" {
		return nil
	}
	sc := c.scale(a.Key.Program, a.Key.Asset)
	out := &tallypb.Account{
		Program:     a.Key.Program,
		Member:      a.Key.Member,
		Asset:       a.Key.Asset,
		Scale:       uint32(sc),
		State:       a.State.String(),
		Posted:      ledger.FormatAmount(a.PostedMinor, sc),
		Held:        ledger.FormatAmount(a.HeldMinor, sc),
		Available:   ledger.FormatAmount(a.AvailableMinor(), sc),
		OpenedAtMs:  a.OpenedAtMs,
		UpdatedAtMs: a.UpdatedAtMs,
	}
	if a.MaxBalanceMinor > 0 {
		out.MaxBalance = ledger.FormatAmount(a.MaxBalanceMinor, sc)
	}
	return out
}

func (c *pbConv) hold(h ledger.Hold) *tallypb.Hold {
	if h.Key == "" {
		return nil
	}
	sc := c.scale(h.Program, h.Asset)
	return &tallypb.Hold{
		Key:         h.Key,
		Asset:       h.Asset,
		Amount:      ledger.FormatAmount(h.AmountMinor, sc),
		State:       h.State.String(),
		CreatedAtMs: h.CreatedAtMs,
		ExpiresAtMs: h.ExpiresAtMs,
	}
}

func (c *pbConv) result(r ledger.Result) *tallypb.OpResult {
	out := &tallypb.OpResult{
		Code:     string(r.Code),
		Message:  r.Message,
		Replayed: r.Replayed,
		Seq:      r.Seq,
		TimeMs:   r.TimeMs,
		Account:  c.account(r.Account),
		Hold:     c.hold(r.Hold),
		Shard:    c.s.id,
	}
	if r.CapturedMinor != 0 || r.ReleasedMinor != 0 {
		sc := c.scale(r.Hold.Program, r.Hold.Asset)
		out.Captured = ledger.FormatAmount(r.CapturedMinor, sc)
		out.Released = ledger.FormatAmount(r.ReleasedMinor, sc)
	}
	return out
}

func (c *pbConv) op(op ledger.Op) *tallypb.Op {
	out := &tallypb.Op{
		Kind:           tallypb.OpKind(op.Kind),
		Program:        op.Program,
		Member:         op.Member,
		Asset:          op.Asset,
		IdempotencyKey: op.IdempotencyKey,
		HoldKey:        op.HoldKey,
		HoldTtlMs:      op.HoldTTLMs,
		Memo:           op.Memo,
	}
	if op.AmountMinor != 0 {
		out.Amount = ledger.FormatAmount(op.AmountMinor, op.Scale)
	}
	if op.MaxBalanceMinor != 0 {
		out.MaxBalance = ledger.FormatAmount(op.MaxBalanceMinor, c.scale(op.Program, op.Asset))
	}
	return out
}

func (c *pbConv) record(rec ledger.Record) *tallypb.JournalEntry {
	return &tallypb.JournalEntry{Seq: rec.Seq, Op: c.op(rec.Op), Result: c.result(rec.Result)}
}
