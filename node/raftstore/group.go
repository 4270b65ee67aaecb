package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
)

// ErrKeyNotFound is returned by Get and GetUint64 for a missing key. Its text
// must be exactly "not found": hashicorp/raft (NewRaft, HasExistingState,
// vote handling) compares err.Error() with that string to tell "never set"
// from a failure, as raft-boltdb's identical ErrKeyNotFound does.
var ErrKeyNotFound = errors.New("not found")

// GroupStore is the raft.LogStore and raft.StableStore of one Raft group. It
// is safe for concurrent use; writes of one group are serialised, writes of
// different groups proceed concurrently and share WAL fsyncs.
type GroupStore struct {
	db    *DB
	shard uint32
	// initErr is set if the bounds could not be read when the store was
	// created; every method then fails with it.
	initErr error

	// writeMu serialises the writes of this group so that the cached bounds
	// are updated in commit order. Raft writes from its main loop and deletes
	// from its snapshot goroutine, so both can race without it.
	writeMu sync.Mutex
	// firstIndex and lastIndex cache the smallest and largest stored index (0
	// when empty). Raft reads them on every replication step, so they are
	// answered without I/O; writers update them after their commit succeeds.
	firstIndex atomic.Uint64
	lastIndex  atomic.Uint64
}

var (
	_ raft.LogStore          = (*GroupStore)(nil)
	_ raft.StableStore       = (*GroupStore)(nil)
	_ raft.MonotonicLogStore = (*GroupStore)(nil)
)

// Shard returns the shard this store belongs to.
func (g *GroupStore) Shard() uint32 { return g.shard }

// loadBounds reads the first and last index from Pebble into the cache.
func (g *GroupStore) loadBounds() error {
	g.db.closeMu.RLock()
	defer g.db.closeMu.RUnlock()
	if g.db.closed {
		return ErrClosed
	}
	return g.reloadBoundsLocked()
}

// FirstIndex implements raft.LogStore.
func (g *GroupStore) FirstIndex() (uint64, error) {
	if g.initErr != nil {
		return 0, g.initErr
	}
	return g.firstIndex.Load(), nil
}

// LastIndex implements raft.LogStore.
func (g *GroupStore) LastIndex() (uint64, error) {
	if g.initErr != nil {
		return 0, g.initErr
	}
	return g.lastIndex.Load(), nil
}

// GetLog implements raft.LogStore. It returns raft.ErrLogNotFound for a
// missing entry and an error matching ErrCorruptLog for an entry that fails
// its checksum or is stored under the wrong key (see decodeLog).
func (g *GroupStore) GetLog(index uint64, log *raft.Log) error {
	if g.initErr != nil {
		return g.initErr
	}
	g.db.closeMu.RLock()
	defer g.db.closeMu.RUnlock()
	if g.db.closed {
		return ErrClosed
	}
	v, closer, err := g.db.pdb.Get(logKey(g.shard, index))
	if errors.Is(err, pebble.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return fmt.Errorf("raftstore: get log shard=%d index=%d: %w", g.shard, index, err)
	}
	err = decodeLog(v, g.shard, index, log)
	_ = closer.Close()
	if err != nil {
		*log = raft.Log{}
		return &CorruptLogError{Shard: g.shard, Index: index, Cause: err}
	}
	return nil
}

// StoreLog implements raft.LogStore.
func (g *GroupStore) StoreLog(log *raft.Log) error {
	return g.StoreLogs([]*raft.Log{log})
}

// StoreLogs implements raft.LogStore. All entries are written in one synced
// batch: either all are durable when it returns nil, or none are.
func (g *GroupStore) StoreLogs(logs []*raft.Log) error {
	if g.initErr != nil {
		return g.initErr
	}
	if len(logs) == 0 {
		return nil
	}
	minIndex, maxIndex := uint64(math.MaxUint64), uint64(0)
	valueBytes := 0
	for _, l := range logs {
		// Index 0 is Raft's "no entry"; storing it would make the bounds lie.
		if l.Index == 0 {
			return fmt.Errorf("raftstore: store log shard=%d: index 0 is reserved", g.shard)
		}
		minIndex, maxIndex = min(minIndex, l.Index), max(maxIndex, l.Index)
		valueBytes += encodedLogBytes(l)
	}

	g.db.closeMu.RLock()
	defer g.db.closeMu.RUnlock()
	if g.db.closed {
		return ErrClosed
	}
	g.writeMu.Lock()
	defer g.writeMu.Unlock()

	b := g.db.pdb.NewBatchWithSize(valueBytes + len(logs)*(logKeyBytes+16))
	defer func() { _ = b.Close() }()
	var buf []byte
	for _, l := range logs {
		buf = appendLogVersion(buf[:0], g.db.codec, g.shard, l)
		// Batch.Set copies key and value into the batch, so buf is reused.
		if err := b.Set(logKey(g.shard, l.Index), buf, nil); err != nil {
			return fmt.Errorf("raftstore: store logs shard=%d: %w", g.shard, err)
		}
	}
	if err := commitSync(b, "store logs", g.shard); err != nil {
		return err
	}
	if first := g.firstIndex.Load(); first == 0 || minIndex < first {
		g.firstIndex.Store(minIndex)
	}
	if maxIndex > g.lastIndex.Load() {
		g.lastIndex.Store(maxIndex)
	}
	return nil
}

