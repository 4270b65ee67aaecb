package fsm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"
	"github.com/tally-ledger/tally/ledger"
)

// Snapshot format: a header (magic, version, shard), then records of
// (1, uvarint key length, key without the shard prefix, uvarint value
// length, value) in key order, then a trailer (0, record count uint64, CRC-32C
// of every byte before the trailer's count). Restore verifies count and CRC
// before it changes anything.
const (
	snapshotMagic   = "TALLYSNP"
	snapshotVersion = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot captures the shard at the current applied index (raft.FSM). It
// only opens an iterator over the shard; the copy happens in Persist,
// concurrently with new applies. An open iterator, not a Pebble snapshot:
// hashicorp/raft may persist a follower's snapshot after the FSM goroutine
// has restored a leader's (installSnapshot runs while takeSnapshot waits
// between the two), and Restore's excise deletes the shard's old data from
// open Pebble snapshots, but not from open iterators. Through a snapshot,
// Persist wrote an empty shard with a valid count and checksum, which a
// restart falling back to it would have restored as a blank shard.
//
// It refuses while Raft replays entries the durable state already holds
// (after a restart with that state ahead of the newest snapshot): Raft
// would label the snapshot with the last entry it replayed, below the
// state's applied index, and Restore refuses such a snapshot, so no
// follower could install it, and one that stored it before trying (as
// hashicorp/raft does) could not start its shard once two were kept
// (found by review). Raft retries a refused snapshot later; the replay
// reaches the applied index, which is always an entry it hands over.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	if given, applied := f.given.Load(), f.AppliedIndex(); given < applied {
		return nil, fmt.Errorf("fsm: shard %d: no snapshot while the log replays: the state is applied to %d, the replay is at %d",
			f.shard, applied, given)
	}
	lower, upper := shardBounds(f.shard)
	it, err := f.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{f: f, it: it, index: f.AppliedIndex()}, nil
}

type fsmSnapshot struct {
	f     *FSM
	it    *pebble.Iterator
	index uint64
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) (err error) {
	start := time.Now()
	cw := &countingWriter{w: sink}
	defer func() {
		if h := s.f.hooks.OnSnapshot; h != nil {
			h(cw.n, time.Since(start), err)
		}
	}()
	if err := s.f.writeSnapshot(s.it, cw); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: shard %d: persist snapshot at %d: %w", s.f.shard, s.index, err)
	}
	return sink.Close()
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (s *fsmSnapshot) Release() { _ = s.it.Close() }

func (f *FSM) writeSnapshot(it *pebble.Iterator, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	crc := crc32.New(castagnoli)
	out := io.MultiWriter(bw, crc)
	hdr := append([]byte(snapshotMagic), snapshotVersion)
	hdr = binary.BigEndian.AppendUint32(hdr, f.shard)
	if _, err := out.Write(hdr); err != nil {
		return err
	}
	var count uint64
	var buf []byte
	for valid := it.First(); valid; valid = it.Next() {
		k, v := it.Key()[shardPrefixLen:], it.Value()
		buf = append(buf[:0], 1)
		buf = binary.AppendUvarint(buf, uint64(len(k)))
		buf = append(buf, k...)
		buf = binary.AppendUvarint(buf, uint64(len(v)))
		buf = append(buf, v...)
		if _, err := out.Write(buf); err != nil {
			return err
		}
		count++
	}
	if err := it.Error(); err != nil {
		return err
	}
	if _, err := out.Write([]byte{0}); err != nil {
		return err
	}
	trailer := binary.BigEndian.AppendUint64(nil, count)
	trailer = binary.BigEndian.AppendUint32(trailer, crc.Sum32())
	if _, err := bw.Write(trailer); err != nil {
		return err
	}
	return bw.Flush()
}

// maxSnapshotKeyBytes and maxSnapshotValueBytes bound what Restore accepts,
// so a corrupt length cannot make it allocate without limit.
const (
	maxSnapshotKeyBytes   = 4 << 10
	maxSnapshotValueBytes = 16 << 20
)

// restoreTableBytes is the key and value bytes Restore writes into one
// sstable before it starts the next. A variable so tests can lower it.
var restoreTableBytes = 128 << 20

