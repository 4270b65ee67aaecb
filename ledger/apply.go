package ledger

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// ErrInvariant is wrapped by every invariant violation the rules detect. It
// means a bug or corrupt state, never a bad request: the FSM must stop rather
// than write on top of it.
var ErrInvariant = errors.New("ledger: invariant violated")

// CheckAccount asserts the invariants of one account: a known state,
// 0 <= HeldMinor <= PostedMinor, MaxBalanceMinor >= 0 and, when it is set,
// PostedMinor <= MaxBalanceMinor, and a closed account holds nothing. The
// error wraps ErrInvariant.
func CheckAccount(a Account) error {
	var what string
	switch {
	case a.State <= StateUnknown || a.State > StateClosed:
		what = fmt.Sprintf("unknown state %s", a.State)
	case a.HeldMinor < 0:
		what = fmt.Sprintf("held %d < 0", a.HeldMinor)
	case a.HeldMinor > a.PostedMinor:
		what = fmt.Sprintf("held %d > posted %d", a.HeldMinor, a.PostedMinor)
	case a.MaxBalanceMinor < 0:
		what = fmt.Sprintf("max balance %d < 0", a.MaxBalanceMinor)
	case a.MaxBalanceMinor > 0 && a.PostedMinor > a.MaxBalanceMinor:
		what = fmt.Sprintf("posted %d > max balance %d", a.PostedMinor, a.MaxBalanceMinor)
	case a.State == StateClosed && (a.PostedMinor != 0 || a.HeldMinor != 0):
		what = fmt.Sprintf("closed with posted %d, held %d", a.PostedMinor, a.HeldMinor)
	default:
		return nil
	}
	return fmt.Errorf("%w: account %s: %s", ErrInvariant, a.Key, what)
}

// Progress is what a shard carries from one entry to the next besides its
// store: the log time of the last command and the version of the rules. The
// FSM keeps it in its meta record.
type Progress struct {
	TimeMs  int64  // never decreases
	Version uint32 // 0 means Version1; never decreases
}

// ApplyCommand applies one Raft log entry after the entries that left p. Its
// log time is max(c.TimeMs, p.TimeMs), so time never goes backwards even if
// leaders' clocks disagree. A SetVersion above p's version raises it first,
// for this entry and every later one. Expired holds are released next (at
// most MaxExpiriesPerEntry; a tick command releases the rest), then each
// request is applied in order. The FSM stores the returned Progress.
//
// results[i] holds the results of c.Requests[i], one per op. err is only a
// Store failure, an invariant violation or an unknown version (ErrVersion),
// and is fatal: the writes made so far must be discarded. Domain failures are
// in Result.Code.
func ApplyCommand(s Store, p Progress, c Command) (Progress, [][]Result, error) {
	p.TimeMs = max(c.TimeMs, p.TimeMs)
	p.Version = max(p.Version, Version1)
	if p.Version > MaxVersion {
		// The fsm refuses such state when it loads it; a caller that did
		// not would apply a newer version's entries under this binary's
		// rules, and its replicas would diverge from newer ones.
		return p, nil, fmt.Errorf("%w: the shard is at version %d, this binary applies up to %d",
			ErrVersion, p.Version, MaxVersion)
	}
	if c.SetVersion > p.Version {
		if c.SetVersion > MaxVersion {
			return p, nil, fmt.Errorf("%w: the entry raises the shard to version %d, this binary applies up to %d",
				ErrVersion, c.SetVersion, MaxVersion)
		}
		p.Version = c.SetVersion
	}
	timeMs := p.TimeMs
	released, err := ExpireHolds(s, timeMs, p.Version)
	if err != nil {
		return p, nil, err
	}
	// The sweep stopped at its bound: expired holds may remain, still
	// counted as held, for the whole entry (its ops create no expired hold:
	// a hold's TTL is positive).
	backlog := false
	if p.Version >= Version4 && released == MaxExpiriesPerEntry {
		if backlog, err = expiredHoldsRemain(s, timeMs); err != nil {
			return p, nil, err
		}
	}
	total := 0
	for i := range c.Requests {
		total += len(c.Requests[i].Ops)
	}
	// One backing array for every result of the command.
	flat := make([]Result, total)
	results := make([][]Result, len(c.Requests))
	for i := range c.Requests {
		n := len(c.Requests[i].Ops)
		out := flat[:n:n]
		flat = flat[n:]
		if err := applyRequest(s, timeMs, p.Version, backlog, &c.Requests[i], out); err != nil {
			return p, nil, fmt.Errorf("request %d: %w", i, err)
		}
		results[i] = out
	}
	return p, results, nil
}

