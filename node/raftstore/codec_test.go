package raftstore

import (
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

func TestLogCodecRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		log  raft.Log
	}{
		{"empty", raft.Log{Index: 1}},
		{"command", raft.Log{Index: 42, Term: 7, Type: raft.LogCommand, Data: []byte("hello")}},
		{"max ints", raft.Log{Index: 1<<64 - 1, Term: 1<<64 - 1, Type: raft.LogConfiguration, Data: []byte{0}, Extensions: []byte{1, 2}}},
		{"appended", raft.Log{Index: 3, Term: 1, Type: raft.LogNoop, AppendedAt: time.Unix(1700000000, 123456789)}},
		{"pre-epoch", raft.Log{Index: 3, Term: 1, AppendedAt: time.Unix(-5, 7)}},
		{"big data", raft.Log{Index: 9, Term: 2, Data: make([]byte, 1<<20)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			enc := appendLog(nil, &tc.log)
			require.LessOrEqual(t, len(enc), encodedLogBytes(&tc.log))
			var got raft.Log
			require.NoError(t, decodeLog(enc, &got))
			requireLogEqual(t, &tc.log, &got)
		})
	}
}

func TestLogCodecDetectsEveryBitFlip(t *testing.T) {
	l := raft.Log{Index: 5, Term: 2, Type: raft.LogCommand, Data: []byte("payload"), Extensions: []byte("x"), AppendedAt: time.Unix(1, 2)}
	enc := appendLog(nil, &l)
	for i := range enc {
		for bit := 0; bit < 8; bit++ {
			bad := append([]byte(nil), enc...)
			bad[i] ^= 1 << bit
			var got raft.Log
			err := decodeLog(bad, &got)
			require.Error(t, err, "flip byte %d bit %d", i, bit)
			require.True(t, errors.Is(err, errChecksum) || errors.Is(err, errMalformed))
		}
	}
	for n := 0; n < len(enc); n++ {
		var got raft.Log
		require.Error(t, decodeLog(enc[:n], &got), "truncated to %d bytes", n)
	}
}

// FuzzDecodeLog checks that decoding arbitrary bytes never panics and that
// whatever decodes re-encodes to the same bytes.
func FuzzDecodeLog(f *testing.F) {
	f.Add(appendLog(nil, &raft.Log{Index: 1, Term: 1, Data: []byte("a")}))
	f.Add([]byte{})
	f.Add(make([]byte, minLogValueBytes))
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if err := decodeLog(b, &l); err != nil {
			return
		}
		require.Equal(t, b, appendLog(nil, &l))
	})
}

// FuzzLogRoundTrip checks encode then decode is the identity.
func FuzzLogRoundTrip(f *testing.F) {
	f.Add(uint64(1), uint64(1), uint8(0), []byte("d"), []byte(nil), int64(0))
	f.Fuzz(func(t *testing.T, index, term uint64, typ uint8, data, ext []byte, appendedNs int64) {
		in := raft.Log{Index: index, Term: term, Type: raft.LogType(typ), Data: data, Extensions: ext}
		if appendedNs != 0 {
			in.AppendedAt = time.Unix(0, appendedNs)
		}
		var out raft.Log
		require.NoError(t, decodeLog(appendLog(nil, &in), &out))
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
