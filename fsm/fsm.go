package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/hashicorp/raft"
	"github.com/tally-ledger/tally/internal/pebblestall"
	"github.com/tally-ledger/tally/ledger"
)

// stateCacheBytes sizes the state DB's block cache.
const stateCacheBytes = 256 << 20

// stateBlockSize is the state DB's sstable data block size (Pebble's default
// is 4 KiB).
const stateBlockSize = 32 << 10

// DB is a node's state database: one Pebble instance holding the state of
// every shard the node replicates.
type DB struct {
	db     *pebble.DB
	dir    string
	opts   *pebble.Options
	stalls *pebblestall.Counter
}

// restoreDir is where restores write the sstables they ingest: beside the
// DB's directory, on the same file system.
func (d *DB) restoreDir() string { return d.dir + ".restore" }

// OpenDB opens (creating if needed) the state database in dir.
func OpenDB(dir string) (*DB, error) {
	// The block cache keeps index and filter blocks in memory: every new
	// idempotency key is looked up (and missed) before it is written.
	cache := pebble.NewCache(stateCacheBytes)
	defer cache.Unref()
	stalls := new(pebblestall.Counter)
	opts := &pebble.Options{
		Cache:         cache,
		EventListener: stalls.Listener(),
		// No WAL: the Raft log is the state's write-ahead log. A crash loses
		// the memtables, which leaves the state as of the last flush: a
		// prefix of the applied batches, with the applied index of that
		// prefix (it is written in the same batch). On restart Raft replays
		// the entries after it, or, if the state is behind the newest
		// snapshot (whose entries Raft no longer replays), the node restores
		// the snapshot instead (see FSM.NeedsRestore). A second WAL would
		// copy every state byte once more and save nothing.
		DisableWAL:   true,
		MemTableSize: 64 << 20,
		// Every operation adds records under random keys that are never
		// deleted, so every L0 compaction rewrites most of Lbase. Waiting for
		// 8 flushed sublevels instead of 4 makes those rewrites rarer (with
		// the block size below, n1's state-DB compactions over a bench run
		// fell from 46 / 49 to 30 / 24 and batched throughput rose 20%;
		// docs/BENCHMARKS.md, run 17). Point reads pay little for the extra
		// sublevels: new idempotency keys miss in the bloom filters, and
		// accounts are cached.
		L0CompactionThreshold: 8,
		L0StopWritesThreshold: 24,
		// Two cores: at most two compactions alongside the apply loop.
		CompactionConcurrencyRange: func() (int, int) { return 1, 2 },
		Logger:                     quietLogger{},
		// Restore ingests a snapshot's sstables with the shard's range
		// excised (IngestAndExcise), which needs virtual sstables. Older
		// stores are ratcheted up on open.
		FormatMajorVersion: pebble.FormatVirtualSSTables,
	}
	// Bloom filters make the dedup lookup of a new idempotency key (always a
	// miss) cheap below the memtable.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
		// 32 KiB blocks instead of 4 KiB: a compaction reads its inputs
		// one block per pread, and syscalls are dear on small virtual
		// machines. Most point reads stop at a bloom filter or the account
		// cache; looking up every acknowledged operation after a bench run
		// took as long as with 4 KiB blocks.
		opts.Levels[i].BlockSize = stateBlockSize
	}
	// Defaults filled in here (Open fills a copy) so that Restore can make
	// writer options from them.
	opts.EnsureDefaults()
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("fsm: open state db %s: %w", dir, err)
	}
	d := &DB{db: db, dir: dir, opts: opts, stalls: stalls}
	// Tables of a restore that a crash interrupted: never ingested.
	if err := os.RemoveAll(d.restoreDir()); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("fsm: open state db %s: %w", dir, err)
	}
	return d, nil
}

// quietLogger drops Pebble's informational messages (WAL recovery, one line
// per file on every open) and keeps errors.
type quietLogger struct{}

func (quietLogger) Infof(string, ...interface{}) {}
func (quietLogger) Errorf(format string, args ...interface{}) {
	log.Printf("fsm: pebble: "+format, args...)
}
func (quietLogger) Fatalf(format string, args ...interface{}) {
	log.Fatalf("fsm: pebble: "+format, args...)
}

// Flush makes every applied batch durable. The node calls it before
// shutdown so a clean restart resumes without replaying the log.
func (d *DB) Flush() error { return d.db.Flush() }