// ExpireHolds releases up to MaxExpiriesPerEntry open holds with
// ExpiresAtMs <= nowMs, oldest first: the held amount returns to the account's
// available balance, whatever the account's state (a frozen account's held
// value still returns), and the hold becomes Expired (journaled from
// Version3). It returns how many it released.
func ExpireHolds(s Store, nowMs int64, v uint32) (int, error) {
	refs, err := s.ExpiredHolds(nowMs, MaxExpiriesPerEntry)
	if err != nil {
		return 0, storeErr("list expired holds", err)
	}
	for _, ref := range refs {
		h, found, err := s.Hold(ref.Program, ref.Member, ref.Key)
		if err != nil {
			return 0, storeErr("read hold", err)
		}
		if !found || h.State != HoldOpen || h.ExpiresAtMs != ref.ExpiresAtMs || h.ExpiresAtMs > nowMs {
			return 0, fmt.Errorf("%w: expiry index lists hold %s/%s/%s (expires %d) but the hold is %+v",
				ErrInvariant, ref.Program, ref.Member, ref.Key, ref.ExpiresAtMs, h)
		}
		a, found, err := s.Account(holdAccountKey(&h))
		if err != nil {
			return 0, storeErr("read account", err)
		}
		if !found {
			return 0, fmt.Errorf("%w: open hold %s/%s/%s has no account", ErrInvariant, h.Program, h.Member, h.Key)
		}
		if err := expireHold(s, &h, &a, nowMs, v); err != nil {
			return 0, err
		}
	}
	return len(refs), nil
}

// Apply applies one request at log time timeMs under the rules of version v
// and returns one result per op.
//
// Each op is first looked up by (program, idempotency key): the same op again
// is served its recorded result (Replayed), a different op with that key gets
// IDEMPOTENCY_KEY_REUSED and is neither applied nor recorded (from Version2,
// an op sent in a linked request of several ops and the same op sent in any
// other request are different ops). Otherwise the rules run and the outcome,
// success or failure, is recorded under a new journal sequence number, so a
// retry sees the same outcome.
//
// A linked request applies all or none: its ops run on an Overlay that is
// committed only if every op succeeds. Otherwise nothing they changed is
// written; the failing op keeps its code (its Account and Hold are cleared, as
// they described state that was never committed) and the others get
// LINKED_FAILED, and every op not recorded before is recorded with that
// outcome. Ops served from an earlier record keep that record's result. From
// Version2, a linked request with a reused key is answered from the records
// alone and nothing is evaluated or recorded (refuseReusedKeys).
//
// A request that fails ValidateRequest gets that error on every op, and
// nothing is recorded (an invalid op may not even have a usable key). From
// Version4, an op answered UNAVAILABLE (insufficient) is not recorded, nor is
// a later op of the same member in the request (answered UNAVAILABLE too,
// unless recorded before), nor any op of a linked request that holds one.
//
// The error is fatal (Store failure, invariant violation), as for
// ApplyCommand.
func Apply(s Store, timeMs int64, v uint32, r Request) ([]Result, error) {
	out := make([]Result, len(r.Ops))
	// Apply releases no expired hold: any there is, is still to release.
	backlog := false
	if v >= Version4 {
		var err error
		if backlog, err = expiredHoldsRemain(s, timeMs); err != nil {
			return nil, err
		}
	}
	if err := applyRequest(s, timeMs, max(v, Version1), backlog, &r, out); err != nil {
		return nil, err
	}
	return out, nil
}

// expiredHoldsRemain reports whether s holds an open hold expired at timeMs.
func expiredHoldsRemain(s Store, timeMs int64) (bool, error) {
	refs, err := s.ExpiredHolds(timeMs, 1)
	if err != nil {
		return false, storeErr("list expired holds", err)
	}
	return len(refs) > 0, nil
}

// backlog, from Version4, says that expired holds wait to be released
// (insufficient).
func applyRequest(s Store, timeMs int64, v uint32, backlog bool, r *Request, out []Result) error {
	if _, e := validateRequest(*r); e != nil {
		for i := range out {
			out[i] = Result{Code: e.Code, Message: e.Msg, TimeMs: timeMs}
		}
		return nil
	}
	// A linked request of one op is that op: its all-or-none is the op's own.
	if r.Linked && len(r.Ops) > 1 {
		return applyLinked(s, timeMs, v, backlog, r.Ops, out)
	}
	// deferred lists the ops answered UNAVAILABLE (insufficient), which
	// only a backlog causes. A later op of the same member is answered so
	// too, unless recorded already: it may depend on the deferred one (the
	// capture of a hold it opens) or on the order of the two (two debits),
	// and a request's ops of one member apply in the order given.
	var deferred []int
	for i := range r.Ops {
		op := &r.Ops[i]
		after := false
		for _, j := range deferred {
			if r.Ops[j].Program == op.Program && r.Ops[j].Member == op.Member {
				after = true
				break
			}
		}
		res, err := applyOp(s, timeMs, v, backlog, op, after)
		if err != nil {
			return fmt.Errorf("op %d (%s): %w", i, op.Kind, err)
		}
		if unrecorded(&res) && !after {
			deferred = append(deferred, i)
		}
		out[i] = res
	}
	return nil
}

