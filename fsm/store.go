package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/tally-ledger/tally/ledger"
)

// pebbleReader is the read side shared by the DB and its snapshots.
type pebbleReader struct {
	get  func(key []byte) ([]byte, func() error, error)
	iter func(o *pebble.IterOptions) (*pebble.Iterator, error)
}

func dbReader(db *pebble.DB) pebbleReader {
	return pebbleReader{
		get: func(k []byte) ([]byte, func() error, error) {
			v, c, err := db.Get(k)
			if err != nil {
				return nil, nil, err
			}
			return v, c.Close, nil
		},
		iter: db.NewIter,
	}
}

func snapReader(s *pebble.Snapshot) pebbleReader {
	return pebbleReader{
		get: func(k []byte) ([]byte, func() error, error) {
			v, c, err := s.Get(k)
			if err != nil {
				return nil, nil, err
			}
			return v, c.Close, nil
		},
		iter: s.NewIter,
	}
}

// getValue copies the value of key into a new slice; found=false if absent.
func (r pebbleReader) getValue(key []byte) ([]byte, bool, error) {
	v, closer, err := r.get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := append([]byte(nil), v...)
	if err := closer(); err != nil {
		return nil, false, err
	}
	return out, true, nil
}

// view decodes the shard's state through a reader. It is the read side of
// batchStore and serves the node's local reads.
type view struct {
	r  pebbleReader
	kb keyBuilder
}

func (v view) asset(program, code string) (ledger.Asset, bool, error) {
	b, ok, err := v.r.getValue(v.kb.asset(program, code))
	if err != nil || !ok {
		return ledger.Asset{}, false, err
	}
	a, err := ledger.DecodeAsset(b)
	return a, err == nil, err
}

func (v view) account(k ledger.AccountKey) (ledger.Account, bool, error) {
	b, ok, err := v.r.getValue(v.kb.account(k.Program, k.Member, k.Asset))
	if err != nil || !ok {
		return ledger.Account{}, false, err
	}
	a, err := ledger.DecodeAccount(b)
	return a, err == nil, err
}

func (v view) control(program, asset string) (int64, error) {
	b, ok, err := v.r.getValue(v.kb.control(program, asset))
	if err != nil || !ok {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("fsm: control balance %s/%s: bad length %d", program, asset, len(b))
	}
	return int64(binary.BigEndian.Uint64(b)), nil
}

func (v view) hold(program, member, key string) (ledger.Hold, bool, error) {
	b, ok, err := v.r.getValue(v.kb.hold(program, member, key))
	if err != nil || !ok {
		return ledger.Hold{}, false, err
	}
	h, err := ledger.DecodeHold(b)
	return h, err == nil, err
}

func (v view) record(program, key string) (ledger.Record, bool, error) {
	b, ok, err := v.r.getValue(v.kb.record(program, key))
	if err != nil || !ok {
		return ledger.Record{}, false, err
	}
	rec, err := ledger.DecodeRecord(b)
	return rec, err == nil, err
}

func (v view) expiredHolds(nowMs int64, limit int) ([]ledger.HoldRef, error) {
	lower := v.kb.expiryUpTo(-1 << 63)
	var upper []byte
	if nowMs == 1<<63-1 {
		upper = prefixEnd(lower[:len(lower)-8])
	} else {
		upper = v.kb.expiryUpTo(nowMs + 1)
	}
	it, err := v.r.iter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	var refs []ledger.HoldRef
	for valid := it.First(); valid && len(refs) < limit; valid = it.Next() {
		k := it.Key()[len(lower)-8:]
		t := int64(binary.BigEndian.Uint64(k[:8]) ^ (1 << 63))
		parts := bytes.SplitN(k[8:], []byte{0}, 3)
		if len(parts) != 3 {
			_ = it.Close()
			return nil, fmt.Errorf("fsm: malformed expiry key %q", it.Key())
		}
		refs = append(refs, ledger.HoldRef{Program: string(parts[0]), Member: string(parts[1]),
			Key: string(parts[2]), ExpiresAtMs: t})
	}
	return refs, it.Close()
}

