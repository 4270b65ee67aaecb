package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
	"github.com/tally-ledger/tally/internal/pebblestall"
)

// Defaults for Options left zero.
const (
	// defaultCacheBytes sizes the block cache. Raft reads back mostly recent
	// entries (replication to followers, FSM apply), which are usually still in
	// the memtable; the cache serves followers catching up from sstables.
	defaultCacheBytes = 64 << 20

	// defaultMemTableBytes is larger than Pebble's 4 MiB default. A Raft log is
	// write-once and read-recent, and entries are usually deleted (after a
	// snapshot) soon after being written: a bigger memtable means fewer
	// flushes and fewer L0 files for the same write rate, and more entries that
	// are deleted before compactions ever have to rewrite them.
	defaultMemTableBytes = 64 << 20

	// memTableStopWritesThreshold lets up to this many memtables queue for
	// flushing before Pebble stops writes (default 2). A write stall here stalls
	// consensus in every group at once, so we trade memory for headroom.
	memTableStopWritesThreshold = 4

	// l0StopWritesThreshold is raised from Pebble's 12: L0 read amplification
	// hurts a log store less than a stall does, because reads target recent
	// entries. Compactions still start at the default L0CompactionThreshold.
	l0StopWritesThreshold = 24
)

// Options configures Open. The zero value is usable.
type Options struct {
	// CacheBytes is the size of Pebble's block cache; 0 means defaultCacheBytes.
	CacheBytes int64
	// MemTableBytes is the size of one Pebble memtable; 0 means
	// defaultMemTableBytes.
	MemTableBytes uint64
	// Logger receives recovery warnings and Pebble's own log; nil means
	// slog.Default().
	Logger *slog.Logger
	// RepairTail makes Open delete a damaged log tail instead of refusing
	// to open. Only an operator should set it; see repairTail.
	RepairTail bool
	// LegacyCodec writes log entries in codec version 1, which builds before
	// version 2 read, so that the node can still be downgraded to one (its
	// state machine must be held back too: node.Config.MaxVersion). Version-2
	// entries already written stay as they are.
	LegacyCodec bool
}

// DB holds the Raft logs and stable stores of every group of a node.
type DB struct {
	pdb    *pebble.DB
	logger *slog.Logger
	stalls *pebblestall.Counter
	codec  byte // the log codec version StoreLogs writes (Options.LegacyCodec)

	// closeMu is held for reading by every operation on pdb and for writing by
	// Close, so that a straggling Raft call after Close gets ErrClosed instead
	// of a Pebble panic.
	closeMu sync.RWMutex
	closed  bool

	groupsMu sync.Mutex
	groups   map[uint32]*GroupStore
}

// ErrClosed is returned by every operation on a closed DB.
var ErrClosed = errors.New("raftstore: closed")

