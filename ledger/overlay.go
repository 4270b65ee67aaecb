package ledger

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// SeqPeeker is implemented by stores that can tell the next journal sequence
// number without taking it. An Overlay needs it from its base only if
// NextSeq is called on the overlay, which happens in two places: the FSM
// applies each batch of entries on an overlay over its state store, so every
// record takes its sequence number there; and from Version3 a linked
// request's capture or release that finds its hold expired journals the
// expiry (journalExpiry) on the request's own overlay, which stacks on the
// FSM's.
type SeqPeeker interface {
	PeekSeq() (uint64, error)
}

// Overlay is a Store that buffers writes over a base Store: reads see the
// overlay's own writes first, and nothing reaches the base until Commit.
// Dropping an overlay (not calling Commit) discards everything it buffered,
// sequence numbers included. Linked requests run on an overlay so they apply
// all or none.
//
// Commit writes in the order of each item's first write (a slice, never map
// order), so the same calls give the same base writes on every replica.
// An Overlay is not safe for concurrent use, and the base must not change
// while an overlay over it is in use.
type Overlay struct {
	base Store

	assets   map[assetID]int // index into assetVals
	accounts map[AccountKey]int
	controls map[assetID]int
	holds    map[holdID]int
	records  map[recordID]int

	assetVals   []Asset
	accountVals []Account
	controlVals []controlVal
	holdVals    []Hold
	recordVals  []Record

	order []overlayRef // first writes, in order

	seqNext  uint64 // next sequence number to hand out, once seqKnown
	seqTaken uint64 // how many NextSeq has handed out
	seqKnown bool
}

type assetID struct{ program, code string }

type holdID struct{ program, member, key string }

type recordID struct{ program, key string }

type controlVal struct {
	program, asset string
	balanceMinor   int64
}

type overlayKind uint8

const (
	ovAsset overlayKind = iota
	ovAccount
	ovControl
	ovHold
	ovRecord
)

type overlayRef struct {
	kind overlayKind
	idx  int
}

// NewOverlay returns an empty overlay over base.
func NewOverlay(base Store) *Overlay { return &Overlay{base: base} }

var _ Store = (*Overlay)(nil)

// Asset implements Store.
func (o *Overlay) Asset(program, code string) (Asset, bool, error) {
	if i, ok := o.assets[assetID{program, code}]; ok {
		return o.assetVals[i], true, nil
	}
	return o.base.Asset(program, code)
}

// PutAsset implements Store.
func (o *Overlay) PutAsset(a Asset) error {
	id := assetID{a.Program, a.Code}
	if i, ok := o.assets[id]; ok {
		o.assetVals[i] = a
		return nil
	}
	if o.assets == nil {
		o.assets = make(map[assetID]int)
	}
	o.assets[id] = len(o.assetVals)
	o.order = append(o.order, overlayRef{ovAsset, len(o.assetVals)})
	o.assetVals = append(o.assetVals, a)
	return nil
}

// Account implements Store.
func (o *Overlay) Account(k AccountKey) (Account, bool, error) {
	if i, ok := o.accounts[k]; ok {
		return o.accountVals[i], true, nil
	}
	return o.base.Account(k)
}

// PutAccount implements Store.
func (o *Overlay) PutAccount(a Account) error {
	if i, ok := o.accounts[a.Key]; ok {
		o.accountVals[i] = a
		return nil
	}
	if o.accounts == nil {
		o.accounts = make(map[AccountKey]int)
	}
	o.accounts[a.Key] = len(o.accountVals)
	o.order = append(o.order, overlayRef{ovAccount, len(o.accountVals)})
	o.accountVals = append(o.accountVals, a)
	return nil
}

// Control implements Store.
func (o *Overlay) Control(program, asset string) (int64, error) {
	if i, ok := o.controls[assetID{program, asset}]; ok {
		return o.controlVals[i].balanceMinor, nil
	}
	return o.base.Control(program, asset)
}

// PutControl implements Store.
func (o *Overlay) PutControl(program, asset string, balanceMinor int64) error {
	id := assetID{program, asset}
	if i, ok := o.controls[id]; ok {
		o.controlVals[i].balanceMinor = balanceMinor
		return nil
	}
	if o.controls == nil {
		o.controls = make(map[assetID]int)
	}
	o.controls[id] = len(o.controlVals)
	o.order = append(o.order, overlayRef{ovControl, len(o.controlVals)})
	o.controlVals = append(o.controlVals, controlVal{program, asset, balanceMinor})
	return nil
}

// Hold implements Store.
func (o *Overlay) Hold(program, member, key string) (Hold, bool, error) {
	if i, ok := o.holds[holdID{program, member, key}]; ok {
		return o.holdVals[i], true, nil
	}
	return o.base.Hold(program, member, key)
}

// PutHold implements Store. The expiry index is derived from the buffered
// holds (see ExpiredHolds) and is kept in step by the base on Commit.
func (o *Overlay) PutHold(h Hold) error {
	id := holdID{h.Program, h.Member, h.Key}
	if i, ok := o.holds[id]; ok {
		o.holdVals[i] = h
		return nil
	}
	if o.holds == nil {
		o.holds = make(map[holdID]int)
	}
	o.holds[id] = len(o.holdVals)
	o.order = append(o.order, overlayRef{ovHold, len(o.holdVals)})
	o.holdVals = append(o.holdVals, h)
	return nil
}

