package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openTest(t testing.TB, dir string) *DB {
	t.Helper()
	db, err := Open(dir, Options{CacheBytes: 8 << 20, MemTableBytes: 4 << 20, Logger: quietLogger()})
	require.NoError(t, err)
	return db
}

func mkLog(index, term uint64) *raft.Log {
	return &raft.Log{Index: index, Term: term, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("cmd-%d", index))}
}

func mkLogs(lo, hi, term uint64) []*raft.Log {
	var out []*raft.Log
	for i := lo; i <= hi; i++ {
		out = append(out, mkLog(i, term))
	}
	return out
}

func requireBounds(t *testing.T, g *GroupStore, first, last uint64) {
	t.Helper()
	f, err := g.FirstIndex()
	require.NoError(t, err)
	l, err := g.LastIndex()
	require.NoError(t, err)
	require.Equal(t, [2]uint64{first, last}, [2]uint64{f, l}, "first/last of shard %d", g.shard)
}

func TestLogStoreContract(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	g := db.Group(3)
	require.Same(t, g, db.Group(3))

	requireBounds(t, g, 0, 0)
	var l raft.Log
	require.ErrorIs(t, g.GetLog(1, &l), raft.ErrLogNotFound)

	require.NoError(t, g.StoreLog(mkLog(1, 1)))
	requireBounds(t, g, 1, 1)
	require.NoError(t, g.StoreLogs(mkLogs(2, 10, 1)))
	requireBounds(t, g, 1, 10)
	for i := uint64(1); i <= 10; i++ {
		require.NoError(t, g.GetLog(i, &l))
		requireLogEqual(t, mkLog(i, 1), &l)
	}
	require.ErrorIs(t, g.GetLog(11, &l), raft.ErrLogNotFound)

	// Overwrite a suffix with a new term, as a follower does after a conflict.
	require.NoError(t, g.DeleteRange(8, 10))
	requireBounds(t, g, 1, 7)
	require.NoError(t, g.StoreLogs(mkLogs(8, 12, 2)))
	requireBounds(t, g, 1, 12)
	require.NoError(t, g.GetLog(9, &l))
	require.Equal(t, uint64(2), l.Term)

	// Overwrite in place without deleting first.
	require.NoError(t, g.StoreLog(mkLog(5, 9)))
	require.NoError(t, g.GetLog(5, &l))
	require.Equal(t, uint64(9), l.Term)

	// Prefix compaction.
	require.NoError(t, g.DeleteRange(1, 4))
	requireBounds(t, g, 5, 12)
	require.ErrorIs(t, g.GetLog(4, &l), raft.ErrLogNotFound)

	// A hole in the middle keeps the bounds.
	require.NoError(t, g.DeleteRange(7, 8))
	requireBounds(t, g, 5, 12)

	// Prefix deletion across the hole finds the next real entry.
	require.NoError(t, g.DeleteRange(5, 7))
	requireBounds(t, g, 9, 12)

	// Deleting outside the stored range changes nothing.
	require.NoError(t, g.DeleteRange(100, 200))
	require.NoError(t, g.DeleteRange(5, 4))
	requireBounds(t, g, 9, 12)

	// Delete everything.
	require.NoError(t, g.DeleteRange(0, 1<<64-1))
	requireBounds(t, g, 0, 0)

	// Index 0 is refused.
	require.Error(t, g.StoreLog(mkLog(0, 1)))
	requireBounds(t, g, 0, 0)
	require.NoError(t, g.StoreLogs(nil))
}

func TestStableStoreContract(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	g := db.Group(1)

	// Missing keys must report exactly "not found": raft compares the text.
	_, err := g.Get([]byte("CurrentTerm"))
	require.ErrorIs(t, err, ErrKeyNotFound)
	require.Equal(t, "not found", err.Error())
	n, err := g.GetUint64([]byte("CurrentTerm"))
	require.Equal(t, "not found", err.Error())
	require.Zero(t, n)

	require.NoError(t, g.Set([]byte("LastVoteCand"), []byte("node-2")))
	v, err := g.Get([]byte("LastVoteCand"))
	require.NoError(t, err)
	require.Equal(t, []byte("node-2"), v)
	require.NoError(t, g.Set([]byte("LastVoteCand"), []byte("node-3")))
	v, err = g.Get([]byte("LastVoteCand"))
	require.NoError(t, err)
	require.Equal(t, []byte("node-3"), v)

	require.NoError(t, g.Set([]byte("empty"), nil))
	v, err = g.Get([]byte("empty"))
	require.NoError(t, err)
	require.NotNil(t, v)
	require.Empty(t, v)

	for _, want := range []uint64{0, 1, 255, 1 << 32, 1<<64 - 1} {
		require.NoError(t, g.SetUint64([]byte("CurrentTerm"), want))
		got, err := g.GetUint64([]byte("CurrentTerm"))
		require.NoError(t, err)
		require.Equal(t, want, got)
	}

	_, err = g.GetUint64([]byte("LastVoteCand"))
	require.Error(t, err, "a non-8-byte value is not a uint64")
	require.Error(t, g.Set(make([]byte, maxStableKeyBytes+1), nil))

	// Stable keys do not show up as log entries.
	requireBounds(t, g, 0, 0)
}