// Close closes the database. All FSMs on it must be idle.
func (d *DB) Close() error { return d.db.Close() }

// Metrics exposes Pebble's metrics for the node's Prometheus collector.
func (d *DB) Metrics() *pebble.Metrics { return d.db.Metrics() }

// Stalls reports the write stalls so far: every apply on the node waits
// through one.
func (d *DB) Stalls() (count uint64, total time.Duration) { return d.stalls.Stalls() }

// meta is the per-shard bookkeeping written in the same batch as the state
// it describes.
type meta struct {
	appliedIndex uint64 // index of the last Raft entry applied
	lastTimeMs   int64  // log time of the last command; never decreases
	seq          uint64 // last journal sequence handed out
	version      uint32 // rules version (ledger.Version1...); 0 before any entry
}

// A shard at version 1 keeps the 24-byte meta that binaries before versions
// wrote, so they can still open it; from version 2 the meta has the version
// appended, and those binaries refuse to open the shard (bad length) instead
// of applying its entries under rules they do not know.
const (
	metaLen   = 24
	metaLenV2 = 28
)

func (m meta) encode() []byte {
	b := make([]byte, 0, metaLenV2)
	b = binary.BigEndian.AppendUint64(b, m.appliedIndex)
	b = binary.BigEndian.AppendUint64(b, uint64(m.lastTimeMs))
	b = binary.BigEndian.AppendUint64(b, m.seq)
	if m.version > ledger.Version1 {
		b = binary.BigEndian.AppendUint32(b, m.version)
	}
	return b
}

func decodeMeta(b []byte) (meta, error) {
	if len(b) != metaLen && len(b) != metaLenV2 {
		return meta{}, fmt.Errorf("fsm: meta: bad length %d", len(b))
	}
	m := meta{
		appliedIndex: binary.BigEndian.Uint64(b),
		lastTimeMs:   int64(binary.BigEndian.Uint64(b[8:])),
		seq:          binary.BigEndian.Uint64(b[16:]),
	}
	if len(b) == metaLenV2 {
		m.version = binary.BigEndian.Uint32(b[24:])
		if m.version <= ledger.Version1 {
			return meta{}, fmt.Errorf("fsm: meta: version %d in a version-2 meta", m.version)
		}
		if m.version > ledger.MaxVersion {
			return meta{}, fmt.Errorf("fsm: meta: %w: the shard is at version %d, this binary applies up to %d",
				ledger.ErrVersion, m.version, ledger.MaxVersion)
		}
	}
	return m, nil
}

// Results is the response of one applied command entry: one slice of results
// per request, in the order the requests were packed.
type Results [][]ledger.Result

// FSM is the state machine of one shard. It implements raft.FSM and
// raft.BatchingFSM. Apply, Snapshot and Restore are called only from Raft's
// FSM goroutine; the read methods may be called concurrently with them.
type FSM struct {
	shard uint32
	db    *pebble.DB
	sdb   *DB // db's wrapper: what Restore needs to write and ingest tables
	kb    keyBuilder

	// mu guards m and the restore record; it is held only to copy or
	// replace them.
	mu sync.Mutex
	m  meta
	// restoredAt, restoredApplied: the durable restore record (restoredKey),
	// as of the last loadMeta.
	restoredAt, restoredApplied uint64

	applied atomic.Uint64 // copy of m.appliedIndex for lock-free waits

	// logBytes counts the entry bytes handed to ApplyBatch since the FSM
	// was created (skipped replays included). It is not state: the node
	// uses it to size its snapshot schedule to the log (see LogBytes).
	logBytes atomic.Uint64

	// given is the highest Raft index this FSM is known to follow: the
	// last entry handed to ApplyBatch (skipped replays included) or the
	// index of a snapshot it restored. hashicorp/raft labels a snapshot
	// with the last index it dispatched, which is at least given; Snapshot
	// refuses while given is below the applied index (see there). It
	// starts at 0, not at the snapshot Raft starts after: Raft may fall
	// back to an older one than the newest when that fails to load, and a
	// shard that restarted with its state at its newest snapshot has
	// nothing to snapshot until a new command, which moves given past it.
	given atomic.Uint64

	store *stateStore     // used only by Raft's FSM goroutine, but for its accounts cache
	ov    *ledger.Overlay // ApplyBatch's overlay over store, reused (FSM goroutine only)

	hooks Hooks
	// maxApplyOps is the constant maxApplyOps; tests lower it.
	maxApplyOps int
	// afterCommit, if set (tests only), runs between a batch's Pebble commit
	// and the publish of its accounts: a descheduled apply goroutine.
	afterCommit func()

	chk checks // consistency checks (check.go)
}

