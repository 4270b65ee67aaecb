package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"github.com/tally-ledger/tally/ledger"
)

// pebbleReader is the read side shared by the apply batch (an indexed batch:
// reads see its own writes) and read-only views (the DB, a snapshot).
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

func batchReader(b *pebble.Batch) pebbleReader {
	return pebbleReader{
		get: func(k []byte) ([]byte, func() error, error) {
			v, c, err := b.Get(k)
			if err != nil {
				return nil, nil, err
			}
			return v, c.Close, nil
		},
		iter: b.NewIter,
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

// batchStore implements ledger.Store over one indexed Pebble batch: the whole
// Raft batch is applied into it and committed at once.
type batchStore struct {
	view
	b   *pebble.Batch
	seq uint64 // last journal sequence handed out
}

var _ ledger.Store = (*batchStore)(nil)

func newBatchStore(b *pebble.Batch, kb keyBuilder, seq uint64) *batchStore {
	return &batchStore{view: view{r: batchReader(b), kb: kb}, b: b, seq: seq}
}

func (s *batchStore) Asset(program, code string) (ledger.Asset, bool, error) {
	return s.asset(program, code)
}

func (s *batchStore) PutAsset(a ledger.Asset) error {
	return s.b.Set(s.kb.asset(a.Program, a.Code), ledger.AppendAsset(nil, a), nil)
}

func (s *batchStore) Account(k ledger.AccountKey) (ledger.Account, bool, error) {
	return s.account(k)
}

func (s *batchStore) PutAccount(a ledger.Account) error {
	return s.b.Set(s.kb.account(a.Key.Program, a.Key.Member, a.Key.Asset), ledger.AppendAccount(nil, a), nil)
}

func (s *batchStore) Control(program, asset string) (int64, error) { return s.control(program, asset) }

func (s *batchStore) PutControl(program, asset string, balanceMinor int64) error {
	return s.b.Set(s.kb.control(program, asset), binary.BigEndian.AppendUint64(nil, uint64(balanceMinor)), nil)
}

func (s *batchStore) Hold(program, member, key string) (ledger.Hold, bool, error) {
	return s.hold(program, member, key)
}

func (s *batchStore) PutHold(h ledger.Hold) error {
	old, found, err := s.hold(h.Program, h.Member, h.Key)
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
	return s.b.Set(s.kb.hold(h.Program, h.Member, h.Key), ledger.AppendHold(nil, h), nil)
}

func (s *batchStore) ExpiredHolds(nowMs int64, limit int) ([]ledger.HoldRef, error) {
	return s.expiredHolds(nowMs, limit)
}

func (s *batchStore) Record(program, key string) (ledger.Record, bool, error) {
	return s.record(program, key)
}

func (s *batchStore) PutRecord(r ledger.Record) error {
	op := r.Op
	if err := s.b.Set(s.kb.record(op.Program, op.IdempotencyKey), ledger.AppendRecord(nil, r), nil); err != nil {
		return err
	}
	if r.Result.Code != ledger.CodeOK || op.Member == "" {
		return nil
	}
	return s.b.Set(s.kb.journal(op.Program, op.Member, r.Seq), []byte(op.IdempotencyKey), nil)
}

func (s *batchStore) NextSeq() (uint64, error) {
	s.seq++
	return s.seq, nil
}