// stateStore is the FSM's ledger.Store over committed state. Reads come
// from a write-through cache of decoded values or from the DB; writes go to
// the current (non-indexed) Pebble batch and the cache. ApplyBatch runs the
// rules on a ledger.Overlay over it, so reads within a Raft batch see the
// batch's own writes without an indexed batch, and everything is flushed to
// stateStore once, in a deterministic order, before the Pebble commit.
//
// Only Raft's FSM goroutine touches a stateStore.
type stateStore struct {
	view
	b   *pebble.Batch // current batch; nil between batches
	seq uint64        // last journal sequence handed out

	assets   map[string]ledger.Asset   // program \x00 code
	accounts map[string]ledger.Account // encoded account key
	controls map[string]int64          // encoded control key
	holds    map[string]ledger.Hold    // encoded hold key; captures follow holds closely
	records  *recordFilter             // every stored record key; see recordFilter
	db       *pebble.DB
}

// Cache bounds: when a map reaches its bound it is dropped and refilled from
// the DB, which changes speed, never results.
const (
	maxCachedAccounts = 1 << 18
	maxCachedControls = 1 << 12
	maxCachedAssets   = 1 << 12
	maxCachedHolds    = 1 << 16
)

var (
	_ ledger.Store     = (*stateStore)(nil)
	_ ledger.SeqPeeker = (*stateStore)(nil)
)

func newStateStore(db *pebble.DB, kb keyBuilder) (*stateStore, error) {
	s := &stateStore{view: view{r: dbReader(db), kb: kb}, db: db}
	return s, s.reload()
}

// reload drops every cached value and rebuilds the record filter from the
// DB: on open and after the shard's state was replaced by a restore.
func (s *stateStore) reload() error {
	s.assets = make(map[string]ledger.Asset)
	s.accounts = make(map[string]ledger.Account)
	s.controls = make(map[string]int64)
	s.holds = make(map[string]ledger.Hold)
	f, err := buildRecordFilter(s.db, s.kb)
	if err != nil {
		return err
	}
	s.records = f
	return nil
}

func (s *stateStore) Asset(program, code string) (ledger.Asset, bool, error) {
	k := program + "\x00" + code
	if a, ok := s.assets[k]; ok {
		return a, true, nil
	}
	a, found, err := s.asset(program, code)
	if found && err == nil {
		if len(s.assets) >= maxCachedAssets {
			s.assets = make(map[string]ledger.Asset)
		}
		s.assets[k] = a
	}
	return a, found, err
}

func (s *stateStore) PutAsset(a ledger.Asset) error {
	s.assets[a.Program+"\x00"+a.Code] = a
	return s.b.Set(s.kb.asset(a.Program, a.Code), ledger.AppendAsset(nil, a), nil)
}

func (s *stateStore) Account(k ledger.AccountKey) (ledger.Account, bool, error) {
	key := s.kb.account(k.Program, k.Member, k.Asset)
	if a, ok := s.accounts[string(key)]; ok {
		return a, true, nil
	}
	b, found, err := s.r.getValue(key)
	if err != nil || !found {
		return ledger.Account{}, false, err
	}
	a, err := ledger.DecodeAccount(b)
	if err != nil {
		return ledger.Account{}, false, err
	}
	s.cacheAccount(string(key), a)
	return a, true, nil
}

func (s *stateStore) cacheAccount(key string, a ledger.Account) {
	if len(s.accounts) >= maxCachedAccounts {
		s.accounts = make(map[string]ledger.Account)
	}
	s.accounts[key] = a
}

func (s *stateStore) PutAccount(a ledger.Account) error {
	key := s.kb.account(a.Key.Program, a.Key.Member, a.Key.Asset)
	s.cacheAccount(string(key), a)
	return s.b.Set(key, ledger.AppendAccount(nil, a), nil)
}