// applyOp deduplicates, evaluates and records one op on s. after says that
// an earlier op of the request on the same member was not applied and not
// recorded: the op is then only answered from its record, or else deferred
// the same way.
func applyOp(s Store, timeMs int64, v uint32, backlog bool, op *Op, after bool) (Result, error) {
	fp := fingerprintFor(v, op, false)
	rec, found, err := s.Record(op.Program, op.IdempotencyKey)
	if err != nil {
		return Result{}, storeErr("read record", err)
	}
	if found {
		return dedupResult(v, &rec, fp, op, false, timeMs), nil
	}
	if after {
		return Result{Code: CodeUnavailable, TimeMs: timeMs, Message: "an earlier op of this request on the same member was not applied; " +
			"not applied and not recorded: send it again with the same key"}, nil
	}
	res, err := evaluate(s, timeMs, v, backlog, op)
	if err != nil {
		return Result{}, err
	}
	if unrecorded(&res) {
		res.TimeMs = timeMs
		return res, nil
	}
	return record(s, timeMs, op, fp, res)
}

// dedupResult is the result of an op whose key is already recorded; fp is
// the op's fingerprintFor(v, op, linked).
func dedupResult(v uint32, rec *Record, fp [16]byte, op *Op, linked bool, timeMs int64) Result {
	if sameOp(v, rec, op, linked, fp) {
		r := rec.Result
		r.Replayed = true
		return r
	}
	return Result{
		Code: CodeIdempotencyKeyReused,
		Message: fmt.Sprintf("idempotency key %q of program %q was already used by a different operation (%s, seq %d)",
			op.IdempotencyKey, op.Program, rec.Op.Kind, rec.Seq),
		TimeMs: timeMs,
	}
}

// record stamps res with a new sequence number and the log time and stores it
// as op's dedup record.
func record(s Store, timeMs int64, op *Op, fp [16]byte, res Result) (Result, error) {
	seq, err := s.NextSeq()
	if err != nil {
		return Result{}, storeErr("next seq", err)
	}
	res.Seq = seq
	res.TimeMs = timeMs
	res.Replayed = false
	if err := s.PutRecord(Record{Seq: seq, Op: *op, Fingerprint: fp, Result: res}); err != nil {
		return Result{}, storeErr("put record", err)
	}
	return res, nil
}