func TestShardsAreIsolated(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	const shards = 16
	// Include the extremes of the shard space.
	ids := []uint32{0, 1<<32 - 1}
	for i := uint32(1); i < shards-1; i++ {
		ids = append(ids, i*7)
	}
	for n, id := range ids {
		g := db.Group(id)
		lo := uint64(n + 1)
		require.NoError(t, g.StoreLogs(mkLogs(lo, lo+uint64(n)*3, uint64(id)+1)))
		require.NoError(t, g.SetUint64([]byte("CurrentTerm"), uint64(id)+1))
	}
	check := func(db *DB) {
		for n, id := range ids {
			g := db.Group(id)
			lo := uint64(n + 1)
			requireBounds(t, g, lo, lo+uint64(n)*3)
			var l raft.Log
			for i := lo; i <= lo+uint64(n)*3; i++ {
				require.NoError(t, g.GetLog(i, &l))
				require.Equal(t, uint64(id)+1, l.Term, "shard %d index %d", id, i)
			}
			require.ErrorIs(t, g.GetLog(lo-1, &l), raft.ErrLogNotFound)
			term, err := g.GetUint64([]byte("CurrentTerm"))
			require.NoError(t, err)
			require.Equal(t, uint64(id)+1, term)
		}
		got, err := db.Groups()
		require.NoError(t, err)
		want := append([]uint32(nil), ids...)
		slices.Sort(want)
		require.Equal(t, want, got)
	}
	check(db)

	// Deleting all of one shard leaves its neighbours alone.
	require.NoError(t, db.Group(7).DeleteRange(0, 1<<64-1))
	requireBounds(t, db.Group(7), 0, 0)
	requireBounds(t, db.Group(0), 1, 1)
	requireBounds(t, db.Group(14), 4, 4+3*3)
	require.NoError(t, db.Group(7).StoreLogs(mkLogs(3, 3+2*3, 8)))

	// Everything survives a reopen, bounds included.
	require.NoError(t, db.Close())
	db = openTest(t, dir)
	defer db.Close()
	check(db)
}

func TestClosedDB(t *testing.T) {
	db := openTest(t, t.TempDir())
	g := db.Group(1)
	require.NoError(t, g.StoreLog(mkLog(1, 1)))
	require.NoError(t, db.Close())
	require.NoError(t, db.Close())
	var l raft.Log
	require.ErrorIs(t, g.GetLog(1, &l), ErrClosed)
	require.ErrorIs(t, g.StoreLog(mkLog(2, 1)), ErrClosed)
	require.ErrorIs(t, g.DeleteRange(1, 1), ErrClosed)
	require.ErrorIs(t, g.SetUint64([]byte("k"), 1), ErrClosed)
	_, err := g.Get([]byte("k"))
	require.ErrorIs(t, err, ErrClosed)
	_, err = db.Group(9).LastIndex()
	require.ErrorIs(t, err, ErrClosed)
	require.Nil(t, db.Metrics())
}

func TestMetrics(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	require.NoError(t, db.Group(1).StoreLogs(mkLogs(1, 100, 1)))
	m := db.Metrics()
	require.NotNil(t, m)
	require.Positive(t, m.WAL.BytesIn)
}

// rawSet overwrites a stored value behind the store's back, as disk damage
// would.
func rawSet(t *testing.T, db *DB, key, value []byte) {
	t.Helper()
	require.NoError(t, db.pdb.Set(key, value, pebble.Sync))
}

func rawGet(t *testing.T, db *DB, key []byte) []byte {
	t.Helper()
	v, closer, err := db.pdb.Get(key)
	require.NoError(t, err)
	defer closer.Close()
	return append([]byte(nil), v...)
}