func (s *stateStore) Control(program, asset string) (int64, error) {
	key := s.kb.control(program, asset)
	if v, ok := s.controls[string(key)]; ok {
		return v, nil
	}
	v, err := s.control(program, asset)
	if err == nil {
		if len(s.controls) >= maxCachedControls {
			s.controls = make(map[string]int64)
		}
		s.controls[string(key)] = v
	}
	return v, err
}

func (s *stateStore) PutControl(program, asset string, balanceMinor int64) error {
	key := s.kb.control(program, asset)
	s.controls[string(key)] = balanceMinor
	return s.b.Set(key, binary.BigEndian.AppendUint64(nil, uint64(balanceMinor)), nil)
}

// Hold reads a committed hold. A hold is named by the idempotency key of the
// Hold operation that placed it, and its dedup record is written in the same
// batch, so a key the record filter has never seen has no hold: a new hold
// (and a capture of a hold that never existed) costs no Pebble lookup.
func (s *stateStore) Hold(program, member, key string) (ledger.Hold, bool, error) {
	hk := s.kb.hold(program, member, key)
	if h, ok := s.holds[string(hk)]; ok {
		return h, true, nil
	}
	if !s.records.mayContain(s.kb.record(program, key)) {
		return ledger.Hold{}, false, nil
	}
	b, found, err := s.r.getValue(hk)
	if err != nil || !found {
		return ledger.Hold{}, false, err
	}
	h, err := ledger.DecodeHold(b)
	if err != nil {
		return ledger.Hold{}, false, err
	}
	s.cacheHold(string(hk), h)
	return h, true, nil
}

func (s *stateStore) cacheHold(key string, h ledger.Hold) {
	if len(s.holds) >= maxCachedHolds {
		s.holds = make(map[string]ledger.Hold)
	}
	s.holds[key] = h
}

// PutHold keeps the expiry index in step: the overlay flushes each hold
// once per batch, so the DB still holds its state before the batch.
func (s *stateStore) PutHold(h ledger.Hold) error {
	old, found, err := s.Hold(h.Program, h.Member, h.Key)
	if err != nil {
		return err
	}
	if found && old.State == ledger.HoldOpen && (h.State != ledger.HoldOpen || old.ExpiresAtMs != h.ExpiresAtMs) {
		if err := s.b.Delete(s.kb.expiry(old.ExpiresAtMs, old.Program, old.Member, old.Key), nil); err != nil {
			return err
		}
	}
	if h.State == ledger.HoldOpen {
		if err := s.b.Set(s.kb.expiry(h.ExpiresAtMs, h.Program, h.Member, h.Key), nil, nil); err != nil {
			return err
		}
	}
	hk := s.kb.hold(h.Program, h.Member, h.Key)
	s.cacheHold(string(hk), h)
	return s.b.Set(hk, ledger.AppendHold(nil, h), nil)
}

func (s *stateStore) ExpiredHolds(nowMs int64, limit int) ([]ledger.HoldRef, error) {
	return s.expiredHolds(nowMs, limit)
}

func (s *stateStore) Record(program, key string) (ledger.Record, bool, error) {
	if !s.records.mayContain(s.kb.record(program, key)) {
		return ledger.Record{}, false, nil
	}
	return s.record(program, key)
}

func (s *stateStore) PutRecord(r ledger.Record) error {
	op := r.Op
	key := s.kb.record(op.Program, op.IdempotencyKey)
	if err := s.b.Set(key, ledger.AppendRecord(nil, r), nil); err != nil {
		return err
	}
	s.records.add(key)
	if r.Result.Code != ledger.CodeOK || op.Member == "" {
		return nil
	}
	return s.b.Set(s.kb.journal(op.Program, op.Member, r.Seq), []byte(op.IdempotencyKey), nil)
}

func (s *stateStore) NextSeq() (uint64, error) {
	s.seq++
	return s.seq, nil
}

func (s *stateStore) PeekSeq() (uint64, error) { return s.seq + 1, nil }