func applyLinked(s Store, timeMs int64, v uint32, backlog bool, ops []Op, out []Result) error {
	// Every op's record is read once, before anything is evaluated. The ops'
	// own records go to s, not the overlay; the only record written to the
	// overlay is, from Version3, the EXPIRE_HOLD record of a hold that a
	// capture or release finds expired (expireHold, journalExpiry), under an
	// ExpiryKey, which no client key equals (and that op fails with
	// HOLD_EXPIRED, so the overlay and that record are dropped). Keys within
	// a request are distinct, so no op's evaluation or record changes
	// another op's record.
	fps := make([][16]byte, len(ops))
	found := make([]bool, len(ops))
	prior := make([]Result, len(ops)) // for found ops: the replay, or KEY_REUSED
	for i := range ops {
		op := &ops[i]
		fps[i] = fingerprintFor(v, op, true)
		rec, ok, err := s.Record(op.Program, op.IdempotencyKey)
		if err != nil {
			return storeErr("read record", err)
		}
		if found[i] = ok; ok {
			prior[i] = dedupResult(v, &rec, fps[i], op, true, timeMs)
		}
	}
	if v >= Version2 && refuseReusedKeys(timeMs, ops, found, prior, out) {
		return nil
	}

	ov := NewOverlay(s)
	// fresh[i]: op i was evaluated (not served from a record) and is not
	// recorded yet; records go to s once the outcome is known.
	fresh := make([]bool, len(ops))
	failed := -1
	for i := range ops {
		op := &ops[i]
		if found[i] {
			out[i] = prior[i]
		} else {
			res, err := evaluate(ov, timeMs, v, backlog, op)
			if err != nil {
				return fmt.Errorf("linked op %d (%s): %w", i, op.Kind, err)
			}
			out[i] = res
			fresh[i] = true
		}
		if !out[i].OK() {
			failed = i
			break
		}
	}

	if failed >= 0 && fresh[failed] && unrecorded(&out[failed]) {
		// Nothing is recorded, as when a key is reused: the same request
		// sent again is judged afresh.
		refused := Result{
			Code:    CodeLinkedFailed,
			Message: fmt.Sprintf("not applied: linked op %d (%s) failed with %s; nothing recorded", failed, ops[failed].Kind, out[failed].Code),
			TimeMs:  timeMs,
		}
		for i := range ops {
			switch {
			case i == failed:
				out[i] = Result{Code: out[i].Code, Message: out[i].Message, TimeMs: timeMs}
			case found[i]:
				out[i] = prior[i]
			default:
				out[i] = refused
			}
		}
		return nil
	}
	if failed < 0 {
		if err := ov.Commit(); err != nil {
			return err
		}
		for i := range ops {
			if !fresh[i] {
				continue
			}
			res, err := record(s, timeMs, &ops[i], fps[i], out[i])
			if err != nil {
				return err
			}
			out[i] = res
		}
		return nil
	}

	// The overlay is dropped: nothing the batch evaluated is written.
	cause := out[failed]
	linked := Result{
		Code:    CodeLinkedFailed,
		Message: fmt.Sprintf("not applied: linked op %d (%s) failed with %s", failed, ops[failed].Kind, cause.Code),
	}
	for i := range ops {
		op := &ops[i]
		var res Result
		switch {
		case i <= failed && !fresh[i]:
			continue // served from a record (or key reused): keep that outcome
		case i == failed:
			res = Result{Code: cause.Code, Message: cause.Message}
		case i < failed:
			res = linked
		case found[i]:
			out[i] = prior[i]
			continue
		default:
			res = linked
		}
		res, err := record(s, timeMs, op, fps[i], res)
		if err != nil {
			return err
		}
		out[i] = res
	}
	return nil
}

// refuseReusedKeys answers a linked request under version 2 or later without
// evaluating or recording anything when one of its keys is recorded for a
// different op: a reused key makes the request a client error, like one that
// fails validation, and recording the other ops would spend keys the client
// must send again in the corrected request. The answers depend on the records
// alone (prior, for the found ops), never on balances or on the order of the
// ops, and records never change, so a retry of the same request gets the same
// answers: the reused keys IDEMPOTENCY_KEY_REUSED, keys recorded for the same
// op their replay, the others LINKED_FAILED (not recorded). It reports false,
// and leaves out alone, when no key is reused.
func refuseReusedKeys(timeMs int64, ops []Op, found []bool, prior, out []Result) bool {
	first := -1
	for i := range ops {
		if found[i] && prior[i].Code == CodeIdempotencyKeyReused {
			first = i
			break
		}
	}
	if first < 0 {
		return false
	}
	refused := Result{
		Code:    CodeLinkedFailed,
		Message: fmt.Sprintf("not applied: linked op %d (%s) failed with %s", first, ops[first].Kind, CodeIdempotencyKeyReused),
		TimeMs:  timeMs,
	}
	for i := range ops {
		if found[i] {
			out[i] = prior[i]
		} else {
			out[i] = refused
		}
	}
	return true
}

// evaluate runs the rules of one op on s under version v. Failures (domain
// errors) come back as a Result with no writes made, except that a capture
// or release of an open hold past its expiry expires it first, exactly as
// ExpireHolds would.
func evaluate(s Store, timeMs int64, v uint32, backlog bool, op *Op) (Result, error) {
	switch op.Kind {
	case OpDefineAsset:
		return defineAsset(s, op)
	case OpOpenAccount:
		return openAccount(s, timeMs, op)
	case OpCredit:
		return credit(s, timeMs, op)
	case OpDebit:
		return debit(s, timeMs, backlog, op)
	case OpHold:
		return hold(s, timeMs, backlog, op)
	case OpCaptureHold, OpReleaseHold:
		return settleHold(s, timeMs, v, op)
	case OpFreeze, OpUnfreeze, OpReportLost, OpReportFound, OpClose:
		return transition(s, timeMs, op)
	}
	// Validate rejects unknown kinds before evaluate is reached.
	return Result{}, fmt.Errorf("%w: evaluate of unknown kind %s", ErrInvariant, op.Kind)
}