// Hooks let the node observe the FSM (metrics). Each is optional and is
// called on Raft's FSM or snapshot goroutine, so it must be quick.
type Hooks struct {
	// OnApply runs after each committed batch: the new applied index, the
	// number of command entries and operations in it, and how long it took.
	OnApply func(appliedIndex uint64, entries, ops int, took time.Duration)
	// OnSnapshot runs after a snapshot was persisted (or failed).
	OnSnapshot func(bytes int64, took time.Duration, err error)
	// OnRestore runs after a snapshot was restored (or failed).
	OnRestore func(took time.Duration, err error)
	// OnCheck runs after each consistency check (check.go), on the
	// goroutine that hashed the state.
	OnCheck func(Check)
}

var (
	_ raft.FSM         = (*FSM)(nil)
	_ raft.BatchingFSM = (*FSM)(nil)
)

// New returns the FSM of shard on db, loading its durable applied index.
func New(db *DB, shard uint32) (*FSM, error) {
	f := &FSM{shard: shard, db: db.db, sdb: db, kb: keyBuilder{prefix: shardPrefix(shard)}, maxApplyOps: maxApplyOps}
	if err := f.loadMeta(); err != nil {
		return nil, err
	}
	var err error
	if f.store, err = newStateStore(f.db, f.kb, f.m.appliedIndex); err != nil {
		return nil, fmt.Errorf("fsm: shard %d: %w", shard, err)
	}
	return f, nil
}

func (f *FSM) loadMeta() error {
	b, ok, err := dbReader(f.db).getValue(f.kb.meta())
	if err != nil {
		return fmt.Errorf("fsm: shard %d: read meta: %w", f.shard, err)
	}
	m := meta{}
	if ok {
		if m, err = decodeMeta(b); err != nil {
			return err
		}
	}
	if f.store != nil {
		// State was replaced (restore): cached values may be stale and the
		// record filter must cover the new records. Before the new applied
		// index is published, so no reader pairs it with old accounts.
		if err := f.store.reload(m.appliedIndex); err != nil {
			return fmt.Errorf("fsm: shard %d: %w", f.shard, err)
		}
	}
	var restoredAt, restoredApplied uint64
	if b, ok, err := dbReader(f.db).getValue(restoredKey(f.shard)); err != nil {
		return fmt.Errorf("fsm: shard %d: read restore record: %w", f.shard, err)
	} else if ok && len(b) == 16 {
		restoredAt, restoredApplied = binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])
	}
	f.mu.Lock()
	f.m = m
	f.restoredAt, f.restoredApplied = restoredAt, restoredApplied
	f.mu.Unlock()
	f.applied.Store(m.appliedIndex)
	return nil
}

// StateIndex is the newest Raft index the durable state is known to
// reflect: the applied index, or S while the state is still the one
// restored from a snapshot at Raft index S whose own applied index was
// below S. Such a snapshot ended on entries that are not commands
// (hashicorp/raft hands no-op and barrier entries to no BatchingFSM, but
// snapshots at the last index it dispatched), so the state at its applied
// index is the state at S. An equal applied index identifies the state:
// replicas apply only committed entries.
func (f *FSM) StateIndex() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.restoredApplied == f.m.appliedIndex && f.restoredAt > f.m.appliedIndex {
		return f.restoredAt
	}
	return f.m.appliedIndex
}

// SetHooks installs observers. Call it before Raft starts.
func (f *FSM) SetHooks(h Hooks) { f.hooks = h }

// Shard returns the shard this FSM serves.
func (f *FSM) Shard() uint32 { return f.shard }

// AppliedIndex is the index of the last Raft entry this FSM applied (its
// durable value at start, then every batch it applies).
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// LastTimeMs is the log time of the last applied command.
func (f *FSM) LastTimeMs() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m.lastTimeMs
}

// Version is the version of the rules the shard applies its next entry
// under (ledger.Version1 until an entry raised it).
func (f *FSM) Version() uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return max(f.m.version, ledger.Version1)
}