// Open opens (creating if needed) the store in dir. It verifies the tail of
// every group's log and refuses to open if trailing entries fail
// verification, unless opts.RepairTail; see repairTail.
func Open(dir string, opts Options) (*DB, error) {
	if opts.CacheBytes == 0 {
		opts.CacheBytes = defaultCacheBytes
	}
	if opts.MemTableBytes == 0 {
		opts.MemTableBytes = defaultMemTableBytes
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	logger := opts.Logger.With("component", "raftstore")

	cache := pebble.NewCache(opts.CacheBytes)
	defer cache.Unref() // Pebble holds its own reference while open.
	stalls := new(pebblestall.Counter)
	popts := &pebble.Options{
		Cache:         cache,
		EventListener: stalls.Listener(),
		// Pinned, not FormatNewest: a Pebble upgrade must not ratchet the
		// log's on-disk format past what the builds LegacyCodec keeps a
		// downgrade to can open. Raise it deliberately, with the codec.
		FormatMajorVersion:          pebble.FormatValueSeparation,
		MemTableSize:                opts.MemTableBytes,
		MemTableStopWritesThreshold: memTableStopWritesThreshold,
		L0StopWritesThreshold:       l0StopWritesThreshold,
		// WALBytesPerSync stays 0: it only paces background syncs of
		// unsynced writes, and every write here is committed with pebble.Sync.
		// WALMinSyncInterval stays unset: Pebble already coalesces concurrent
		// synced commits into one fsync, and an artificial delay would add
		// latency to every Raft append for a small gain in IOPS.
		Logger: pebbleLogger{logger},
	}
	pdb, err := pebble.Open(dir, popts)
	if err != nil {
		return nil, fmt.Errorf("raftstore: open %s: %w", dir, err)
	}
	db := &DB{pdb: pdb, logger: logger, stalls: stalls, groups: make(map[uint32]*GroupStore), codec: logCodecVersion}
	if opts.LegacyCodec {
		db.codec = logCodecV1
	}
	shards, err := db.logShards()
	if err == nil {
		for _, shard := range shards {
			if err = db.repairTail(shard, opts.RepairTail); err != nil {
				break
			}
		}
	}
	if err != nil {
		_ = pdb.Close()
		return nil, err
	}
	return db, nil
}

// Group returns the store of one Raft group, creating it on first use. It
// returns the same *GroupStore for the same shard.
func (db *DB) Group(shard uint32) *GroupStore {
	db.groupsMu.Lock()
	defer db.groupsMu.Unlock()
	if g, ok := db.groups[shard]; ok {
		return g
	}
	g := &GroupStore{db: db, shard: shard}
	g.initErr = g.loadBounds()
	db.groups[shard] = g
	return g
}

// Groups lists the shards that have any log entry or stable key, ascending.
func (db *DB) Groups() ([]uint32, error) {
	seen := make(map[uint32]struct{})
	for _, kind := range []byte{keyKindLog, keyKindStable} {
		shards, err := db.shardsOfKind(kind)
		if err != nil {
			return nil, err
		}
		for _, s := range shards {
			seen[s] = struct{}{}
		}
	}
	out := make([]uint32, 0, len(seen))
	for s := range seen {
		out = append(out, s)
	}
	slices.Sort(out)
	return out, nil
}

func (db *DB) logShards() ([]uint32, error) { return db.shardsOfKind(keyKindLog) }

// shardsOfKind lists the shards with at least one key of the kind, skipping
// from one shard to the next with a seek rather than scanning every key.
func (db *DB) shardsOfKind(kind byte) ([]uint32, error) {
	db.closeMu.RLock()
	defer db.closeMu.RUnlock()
	if db.closed {
		return nil, ErrClosed
	}
	it, err := db.pdb.NewIter(&pebble.IterOptions{LowerBound: []byte{kind}, UpperBound: []byte{kind + 1}})
	if err != nil {
		return nil, err
	}
	var shards []uint32
	seek := make([]byte, keyHeadBytes)
	seek[0] = kind
	for ok := it.First(); ok; {
		k := it.Key()
		if len(k) < keyHeadBytes {
			_ = it.Close()
			return nil, fmt.Errorf("raftstore: malformed key %x", k)
		}
		shard := binary.BigEndian.Uint32(k[1:])
		shards = append(shards, shard)
		if shard == math.MaxUint32 {
			break
		}
		binary.BigEndian.PutUint32(seek[1:], shard+1)
		ok = it.SeekGE(seek)
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	return shards, nil
}

// repairTail verifies the last log entries of shard, newest first. If some
// fail verification it refuses to open, or with repair deletes them up to the
// newest entry that passes.
//
// Why refusing is the default:
//   - A crash cannot leave a bad tail. Pebble's WAL recovery discards a torn
//     final write, and each StoreLogs is one atomic batch, so a crash in the
//     middle of one loses the whole batch, which was never acknowledged (Raft
//     acknowledges an append only after StoreLogs returns, and StoreLogs
//     returns only after its synced commit).
//   - What our own checksum catches on open is therefore damage after the
//     fact (bit rot, a lying disk, a bug), to entries that were acknowledged
//     and may have counted toward a commit quorum. Deleting them makes this
//     node's log shorter than it told the leader it was, and its vote could
//     then elect a candidate that lacks a committed entry: an acknowledged
//     write lost, and replicas that already applied it diverging.
//   - So deletion is an operator's decision (Options.RepairTail, tallyd
//     --repair-log-tail), and a node started with it refuses to vote until
//     it has caught up (package node's vote guard, which also covers a
//     node whose data was wiped: it forgets its vote too).
//   - An entry in a codec version this build does not know is never deleted:
//     it is most likely intact and written by a newer build.
//
// Only a contiguous run of bad entries at the tail counts; corruption below a
// valid entry is left alone and surfaces as an error from GetLog.
func (db *DB) repairTail(shard uint32, repair bool) error {
	it, err := db.pdb.NewIter(&pebble.IterOptions{
		LowerBound: logKey(shard, 0),
		UpperBound: logKeyEnd(shard, math.MaxUint64),
	})
	if err != nil {
		return err
	}
	var (
		badLow, badHigh uint64
		badCount        int
		firstCause      error
		unknownVersion  error
	)
	for ok := it.Last(); ok; ok = it.Prev() {
		index, _ := logIndexOfKey(it.Key())
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("raftstore: read shard=%d index=%d: %w", shard, index, err)
		}
		cause := verifyLog(v, shard, index)
		if cause == nil {
			break
		}
		if badCount == 0 {
			badHigh, firstCause = index, cause
		}
		if errors.Is(cause, errUnknownVersion) && unknownVersion == nil {
			unknownVersion = fmt.Errorf("index %d: %w", index, cause)
		}
		badLow = index
		badCount++
	}
	if err := it.Close(); err != nil {
		return err
	}
	if badCount == 0 {
		return nil
	}
	if unknownVersion != nil {
		return fmt.Errorf("%w: shard %d: log entries %d-%d include one this build cannot read (%v); "+
			"was the data written by a newer tallyd? Refusing to open, and never deleting it",
			ErrCorruptLog, shard, badLow, badHigh, unknownVersion)
	}
	if !repair {
		return fmt.Errorf("%w: shard %d: the last %d log entries (%d-%d) fail verification (%v); refusing to open: "+
			"deleting them could lose writes this node acknowledged. Only while every other node is up and holds every "+
			"committed entry (each shard has a leader, and tallyctl state shows the others at one applied index), "+
			"restart with --repair-log-tail to delete them (Raft re-fetches them from the leader), or wipe this "+
			"node's data and start it again",
			ErrCorruptLog, shard, badCount, badLow, badHigh, firstCause)
	}
	db.logger.Warn("raftstore: deleting corrupt log tail; Raft will re-fetch these entries from the leader",
		"shard", shard, "first_index", badLow, "last_index", badHigh, "entries", badCount, "cause", firstCause)
	b := db.pdb.NewBatch()
	defer func() { _ = b.Close() }()
	if err := b.DeleteRange(logKey(shard, badLow), logKeyEnd(shard, badHigh), nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// verifyLog returns nil if v is a valid encoding of the entry stored under
// the log key (shard, index).
func verifyLog(v []byte, shard uint32, index uint64) error {
	var l raft.Log
	return decodeLog(v, shard, index, &l)
}

// Close closes the database. Raft groups using it must be shut down first;
// calls after Close return ErrClosed.
func (db *DB) Close() error {
	db.closeMu.Lock()
	defer db.closeMu.Unlock()
	if db.closed {
		return nil
	}
	db.closed = true
	return db.pdb.Close()
}

// Metrics returns Pebble's metrics (for export to Prometheus). It returns nil
// after Close.
func (db *DB) Metrics() *pebble.Metrics {
	db.closeMu.RLock()
	defer db.closeMu.RUnlock()
	if db.closed {
		return nil
	}
	return db.pdb.Metrics()
}

// Stalls reports the write stalls so far: every Raft append on the node
// waits through one.
func (db *DB) Stalls() (count uint64, total time.Duration) { return db.stalls.Stalls() }

// pebbleLogger routes Pebble's log through slog.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Info(fmt.Sprintf(format, args...), "source", "pebble")
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "source", "pebble")
}

// Fatalf is called by Pebble on unrecoverable internal errors; like Pebble's
// default logger we log and panic, since continuing could corrupt data.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "source", "pebble", "fatal", true)
	panic(msg)
}