// Restore replaces the shard's state with a snapshot (raft.FSM). It writes
// the stream into sstables beside the state DB, checking everything that
// can reject it (framing, key order, count, checksum, the meta record and
// its applied index against the snapshot's Raft index) on the way, and
// only then ingests them with the shard's key range excised, in one atomic
// step (pebble's IngestAndExcise, as CockroachDB applies snapshots): a
// failed restore changes nothing, a crash leaves the old state
// or the new one, and no part of the shard is held in memory. It used to
// write the shard as one batch, which needed memory for all of it and which
// Pebble refuses (with a panic) at 4 GiB. The ingested state is flushed, so
// it is on disk before Raft compacts its log past it. A failure after the
// ingest panics: the state was replaced and the FSM cannot go on over it
// with its old applied index (on start the node restores the snapshot
// again).
func (f *FSM) Restore(rc io.ReadCloser) (err error) {
	defer rc.Close()
	start := time.Now()
	defer func() {
		if h := f.hooks.OnRestore; h != nil {
			h(time.Since(start), err)
		}
	}()
	// The snapshot's Raft index, where the stream says it (every stream
	// the node's snapshot store opens does).
	snapIndex, indexed := snapshotIndexOf(rc)
	tables, err := newTableSet(f.sdb, f.shard)
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	defer tables.cleanup()
	if !indexed {
		snapIndex = math.MaxUint64
	}
	info, err := readSnapshot(rc, f.shard, snapIndex, tables.set)
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	snapApplied := info.AppliedIndex
	paths, err := tables.finish()
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	lower, upper := shardBounds(f.shard)
	// From here until loadMeta resets the account cache, readers read the
	// DB: one that saw the restored state there must not be followed by
	// one served the cache's older view (accountCache). A failed
	// replacement leaves the state as it was, and the cache with it.
	replaced := false
	if f.store != nil {
		c := f.store.accounts
		wasCommitting := c.committing.Load()
		c.committingBatch(math.MaxUint64)
		defer func() {
			if !replaced {
				c.committingBatch(wasCommitting)
			}
		}()
	}
	if len(paths) == 0 { // an empty shard: nothing to ingest, only to delete
		b := f.db.NewBatch()
		defer b.Close()
		if err := b.DeleteRange(lower, upper, nil); err != nil {
			return err
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			return fmt.Errorf("fsm: restore: commit: %w", err)
		}
	} else if _, err := f.db.IngestAndExcise(context.Background(), paths, nil, nil, pebble.KeyRange{Start: lower, End: upper}); err != nil {
		return fmt.Errorf("fsm: restore: ingest: %w", err)
	}
	// A snapshot that ended past its applied index, on entries that are
	// not commands, leaves the state at its Raft index: recorded beside
	// the state (not in it: replicas' states stay byte-equal), so the next
	// start does not restore it again (StateIndex). Otherwise the record
	// goes; it describes the state it came with.
	rb := f.db.NewBatch()
	defer rb.Close()
	if indexed && snapIndex > snapApplied {
		err = rb.Set(restoredKey(f.shard), binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, snapIndex), snapApplied), nil)
	} else {
		err = rb.Delete(restoredKey(f.shard), nil)
	}
	if err == nil {
		err = rb.Commit(pebble.NoSync)
	}
	if err != nil {
		panic(fmt.Sprintf("fsm: shard %d: restore: record the snapshot's index: %v", f.shard, err))
	}
	// The state DB has no WAL: flush so the restored state is on disk
	// before Raft compacts its log past it. (If we crash first, the node
	// restores the same snapshot again.)
	if err := f.db.Flush(); err != nil {
		panic(fmt.Sprintf("fsm: shard %d: restore: flush after replacing the state: %v", f.shard, err))
	}
	if err := f.loadMeta(); err != nil {
		panic(fmt.Sprintf("fsm: shard %d: restore: after replacing the state: %v", f.shard, err))
	}
	// Raft dispatches from the snapshot's index on (a stream that does not
	// say it is taken at its state's).
	if !indexed {
		snapIndex = f.AppliedIndex()
	}
	f.given.Store(max(snapIndex, f.AppliedIndex()))
	replaced = true
	return nil
}

// SnapshotIndexer is a snapshot stream that knows its snapshot's Raft
// index. Restore gets only the stream; the node's snapshot store opens
// streams that say it, and hashicorp/raft passes them on wrapped
// (raft.ReadCloserWrapper).
type SnapshotIndexer interface{ SnapshotIndex() uint64 }