// NeedsRestore reports whether the durable state is behind a snapshot at
// snapshotIndex. Raft does not replay entries at or below its newest
// snapshot, so a node whose unsynced state writes were lost in a crash must
// restore that snapshot instead of trusting its own state.
func (f *FSM) NeedsRestore(snapshotIndex uint64) bool {
	return f.StateIndex() < snapshotIndex
}

// maxRetainedOverlayOps bounds the batch size whose overlay buffers
// ApplyBatch keeps for the next batch: about 10 MiB per shard.
const maxRetainedOverlayOps = 16384

// LogBytes is the number of Raft entry bytes this FSM has been given since
// it was created. It only grows, and it is not replicated state.
func (f *FSM) LogBytes() uint64 { return f.logBytes.Load() }

// Apply applies one entry (raft.FSM).
func (f *FSM) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies a batch of committed entries as one Pebble batch, or
// as several of at most maxApplyOps operations each (raft.BatchingFSM).
// Entries at or below the durable applied index were applied before a
// restart and are skipped. The response of a command entry
// is Results. A storage or decode failure panics: the node must stop rather
// than diverge from its replicas.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	resp := make([]interface{}, len(logs))
	f.mu.Lock()
	appliedIndex := f.m.appliedIndex
	f.mu.Unlock()

	// Decode first: the operation counts size the overlay's buffers and
	// split the batch.
	cmds := make([]ledger.Command, len(logs))
	var logBytes uint64
	first, ops := 0, 0
	for i, l := range logs {
		logBytes += uint64(len(l.Data))
		if l.Index <= appliedIndex {
			continue
		}
		if l.Type == raft.LogCommand {
			var err error
			if cmds[i], err = ledger.DecodeCommand(l.Data); err != nil {
				panic(fmt.Sprintf("fsm: shard %d: undecodable entry %d (written by a newer tallyd? then upgrade this node): %v",
					f.shard, l.Index, err))
			}
			n := 0
			for _, r := range cmds[i].Requests {
				n += len(r.Ops)
			}
			if ops > 0 && ops+n > f.maxApplyOps {
				f.applyPart(logs[first:i], cmds[first:i], resp[first:i], ops)
				first, ops = i, 0
			}
			ops += n
		}
		if f.isCheckIndex(l.Index) {
			// The batch ends here so that the check sees the state as
			// of this entry, as every other replica's does.
			f.applyPart(logs[first:i+1], cmds[first:i+1], resp[first:i+1], ops)
			first, ops = i+1, 0
			f.startCheck(l.Index)
		}
	}
	f.applyPart(logs[first:], cmds[first:], resp[first:], ops)
	f.logBytes.Add(logBytes)
	if n := len(logs); n > 0 {
		f.given.Store(max(f.given.Load(), logs[n-1].Index))
	}
	return resp
}

// maxApplyOps bounds the operations ApplyBatch writes in one Pebble batch.
// hashicorp/raft hands the FSM up to MaxAppendEntries (64 by default) entries at once,
// and a follower catching up under batched load gets entries of up to
// ~24,000 operations each: one batch of all of them would buffer ~650 bytes
// of overlay per operation, gigabytes, and could exceed Pebble's 4 GiB batch
// limit, on every replay after the crash it caused. Each part commits the
// applied index of its own last entry, so the state DB still holds a prefix
// of the log.
const maxApplyOps = 1 << 16