func defineAsset(s Store, op *Op) (Result, error) {
	a, found, err := s.Asset(op.Program, op.Asset)
	if err != nil {
		return Result{}, storeErr("read asset", err)
	}
	if found {
		if a.Scale == op.Scale {
			return Result{Code: CodeOK}, nil // assets never change; defining one again is a no-op
		}
		return failf(CodeAssetExists, "asset %s of program %q already exists with scale %d, not %d",
			op.Asset, op.Program, a.Scale, op.Scale), nil
	}
	if err := s.PutAsset(Asset{Program: op.Program, Code: op.Asset, Scale: op.Scale}); err != nil {
		return Result{}, storeErr("put asset", err)
	}
	return Result{Code: CodeOK}, nil
}

func openAccount(s Store, timeMs int64, op *Op) (Result, error) {
	if _, found, err := s.Asset(op.Program, op.Asset); err != nil {
		return Result{}, storeErr("read asset", err)
	} else if !found {
		return unknownAsset(op.Program, op.Asset), nil
	}
	key := AccountKey{Program: op.Program, Member: op.Member, Asset: op.Asset}
	existing, found, err := s.Account(key)
	if err != nil {
		return Result{}, storeErr("read account", err)
	}
	if found {
		r := failf(CodeAccountExists, "account %s already exists (%s)", key, existing.State)
		r.Account = existing
		return r, nil
	}
	a := Account{Key: key, State: StateActive, MaxBalanceMinor: op.MaxBalanceMinor, OpenedAtMs: timeMs}
	if err := putAccount(s, &a, timeMs); err != nil {
		return Result{}, err
	}
	return Result{Code: CodeOK, Account: a}, nil
}

func credit(s Store, timeMs int64, op *Op) (Result, error) {
	a, fail, ok, err := lookup(s, op)
	if !ok || err != nil {
		return fail, err
	}
	switch a.State {
	case StateFrozen, StateClosed:
		return stateFailure(&a, op.Kind), nil
	}
	posted, ok := add64(a.PostedMinor, op.AmountMinor)
	if !ok {
		return withAccount(failf(CodeOverflow, "credit of %d to account %s (posted %d) overflows",
			op.AmountMinor, a.Key, a.PostedMinor), &a), nil
	}
	if a.MaxBalanceMinor > 0 && posted > a.MaxBalanceMinor {
		return withAccount(failf(CodeLimitExceeded, "credit of %d would bring account %s to %d, above its limit %d",
			op.AmountMinor, a.Key, posted, a.MaxBalanceMinor), &a), nil
	}
	return post(s, timeMs, op, &a, posted, -op.AmountMinor) // AmountMinor > 0: the negation is exact
}

// post is the double entry of a credit or debit: the account's posted
// balance becomes posted and the control account of (program, asset) moves by
// controlDelta, the opposite amount, so the shard's balances still sum to zero.
// A control overflow fails the op before anything is written.
func post(s Store, timeMs int64, op *Op, a *Account, posted, controlDelta int64) (Result, error) {
	ctl, err := s.Control(op.Program, op.Asset)
	if err != nil {
		return Result{}, storeErr("read control", err)
	}
	newCtl, ok := add64(ctl, controlDelta)
	if !ok {
		return withAccount(failf(CodeOverflow, "%s of %d overflows the control account of %s/%s (%d)",
			strings.ToLower(op.Kind.String()), op.AmountMinor, op.Program, op.Asset, ctl), a), nil
	}
	a.PostedMinor = posted
	if err := putAccount(s, a, timeMs); err != nil {
		return Result{}, err
	}
	if err := s.PutControl(op.Program, op.Asset, newCtl); err != nil {
		return Result{}, storeErr("put control", err)
	}
	return Result{Code: CodeOK, Account: *a}, nil
}

func debit(s Store, timeMs int64, backlog bool, op *Op) (Result, error) {
	a, fail, ok, err := lookup(s, op)
	if !ok || err != nil {
		return fail, err
	}
	if a.State != StateActive {
		return stateFailure(&a, op.Kind), nil
	}
	if a.AvailableMinor() < op.AmountMinor {
		return insufficient(backlog, &a, op), nil
	}
	return post(s, timeMs, op, &a, a.PostedMinor-op.AmountMinor, op.AmountMinor)
}

func hold(s Store, timeMs int64, backlog bool, op *Op) (Result, error) {
	a, fail, ok, err := lookup(s, op)
	if !ok || err != nil {
		return fail, err
	}
	if a.State != StateActive {
		return stateFailure(&a, op.Kind), nil
	}
	if a.AvailableMinor() < op.AmountMinor {
		return insufficient(backlog, &a, op), nil
	}
	expiresAtMs, ok := add64(timeMs, op.HoldTTLMs)
	if !ok {
		return withAccount(failf(CodeOverflow, "hold expiry %d + %d overflows", timeMs, op.HoldTTLMs), &a), nil
	}
	a.HeldMinor += op.AmountMinor // <= PostedMinor, checked above
	h := Hold{
		Program:     op.Program,
		Member:      op.Member,
		Key:         op.IdempotencyKey,
		Asset:       op.Asset,
		AmountMinor: op.AmountMinor,
		State:       HoldOpen,
		CreatedAtMs: timeMs,
		ExpiresAtMs: expiresAtMs,
	}
	if err := putAccount(s, &a, timeMs); err != nil {
		return Result{}, err
	}
	if err := s.PutHold(h); err != nil {
		return Result{}, storeErr("put hold", err)
	}
	return Result{Code: CodeOK, Account: a, Hold: h}, nil
}

