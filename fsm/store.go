package fsm

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

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

// iterReader reads through an open iterator (point reads seek it), so every
// read sees that iterator's one view of the LSM. An open iterator keeps its
// view through a Restore's excise; a Pebble snapshot does not.
func iterReader(it *pebble.Iterator) pebbleReader {
	return pebbleReader{
		get: func(k []byte) ([]byte, func() error, error) {
			if !it.SeekGE(k) || !bytes.Equal(it.Key(), k) {
				if err := it.Error(); err != nil {
					return nil, nil, err
				}
				return nil, nil, pebble.ErrNotFound
			}
			v, err := it.ValueAndErr()
			if err != nil {
				return nil, nil, err
			}
			return v, func() error { return nil }, nil
		},
		iter: func(o *pebble.IterOptions) (*pebble.Iterator, error) {
			return it.Clone(pebble.CloneOptions{IterOptions: o})
		},
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
	return readDecoded(v.r, v.kb.asset(program, code), ledger.DecodeAsset)
}

func (v view) account(k ledger.AccountKey) (ledger.Account, bool, error) {
	return readDecoded(v.r, v.kb.account(k.Program, k.Member, k.Asset), ledger.DecodeAccount)
}

// decodeControl decodes a control balance (8 bytes, big-endian).
func decodeControl(b []byte) (int64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("fsm: control balance: bad length %d", len(b))
	}
	return int64(binary.BigEndian.Uint64(b)), nil
}

func (v view) hold(program, member, key string) (ledger.Hold, bool, error) {
	return readDecoded(v.r, v.kb.hold(program, member, key), ledger.DecodeHold)
}

func (v view) record(program, key string) (ledger.Record, bool, error) {
	return readDecoded(v.r, v.kb.record(program, key), ledger.DecodeRecord)
}

// expiredHolds lists up to limit (> 0) open holds with ExpiresAtMs <= nowMs,
// in expiry order. next is the earliest expiry in the index (refs[0]'s when
// there are refs), math.MaxInt64 when it is empty: no open hold expires
// before it.
func (v view) expiredHolds(nowMs int64, limit int) (refs []ledger.HoldRef, next int64, err error) {
	lower := v.kb.expiryUpTo(math.MinInt64)
	upper := prefixEnd(lower[:len(lower)-8])
	it, err := v.r.iter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, 0, err
	}
	next = math.MaxInt64
	for valid := it.First(); valid && len(refs) < limit; valid = it.Next() {
		k := it.Key()[len(lower)-8:]
		t := int64(binary.BigEndian.Uint64(k[:8]) ^ (1 << 63))
		next = min(next, t) // the first entry's: the index is in time order
		if t > nowMs {
			break
		}
		parts := bytes.SplitN(k[8:], []byte{0}, 3)
		if len(parts) != 3 {
			_ = it.Close()
			return nil, 0, fmt.Errorf("fsm: malformed expiry key %q", it.Key())
		}
		refs = append(refs, ledger.HoldRef{Program: string(parts[0]), Member: string(parts[1]),
			Key: string(parts[2]), ExpiresAtMs: t})
	}
	return refs, next, it.Close()
}