// applyPart applies logs, whose commands are decoded in cmds (ops
// operations in all), as one Pebble batch, and fills resp.
func (f *FSM) applyPart(logs []*raft.Log, cmds []ledger.Command, resp []interface{}, ops int) {
	if len(logs) == 0 {
		return
	}
	start := time.Now()
	f.mu.Lock()
	m := f.m
	f.mu.Unlock()

	st := f.store
	st.seq = m.seq
	if f.ov == nil {
		f.ov = ledger.NewOverlay(st)
	}
	ov := f.ov // empty: the last batch's Commit reset it
	ov.Reserve(ops)
	applied := 0
	for i, l := range logs {
		if l.Index <= m.appliedIndex {
			continue
		}
		if l.Type == raft.LogCommand {
			p, results, err := ledger.ApplyCommand(ov, ledger.Progress{TimeMs: m.lastTimeMs, Version: m.version}, cmds[i])
			if errors.Is(err, ledger.ErrVersion) {
				panic(fmt.Sprintf("fsm: shard %d: entry %d: %v: upgrade this node's tallyd", f.shard, l.Index, err))
			}
			if err != nil {
				panic(fmt.Sprintf("fsm: shard %d: apply entry %d: %v", f.shard, l.Index, err))
			}
			m.lastTimeMs, m.version = p.TimeMs, p.Version
			resp[i] = Results(results)
			applied++
		}
		m.appliedIndex = l.Index
	}
	if err := ov.Commit(); err != nil {
		panic(fmt.Sprintf("fsm: shard %d: flush: %v", f.shard, err))
	}
	// Every write of the batch is queued now, so the Pebble batch is made
	// at its final size and never regrows.
	b := f.db.NewBatchWithSize(st.w.batchSize())
	defer b.Close()
	if err := st.flushWrites(b); err != nil {
		panic(fmt.Sprintf("fsm: shard %d: flush: %v", f.shard, err))
	}
	if ops > maxRetainedOverlayOps {
		// Keep a reused overlay's buffers (~650 bytes per operation) to the
		// size of ordinary batches, not the largest one ever seen.
		f.ov = nil
	}
	m.seq = st.seq
	if err := b.Set(f.kb.meta(), m.encode(), nil); err != nil {
		panic(fmt.Sprintf("fsm: shard %d: %v", f.shard, err))
	}
	// From here until publish, readers read the DB (accountCache): one
	// that saw this batch there must not be followed by one served the
	// map as of the batch before.
	st.accounts.committingBatch(m.appliedIndex)
	if err := b.Commit(pebble.NoSync); err != nil {
		panic(fmt.Sprintf("fsm: shard %d: commit: %v", f.shard, err))
	}
	if f.afterCommit != nil {
		f.afterCommit()
	}
	// Readers may use the new accounts from here: before the applied index
	// that lets them read is published.
	st.publish(m.appliedIndex)
	f.mu.Lock()
	f.m = m
	f.mu.Unlock()
	f.applied.Store(m.appliedIndex)
	if f.hooks.OnApply != nil {
		f.hooks.OnApply(m.appliedIndex, applied, ops, time.Since(start))
	}
}

// reads gives a view over the live database; callers provide linearizability.
func (f *FSM) reads() view { return view{r: dbReader(f.db), kb: f.kb} }

// Account reads an account from local state: the committed-account cache,
// else the DB.
func (f *FSM) Account(k ledger.AccountKey) (ledger.Account, bool, error) {
	if accounts, _, ok := f.store.accounts.lookup([][]byte{f.kb.account(k.Program, k.Member, k.Asset)}); ok {
		return accounts[0], true, nil
	}
	return f.reads().account(k)
}

// Accounts reads several accounts of the shard from one point-in-time view
// of local state (a Pebble iterator is one), and returns the applied index of
// that view: every account reflects exactly the entries up to it. found[i]
// reports whether keys[i] exists. Each account is found with SeekPrefixGE:
// the state DB's keys are their own prefix (the default Split), so Pebble
// consults each table's bloom filter and skips the levels that do not hold
// the key, where SeekGE would position an iterator in every level (index
// and data block reads). After a few million writes an account's versions
// sit in one or two of the seven levels.
func (f *FSM) Accounts(keys []ledger.AccountKey) (accounts []ledger.Account, found []bool, appliedIndex uint64, err error) {
	enc := make([][]byte, len(keys))
	for i, k := range keys {
		enc[i] = f.kb.account(k.Program, k.Member, k.Asset)
	}
	// Every account cached: they are all as of the cache's index, which is
	// one view. Otherwise read them all from one DB view.
	if accounts, index, ok := f.store.accounts.lookup(enc); ok {
		found = make([]bool, len(keys))
		for i := range found {
			found[i] = true
		}
		return accounts, found, index, nil
	}
	return f.accountsFromDB(enc)
}

