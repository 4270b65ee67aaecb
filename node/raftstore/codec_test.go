package raftstore

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"math"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// appendLogV1 writes what builds before version 2 wrote.
func appendLogV1(dst []byte, l *raft.Log) []byte { return appendLogVersion(dst, logCodecV1, 0, l) }

// Version 1 is written for builds before version 2 to read (LegacyCodec), so
// its bytes are pinned to what those builds wrote: the golden value is
// 2a671b3's appendLog of this entry.
func TestLogCodecVersion1IsFrozen(t *testing.T) {
	l := raft.Log{Index: 300, Term: 7, Type: raft.LogCommand, Data: []byte("tally"), Extensions: []byte{1, 2},
		AppendedAt: time.Unix(1700000000, 5)}
	require.Equal(t, "01ac0207000574616c6c790201028a80d0e2c6bfce972fdfc938ef", hex.EncodeToString(appendLogV1(nil, &l)))
}

// withChecksum replaces the checksum of v with a valid one, as an intact
// value would have.
func withChecksum(v []byte) []byte {
	v = append([]byte(nil), v...)
	binary.BigEndian.PutUint32(v[len(v)-checksumBytes:], crc32.Checksum(v[:len(v)-checksumBytes], castagnoli))
	return v
}

func TestLogCodecRoundTrip(t *testing.T) {
	cases := []struct {
		name  string
		shard uint32
		log   raft.Log
	}{
		{"empty", 0, raft.Log{Index: 1}},
		{"command", 3, raft.Log{Index: 42, Term: 7, Type: raft.LogCommand, Data: []byte("hello")}},
		{"max ints", math.MaxUint32, raft.Log{Index: 1<<64 - 1, Term: 1<<64 - 1, Type: raft.LogConfiguration, Data: []byte{0}, Extensions: []byte{1, 2}}},
		{"appended", 200, raft.Log{Index: 3, Term: 1, Type: raft.LogNoop, AppendedAt: time.Unix(1700000000, 123456789)}},
		{"pre-epoch", 1, raft.Log{Index: 3, Term: 1, AppendedAt: time.Unix(-5, 7)}},
		{"big data", 1 << 20, raft.Log{Index: 9, Term: 2, Data: make([]byte, 1<<20)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			enc := appendLog(nil, tc.shard, &tc.log)
			require.Equal(t, logCodecV2, enc[0], "new writes use version 2")
			require.LessOrEqual(t, len(enc), encodedLogBytes(&tc.log))
			var got raft.Log
			require.NoError(t, decodeLog(enc, tc.shard, tc.log.Index, &got))
			requireLogEqual(t, &tc.log, &got)

			// What an older build wrote for the same entry reads the same.
			got = raft.Log{}
			require.NoError(t, decodeLog(appendLogV1(nil, &tc.log), tc.shard, tc.log.Index, &got))
			requireLogEqual(t, &tc.log, &got)
		})
	}
}