// stateStore is the FSM's ledger.Store over committed state. Reads come
// from a write-through cache of decoded values or from the DB; writes are
// queued (sortedWrites) and reach the current (non-indexed) Pebble batch in
// key order when ApplyBatch calls flushWrites. ApplyBatch runs the
// rules on a ledger.Overlay over it, so reads within a Raft batch see the
// batch's own writes without an indexed batch, and everything is flushed to
// stateStore once, in a deterministic order, before the Pebble commit.
//
// Only Raft's FSM goroutine touches a stateStore, except its accounts cache,
// which the FSM's readers share (see accountCache).
type stateStore struct {
	view
	seq uint64 // last journal sequence handed out

	assets   boundedCache[ledger.Asset] // program \x00 code
	accounts *accountCache              // committed accounts, shared with readers
	dirty    []cachedAccount            // accounts of the current batch, published after its commit
	// dirtyKeys holds the encoded keys of dirty, one after another, so the
	// batch's accounts cost no allocation each; it is reset with dirty.
	dirtyKeys []byte
	controls  boundedCache[int64]       // encoded control key
	holds     boundedCache[ledger.Hold] // encoded hold key; captures follow holds closely
	records   *recordFilter             // every stored record key; see recordFilter
	// expiryFloor is at most the expiry time of every open hold in committed
	// state and the write queue: PutHold lowers it, and ExpiredHolds raises it
	// to what its scan found. Holds that close only raise the true minimum, so
	// it stays a lower bound; ExpiredHolds answers below it without reading.
	expiryFloor int64
	// kbuf and vbuf are scratch buffers for keys and values that only go to
	// the write queue, which copies them.
	kbuf, vbuf []byte
	// lbuf and rbuf are scratch buffers for keys that are only looked up
	// (in a cache, the record filter or Pebble) or handed to what copies
	// them: every operation looks up its asset, account, control balance
	// and dedup record, and building each key afresh made the key builder
	// the node's largest allocator under load (9% of n1's bytes in a
	// flash-sale profile). rbuf is for the record filter's key while lbuf
	// holds another.
	lbuf, rbuf []byte
	db         *pebble.DB
	w          sortedWrites // the current batch's writes, until flushWrites
}

// sortedWrites holds a Raft batch's writes until ApplyBatch hands them to
// the Pebble batch, in key order. Pebble inserts a committed batch into the
// memtable skiplist key by key, and each insert remembers where the last one
// went: keys in order make most of a search free, while keys in the order the
// rules wrote them (random idempotency keys and members) each cost a walk down
// the skiplist through cold cache lines. Measured on the batched bench case:
// memtable inserts 6.7 -> 2.3-3.0 us per operation per replica, for a sort of
// ~1 us (docs/BENCHMARKS.md, run 14). Small batches gain nothing: their keys
// are too far apart in the memtable for one search to help the next.
//
// Keys and values are copied into one arena (the rules' key and value buffers
// are reused as soon as a Put returns), and the entries sort by key, then by
// write order, so two writes of one key would keep their order; the overlay
// writes each item once per batch, so that never happens today.
type sortedWrites struct {
	arena []byte
	ents  []sortedWrite
}

type sortedWrite struct {
	k0, k1, v1 int // offsets in arena: key [k0, k1), value [k1, v1)
	del        bool
}

// maxRetainedWriteBytes bounds the arena kept for the next batch, as
// maxRetainedOverlayOps bounds the overlay: about the writes of that many
// operations.
const maxRetainedWriteBytes = 8 << 20

func (w *sortedWrites) add(key, value []byte, del bool) {
	k0 := len(w.arena)
	w.arena = append(w.arena, key...)
	k1 := len(w.arena)
	w.arena = append(w.arena, value...)
	w.ents = append(w.ents, sortedWrite{k0: k0, k1: k1, v1: len(w.arena), del: del})
}

// batchSize bounds the size of a Pebble batch holding the queued writes
// and the shard's meta: a 12-byte header, and per record a kind byte and two
// length varints besides the key and value.
func (w *sortedWrites) batchSize() int { return 12 + len(w.arena) + 11*len(w.ents) + 128 }

// set and del queue a write for the current batch.
func (s *stateStore) set(key, value []byte) { s.w.add(key, value, false) }

func (s *stateStore) del(key []byte) { s.w.add(key, nil, true) }

// flushWrites hands the queued writes to b in key order.
func (s *stateStore) flushWrites(b *pebble.Batch) error {
	a, ents := s.w.arena, s.w.ents
	slices.SortFunc(ents, func(x, y sortedWrite) int {
		if c := bytes.Compare(a[x.k0:x.k1], a[y.k0:y.k1]); c != 0 {
			return c
		}
		return cmp.Compare(x.k0, y.k0) // write order
	})
	for _, e := range ents {
		var err error
		if e.del {
			err = b.Delete(a[e.k0:e.k1], nil)
		} else {
			err = b.Set(a[e.k0:e.k1], a[e.k1:e.v1], nil)
		}
		if err != nil {
			return err
		}
	}
	if cap(s.w.arena) > maxRetainedWriteBytes {
		s.w = sortedWrites{}
		return nil
	}
	s.w.arena, s.w.ents = a[:0], ents[:0]
	return nil
}

