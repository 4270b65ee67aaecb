package ledger

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// Test vocabulary: one program with POINTS (scale 0) and CNY (scale 2).
const (
	tProg = "shop"
	tPts  = "POINTS"
	tCNY  = "CNY"
)

func mkDefine(asset string, scale uint8) Op {
	return Op{Kind: OpDefineAsset, Program: tProg, Asset: asset, Scale: scale}
}

func mkOpen(member, asset string, maxMinor int64) Op {
	return Op{Kind: OpOpenAccount, Program: tProg, Member: member, Asset: asset, MaxBalanceMinor: maxMinor}
}

// mkAmount builds a Credit, Debit or Hold at the asset's scale.
func mkAmount(kind OpKind, member, asset string, amountMinor int64) Op {
	op := Op{Kind: kind, Program: tProg, Member: member, Asset: asset, AmountMinor: amountMinor, Scale: scaleOf(asset)}
	if kind == OpHold {
		op.HoldTTLMs = 60_000
	}
	return op
}

func mkCredit(member, asset string, amountMinor int64) Op {
	return mkAmount(OpCredit, member, asset, amountMinor)
}

func mkDebit(member, asset string, amountMinor int64) Op {
	return mkAmount(OpDebit, member, asset, amountMinor)
}

// mkHold builds a Hold named key (its idempotency key).
func mkHold(key, member, asset string, amountMinor, ttlMs int64) Op {
	op := mkAmount(OpHold, member, asset, amountMinor)
	op.IdempotencyKey = key
	op.HoldTTLMs = ttlMs
	return op
}

func mkCapture(member, holdKey string, amountMinor int64, scale uint8) Op {
	return Op{Kind: OpCaptureHold, Program: tProg, Member: member, HoldKey: holdKey, AmountMinor: amountMinor, Scale: scale}
}

func mkRelease(member, holdKey string) Op {
	return Op{Kind: OpReleaseHold, Program: tProg, Member: member, HoldKey: holdKey}
}

func mkState(kind OpKind, member, asset string) Op {
	return Op{Kind: kind, Program: tProg, Member: member, Asset: asset}
}

func scaleOf(asset string) uint8 {
	if asset == tCNY {
		return 2
	}
	return 0
}

// fixture is a MemStore with the test program set up: alice has 100 POINTS
// and 10.00 CNY, bob has an empty POINTS account limited to 500.
type fixture struct {
	t       testing.TB
	s       *MemStore
	timeMs  int64
	version uint32 // rules the fixture applies under (MaxVersion by default)
	nextID  int
}

const t0 = int64(1_700_000_000_000)

func newFixture(t testing.TB) *fixture {
	f := &fixture{t: t, s: NewMemStore(), timeMs: t0, version: MaxVersion}
	f.must(mkDefine(tPts, 0), mkDefine(tCNY, 2),
		mkOpen("alice", tPts, 0), mkOpen("alice", tCNY, 0), mkOpen("bob", tPts, 500),
		mkCredit("alice", tPts, 100), mkCredit("alice", tCNY, 1000))
	return f
}

// applyAt applies c after log time last under MaxVersion and returns the new
// log time: ApplyCommand for tests that follow only time.
func applyAt(s Store, last int64, c Command) (int64, [][]Result, error) {
	p, res, err := ApplyCommand(s, Progress{TimeMs: last, Version: MaxVersion}, c)
	return p.TimeMs, res, err
}

// keyed gives every op without an idempotency key a fresh one.
func (f *fixture) keyed(ops []Op) []Op {
	out := make([]Op, len(ops))
	for i, op := range ops {
		if op.IdempotencyKey == "" {
			f.nextID++
			op.IdempotencyKey = fmt.Sprintf("k%d", f.nextID)
		}
		out[i] = op
	}
	return out
}

func (f *fixture) applyReq(linked bool, ops ...Op) []Result {
	f.t.Helper()
	res, err := Apply(f.s, f.timeMs, f.version, Request{Linked: linked, Ops: f.keyed(ops)})
	require.NoError(f.t, err)
	require.Len(f.t, res, len(ops))
	return res
}

func (f *fixture) apply(ops ...Op) []Result { f.t.Helper(); return f.applyReq(false, ops...) }

func (f *fixture) applyOne(op Op) Result { f.t.Helper(); return f.apply(op)[0] }

// must applies ops and requires every one to succeed.
func (f *fixture) must(ops ...Op) []Result {
	f.t.Helper()
	res := f.apply(ops...)
	for i, r := range res {
		require.Equal(f.t, CodeOK, r.Code, "op %d (%s): %s", i, ops[i].Kind, r.Message)
	}
	return res
}

func (f *fixture) account(member, asset string) Account {
	f.t.Helper()
	a, found, err := f.s.Account(AccountKey{Program: tProg, Member: member, Asset: asset})
	require.NoError(f.t, err)
	require.True(f.t, found, "account %s/%s", member, asset)
	return a
}

func (f *fixture) hold(member, key string) Hold {
	f.t.Helper()
	h, found, err := f.s.Hold(tProg, member, key)
	require.NoError(f.t, err)
	require.True(f.t, found, "hold %s/%s", member, key)
	return h
}

func (f *fixture) control(asset string) int64 {
	c, err := f.s.Control(tProg, asset)
	require.NoError(f.t, err)
	return c
}

// snapshot is every piece of state but records and sequence numbers.
type snapshot struct {
	Assets   []Asset
	Accounts []Account
	Holds    []Hold
	Balances []Balance
}

func snap(s *MemStore) snapshot {
	return snapshot{Assets: s.Assets(), Accounts: s.Accounts(), Holds: s.Holds(), Balances: s.Balances()}
}

// checkInvariants asserts every account invariant, conservation, and that
// each account's held amount is the sum of its open holds.
func checkInvariants(t testing.TB, s *MemStore) {
	t.Helper()
	held := make(map[AccountKey]int64)
	for _, h := range s.Holds() {
		if h.State == HoldOpen {
			held[AccountKey{Program: h.Program, Member: h.Member, Asset: h.Asset}] += h.AmountMinor
		}
	}
	for _, a := range s.Accounts() {
		require.NoError(t, CheckAccount(a))
		require.Equal(t, held[a.Key], a.HeldMinor, "held of %s vs its open holds", a.Key)
	}
	require.NoError(t, Conservation(s.Balances()))
}