// TestDecodeLogChecksKey: a value is only data under the key it was written
// for. Version 2 names both shard and index; version 1 only the index.
func TestDecodeLogChecksKey(t *testing.T) {
	const shard, index = 3, 42
	l := raft.Log{Index: index, Term: 7, Type: raft.LogCommand, Data: []byte("payload"), AppendedAt: time.Unix(1, 2)}
	v1 := appendLogV1(nil, &l)
	v2 := appendLog(nil, shard, &l)
	flipped := func(v []byte, i int) []byte {
		v = append([]byte(nil), v...)
		v[i] ^= 0x10
		return v
	}
	unknown := append([]byte(nil), v2...)
	unknown[0] = logCodecVersion + 1
	// An intact value whose shard field (v2[1], one byte for shard 3) does
	// not fit a uint32, which no build writes.
	hugeShard := append([]byte{logCodecV2}, binary.AppendUvarint(nil, math.MaxUint32+1)...)
	hugeShard = withChecksum(append(hugeShard, v2[2:]...))

	cases := []struct {
		name         string
		value        []byte
		shard        uint32
		index        uint64
		wantErr      error  // nil: decodes to l
		wantContains string // in the error text
	}{
		{name: "v1 read", value: v1, shard: shard, index: index},
		// Version 1 cannot tell: the defect version 2 fixes.
		{name: "v1 under another shard is not detected", value: v1, shard: shard + 1, index: index},
		{name: "v1 under another index", value: v1, shard: shard, index: index + 1, wantErr: errMisplaced, wantContains: "value has index 42"},
		{name: "v1 bit flip", value: flipped(v1, len(v1)/2), shard: shard, index: index, wantErr: errChecksum},
		{name: "v2 round trip", value: v2, shard: shard, index: index},
		{name: "v2 under another shard", value: v2, shard: shard + 1, index: index, wantErr: errMisplaced, wantContains: "value has shard 3"},
		{name: "v2 under shard 0", value: v2, shard: 0, index: index, wantErr: errMisplaced, wantContains: "value has shard 3"},
		{name: "v2 under another index", value: v2, shard: shard, index: index - 1, wantErr: errMisplaced, wantContains: "value has index 42"},
		{name: "v2 under another shard and index", value: v2, shard: shard + 1, index: index + 1, wantErr: errMisplaced},
		{name: "v2 bit flip in payload", value: flipped(v2, len(v2)/2), shard: shard, index: index, wantErr: errChecksum},
		{name: "v2 bit flip in shard", value: flipped(v2, 1), shard: shard, index: index, wantErr: errChecksum},
		{name: "v2 bit flip in checksum", value: flipped(v2, len(v2)-1), shard: shard, index: index, wantErr: errChecksum},
		{name: "v2 shard beyond uint32", value: hugeShard, shard: shard, index: index, wantErr: errMalformed, wantContains: "invalid shard"},
		{name: "intact unknown version", value: withChecksum(unknown), shard: shard, index: index, wantErr: errUnknownVersion},
		// Damage to the version byte is damage, not an unknown version.
		{name: "version byte flip", value: unknown, shard: shard, index: index, wantErr: errChecksum},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sentinel := raft.Log{Index: 99, Data: []byte("untouched")}
			got := sentinel
			err := decodeLog(tc.value, tc.shard, tc.index, &got)
			if tc.wantErr == nil {
				require.NoError(t, err)
				requireLogEqual(t, &l, &got)
				return
			}
			require.ErrorIs(t, err, tc.wantErr)
			require.ErrorContains(t, err, tc.wantContains)
			require.Equal(t, sentinel, got, "a failed decode must not write the log")
			// Only an intact entry of an unknown version is spared by
			// repairTail; everything else here is damage.
			require.Equal(t, tc.wantErr == errUnknownVersion, errors.Is(err, errUnknownVersion))
		})
	}
}

func TestLogCodecDetectsEveryBitFlip(t *testing.T) {
	const shard = 7
	l := raft.Log{Index: 5, Term: 2, Type: raft.LogCommand, Data: []byte("payload"), Extensions: []byte("x"), AppendedAt: time.Unix(1, 2)}
	cases := []struct {
		name string
		enc  []byte
	}{
		{"v1", appendLogV1(nil, &l)},
		{"v2", appendLog(nil, shard, &l)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			enc := tc.enc
			for i := range enc {
				for bit := 0; bit < 8; bit++ {
					bad := append([]byte(nil), enc...)
					bad[i] ^= 1 << bit
					var got raft.Log
					err := decodeLog(bad, shard, l.Index, &got)
					require.ErrorIs(t, err, errChecksum, "flip byte %d bit %d", i, bit)
				}
			}
			for n := 0; n < len(enc); n++ {
				var got raft.Log
				require.Error(t, decodeLog(enc[:n], shard, l.Index, &got), "truncated to %d bytes", n)
			}
		})
	}
}

// TestAppendLogDoesNotAllocate guards the append path: StoreLogs encodes
// every entry into one reused buffer.
func TestAppendLogDoesNotAllocate(t *testing.T) {
	l := &raft.Log{Index: 1 << 40, Term: 9, Type: raft.LogCommand, Data: make([]byte, 256), AppendedAt: time.Unix(1700000000, 0)}
	buf := make([]byte, 0, encodedLogBytes(l))
	allocs := testing.AllocsPerRun(100, func() {
		buf = appendLog(buf[:0], math.MaxUint32, l)
	})
	require.Zero(t, allocs)
}