func snapshotIndexOf(rc io.ReadCloser) (uint64, bool) {
	for range 8 {
		if s, ok := rc.(SnapshotIndexer); ok {
			return s.SnapshotIndex(), true
		}
		w, ok := rc.(raft.ReadCloserWrapper)
		if !ok {
			return 0, false
		}
		rc = w.WrappedReadCloser()
	}
	return 0, false
}

// SnapshotInfo is what a check of a snapshot stream found in it.
type SnapshotInfo struct {
	Records      uint64 // key-value records, the meta included
	AppliedIndex uint64 // the applied index in the state's meta (0 for an empty shard)
	Version      uint32 // the rules version of the state (ledger.Version1 for an empty shard)
	// Hash is the state's hash, as FSM.State computes it, and
	// Conservation is non-nil when the state breaks conservation. Only
	// CheckSnapshot computes them.
	Hash         []byte
	Conservation error
}

// CheckSnapshot reads a whole snapshot stream of shard and checks it as
// Restore would before changing anything: header, key order, meta (a
// rules version this binary applies) and trailer (record count and
// CRC-32C). A backup is checked with it before hashicorp/raft's Restore
// takes it, since raft panics when the FSM refuses a snapshot it restores
// for a user.
func CheckSnapshot(r io.Reader, shard uint32) (SnapshotInfo, error) {
	var h stateHasher
	info, err := readSnapshot(r, shard, math.MaxUint64, h.add)
	if err != nil {
		return info, err
	}
	info.Hash, info.Conservation = h.sum()
	return info, nil
}

// readSnapshot reads a snapshot stream of shard, checks it, and hands each
// record, its key with the shard prefix, to put (when not nil) in key
// order; the trailer is checked after the last one. A meta whose applied
// index is past snapIndex is refused: that state is not the state at the
// snapshot's index (ApplyBatch would skip the committed entries between
// the two as applied already, and the replica would diverge without a
// word).
func readSnapshot(rd io.Reader, shard uint32, snapIndex uint64, put func(key, value []byte) error) (SnapshotInfo, error) {
	info := SnapshotInfo{Version: ledger.Version1}
	br := bufio.NewReaderSize(rd, 1<<20)
	crc := crc32.New(castagnoli)
	r := &crcReader{r: br, crc: crc}

	hdr := make([]byte, len(snapshotMagic)+1+4)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return info, fmt.Errorf("header: %w", err)
	}
	if string(hdr[:len(snapshotMagic)]) != snapshotMagic || hdr[len(snapshotMagic)] != snapshotVersion {
		return info, errors.New("not a tally snapshot (bad magic or version)")
	}
	if got := binary.BigEndian.Uint32(hdr[len(snapshotMagic)+1:]); got != shard {
		return info, fmt.Errorf("snapshot of shard %d offered to shard %d", got, shard)
	}
	kb := keyBuilder{prefix: shardPrefix(shard)}
	metaKey := kb.meta()
	var (
		count   uint64
		prev    []byte
		hasMeta bool
	)
	for {
		tag, err := r.ReadByte()
		if err != nil {
			return info, fmt.Errorf("record %d: %w", count, err)
		}
		if tag == 0 {
			break
		}
		if tag != 1 {
			return info, fmt.Errorf("record %d: bad tag %d", count, tag)
		}
		k, err := readChunk(r, maxSnapshotKeyBytes)
		if err != nil {
			return info, fmt.Errorf("record %d key: %w", count, err)
		}
		v, err := readChunk(r, maxSnapshotValueBytes)
		if err != nil {
			return info, fmt.Errorf("record %d value: %w", count, err)
		}
		key := append(shardPrefix(shard), k...)
		if prev != nil && bytes.Compare(key, prev) <= 0 {
			return info, fmt.Errorf("record %d: keys out of order", count)
		}
		if bytes.Equal(key, metaKey) {
			m, err := decodeMeta(v)
			if err != nil {
				return info, fmt.Errorf("record %d: %w", count, err)
			}
			if m.appliedIndex > snapIndex {
				return info, fmt.Errorf("snapshot at raft index %d holds state applied to %d", snapIndex, m.appliedIndex)
			}
			hasMeta, info.AppliedIndex, info.Version = true, m.appliedIndex, max(m.version, ledger.Version1)
		}
		if put != nil {
			if err := put(key, v); err != nil {
				return info, fmt.Errorf("record %d: %w", count, err)
			}
		}
		prev = key
		count++
	}
	sum := crc.Sum32()
	trailer := make([]byte, 12)
	if _, err := io.ReadFull(br, trailer); err != nil {
		return info, fmt.Errorf("trailer: %w", err)
	}
	if n := binary.BigEndian.Uint64(trailer); n != count {
		return info, fmt.Errorf("snapshot has %d records, trailer says %d", count, n)
	}
	if want := binary.BigEndian.Uint32(trailer[8:]); want != sum {
		return info, fmt.Errorf("checksum mismatch (got %08x want %08x)", sum, want)
	}
	// Every apply writes the meta record with the state, so a shard with
	// state has one; restored without it, the shard would start over at
	// index 0 and journal sequence 0 over existing journal keys.
	if count > 0 && !hasMeta {
		return info, fmt.Errorf("snapshot has %d records but no meta record", count)
	}
	info.Records = count
	return info, nil
}