// boundedCache is a map of decoded values that is dropped when it reaches
// its bound and refilled from the DB, which changes speed, never results.
type boundedCache[V any] struct {
	m   map[string]V
	max int
}

func newBoundedCache[V any](max int) boundedCache[V] {
	return boundedCache[V]{m: make(map[string]V), max: max}
}

// get looks key up; the string(key) conversion in a map index allocates
// nothing.
func (c *boundedCache[V]) get(key []byte) (V, bool) {
	v, ok := c.m[string(key)]
	return v, ok
}

func (c *boundedCache[V]) put(key []byte, v V) {
	if len(c.m) >= c.max {
		c.m = make(map[string]V)
	}
	c.m[string(key)] = v
}

// accountCache holds the shard's committed accounts, decoded, as of index.
// Raft's FSM goroutine is its only writer: it reads the map without the lock
// (nothing else writes it), fills misses from the DB, and after each batch's
// Pebble commit adds that batch's accounts and advances index in one write
// critical section (publish). Readers take the read lock and see every cached
// account exactly as of index, never a mix of two batches. A reader never
// mixes the map and the DB either: it takes all its accounts from the map,
// or, if one is missing, all from one DB iterator (whose view may be a batch
// ahead of the map until publish; each answer carries its own index). A miss
// filled during apply is read before that batch's commit, while the DB is at
// the map's index (the batch's own writes are still in the overlay), so the
// map never holds a value of another index.
//
// Reads must also never go back: once a DB reader has seen a batch, no later
// reader may be served the map as of the batch before. So the apply loop
// marks a batch committing (its index) before the Pebble commit, and while
// that is ahead of the map's index, lookup sends readers to the DB. (A
// review found the window: a DB read of a linked batch's debited account,
// then a cached read of its credited one without the credit.)
//
// Linearizable account reads at the leader are served from here: it spares
// each read a seek through the LSM levels.
type accountCache struct {
	// committing is the index of the batch being committed to the DB, or
	// index when none is.
	committing atomic.Uint64
	mu         sync.RWMutex
	// m maps an encoded account key to its account. Values are pointers so
	// that replacing a cached account, what nearly every write does, is an
	// update in place: assigning m[string(key)] allocates the key string
	// every time, even when it is already there.
	m     map[string]*ledger.Account
	max   int
	index uint64
}

type cachedAccount struct {
	key []byte
	a   ledger.Account
}

func newAccountCache(max int, index uint64) *accountCache {
	c := &accountCache{m: make(map[string]*ledger.Account), max: max, index: index}
	c.committing.Store(index)
	return c
}

// committingBatch marks the batch of index as about to be committed to the
// DB: until publish, readers read the DB.
func (c *accountCache) committingBatch(index uint64) { c.committing.Store(index) }

// putLocked adds or replaces key's account; a full map is dropped and
// refilled, which changes speed, never results. The caller holds mu.
//
// The key's strings of an account the apply loop wrote are substrings of the
// decoded Raft entry they came from (ledger.DecodeCommand makes one string
// per entry), so caching them as they are would keep every entry that
// touched a cached account alive: ~66 MB of a node's heap after the batched
// bench case, all of it marked by every GC. A replaced account keeps the
// cached one's strings; a new one gets copies.
func (c *accountCache) putLocked(key []byte, a ledger.Account) {
	if old, ok := c.m[string(key)]; ok {
		a.Key = old.Key
		*old = a
		return
	}
	if len(c.m) >= c.max {
		c.m = make(map[string]*ledger.Account)
	}
	p := new(ledger.Account) // not &a: a would escape, and allocate, on every call
	*p = a
	p.Key = ledger.AccountKey{Program: strings.Clone(a.Key.Program),
		Member: strings.Clone(a.Key.Member), Asset: strings.Clone(a.Key.Asset)}
	c.m[string(key)] = p
}

