package ledger

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func sampleOp() Op {
	return Op{Kind: OpHold, Program: "shop", Member: "alice", Asset: "CNY", IdempotencyKey: "order-42",
		AmountMinor: 1230, Scale: 2, HoldTTLMs: 60_000, Memo: "checkout ☕"}
}

func sampleAccount() Account {
	return Account{Key: AccountKey{"shop", "alice", "CNY"}, State: StateLost, PostedMinor: math.MaxInt64,
		HeldMinor: 7, MaxBalanceMinor: 1 << 40, OpenedAtMs: t0, UpdatedAtMs: t0 + 1}
}

func sampleHold() Hold {
	return Hold{Program: "shop", Member: "alice", Key: "order-42", Asset: "CNY", AmountMinor: 1230,
		State: HoldCaptured, CreatedAtMs: t0, ExpiresAtMs: t0 + 60_000}
}

func sampleResult() Result {
	return Result{Code: CodeOK, Seq: 1 << 50, TimeMs: t0, Account: sampleAccount(), Hold: sampleHold(),
		CapturedMinor: 1000, ReleasedMinor: 230}
}

func sampleCommand() Command {
	op := sampleOp()
	other := Op{Kind: OpCaptureHold, Program: "shop", Member: "alice", IdempotencyKey: "cap", HoldKey: "order-42",
		AmountMinor: -1, MaxBalanceMinor: math.MinInt64}
	return Command{TimeMs: -5, Requests: []Request{
		{Linked: true, Ops: []Op{op, other}},
		{Ops: []Op{{Kind: OpDefineAsset, Program: "p", Asset: "X", Scale: 18, IdempotencyKey: "d"}}},
	}}
}

// codecCase is one value through its codec.
type codecCase struct {
	name   string
	encode func() []byte
	decode func([]byte) (any, error)
	want   any
}

func codecCases() []codecCase {
	op, req, cmd := sampleOp(), sampleCommand().Requests[0], sampleCommand()
	res := sampleResult()
	failure := Result{Code: CodeInsufficientFunds, Message: "not enough", Seq: 3, TimeMs: 9}
	custom := Result{Code: "SOMETHING_NEW", Message: "from a newer node"}
	rec := Record{Seq: 9, Op: op, Fingerprint: Fingerprint(op), Result: res}
	acct, hold, asset := sampleAccount(), sampleHold(), Asset{Program: "shop", Code: "CNY", Scale: 2}
	wrap := func(f func([]byte) (any, error)) func([]byte) (any, error) { return f }
	return []codecCase{
		{"op", func() []byte { return AppendOp(nil, op) }, wrap(func(b []byte) (any, error) { return DecodeOp(b) }), op},
		{"zero op", func() []byte { return AppendOp(nil, Op{}) }, wrap(func(b []byte) (any, error) { return DecodeOp(b) }), Op{}},
		{"request", func() []byte { return AppendRequest(nil, req) }, wrap(func(b []byte) (any, error) { return DecodeRequest(b) }), req},
		{"command", func() []byte { return AppendCommand(nil, cmd) }, wrap(func(b []byte) (any, error) { return DecodeCommand(b) }), cmd},
		{"tick", func() []byte { return AppendCommand(nil, Command{TimeMs: t0}) }, wrap(func(b []byte) (any, error) { return DecodeCommand(b) }), Command{TimeMs: t0}},
		{"result", func() []byte { return AppendResult(nil, res) }, wrap(func(b []byte) (any, error) { return DecodeResult(b) }), res},
		{"failure", func() []byte { return AppendResult(nil, failure) }, wrap(func(b []byte) (any, error) { return DecodeResult(b) }), failure},
		{"unknown code", func() []byte { return AppendResult(nil, custom) }, wrap(func(b []byte) (any, error) { return DecodeResult(b) }), custom},
		{"record", func() []byte { return AppendRecord(nil, rec) }, wrap(func(b []byte) (any, error) { return DecodeRecord(b) }), rec},
		{"account", func() []byte { return AppendAccount(nil, acct) }, wrap(func(b []byte) (any, error) { return DecodeAccount(b) }), acct},
		{"hold", func() []byte { return AppendHold(nil, hold) }, wrap(func(b []byte) (any, error) { return DecodeHold(b) }), hold},
		{"asset", func() []byte { return AppendAsset(nil, asset) }, wrap(func(b []byte) (any, error) { return DecodeAsset(b) }), asset},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	for _, tc := range codecCases() {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.encode()
			require.Equal(t, codecVersion, b[0])
			got, err := tc.decode(b)
			require.NoError(t, err)
			require.Equal(t, tc.want, got)

			// Append appends.
			prefixed := append([]byte("xyz"), b...)
			require.Equal(t, prefixed[3:], b)

			// Every strict prefix is truncated, and trailing bytes are refused.
			for n := 0; n < len(b); n++ {
				_, err := tc.decode(b[:n])
				require.ErrorIs(t, err, ErrCorrupt, "prefix of %d bytes", n)
			}
			_, err = tc.decode(append(bytes.Clone(b), 0))
			require.ErrorIs(t, err, ErrCorrupt, "trailing byte")

			// Another version is refused.
			other := bytes.Clone(b)
			other[0] = codecVersion + 1
			_, err = tc.decode(other)
			require.ErrorIs(t, err, ErrCorrupt)
		})
	}
}