// A node that may still be downgraded writes version 1, which older builds
// read; without the option the same log goes on in version 2.
func TestLegacyCodecWritesVersion1(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir, Options{Logger: quietLogger(), LegacyCodec: true})
	require.NoError(t, err)
	require.NoError(t, db.Group(3).StoreLogs(mkLogs(1, 4, 1)))
	for i := uint64(1); i <= 4; i++ {
		require.Equal(t, logCodecV1, rawGet(t, db, logKey(3, i))[0], "entry %d", i)
	}
	require.NoError(t, db.Close())

	db = openTest(t, dir)
	defer db.Close()
	g := db.Group(3)
	requireBounds(t, g, 1, 4)
	require.NoError(t, g.StoreLogs(mkLogs(5, 6, 2)))
	require.Equal(t, logCodecV2, rawGet(t, db, logKey(3, 5))[0])
	var l raft.Log
	for _, w := range append(mkLogs(1, 4, 1), mkLogs(5, 6, 2)...) {
		require.NoError(t, g.GetLog(w.Index, &l))
		requireLogEqual(t, w, &l)
	}
}

func TestCorruptEntryIsNeverReturned(t *testing.T) {
	db := openTest(t, t.TempDir())
	defer db.Close()
	g := db.Group(3)
	require.NoError(t, g.StoreLogs(mkLogs(40, 45, 1)))

	v := rawGet(t, db, logKey(3, 42))
	v[len(v)/2] ^= 0x40
	rawSet(t, db, logKey(3, 42), v)

	l := raft.Log{Index: 99, Data: []byte("stale")}
	err := g.GetLog(42, &l)
	require.ErrorIs(t, err, ErrCorruptLog)
	var ce *CorruptLogError
	require.True(t, errors.As(err, &ce))
	require.Equal(t, uint32(3), ce.Shard)
	require.Equal(t, uint64(42), ce.Index)
	require.Equal(t, "raftstore: corrupt log entry shard=3 index=42: checksum mismatch", err.Error())
	require.Equal(t, raft.Log{}, l, "a corrupt entry must not leak into the caller's log")

	// A valid entry stored under the wrong key is corrupt too: another index
	// of the same shard, or the same index of another shard.
	rawSet(t, db, logKey(3, 43), rawGet(t, db, logKey(3, 44)))
	err = g.GetLog(43, &l)
	require.ErrorIs(t, err, ErrCorruptLog)
	require.ErrorIs(t, err, errMisplaced)
	require.Equal(t, "raftstore: corrupt log entry shard=3 index=43: malformed encoding: stored under another key: "+
		"value has index 44", err.Error())
	require.NoError(t, db.Group(4).StoreLogs(mkLogs(45, 45, 1)))
	rawSet(t, db, logKey(3, 45), rawGet(t, db, logKey(4, 45)))
	err = g.GetLog(45, &l)
	require.ErrorIs(t, err, ErrCorruptLog)
	require.ErrorContains(t, err, "shard=3 index=45: malformed encoding: stored under another key: value has shard 4")
	require.Equal(t, raft.Log{}, l)

	// Neighbours are unaffected.
	require.NoError(t, g.GetLog(41, &l))
	require.NoError(t, g.GetLog(44, &l))
	require.NoError(t, db.Group(4).GetLog(45, &l))
}

// TestVersion1EntriesStillRead: a log written by an older build (codec
// version 1) opens and reads as before, with new entries appended in version
// 2 after it.
func TestVersion1EntriesStillRead(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	for i := uint64(1); i <= 5; i++ {
		rawSet(t, db, logKey(7, i), appendLogV1(nil, mkLog(i, 1)))
	}
	require.NoError(t, db.Close())

	want := append(mkLogs(1, 5, 1), mkLogs(6, 8, 2)...)
	check := func(db *DB, last uint64) {
		t.Helper()
		g := db.Group(7)
		requireBounds(t, g, 1, last)
		var l raft.Log
		for _, w := range want[:last] {
			require.NoError(t, g.GetLog(w.Index, &l))
			requireLogEqual(t, w, &l)
		}
	}

	// Version-1 entries are the tail that Open verifies, and they pass.
	db = openTest(t, dir)
	check(db, 5)
	require.NoError(t, db.Group(7).StoreLogs(want[5:]))
	require.Equal(t, logCodecV1, rawGet(t, db, logKey(7, 5))[0])
	require.Equal(t, logCodecV2, rawGet(t, db, logKey(7, 6))[0], "new writes use version 2")
	require.NoError(t, db.Close())

	db = openTest(t, dir)
	defer db.Close()
	check(db, 8)
}