// publish makes a committed batch's accounts visible to readers, as of index.
func (c *accountCache) publish(batch []cachedAccount, index uint64) {
	c.mu.Lock()
	for _, d := range batch {
		c.putLocked(d.key, d.a)
	}
	c.index = index
	c.committing.Store(index)
	c.mu.Unlock()
}

// reset drops every account (the state was replaced) and sets the index.
func (c *accountCache) reset(index uint64) {
	c.mu.Lock()
	c.m = make(map[string]*ledger.Account)
	c.index = index
	c.committing.Store(index)
	c.mu.Unlock()
}

// lookup returns the cached accounts of keys, all as of the returned index,
// or ok=false if any of them is not cached. Called by readers.
func (c *accountCache) lookup(keys [][]byte) (accounts []ledger.Account, index uint64, ok bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.committing.Load() != c.index {
		return nil, 0, false // a batch is reaching the DB: the map is behind it
	}
	accounts = make([]ledger.Account, len(keys))
	for i, k := range keys {
		a, hit := c.m[string(k)]
		if !hit {
			return nil, 0, false
		}
		accounts[i] = *a
	}
	return accounts, c.index, true
}

// cachedRead returns key's value from c, or reads and decodes it from the
// DB and caches it.
func cachedRead[V any](s *stateStore, c *boundedCache[V], key []byte, decode func([]byte) (V, error)) (V, bool, error) {
	if v, ok := c.get(key); ok {
		return v, true, nil
	}
	v, found, err := readDecoded(s.r, key, decode)
	if found {
		c.put(key, v)
	}
	return v, found, err
}

// readDecoded reads key's value from r and decodes it; found=false if absent.
func readDecoded[V any](r pebbleReader, key []byte, decode func([]byte) (V, error)) (V, bool, error) {
	var zero V
	b, found, err := r.getValue(key)
	if err != nil || !found {
		return zero, false, err
	}
	v, err := decode(b)
	if err != nil {
		return zero, false, err
	}
	return v, true, nil
}

// Cache bounds.
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

func newStateStore(db *pebble.DB, kb keyBuilder, appliedIndex uint64) (*stateStore, error) {
	s := &stateStore{view: view{r: dbReader(db), kb: kb}, db: db,
		accounts: newAccountCache(maxCachedAccounts, appliedIndex)}
	return s, s.reload(appliedIndex)
}

// reload drops every cached value and rebuilds the record filter from the
// DB: on open and after the shard's state was replaced by a restore, whose
// applied index is given.
func (s *stateStore) reload(appliedIndex uint64) error {
	// The filter first: if building it fails, nothing was dropped.
	f, err := buildRecordFilter(s.db, s.kb)
	if err != nil {
		return err
	}
	s.records = f
	s.assets = newBoundedCache[ledger.Asset](maxCachedAssets)
	s.accounts.reset(appliedIndex)
	s.dirty, s.dirtyKeys = nil, nil
	s.w = sortedWrites{}
	s.controls = newBoundedCache[int64](maxCachedControls)
	s.holds = newBoundedCache[ledger.Hold](maxCachedHolds)
	s.expiryFloor = math.MinInt64
	return nil
}

func (s *stateStore) Asset(program, code string) (ledger.Asset, bool, error) {
	s.lbuf = s.kb.appendKey(s.lbuf[:0], tagAsset, program, code)
	return cachedRead(s, &s.assets, s.lbuf, ledger.DecodeAsset)
}

func (s *stateStore) PutAsset(a ledger.Asset) error {
	key := s.kb.asset(a.Program, a.Code)
	cached := a
	cached.Program, cached.Code = strings.Clone(a.Program), strings.Clone(a.Code) // see accountCache.putLocked
	s.assets.put(key, cached)
	s.vbuf = ledger.AppendAsset(s.vbuf[:0], a)
	s.set(key, s.vbuf)
	return nil
}