func TestCodecDoesNotEncodeReplayed(t *testing.T) {
	r := sampleResult()
	plain := AppendResult(nil, r)
	r.Replayed = true
	require.Equal(t, plain, AppendResult(nil, r))
	got, err := DecodeResult(plain)
	require.NoError(t, err)
	require.False(t, got.Replayed)

	rec := Record{Seq: 1, Op: sampleOp(), Result: r}
	got2, err := DecodeRecord(AppendRecord(nil, rec))
	require.NoError(t, err)
	require.False(t, got2.Result.Replayed)
}

func TestCodecIsCompact(t *testing.T) {
	// A typical credit: a few bytes of framing over its strings.
	op := Op{Kind: OpCredit, Program: "shop", Member: "m-000123", Asset: "POINTS", IdempotencyKey: "c-0000000001", AmountMinor: 100}
	strs := len(op.Program) + len(op.Member) + len(op.Asset) + len(op.IdempotencyKey)
	require.LessOrEqual(t, len(AppendOp(nil, op)), strs+13)
	// A plain OK result without snapshots.
	require.Len(t, AppendResult(nil, Result{Code: CodeOK, Seq: 1, TimeMs: 1}), 8)
}

// TestEntryBytesPerOp: an entry of the load tester's batched case (1,000
// credits, with its program, member and key names) takes under 100 bytes
// per operation; docs/ARCHITECTURE.md and node/acks.go size AppendEntries
// requests from this (go test ./ledger -run TestEntryBytesPerOp -v).
func TestEntryBytesPerOp(t *testing.T) {
	var req Request
	for i := range 1000 {
		req.Ops = append(req.Ops, Op{Kind: OpCredit, Program: "bench-20261124-155941-uniform", Member: fmt.Sprintf("m%d", 50000+i),
			Asset: "POINTS", AmountMinor: 37, IdempotencyKey: fmt.Sprintf("20261124-155941-uniform-%d-%d", 17, 100000+i)})
	}
	n := len(AppendCommand(nil, Command{TimeMs: 1764000000000, Requests: []Request{req}}))
	t.Logf("%d bytes for 1,000 operations: %.1f per operation", n, float64(n)/1000)
	require.Less(t, n, 100*1000)
}

func TestCodecLimits(t *testing.T) {
	t.Run("op count", func(t *testing.T) {
		b := []byte{codecVersion, 0}
		b = binary.AppendUvarint(b, MaxBatchOps+1)
		b = append(b, make([]byte, (MaxBatchOps+1)*minOpBodyLen)...)
		_, err := DecodeRequest(b)
		require.ErrorIs(t, err, ErrCorrupt)
		require.Contains(t, err.Error(), "limit")
	})
	t.Run("request count", func(t *testing.T) {
		b := []byte{codecVersion, 0}
		b = binary.AppendUvarint(b, maxCommandRequests+1)
		_, err := DecodeCommand(b)
		require.ErrorIs(t, err, ErrCorrupt)
	})
	t.Run("count beyond input", func(t *testing.T) {
		b := []byte{codecVersion, 0}
		b = binary.AppendUvarint(b, 1000)
		_, err := DecodeCommand(append(b, make([]byte, 100)...))
		require.ErrorIs(t, err, ErrCorrupt)
		require.Contains(t, err.Error(), "remaining")
	})
	t.Run("string length", func(t *testing.T) {
		long := Asset{Program: strings.Repeat("p", maxDecodeStringLen+1), Code: "X"}
		_, err := DecodeAsset(AppendAsset(nil, long))
		require.ErrorIs(t, err, ErrCorrupt)
		ok := Asset{Program: strings.Repeat("p", maxDecodeStringLen), Code: "X"}
		got, err := DecodeAsset(AppendAsset(nil, ok))
		require.NoError(t, err)
		require.Equal(t, ok, got)
	})
	t.Run("non-canonical", func(t *testing.T) {
		for name, b := range map[string][]byte{
			"empty":             {},
			"over-long varint":  {codecVersion, 0x80, 0x00, 0}, // tick with TimeMs 0 spelled in 2 bytes
			"varint overflow":   {codecVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0},
			"unknown req flags": {codecVersion, 0, 1, 2, 0},
			"unknown code byte": append([]byte{codecVersion}, byte(len(codeTable))),
		} {
			var err error
			if strings.HasPrefix(name, "unknown code") {
				_, err = DecodeResult(b)
			} else {
				_, err = DecodeCommand(b)
			}
			require.ErrorIs(t, err, ErrCorrupt, name)
		}
		// A known code spelled out as a string.
		b := []byte{codecVersion, 0, 2, 'O', 'K', 0, 0, 0, 0, 0, 0}
		_, err := DecodeResult(b)
		require.ErrorIs(t, err, ErrCorrupt)
		// Flags claiming a zero account.
		zero := AppendResult(nil, Result{Code: CodeOK})
		zero[len(zero)-3] = resultHasAccount
		zero = append(zero[:len(zero)-2], AppendAccount(nil, Account{})[1:]...)
		zero = append(zero, 0, 0)
		_, err = DecodeResult(zero)
		require.ErrorIs(t, err, ErrCorrupt)
	})
}