// settleHold runs CaptureHold and ReleaseHold, which share their checks:
// hold exists, (capture: asset and scale), account exists, hold is open and
// not expired, (capture: account is active, amount fits the hold).
func settleHold(s Store, timeMs int64, v uint32, op *Op) (Result, error) {
	h, found, err := s.Hold(op.Program, op.Member, op.HoldKey)
	if err != nil {
		return Result{}, storeErr("read hold", err)
	}
	if !found {
		return failf(CodeHoldNotFound, "hold %q of member %q in program %q not found", op.HoldKey, op.Member, op.Program), nil
	}
	capture := op.Kind == OpCaptureHold
	if capture {
		asset, found, err := s.Asset(h.Program, h.Asset)
		if err != nil {
			return Result{}, storeErr("read asset", err)
		}
		if !found {
			return withHold(unknownAsset(h.Program, h.Asset), &h), nil
		}
		// A whole-hold capture carries no amount, so it may leave Scale 0.
		if op.Scale != asset.Scale && (op.AmountMinor != 0 || op.Scale != 0) {
			return withHold(scaleMismatch(op.Scale, &asset), &h), nil
		}
	}
	a, found, err := s.Account(holdAccountKey(&h))
	if err != nil {
		return Result{}, storeErr("read account", err)
	}
	if !found {
		return Result{}, fmt.Errorf("%w: hold %s/%s/%s has no account", ErrInvariant, h.Program, h.Member, h.Key)
	}
	if err := CheckAccount(a); err != nil {
		return Result{}, err
	}

	switch h.State {
	case HoldCaptured, HoldReleased:
		return withHold(withAccount(failf(CodeHoldClosed, "hold %q is already %s", h.Key, h.State), &a), &h), nil
	case HoldExpired:
		return withHold(withAccount(failf(CodeHoldExpired, "hold %q expired at %d", h.Key, h.ExpiresAtMs), &a), &h), nil
	case HoldOpen:
		if h.ExpiresAtMs <= timeMs {
			if err := expireHold(s, &h, &a, timeMs, v); err != nil {
				return Result{}, err
			}
			return withHold(withAccount(failf(CodeHoldExpired, "hold %q expired at %d", h.Key, h.ExpiresAtMs), &a), &h), nil
		}
	default:
		return Result{}, fmt.Errorf("%w: hold %s/%s/%s in state %s", ErrInvariant, h.Program, h.Member, h.Key, h.State)
	}

	if !capture {
		// Allowed in any account state: releasing only returns value.
		a.HeldMinor -= h.AmountMinor
		h.State = HoldReleased
		if err := putAccount(s, &a, timeMs); err != nil {
			return Result{}, err
		}
		if err := s.PutHold(h); err != nil {
			return Result{}, storeErr("put hold", err)
		}
		return Result{Code: CodeOK, Account: a, Hold: h, ReleasedMinor: h.AmountMinor}, nil
	}

	if a.State != StateActive {
		return withHold(stateFailure(&a, op.Kind), &h), nil
	}
	amount := op.AmountMinor
	if amount == 0 {
		amount = h.AmountMinor
	}
	if amount > h.AmountMinor {
		return withHold(withAccount(failf(CodeInvalidAmount, "capture of %d is more than hold %q of %d",
			amount, h.Key, h.AmountMinor), &a), &h), nil
	}
	ctl, err := s.Control(h.Program, h.Asset)
	if err != nil {
		return Result{}, storeErr("read control", err)
	}
	newCtl, ok := add64(ctl, amount)
	if !ok {
		return withHold(withAccount(failf(CodeOverflow, "capture of %d overflows the control account of %s/%s (%d)",
			amount, h.Program, h.Asset, ctl), &a), &h), nil
	}
	a.PostedMinor -= amount
	a.HeldMinor -= h.AmountMinor
	h.State = HoldCaptured
	if err := putAccount(s, &a, timeMs); err != nil {
		return Result{}, err
	}
	if err := s.PutControl(h.Program, h.Asset, newCtl); err != nil {
		return Result{}, storeErr("put control", err)
	}
	if err := s.PutHold(h); err != nil {
		return Result{}, storeErr("put hold", err)
	}
	return Result{Code: CodeOK, Account: a, Hold: h, CapturedMinor: amount, ReleasedMinor: h.AmountMinor - amount}, nil
}