// tableSet writes a restore's records, in key order, into sstables in a
// fresh directory beside the state DB (the same file system, so ingesting
// them is a hard link).
type tableSet struct {
	dir   string
	opts  sstable.WriterOptions
	paths []string
	w     *sstable.Writer
	bytes int
}

func newTableSet(db *DB, shard uint32) (*tableSet, error) {
	if err := os.MkdirAll(db.restoreDir(), 0o755); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(db.restoreDir(), fmt.Sprintf("shard%d-", shard))
	if err != nil {
		return nil, err
	}
	// Level 6 options: the tables are ingested into the bottom level when
	// nothing overlaps them, which the excise ensures for the shard's range.
	return &tableSet{dir: dir, opts: db.opts.MakeWriterOptions(6, db.db.TableFormat())}, nil
}

func (t *tableSet) set(key, value []byte) error {
	if t.w == nil || t.bytes >= restoreTableBytes {
		if err := t.closeTable(); err != nil {
			return err
		}
		path := filepath.Join(t.dir, fmt.Sprintf("%06d.sst", len(t.paths)))
		f, err := vfs.Default.Create(path, vfs.WriteCategoryUnspecified)
		if err != nil {
			return err
		}
		t.paths = append(t.paths, path)
		t.w = sstable.NewWriter(objstorageprovider.NewFileWritable(f), t.opts)
		t.bytes = 0
	}
	t.bytes += len(key) + len(value)
	return t.w.Set(key, value)
}

// closeTable finishes (and syncs) the table being written, if any.
func (t *tableSet) closeTable() error {
	if t.w == nil {
		return nil
	}
	w := t.w
	t.w = nil
	return w.Close()
}

// finish closes the last table and returns every table's path.
func (t *tableSet) finish() ([]string, error) {
	if err := t.closeTable(); err != nil {
		return nil, err
	}
	return t.paths, nil
}

// cleanup removes the directory and whatever ingesting left in it.
func (t *tableSet) cleanup() {
	_ = t.closeTable()
	_ = os.RemoveAll(t.dir)
}

type crcReader struct {
	r   *bufio.Reader
	crc io.Writer
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	_, _ = c.crc.Write(p[:n])
	return n, err
}

func (c *crcReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		_, _ = c.crc.Write([]byte{b})
	}
	return b, err
}

func readChunk(r *crcReader, max uint64) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, fmt.Errorf("length %d over limit %d", n, max)
	}
	buf := make([]byte, n)
	_, err = io.ReadFull(r, buf)
	return buf, err
}

// State returns a consistent summary of the shard's local state: applied
// index, log time, a hash of every key and value, and the conservation check.
// Replicas at the same applied index must report the same hash.
func (f *FSM) State() (StateInfo, error) {
	// One iterator reads the meta record and hashes the keys: it pins one
	// view of the shard, which a Pebble snapshot does not do against the
	// excise of a concurrent Restore (the hash and the index it is reported
	// at would come from two states).
	lower, upper := shardBounds(f.shard)
	it, err := f.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return StateInfo{}, err
	}
	return f.hashView(it, nil)
}

