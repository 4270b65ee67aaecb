package fsm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
	"github.com/tally-ledger/tally/ledger"
)

// Snapshot format: a header (magic, version, shard), then records of
// (1, uvarint key length, key without the shard prefix, uvarint value
// length, value) in key order, then a trailer (0, record count uint64, CRC-32C
// of every byte before the trailer's count). Restore verifies count and CRC
// before it commits anything.
const (
	snapshotMagic   = "TALLYSNP"
	snapshotVersion = 1
	// restoreBatchBytes is unused on purpose: Restore applies the whole shard
	// in one batch so that a crash mid-restore leaves the old state intact.
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot captures the shard at the current applied index (raft.FSM). It
// only takes a Pebble snapshot; the copy happens in Persist, concurrently
// with new applies.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{f: f, snap: f.db.NewSnapshot(), index: f.AppliedIndex()}, nil
}

type fsmSnapshot struct {
	f     *FSM
	snap  *pebble.Snapshot
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
	if err := s.f.writeSnapshot(s.snap, cw); err != nil {
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

func (s *fsmSnapshot) Release() { _ = s.snap.Close() }

func (f *FSM) writeSnapshot(snap *pebble.Snapshot, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	crc := crc32.New(castagnoli)
	out := io.MultiWriter(bw, crc)
	hdr := append([]byte(snapshotMagic), snapshotVersion)
	hdr = binary.BigEndian.AppendUint32(hdr, f.shard)
	if _, err := out.Write(hdr); err != nil {
		return err
	}
	lower, upper := shardBounds(f.shard)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
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
			_ = it.Close()
			return err
		}
		count++
	}
	if err := it.Close(); err != nil {
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

// maxRestoreBatchBytes bounds the one batch a restore writes. Pebble panics
// on a batch of 4 GiB or more, on Raft's FSM goroutine, and the node would
// then crash again on every start, as it must restore that snapshot. Above
// this bound Restore fails instead, changing nothing (docs/ARCHITECTURE.md,
// Known limits). A variable so tests can lower it.
var maxRestoreBatchBytes = 3 << 30

// Restore replaces the shard's state with a snapshot (raft.FSM). The shard's
// key range is deleted and rewritten in one batch, then flushed, so a crash
// leaves either the old state or the new one. Everything that can reject
// the stream (framing, count, checksum, the meta record, the size bound) is
// checked before the batch commits, so a failed restore changes nothing;
// once it has committed, a failure panics: the state was replaced and the
// FSM cannot go on with the old meta over it (the node restores the
// snapshot again on start).
func (f *FSM) Restore(rc io.ReadCloser) (err error) {
	defer rc.Close()
	start := time.Now()
	defer func() {
		if h := f.hooks.OnRestore; h != nil {
			h(time.Since(start), err)
		}
	}()
	br := bufio.NewReaderSize(rc, 1<<20)
	crc := crc32.New(castagnoli)
	r := &crcReader{r: br, crc: crc}

	hdr := make([]byte, len(snapshotMagic)+1+4)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return fmt.Errorf("fsm: restore: header: %w", err)
	}
	if string(hdr[:len(snapshotMagic)]) != snapshotMagic || hdr[len(snapshotMagic)] != snapshotVersion {
		return errors.New("fsm: restore: not a tally snapshot (bad magic or version)")
	}
	if shard := binary.BigEndian.Uint32(hdr[len(snapshotMagic)+1:]); shard != f.shard {
		return fmt.Errorf("fsm: restore: snapshot of shard %d offered to shard %d", shard, f.shard)
	}

	b := f.db.NewBatch()
	defer b.Close()
	lower, upper := shardBounds(f.shard)
	if err := b.DeleteRange(lower, upper, nil); err != nil {
		return err
	}
	var count uint64
	for {
		tag, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("fsm: restore: record %d: %w", count, err)
		}
		if tag == 0 {
			break
		}
		if tag != 1 {
			return fmt.Errorf("fsm: restore: record %d: bad tag %d", count, tag)
		}
		k, err := readChunk(r, maxSnapshotKeyBytes)
		if err != nil {
			return fmt.Errorf("fsm: restore: record %d key: %w", count, err)
		}
		v, err := readChunk(r, maxSnapshotValueBytes)
		if err != nil {
			return fmt.Errorf("fsm: restore: record %d value: %w", count, err)
		}
		key := append(shardPrefix(f.shard), k...)
		if bytes.Equal(key, f.kb.meta()) {
			if _, err := decodeMeta(v); err != nil {
				return fmt.Errorf("fsm: restore: record %d: %w", count, err)
			}
		}
		if b.Len()+len(key)+len(v) > maxRestoreBatchBytes {
			return fmt.Errorf("fsm: restore: shard %d's snapshot is over %d bytes, more than one batch can restore", f.shard, maxRestoreBatchBytes)
		}
		if err := b.Set(key, v, nil); err != nil {
			return err
		}
		count++
	}
	sum := crc.Sum32()
	trailer := make([]byte, 12)
	if _, err := io.ReadFull(br, trailer); err != nil {
		return fmt.Errorf("fsm: restore: trailer: %w", err)
	}
	if n := binary.BigEndian.Uint64(trailer); n != count {
		return fmt.Errorf("fsm: restore: snapshot has %d records, trailer says %d", count, n)
	}
	if want := binary.BigEndian.Uint32(trailer[8:]); want != sum {
		return fmt.Errorf("fsm: restore: checksum mismatch (got %08x want %08x)", sum, want)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("fsm: restore: commit: %w", err)
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
	return nil
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
	snap := f.db.NewSnapshot()
	defer snap.Close()
	var info StateInfo
	if b, ok, err := snapReader(snap).getValue(f.kb.meta()); err != nil {
		return info, err
	} else if ok {
		m, err := decodeMeta(b)
		if err != nil {
			return info, err
		}
		info.AppliedIndex, info.LastTimeMs = m.appliedIndex, m.lastTimeMs
	}
	lower, upper := shardBounds(f.shard)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return info, err
	}
	h := sha256.New()
	var balances []ledger.Balance
	var lenBuf []byte
	for valid := it.First(); valid; valid = it.Next() {
		k, v := it.Key(), it.Value()
		lenBuf = binary.AppendUvarint(lenBuf[:0], uint64(len(k)))
		h.Write(lenBuf)
		h.Write(k)
		lenBuf = binary.AppendUvarint(lenBuf[:0], uint64(len(v)))
		h.Write(lenBuf)
		h.Write(v)
		switch k[shardPrefixLen] {
		case tagAccount:
			a, err := ledger.DecodeAccount(v)
			if err != nil {
				_ = it.Close()
				return info, err
			}
			balances = append(balances, ledger.Balance{Program: a.Key.Program, Member: a.Key.Member,
				Asset: a.Key.Asset, PostedMinor: a.PostedMinor})
		case tagControl:
			parts := splitKey(k[shardPrefixLen+1:])
			if len(parts) != 2 || len(v) != 8 {
				_ = it.Close()
				return info, fmt.Errorf("fsm: malformed control key %q", k)
			}
			balances = append(balances, ledger.Balance{Program: parts[0], Member: ledger.ControlMember,
				Asset: parts[1], PostedMinor: int64(binary.BigEndian.Uint64(v))})
		}
	}
	if err := it.Close(); err != nil {
		return info, err
	}
	info.Hash = h.Sum(nil)
	if err := ledger.Conservation(balances); err != nil {
		info.Conservation = fmt.Errorf("%w: %v", ErrConservation, err)
	}
	return info, nil
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