// transition runs the state-only operations: Freeze, Unfreeze, ReportLost,
// ReportFound, Close. A Freeze, Unfreeze, ReportLost or ReportFound that asks
// for the state the account is already in is a successful no-op (retries and
// double clicks are harmless); a Close of a closed account is ACCOUNT_CLOSED,
// as is any of these on a closed account (nextState: closed is final).
func transition(s Store, timeMs int64, op *Op) (Result, error) {
	a, fail, ok, err := lookup(s, op)
	if !ok || err != nil {
		return fail, err
	}
	from := a.State
	to, code := nextState(op.Kind, &a)
	if code != CodeOK {
		var msg string
		switch code {
		case CodeBalanceNotZero:
			msg = fmt.Sprintf("cannot close account %s: posted %d, held %d", a.Key, a.PostedMinor, a.HeldMinor)
		default:
			msg = fmt.Sprintf("%s: account %s is %s", op.Kind, a.Key, from)
		}
		return withAccount(Result{Code: code, Message: msg}, &a), nil
	}
	if to == from {
		return Result{Code: CodeOK, Account: a}, nil
	}
	a.State = to
	if err := putAccount(s, &a, timeMs); err != nil {
		return Result{}, err
	}
	return Result{Code: CodeOK, Account: a}, nil
}

// nextState is the account lifecycle: the state op kind k leads a to, or the
// code that refuses it.
func nextState(k OpKind, a *Account) (AccountState, Code) {
	from := a.State
	if from == StateClosed {
		return from, CodeAccountClosed // final
	}
	switch k {
	case OpFreeze:
		switch from {
		case StateActive, StateFrozen:
			return StateFrozen, CodeOK
		}
	case OpUnfreeze:
		switch from {
		case StateFrozen, StateActive:
			return StateActive, CodeOK
		}
	case OpReportLost:
		switch from {
		case StateActive, StateLost:
			return StateLost, CodeOK
		}
	case OpReportFound:
		switch from {
		case StateLost, StateActive:
			return StateActive, CodeOK
		}
	case OpClose:
		if a.PostedMinor != 0 || a.HeldMinor != 0 {
			return from, CodeBalanceNotZero
		}
		return StateClosed, CodeOK
	}
	return from, CodeInvalidState
}

// lookup runs the checks every op on an existing account starts with, in
// priority order: the asset exists, the op's scale is the asset's (for kinds
// that carry an amount), the account exists. ok is false when fail is the
// op's result.
func lookup(s Store, op *Op) (a Account, fail Result, ok bool, err error) {
	asset, found, err := s.Asset(op.Program, op.Asset)
	if err != nil {
		return a, Result{}, false, storeErr("read asset", err)
	}
	if !found {
		return a, unknownAsset(op.Program, op.Asset), false, nil
	}
	if carriesAmount(op.Kind) && op.Scale != asset.Scale {
		return a, scaleMismatch(op.Scale, &asset), false, nil
	}
	key := AccountKey{Program: op.Program, Member: op.Member, Asset: op.Asset}
	a, found, err = s.Account(key)
	if err != nil {
		return a, Result{}, false, storeErr("read account", err)
	}
	if !found {
		return a, failf(CodeAccountNotFound, "account %s does not exist", key), false, nil
	}
	if err := CheckAccount(a); err != nil {
		return a, Result{}, false, err
	}
	return a, Result{}, true, nil
}

func carriesAmount(k OpKind) bool {
	switch k {
	case OpCredit, OpDebit, OpHold, OpCaptureHold:
		return true
	}
	return false
}

// putAccount stamps a with the log time, asserts its invariants and writes it.
func putAccount(s Store, a *Account, timeMs int64) error {
	a.UpdatedAtMs = timeMs
	if err := CheckAccount(*a); err != nil {
		return err
	}
	if err := s.PutAccount(*a); err != nil {
		return storeErr("put account", err)
	}
	return nil
}

// expireHold releases an open hold's amount back to its account a and marks
// it Expired; from Version3 it journals the expiry.
func expireHold(s Store, h *Hold, a *Account, timeMs int64, v uint32) error {
	a.HeldMinor -= h.AmountMinor
	if err := putAccount(s, a, timeMs); err != nil {
		return err
	}
	h.State = HoldExpired
	if err := s.PutHold(*h); err != nil {
		return storeErr("put hold", err)
	}
	if v < Version3 {
		return nil
	}
	return journalExpiry(s, timeMs, h, a)
}