// Account reads the committed account (the overlay above holds the current
// batch's own changes). The FSM goroutine is the cache's only writer, so it
// reads the map without the lock; a miss is read from the DB, which is still
// at the cache's index, and cached under the lock.
func (s *stateStore) Account(k ledger.AccountKey) (ledger.Account, bool, error) {
	s.lbuf = s.kb.appendKey(s.lbuf[:0], tagAccount, k.Program, k.Member, k.Asset)
	key := s.lbuf // putLocked copies it into the map
	if a, ok := s.accounts.m[string(key)]; ok {
		return *a, true, nil
	}
	a, found, err := readDecoded(s.r, key, ledger.DecodeAccount)
	if err != nil || !found {
		return ledger.Account{}, false, err
	}
	s.accounts.mu.Lock()
	s.accounts.putLocked(key, a)
	s.accounts.mu.Unlock()
	return a, true, nil
}

// PutAccount writes a to the batch; readers see it in the cache only once
// the batch is committed (publish).
func (s *stateStore) PutAccount(a ledger.Account) error {
	// The key lives in dirtyKeys until publish. A reallocation by a later
	// append leaves this slice on the old array, unchanged.
	start := len(s.dirtyKeys)
	s.dirtyKeys = s.kb.appendKey(s.dirtyKeys, tagAccount, a.Key.Program, a.Key.Member, a.Key.Asset)
	key := s.dirtyKeys[start:len(s.dirtyKeys):len(s.dirtyKeys)]
	s.dirty = append(s.dirty, cachedAccount{key: key, a: a})
	s.vbuf = ledger.AppendAccount(s.vbuf[:0], a)
	s.set(key, s.vbuf)
	return nil
}

// publish makes the committed batch's accounts visible to readers.
func (s *stateStore) publish(appliedIndex uint64) {
	s.accounts.publish(s.dirty, appliedIndex)
	if cap(s.dirty) > maxRetainedOverlayOps { // as ApplyBatch does with its overlay
		s.dirty, s.dirtyKeys = nil, nil
		return
	}
	clear(s.dirty)
	s.dirty, s.dirtyKeys = s.dirty[:0], s.dirtyKeys[:0]
}

// Control reads a control balance; an absent one is zero.
func (s *stateStore) Control(program, asset string) (int64, error) {
	s.lbuf = s.kb.appendKey(s.lbuf[:0], tagControl, program, asset)
	v, _, err := cachedRead(s, &s.controls, s.lbuf, decodeControl)
	return v, err
}

func (s *stateStore) PutControl(program, asset string, balanceMinor int64) error {
	s.lbuf = s.kb.appendKey(s.lbuf[:0], tagControl, program, asset)
	key := s.lbuf // the cache and the write queue copy it
	s.controls.put(key, balanceMinor)
	s.vbuf = binary.BigEndian.AppendUint64(s.vbuf[:0], uint64(balanceMinor))
	s.set(key, s.vbuf)
	return nil
}

// Hold reads a committed hold. A hold is named by the idempotency key of the
// Hold operation that placed it, and its dedup record is written in the same
// batch, so a key the record filter has never seen has no hold: a new hold
// (and a capture of a hold that never existed) costs no Pebble lookup.
func (s *stateStore) Hold(program, member, key string) (ledger.Hold, bool, error) {
	return s.holdAt(s.kb.hold(program, member, key), program, key)
}

func (s *stateStore) holdAt(hk []byte, program, key string) (ledger.Hold, bool, error) {
	if h, ok := s.holds.get(hk); ok {
		return h, true, nil
	}
	s.rbuf = s.kb.appendKey(s.rbuf[:0], tagRecord, program, key)
	if !s.records.mayContain(s.rbuf) {
		return ledger.Hold{}, false, nil
	}
	return cachedRead(s, &s.holds, hk, ledger.DecodeHold)
}