// hashView summarizes the shard state that it, an iterator over the whole
// shard, sees (State), and closes it. A non-nil stop makes it a
// consistency check's walk: one that turns true ends it early with
// errCheckStopped, and the hasher is lenient (stateHasher).
func (f *FSM) hashView(it *pebble.Iterator, stop *atomic.Bool) (info StateInfo, err error) {
	defer func() {
		if cerr := it.Close(); err == nil {
			err = cerr
		}
	}()
	if it.SeekGE(f.kb.meta()) && bytes.Equal(it.Key(), f.kb.meta()) {
		m, err := decodeMeta(it.Value())
		if err != nil {
			return info, err
		}
		info.AppliedIndex, info.LastTimeMs = m.appliedIndex, m.lastTimeMs
	}
	h := stateHasher{lenient: stop != nil}
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		if n++; stop != nil && n%4096 == 0 && stop.Load() {
			return info, errCheckStopped
		}
		if err := h.add(it.Key(), it.Value()); err != nil {
			return info, err
		}
	}
	if err := it.Error(); err != nil {
		return info, err
	}
	info.Hash, info.Conservation = h.sum()
	return info, nil
}

// stateHasher hashes a shard's keys (with the shard prefix) and values,
// given in key order, and checks conservation over its accounts and
// control balances: FSM.State over the DB, and CheckSnapshot over a
// snapshot stream, so a backup's hash is the one its shard reports at
// the backup's applied index.
type stateHasher struct {
	h      hash.Hash
	sums   ledger.ConservationSums // one per (program, asset): memory does not grow with accounts
	lenBuf []byte
	// lenient hashers (consistency checks) hash past a key or value that
	// does not decode, keeping the first such error in broken, which sum
	// reports; strict ones (State, CheckSnapshot) stop at it.
	lenient bool
	broken  error
}

func (s *stateHasher) add(k, v []byte) error {
	err := s.hashAndSum(k, v)
	if err != nil && s.lenient {
		// The bytes are hashed already: keep the first such error and go
		// on, so that a replica holding bytes no entry wrote still reports
		// a hash, which then differs from the others'.
		if s.broken == nil {
			s.broken = err
		}
		return nil
	}
	return err
}

func (s *stateHasher) hashAndSum(k, v []byte) error {
	if s.h == nil {
		s.h = sha256.New()
	}
	s.lenBuf = binary.AppendUvarint(s.lenBuf[:0], uint64(len(k)))
	s.h.Write(s.lenBuf)
	s.h.Write(k)
	s.lenBuf = binary.AppendUvarint(s.lenBuf[:0], uint64(len(v)))
	s.h.Write(s.lenBuf)
	s.h.Write(v)
	if len(k) <= shardPrefixLen {
		return fmt.Errorf("fsm: key %q outside every shard's layout", k)
	}
	switch k[shardPrefixLen] {
	case tagAccount:
		a, err := ledger.DecodeAccount(v)
		if err != nil {
			return err
		}
		s.sums.Add(ledger.Balance{Program: a.Key.Program, Member: a.Key.Member,
			Asset: a.Key.Asset, PostedMinor: a.PostedMinor})
	case tagControl:
		parts := splitKey(k[shardPrefixLen+1:])
		if len(parts) != 2 || len(v) != 8 {
			return fmt.Errorf("fsm: malformed control key %q", k)
		}
		s.sums.Add(ledger.Balance{Program: parts[0], Member: ledger.ControlMember,
			Asset: parts[1], PostedMinor: int64(binary.BigEndian.Uint64(v))})
	}
	return nil
}

// sum returns the hash, and a non-nil error when some (program, asset)
// does not sum to zero, or when a lenient hasher met a record that does
// not decode (its sums then leave that record out).
func (s *stateHasher) sum() ([]byte, error) {
	if s.h == nil {
		s.h = sha256.New()
	}
	var conservation error
	if err := s.sums.Check(); err != nil {
		conservation = fmt.Errorf("%w: %v", ErrConservation, err)
	}
	if s.broken != nil {
		conservation = errors.Join(conservation, fmt.Errorf("%w: a record does not decode: %v", ErrConservation, s.broken))
	}
	return s.h.Sum(nil), conservation
}

func splitKey(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			out = append(out, string(b[start:i]))
			start = i + 1
		}
	}
	return append(out, string(b[start:]))
}