// ExpiredHolds implements Store: the base's expired open holds, less those
// the overlay has rewritten, plus the overlay's own expired open holds, in
// (ExpiresAtMs, Program, Member, Key) order.
func (o *Overlay) ExpiredHolds(nowMs int64, limit int) ([]HoldRef, error) {
	if limit <= 0 {
		return nil, nil
	}
	// Each buffered hold can hide at most one base entry, so asking the base
	// for that many more still leaves limit entries if it has them.
	baseRefs, err := o.base.ExpiredHolds(nowMs, limit+len(o.holdVals))
	if err != nil {
		return nil, err
	}
	refs := make([]HoldRef, 0, len(baseRefs))
	for _, r := range baseRefs {
		if _, shadowed := o.holds[holdID{r.Program, r.Member, r.Key}]; !shadowed {
			refs = append(refs, r)
		}
	}
	for i := range o.holdVals {
		h := &o.holdVals[i]
		if h.State == HoldOpen && h.ExpiresAtMs <= nowMs {
			refs = append(refs, HoldRef{Program: h.Program, Member: h.Member, Key: h.Key, ExpiresAtMs: h.ExpiresAtMs})
		}
	}
	slices.SortFunc(refs, compareHoldRef)
	if len(refs) > limit {
		refs = refs[:limit]
	}
	return refs, nil
}

// compareHoldRef orders the expiry index: (ExpiresAtMs, Program, Member, Key).
func compareHoldRef(a, b HoldRef) int {
	if c := cmp.Compare(a.ExpiresAtMs, b.ExpiresAtMs); c != 0 {
		return c
	}
	if c := strings.Compare(a.Program, b.Program); c != 0 {
		return c
	}
	if c := strings.Compare(a.Member, b.Member); c != 0 {
		return c
	}
	return strings.Compare(a.Key, b.Key)
}

// Record implements Store.
func (o *Overlay) Record(program, key string) (Record, bool, error) {
	if i, ok := o.records[recordID{program, key}]; ok {
		return o.recordVals[i], true, nil
	}
	return o.base.Record(program, key)
}

// PutRecord implements Store.
func (o *Overlay) PutRecord(r Record) error {
	id := recordID{r.Op.Program, r.Op.IdempotencyKey}
	if i, ok := o.records[id]; ok {
		o.recordVals[i] = r
		return nil
	}
	if o.records == nil {
		o.records = make(map[recordID]int)
	}
	o.records[id] = len(o.recordVals)
	o.order = append(o.order, overlayRef{ovRecord, len(o.recordVals)})
	o.recordVals = append(o.recordVals, r)
	return nil
}

// errNoPeek is returned by NextSeq when the base cannot lend numbers.
var errNoPeek = errors.New("ledger: overlay NextSeq needs a base that implements SeqPeeker")

// NextSeq implements Store. The numbers are the base's next ones, but the
// base's counter only advances on Commit, so a dropped overlay gives them
// back. The base must implement SeqPeeker.
func (o *Overlay) NextSeq() (uint64, error) {
	n, err := o.PeekSeq()
	if err != nil {
		return 0, err
	}
	o.seqNext++
	o.seqTaken++
	return n, nil
}

// PeekSeq implements SeqPeeker, so overlays can stack.
func (o *Overlay) PeekSeq() (uint64, error) {
	if !o.seqKnown {
		p, ok := o.base.(SeqPeeker)
		if !ok {
			return 0, errNoPeek
		}
		n, err := p.PeekSeq()
		if err != nil {
			return 0, err
		}
		o.seqNext, o.seqKnown = n, true
	}
	return o.seqNext, nil
}

// Commit writes everything buffered to the base, in order of first write,
// after taking from the base the sequence numbers the overlay handed out. The
// overlay is then empty and may be reused.
func (o *Overlay) Commit() error {
	first := o.seqNext - o.seqTaken
	for i := uint64(0); i < o.seqTaken; i++ {
		n, err := o.base.NextSeq()
		if err != nil {
			return err
		}
		if n != first+i {
			return fmt.Errorf("%w: overlay handed out seq %d but the base gave %d", ErrInvariant, first+i, n)
		}
	}
	for _, ref := range o.order {
		var err error
		switch ref.kind {
		case ovAsset:
			err = o.base.PutAsset(o.assetVals[ref.idx])
		case ovAccount:
			err = o.base.PutAccount(o.accountVals[ref.idx])
		case ovControl:
			c := &o.controlVals[ref.idx]
			err = o.base.PutControl(c.program, c.asset, c.balanceMinor)
		case ovHold:
			err = o.base.PutHold(o.holdVals[ref.idx])
		case ovRecord:
			err = o.base.PutRecord(o.recordVals[ref.idx])
		}
		if err != nil {
			return err
		}
	}
	o.Reset()
	return nil
}

// Reset drops everything buffered, as if the overlay were new, but keeps
// its buffers' capacity: the FSM reuses one overlay for every Raft batch, so
// a batch does not allocate its maps and slices again. Values are zeroed, so
// nothing buffered stays reachable.
func (o *Overlay) Reset() {
	clear(o.assets)
	clear(o.accounts)
	clear(o.controls)
	clear(o.holds)
	clear(o.records)
	o.assetVals = resetSlice(o.assetVals)
	o.accountVals = resetSlice(o.accountVals)
	o.controlVals = resetSlice(o.controlVals)
	o.holdVals = resetSlice(o.holdVals)
	o.recordVals = resetSlice(o.recordVals)
	o.order = o.order[:0]
	o.seqNext, o.seqTaken, o.seqKnown = 0, 0, false
}

func resetSlice[T any](s []T) []T {
	clear(s)
	return s[:0]
}

// Reserve makes room for about ops operations' records, so a large Raft
// batch does not regrow (and copy) the overlay's buffers again and again:
// with 16 entries of 1,000 operations, growing them took a third of the
// FSM's apply time.
func (o *Overlay) Reserve(ops int) {
	if o.records == nil {
		o.records = make(map[recordID]int, ops)
	}
	o.recordVals = slices.Grow(o.recordVals, ops)
	o.order = slices.Grow(o.order, 2*ops)
}