// TestOpenRefusesCorruptTail: damaged entries at the end of a log were
// acknowledged once, so Open refuses to start over them unless told to
// repair, and then deletes exactly the damaged tail.
func TestOpenRefusesCorruptTail(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	require.NoError(t, db.Group(1).StoreLogs(mkLogs(1, 20, 1)))
	require.NoError(t, db.Group(2).StoreLogs(mkLogs(1, 20, 1)))
	require.NoError(t, db.Group(3).StoreLogs(mkLogs(1, 3, 1)))

	// Shard 1: the last three entries are damaged, and one in the middle.
	for _, i := range []uint64{10, 18, 19, 20} {
		v := rawGet(t, db, logKey(1, i))
		v[0] ^= 0xff
		rawSet(t, db, logKey(1, i), v)
	}
	// Shard 3: everything is damaged.
	for i := uint64(1); i <= 3; i++ {
		rawSet(t, db, logKey(3, i), []byte("garbage"))
	}
	require.NoError(t, db.Close())

	// Refused, naming the shard and the entries, and nothing is deleted.
	_, err := Open(dir, Options{Logger: quietLogger()})
	require.ErrorIs(t, err, ErrCorruptLog)
	require.ErrorContains(t, err, "shard 1: the last 3 log entries (18-20) fail verification")
	require.ErrorContains(t, err, "--repair-log-tail")

	db, err = Open(dir, Options{Logger: quietLogger(), RepairTail: true})
	require.NoError(t, err)
	defer db.Close()
	requireBounds(t, db.Group(1), 1, 17)
	var l raft.Log
	require.ErrorIs(t, db.Group(1).GetLog(18, &l), raft.ErrLogNotFound)
	require.NoError(t, db.Group(1).GetLog(17, &l))
	requireLogEqual(t, mkLog(17, 1), &l)
	// Damage below a valid entry is not the tail: it stays and is reported.
	require.ErrorIs(t, db.Group(1).GetLog(10, &l), ErrCorruptLog)
	// Untouched shards keep everything.
	requireBounds(t, db.Group(2), 1, 20)
	requireBounds(t, db.Group(3), 0, 0)
}

// TestOpenRefusesMisplacedTail: an intact version-2 entry at the tail that
// belongs to another key is damage like any other, refused unless repairing.
func TestOpenRefusesMisplacedTail(t *testing.T) {
	cases := []struct {
		name string
		from []byte // the key whose value is copied to shard 1 index 5
	}{
		{"another shard", logKey(2, 5)},
		{"another index", logKey(1, 4)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			db := openTest(t, dir)
			require.NoError(t, db.Group(1).StoreLogs(mkLogs(1, 5, 1)))
			require.NoError(t, db.Group(2).StoreLogs(mkLogs(1, 5, 1)))
			rawSet(t, db, logKey(1, 5), rawGet(t, db, tc.from))
			require.NoError(t, db.Close())

			_, err := Open(dir, Options{Logger: quietLogger()})
			require.ErrorIs(t, err, ErrCorruptLog)
			require.ErrorContains(t, err, "shard 1: the last 1 log entries (5-5) fail verification")
			require.ErrorContains(t, err, "stored under another key")

			db, err = Open(dir, Options{Logger: quietLogger(), RepairTail: true})
			require.NoError(t, err)
			defer db.Close()
			requireBounds(t, db.Group(1), 1, 4)
			requireBounds(t, db.Group(2), 1, 5)
			var l raft.Log
			require.NoError(t, db.Group(2).GetLog(5, &l))
			requireLogEqual(t, mkLog(5, 1), &l)
		})
	}
}

// TestOpenNeverDeletesUnknownVersion: an intact entry in a codec version this
// build does not know (a newer tallyd's) is refused even with repair on.
func TestOpenNeverDeletesUnknownVersion(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, dir)
	require.NoError(t, db.Group(1).StoreLogs(mkLogs(1, 5, 1)))
	v := rawGet(t, db, logKey(1, 5))
	v[0] = logCodecVersion + 1
	binary.BigEndian.PutUint32(v[len(v)-checksumBytes:], crc32.Checksum(v[:len(v)-checksumBytes], castagnoli))
	rawSet(t, db, logKey(1, 5), v)
	require.NoError(t, db.Close())

	_, err := Open(dir, Options{Logger: quietLogger(), RepairTail: true})
	require.ErrorIs(t, err, ErrCorruptLog)
	require.ErrorContains(t, err, "newer tallyd")
	// The entry is still there, byte for byte.
	pdb, err := pebble.Open(dir, &pebble.Options{})
	require.NoError(t, err)
	got, closer, err := pdb.Get(logKey(1, 5))
	require.NoError(t, err)
	require.Equal(t, v, got)
	require.NoError(t, closer.Close())
	require.NoError(t, pdb.Close())
}