// accountsFromDB reads encoded account keys from one DB iterator.
func (f *FSM) accountsFromDB(enc [][]byte) (accounts []ledger.Account, found []bool, appliedIndex uint64, err error) {
	lower, upper := shardBounds(f.shard)
	it, err := f.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, nil, 0, err
	}
	defer func() {
		if cerr := it.Close(); err == nil {
			err = cerr
		}
	}()
	metaKey := f.kb.meta()
	if it.SeekGE(metaKey) && bytes.Equal(it.Key(), metaKey) {
		m, err := decodeMeta(it.Value())
		if err != nil {
			return nil, nil, 0, err
		}
		appliedIndex = m.appliedIndex
	}
	order := make([]int, len(enc))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return bytes.Compare(enc[a], enc[b]) })
	accounts = make([]ledger.Account, len(enc))
	found = make([]bool, len(enc))
	for _, i := range order {
		if !it.SeekPrefixGE(enc[i]) || !bytes.Equal(it.Key(), enc[i]) {
			continue
		}
		if accounts[i], err = ledger.DecodeAccount(it.Value()); err != nil {
			return nil, nil, 0, err
		}
		found[i] = true
	}
	return accounts, found, appliedIndex, it.Error()
}

// Asset reads an asset definition from local state.
func (f *FSM) Asset(program, code string) (ledger.Asset, bool, error) {
	return f.reads().asset(program, code)
}

// Hold reads a hold from local state.
func (f *FSM) Hold(program, member, key string) (ledger.Hold, bool, error) {
	return f.reads().hold(program, member, key)
}

// Record reads the dedup record of (program, idempotency key).
func (f *FSM) Record(program, key string) (ledger.Record, bool, error) {
	return f.reads().record(program, key)
}

// NextExpiryMs returns the earliest expiry time of an open hold, if any. The
// leader uses it to propose a tick once that time has passed.
func (f *FSM) NextExpiryMs() (int64, bool, error) {
	_, next, err := f.reads().expiredHolds(math.MinInt64, 1)
	if err != nil || next == math.MaxInt64 {
		return 0, false, err
	}
	return next, true, nil
}

// journalScanLimit bounds the journal entries one Journal call looks at. An
// asset filter skips entries, and without a bound a filter that matches
// nothing would walk the member's whole journal in one request.
var journalScanLimit = 10_000

// Journal lists a member's successful operations newest first, with seq <
// beforeSeq (0: from the newest), optionally only those on asset. It returns
// the next page token (0 when done). A page that looked at journalScanLimit
// entries ends there with a token, so with a filter a page may hold fewer
// than limit entries, or none, and still not be the last.
func (f *FSM) Journal(program, member, asset string, beforeSeq uint64, limit int) ([]ledger.Record, uint64, error) {
	// The journal index and the records are read through iterators of one
	// view (a clone shares it), which a concurrent Restore's excise does not
	// tear, as it would a Pebble snapshot's (Snapshot, in snapshot.go).
	lower, upper := shardBounds(f.shard)
	all, err := f.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, 0, err
	}
	defer all.Close()
	v := view{r: iterReader(all), kb: f.kb}
	prefix := f.kb.journalPrefix(program, member)
	upper = prefixEnd(prefix)
	if beforeSeq > 0 {
		upper = f.kb.journal(program, member, beforeSeq)
	}
	it, err := all.Clone(pebble.CloneOptions{IterOptions: &pebble.IterOptions{LowerBound: prefix, UpperBound: upper}})
	if err != nil {
		return nil, 0, err
	}
	defer it.Close()
	var out []ledger.Record
	var next uint64
	scanned := 0
	for valid := it.Last(); valid; valid = it.Prev() {
		if len(out) == limit || scanned == journalScanLimit {
			next = binary.BigEndian.Uint64(it.Key()[len(prefix):]) + 1
			break
		}
		scanned++
		rec, ok, err := v.record(program, string(it.Value()))
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			return nil, 0, fmt.Errorf("fsm: journal entry %x has no record", it.Key())
		}
		if asset != "" && rec.Op.Asset != asset && rec.Result.Account.Key.Asset != asset {
			continue
		}
		out = append(out, rec)
	}
	return out, next, it.Error()
}

// ErrConservation is returned by CheckConservation when balances of some
// (program, asset) on the shard do not sum to zero.
var ErrConservation = errors.New("fsm: conservation violated")

// StateInfo is a consistent summary of a shard's local state.
type StateInfo struct {
	AppliedIndex uint64
	LastTimeMs   int64
	Hash         []byte // SHA-256 over every key and value of the shard
	Conservation error  // nil when every (program, asset) sums to zero
}