// DeleteRange implements raft.LogStore: it deletes entries min..max inclusive
// with a single range tombstone, so deleting a whole log costs the same as
// deleting one entry.
func (g *GroupStore) DeleteRange(minIndex, maxIndex uint64) error {
	if g.initErr != nil {
		return g.initErr
	}
	if minIndex > maxIndex {
		return nil
	}
	g.db.closeMu.RLock()
	defer g.db.closeMu.RUnlock()
	if g.db.closed {
		return ErrClosed
	}
	g.writeMu.Lock()
	defer g.writeMu.Unlock()

	b := g.db.pdb.NewBatch()
	defer func() { _ = b.Close() }()
	if err := b.DeleteRange(logKey(g.shard, minIndex), logKeyEnd(g.shard, maxIndex), nil); err != nil {
		return fmt.Errorf("raftstore: delete range shard=%d: %w", g.shard, err)
	}
	if err := commitSync(b, "delete range", g.shard); err != nil {
		return err
	}
	first, last := g.firstIndex.Load(), g.lastIndex.Load()
	switch {
	case first == 0 || maxIndex < first || minIndex > last:
		// Nothing stored was in range.
	case minIndex <= first && maxIndex >= last:
		g.firstIndex.Store(0)
		g.lastIndex.Store(0)
	case minIndex > first && maxIndex < last:
		// A hole in the middle leaves both bounds in place.
	default:
		// A prefix or suffix went away. Re-read the bounds rather than assume
		// maxIndex+1 or minIndex-1 exist: the store tolerates gaps. The seek
		// skips the tombstoned span without visiting its keys.
		if err := g.reloadBoundsLocked(); err != nil {
			// The delete is committed: the cached bounds must not keep
			// naming deleted entries. Raft's logs are contiguous, so the
			// entry next to the deleted span is the new bound.
			if minIndex <= first {
				g.firstIndex.Store(maxIndex + 1)
			} else {
				g.lastIndex.Store(minIndex - 1)
			}
			return err
		}
	}
	return nil
}

// reloadBoundsLocked is loadBounds for a caller already holding closeMu.
func (g *GroupStore) reloadBoundsLocked() error {
	it, err := g.db.pdb.NewIter(&pebble.IterOptions{
		LowerBound: logKey(g.shard, 0),
		UpperBound: logKeyEnd(g.shard, math.MaxUint64),
	})
	if err != nil {
		return err
	}
	var first, last uint64
	if it.First() {
		first, _ = logIndexOfKey(it.Key())
		if it.Last() {
			last, _ = logIndexOfKey(it.Key())
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("raftstore: read bounds shard=%d: %w", g.shard, err)
	}
	g.firstIndex.Store(first)
	g.lastIndex.Store(last)
	return nil
}

// IsMonotonic implements raft.MonotonicLogStore. The store itself tolerates
// gaps (bounds come from the stored keys), so either answer is correct; we
// answer true because then Raft, after restoring a snapshot, deletes the whole
// old log instead of leaving it below a gap. For us that delete is a single
// range tombstone, and it keeps every group's log one contiguous run, which is
// what the tail repair in Open reasons about.
func (g *GroupStore) IsMonotonic() bool { return true }

// Set implements raft.StableStore.
func (g *GroupStore) Set(key []byte, val []byte) error {
	if g.initErr != nil {
		return g.initErr
	}
	if len(key) > maxStableKeyBytes {
		return fmt.Errorf("raftstore: stable key of %d bytes exceeds %d", len(key), maxStableKeyBytes)
	}
	g.db.closeMu.RLock()
	defer g.db.closeMu.RUnlock()
	if g.db.closed {
		return ErrClosed
	}
	b := g.db.pdb.NewBatch()
	defer func() { _ = b.Close() }()
	if err := b.Set(stableKey(g.shard, key), val, nil); err != nil {
		return fmt.Errorf("raftstore: set shard=%d key=%q: %w", g.shard, key, err)
	}
	return commitSync(b, fmt.Sprintf("set key=%q", key), g.shard)
}

// commitSync commits b with a WAL sync. A failed commit crashes the node:
// Pebble applies a batch to its memtable before it learns that the WAL write
// or sync failed, and then fails every later write. The batch would be
// readable (GetLog would serve entries that may not be durable, and Raft
// would have been told they were not stored) while the store could make no
// progress. As PostgreSQL does on a failed WAL fsync, the node stops, and on
// restart recovers from what is durable.
func commitSync(b *pebble.Batch, what string, shard uint32) error {
	err := b.Commit(pebble.Sync)
	if err == nil || errors.Is(err, pebble.ErrClosed) {
		return err
	}
	panic(fmt.Sprintf("raftstore: %s shard=%d: synced commit failed, stopping: %v", what, shard, err))
}

// Get implements raft.StableStore. A missing key returns ErrKeyNotFound.
func (g *GroupStore) Get(key []byte) ([]byte, error) {
	if g.initErr != nil {
		return nil, g.initErr
	}
	g.db.closeMu.RLock()
	defer g.db.closeMu.RUnlock()
	if g.db.closed {
		return nil, ErrClosed
	}
	v, closer, err := g.db.pdb.Get(stableKey(g.shard, key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrKeyNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("raftstore: get shard=%d key=%q: %w", g.shard, key, err)
	}
	out := append([]byte{}, v...)
	_ = closer.Close()
	return out, nil
}

// SetUint64 implements raft.StableStore; the value is stored as 8 bytes BE.
func (g *GroupStore) SetUint64(key []byte, val uint64) error {
	return g.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 implements raft.StableStore. A missing key returns 0 and
// ErrKeyNotFound, as raft-boltdb does.
func (g *GroupStore) GetUint64(key []byte) (uint64, error) {
	v, err := g.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raftstore: shard=%d key=%q holds %d bytes, not a uint64", g.shard, key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