func TestCodeTableCoversEveryCode(t *testing.T) {
	seen := map[Code]bool{}
	for i, c := range codeTable[1:] {
		require.False(t, seen[c], "duplicate %s", c)
		seen[c] = true
		require.Equal(t, byte(i+1), codeIndex(c))
	}
	for _, c := range []Code{CodeOK, CodeInvalidArgument, CodeInvalidAmount, CodeScaleMismatch, CodeOverflow,
		CodeUnknownAsset, CodeAssetExists, CodeAccountNotFound, CodeAccountExists, CodeAccountFrozen,
		CodeAccountLost, CodeAccountClosed, CodeInvalidState, CodeBalanceNotZero, CodeInsufficientFunds,
		CodeHoldNotFound, CodeHoldExpired, CodeHoldClosed, CodeLimitExceeded, CodeIdempotencyKeyReused,
		CodeLinkedFailed, CodeNotLeader, CodeUnavailable, CodeInternal, CodeWrongShard, CodePermissionDenied} {
		require.True(t, seen[c], "code %s has no byte", c)
	}
	// The table is part of the format.
	require.Equal(t, Code("OK"), codeTable[1])
	require.Equal(t, Code("INSUFFICIENT_FUNDS"), codeTable[15])
	require.Equal(t, Code("INTERNAL"), codeTable[24])
}

func TestFingerprint(t *testing.T) {
	op := sampleOp()
	fp := Fingerprint(op)
	require.Equal(t, fp, Fingerprint(op), "deterministic")
	// Pinned, computed independently from the format description: fingerprints
	// are stored in dedup records and must not change.
	require.Equal(t, "ddd37c90bb2c1707e6319fa2113fbe7b", fmt.Sprintf("%x", fp), "update only with a migration plan")
	muts := []func(*Op){
		func(o *Op) { o.Kind = OpCredit },
		func(o *Op) { o.Program = "shop2" },
		func(o *Op) { o.Member = "alicf" },
		func(o *Op) { o.Asset = "CNZ" },
		func(o *Op) { o.IdempotencyKey = "order-43" },
		func(o *Op) { o.AmountMinor++ },
		func(o *Op) { o.Scale++ },
		func(o *Op) { o.HoldKey = "x" },
		func(o *Op) { o.HoldTTLMs++ },
		func(o *Op) { o.MaxBalanceMinor = 1 },
		func(o *Op) { o.Memo = "" },
		// Moving a byte between adjacent strings changes the encoding too.
		func(o *Op) { o.Program, o.Member = "shopa", "lice" },
	}
	seen := map[[16]byte]int{fp: -1}
	for i, mut := range muts {
		o := op
		mut(&o)
		got := Fingerprint(o)
		j, dup := seen[got]
		require.False(t, dup, "mutation %d collides with %d", i, j)
		seen[got] = i
	}
}

func TestDecodeAllocations(t *testing.T) {
	b := AppendCommand(nil, benchCommand(100))
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := DecodeCommand(b); err != nil {
			t.Fatal(err)
		}
	})
	// The input copy, the requests, and one op slice per request.
	require.LessOrEqual(t, allocs, float64(2+100))
	op := sampleOp()
	require.Zero(t, testing.AllocsPerRun(100, func() { Fingerprint(op) }))
	buf := make([]byte, 0, 1<<20)
	cmd := benchCommand(100)
	require.Zero(t, testing.AllocsPerRun(100, func() { buf = AppendCommand(buf[:0], cmd) }))
}

func FuzzDecodeCommand(f *testing.F) {
	f.Add(AppendCommand(nil, sampleCommand()))
	f.Add(AppendCommand(nil, Command{}))
	f.Add(AppendCommand(nil, benchCommand(3)))
	f.Add(AppendCommand(nil, Command{TimeMs: 5, SetVersion: Version2}))
	f.Add([]byte{})
	f.Add([]byte{codecVersion, 0x80})
	f.Add([]byte{codecVersion, 0, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		// Decoding is strict, so the encoding is canonical.
		require.Equal(t, b, AppendCommand(nil, c))
	})
}