func (s *stateStore) PutHold(h ledger.Hold) error {
	hk := s.kb.hold(h.Program, h.Member, h.Key)
	old, found, err := s.holdAt(hk, h.Program, h.Key)
	if err != nil {
		return err
	}
	if found && old.State == ledger.HoldOpen && (h.State != ledger.HoldOpen || old.ExpiresAtMs != h.ExpiresAtMs) {
		s.del(s.kb.expiry(old.ExpiresAtMs, old.Program, old.Member, old.Key))
	}
	if h.State == ledger.HoldOpen {
		s.set(s.kb.expiry(h.ExpiresAtMs, h.Program, h.Member, h.Key), nil)
		s.expiryFloor = min(s.expiryFloor, h.ExpiresAtMs)
	}
	// Cache the hold with strings of its own, not substrings of the Raft
	// entry (see accountCache.putLocked): a known hold's, else copies.
	cached := h
	if found {
		cached.Program, cached.Member, cached.Key, cached.Asset = old.Program, old.Member, old.Key, old.Asset
	} else {
		cached.Program, cached.Member = strings.Clone(h.Program), strings.Clone(h.Member)
		cached.Key, cached.Asset = strings.Clone(h.Key), strings.Clone(h.Asset)
	}
	s.holds.put(hk, cached)
	s.vbuf = ledger.AppendHold(s.vbuf[:0], h)
	s.set(hk, s.vbuf)
	return nil
}

// ExpiredHolds is asked at the start of every Raft entry, and almost always
// finds nothing: holds are captured or released long before they expire.
// Below expiryFloor it answers without the Pebble iterator: a new iterator
// and seek per Raft entry was ~30 us of each single-request entry's apply
// on the bench box, 28% of n1's FSM time at 500 requests/s
// (docs/BENCHMARKS.md, "Small entries").
//
// It reads committed state only (the ledger's overlay adds the holds of the
// batch being applied): writes queued for the Pebble batch (w) would be
// missed, and the floor could skip them. They are only ever queued between
// the overlay's Commit and flushWrites, with no read between, so finding
// any here is a broken invariant, not a case to handle.
func (s *stateStore) ExpiredHolds(nowMs int64, limit int) ([]ledger.HoldRef, error) {
	if len(s.w.ents) != 0 {
		return nil, fmt.Errorf("fsm: expired holds asked with %d writes queued", len(s.w.ents))
	}
	if limit <= 0 || nowMs < s.expiryFloor {
		return nil, nil
	}
	refs, next, err := s.expiredHolds(nowMs, limit)
	if err != nil {
		return nil, err
	}
	s.expiryFloor = next
	return refs, nil
}

func (s *stateStore) Record(program, key string) (ledger.Record, bool, error) {
	s.rbuf = s.kb.appendKey(s.rbuf[:0], tagRecord, program, key)
	if !s.records.mayContain(s.rbuf) {
		return ledger.Record{}, false, nil
	}
	return s.record(program, key)
}

func (s *stateStore) PutRecord(r ledger.Record) error {
	op := r.Op
	s.kbuf = s.kb.appendKey(s.kbuf[:0], tagRecord, op.Program, op.IdempotencyKey)
	s.vbuf = ledger.AppendRecord(s.vbuf[:0], r)
	s.set(s.kbuf, s.vbuf)
	s.records.add(s.kbuf)
	if r.Result.Code != ledger.CodeOK || op.Member == "" {
		return nil
	}
	s.kbuf = s.kb.appendJournal(s.kbuf[:0], op.Program, op.Member, r.Seq)
	s.vbuf = append(s.vbuf[:0], op.IdempotencyKey...)
	s.set(s.kbuf, s.vbuf)
	return nil
}

func (s *stateStore) NextSeq() (uint64, error) {
	s.seq++
	return s.seq, nil
}

func (s *stateStore) PeekSeq() (uint64, error) { return s.seq + 1, nil }