// FuzzDecodeLog checks that decoding arbitrary bytes never panics and that
// whatever decodes re-encodes to the same bytes in its own version.
func FuzzDecodeLog(f *testing.F) {
	l := &raft.Log{Index: 1, Term: 1, Data: []byte("a")}
	f.Add(appendLog(nil, 5, l), uint32(5), uint64(1))
	f.Add(appendLogV1(nil, l), uint32(5), uint64(1))
	f.Add([]byte{}, uint32(0), uint64(0))
	f.Add(make([]byte, minLogValueBytes), uint32(0), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, shard uint32, index uint64) {
		var l raft.Log
		if err := decodeLog(b, shard, index, &l); err != nil {
			return
		}
		require.Equal(t, index, l.Index)
		switch b[0] {
		case logCodecV1:
			require.Equal(t, b, appendLogV1(nil, &l))
		case logCodecV2:
			require.Equal(t, b, appendLog(nil, shard, &l))
		default:
			t.Fatalf("decoded version %d", b[0])
		}
	})
}

// FuzzLogRoundTrip checks encode then decode is the identity.
func FuzzLogRoundTrip(f *testing.F) {
	f.Add(uint32(1), uint64(1), uint64(1), uint8(0), []byte("d"), []byte(nil), int64(0))
	f.Fuzz(func(t *testing.T, shard uint32, index, term uint64, typ uint8, data, ext []byte, appendedNs int64) {
		in := raft.Log{Index: index, Term: term, Type: raft.LogType(typ), Data: data, Extensions: ext}
		if appendedNs != 0 {
			in.AppendedAt = time.Unix(0, appendedNs)
		}
		var out raft.Log
		require.NoError(t, decodeLog(appendLog(nil, shard, &in), shard, index, &out))
		requireLogEqual(t, &in, &out)
	})
}

// requireLogEqual compares logs treating nil and empty byte slices as equal
// and times by instant.
func requireLogEqual(t testing.TB, want, got *raft.Log) {
	t.Helper()
	require.Equal(t, want.Index, got.Index)
	require.Equal(t, want.Term, got.Term)
	require.Equal(t, want.Type, got.Type)
	require.Equal(t, len(want.Data), len(got.Data))
	if len(want.Data) > 0 {
		require.Equal(t, want.Data, got.Data)
	}
	require.Equal(t, len(want.Extensions), len(got.Extensions))
	if len(want.Extensions) > 0 {
		require.Equal(t, want.Extensions, got.Extensions)
	}
	require.True(t, want.AppendedAt.Equal(got.AppendedAt), "appended %v != %v", want.AppendedAt, got.AppendedAt)
}

// An intact value whose numbers are padded (0x85 0x00 for 5) is not an
// encoding this codec writes: it is refused as malformed, so every value
// that decodes re-encodes to the same bytes.
func TestDecodeLogRefusesPaddedVarints(t *testing.T) {
	l := raft.Log{Index: 5, Term: 3, Type: raft.LogCommand, Data: []byte("x"), AppendedAt: time.Unix(0, 0)}
	good := appendLog(nil, 2, &l)
	var out raft.Log
	require.NoError(t, decodeLog(good, 2, 5, &out))
	for _, tc := range []struct {
		name string
		at   int // offset of the one-byte number to pad
	}{
		{"shard", 1},
		{"index", 2},
		{"term", 3},
		{"appended (signed)", len(good) - checksumBytes - 1},
	} {
		padded := append([]byte(nil), good[:tc.at]...)
		padded = append(padded, good[tc.at]|0x80, 0x00)
		padded = append(padded, good[tc.at+1:]...)
		err := decodeLog(withChecksum(padded), 2, 5, &out)
		require.ErrorIs(t, err, errMalformed, tc.name)
	}
}