func FuzzDecodeRecord(f *testing.F) {
	op := sampleOp()
	f.Add(AppendRecord(nil, Record{Seq: 1, Op: op, Fingerprint: Fingerprint(op), Result: sampleResult()}))
	f.Add(AppendRecord(nil, Record{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRecord(b)
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		require.Equal(t, b, AppendRecord(nil, r))
	})
}

// FuzzRoundTrip builds values from fuzzed fields and requires each codec to
// give them back unchanged.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(OpHold), "shop", "alice", "CNY", "k", int64(1230), uint8(2), "", int64(60000), int64(0), "memo",
		true, int64(t0), uint64(7), "INSUFFICIENT_FUNDS", uint8(2))
	f.Add(uint8(0), "", "", "", "", int64(math.MinInt64), uint8(255), "h", int64(-1), int64(math.MaxInt64), "",
		false, int64(-1), uint64(math.MaxUint64), "", uint8(0))
	f.Fuzz(func(t *testing.T, kind uint8, program, member, asset, key string, amount int64, scale uint8,
		holdKey string, ttl, maxBal int64, memo string, linked bool, timeMs int64, seq uint64, code string, state uint8) {
		for _, s := range []string{program, member, asset, key, holdKey, memo, code} {
			if len(s) > maxDecodeStringLen {
				t.Skip()
			}
		}
		op := Op{Kind: OpKind(kind), Program: program, Member: member, Asset: asset, IdempotencyKey: key,
			AmountMinor: amount, Scale: scale, HoldKey: holdKey, HoldTTLMs: ttl, MaxBalanceMinor: maxBal, Memo: memo}
		gotOp, err := DecodeOp(AppendOp(nil, op))
		require.NoError(t, err)
		require.Equal(t, op, gotOp)
		require.Equal(t, Fingerprint(op), Fingerprint(gotOp))

		req := Request{Linked: linked, Ops: []Op{op, op}}
		cmd := Command{TimeMs: timeMs, Requests: []Request{req, {Ops: []Op{op}}}}
		gotCmd, err := DecodeCommand(AppendCommand(nil, cmd))
		require.NoError(t, err)
		require.Equal(t, cmd, gotCmd)

		acct := Account{Key: AccountKey{program, member, asset}, State: AccountState(state), PostedMinor: amount,
			HeldMinor: ttl, MaxBalanceMinor: maxBal, OpenedAtMs: timeMs, UpdatedAtMs: -timeMs}
		hold := Hold{Program: program, Member: member, Key: key, Asset: asset, AmountMinor: amount,
			State: HoldState(state), CreatedAtMs: timeMs, ExpiresAtMs: ttl}
		res := Result{Code: Code(code), Message: memo, Seq: seq, TimeMs: timeMs, Account: acct, Hold: hold,
			CapturedMinor: amount, ReleasedMinor: maxBal}
		rec := Record{Seq: seq, Op: op, Fingerprint: Fingerprint(op), Result: res}
		gotRec, err := DecodeRecord(AppendRecord(nil, rec))
		require.NoError(t, err)
		require.Equal(t, rec, gotRec)

		gotAcct, err := DecodeAccount(AppendAccount(nil, acct))
		require.NoError(t, err)
		require.Equal(t, acct, gotAcct)
		gotHold, err := DecodeHold(AppendHold(nil, hold))
		require.NoError(t, err)
		require.Equal(t, hold, gotHold)
		a := Asset{Program: program, Code: asset, Scale: scale}
		gotAsset, err := DecodeAsset(AppendAsset(nil, a))
		require.NoError(t, err)
		require.Equal(t, a, gotAsset)
	})
}

// benchCommand is a command of n single-credit requests, as a leader packs
// concurrent client calls.
func benchCommand(n int) Command {
	c := Command{TimeMs: t0, Requests: make([]Request, n)}
	for i := range c.Requests {
		c.Requests[i] = Request{Ops: []Op{{Kind: OpCredit, Program: "shop", Member: fmt.Sprintf("m-%06d", i%1000),
			Asset: "POINTS", IdempotencyKey: fmt.Sprintf("c-%010d", i), AmountMinor: int64(100 + i)}}}
	}
	return c
}

func BenchmarkEncodeDecodeCommand(b *testing.B) {
	const opsPerCommand = 1000
	c := benchCommand(opsPerCommand)
	buf := AppendCommand(nil, c)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendCommand(buf[:0], c)
		if _, err := DecodeCommand(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*opsPerCommand), "ns/op-encoded")
}