// journalExpiry records the expiry of h (now Expired; a is its account after
// it) as an EXPIRE_HOLD op under ExpiryKey(h.Key), which PutRecord indexes
// in the member's journal.
func journalExpiry(s Store, timeMs int64, h *Hold, a *Account) error {
	asset, found, err := s.Asset(h.Program, h.Asset)
	if err != nil {
		return storeErr("read asset", err)
	}
	if !found {
		return fmt.Errorf("%w: hold %s/%s/%s is of an undefined asset %q", ErrInvariant, h.Program, h.Member, h.Key, h.Asset)
	}
	op := Op{Kind: OpExpireHold, Program: h.Program, Member: h.Member, Asset: h.Asset, IdempotencyKey: ExpiryKey(h.Key),
		HoldKey: h.Key, AmountMinor: h.AmountMinor, Scale: asset.Scale}
	if _, dup, err := s.Record(op.Program, op.IdempotencyKey); err != nil {
		return storeErr("read record", err)
	} else if dup {
		return fmt.Errorf("%w: hold %s/%s/%s expires a second time", ErrInvariant, h.Program, h.Member, h.Key)
	}
	res := withHold(withAccount(Result{Code: CodeOK}, a), h)
	res.ReleasedMinor = h.AmountMinor
	_, err = record(s, timeMs, &op, fingerprintFor(Version3, &op, false), res)
	return err
}

func holdAccountKey(h *Hold) AccountKey {
	return AccountKey{Program: h.Program, Member: h.Member, Asset: h.Asset}
}

// stateFailure is the result for an op refused by the account's state.
func stateFailure(a *Account, k OpKind) Result {
	var code Code
	switch a.State {
	case StateFrozen:
		code = CodeAccountFrozen
	case StateLost:
		code = CodeAccountLost
	case StateClosed:
		code = CodeAccountClosed
	default:
		code = CodeInvalidState
	}
	return withAccount(failf(code, "%s refused: account %s is %s", k, a.Key, a.State), a)
}

// insufficient is the answer to a debit or hold that a's available balance
// does not cover: INSUFFICIENT_FUNDS, recorded like any outcome. But from
// Version4, when the entry's sweep stopped at its bound (MaxExpiriesPerEntry)
// with expired holds left to release (backlog), part of a's held amount may
// be due back. Judged now, an op whose amount a's posted balance covers
// would be refused, and the refusal recorded under its key, on a balance the
// rules say is already available. It is answered UNAVAILABLE instead and not
// recorded (unrecorded), so that the same op sent again once the expiries
// are released is judged then.
func insufficient(backlog bool, a *Account, op *Op) Result {
	if backlog && op.AmountMinor <= a.PostedMinor {
		return withAccount(failf(CodeUnavailable, "%s of %d: account %s has %d available (posted %d, held %d), "+
			"and this shard has holds past their expiry still to release; not applied and not recorded: "+
			"send it again with the same key", op.Kind, op.AmountMinor, a.Key, a.AvailableMinor(), a.PostedMinor, a.HeldMinor), a)
	}
	return withAccount(failf(CodeInsufficientFunds, "%s of %d: account %s has %d available (posted %d, held %d)",
		op.Kind, op.AmountMinor, a.Key, a.AvailableMinor(), a.PostedMinor, a.HeldMinor), a)
}

// unrecorded reports whether evaluate's result res is left unrecorded: the
// op was not applied, and its key stays free for the same op sent again
// (insufficient, from Version4). Every other outcome is recorded.
func unrecorded(res *Result) bool { return res.Code == CodeUnavailable }

func unknownAsset(program, code string) Result {
	return failf(CodeUnknownAsset, "asset %s of program %q is not defined", code, program)
}

func scaleMismatch(scale uint8, asset *Asset) Result {
	return failf(CodeScaleMismatch, "amount is at scale %d but asset %s of program %q has scale %d",
		scale, asset.Code, asset.Program, asset.Scale)
}

func failf(code Code, format string, args ...any) Result {
	return Result{Code: code, Message: fmt.Sprintf(format, args...)}
}

func withAccount(r Result, a *Account) Result {
	r.Account = *a
	return r
}

func withHold(r Result, h *Hold) Result {
	r.Hold = *h
	return r
}

// add64 returns a+b and whether it did not overflow.
func add64(a, b int64) (int64, bool) {
	if b > 0 && a > math.MaxInt64-b || b < 0 && a < math.MinInt64-b {
		return 0, false
	}
	return a + b, true
}

func storeErr(what string, err error) error {
	return fmt.Errorf("ledger: store: %s: %w", what, err)
}
