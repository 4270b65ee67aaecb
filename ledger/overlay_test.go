package ledger

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// recordingStore logs the writes that reach a MemStore, in order.
type recordingStore struct {
	*MemStore
	log []string
}

func (s *recordingStore) PutAsset(a Asset) error {
	s.log = append(s.log, "asset "+a.Code)
	return s.MemStore.PutAsset(a)
}

func (s *recordingStore) PutAccount(a Account) error {
	s.log = append(s.log, fmt.Sprintf("account %s %d", a.Key, a.PostedMinor))
	return s.MemStore.PutAccount(a)
}

func (s *recordingStore) PutControl(program, asset string, balanceMinor int64) error {
	s.log = append(s.log, fmt.Sprintf("control %s/%s %d", program, asset, balanceMinor))
	return s.MemStore.PutControl(program, asset, balanceMinor)
}

func (s *recordingStore) PutHold(h Hold) error {
	s.log = append(s.log, fmt.Sprintf("hold %s %s", h.Key, h.State))
	return s.MemStore.PutHold(h)
}

func (s *recordingStore) PutRecord(r Record) error {
	s.log = append(s.log, fmt.Sprintf("record %s %d", r.Op.IdempotencyKey, r.Seq))
	return s.MemStore.PutRecord(r)
}

func (s *recordingStore) NextSeq() (uint64, error) {
	s.log = append(s.log, "seq")
	return s.MemStore.NextSeq()
}

func TestOverlayReadsOwnWritesAndCommitsInOrder(t *testing.T) {
	base := &recordingStore{MemStore: NewMemStore()}
	require.NoError(t, base.MemStore.PutAccount(Account{Key: AccountKey{"p", "a", "X"}, State: StateActive, PostedMinor: 1}))
	o := NewOverlay(base)

	keyB := AccountKey{"p", "b", "X"}
	keyA := AccountKey{"p", "a", "X"}
	require.NoError(t, o.PutAccount(Account{Key: keyB, State: StateActive, PostedMinor: 5}))
	require.NoError(t, o.PutControl("p", "X", -5))
	require.NoError(t, o.PutAccount(Account{Key: keyA, State: StateActive, PostedMinor: 2}))
	require.NoError(t, o.PutAsset(Asset{Program: "p", Code: "X"}))
	require.NoError(t, o.PutAccount(Account{Key: keyB, State: StateActive, PostedMinor: 6})) // rewrite keeps its place
	require.NoError(t, o.PutHold(Hold{Program: "p", Member: "a", Key: "h", State: HoldOpen, ExpiresAtMs: 10}))
	require.NoError(t, o.PutRecord(Record{Seq: 1, Op: Op{Program: "p", IdempotencyKey: "k"}}))

	a, found, err := o.Account(keyB)
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, int64(6), a.PostedMinor)
	a, _, _ = o.Account(keyA)
	require.Equal(t, int64(2), a.PostedMinor, "overlay shadows base")
	c, _ := o.Control("p", "X")
	require.Equal(t, int64(-5), c)
	_, found, _ = o.Asset("p", "X")
	require.True(t, found)
	_, found, _ = o.Record("p", "k")
	require.True(t, found)
	_, found, _ = o.Hold("p", "a", "h")
	require.True(t, found)

	// Nothing reached the base yet.
	require.Empty(t, base.log)
	a, _, _ = base.Account(keyA)
	require.Equal(t, int64(1), a.PostedMinor)

	require.NoError(t, o.Commit())
	require.Equal(t, []string{
		"account p/b/X 6",
		"control p/X -5",
		"account p/a/X 2",
		"asset X",
		"hold h OPEN",
		"record k 1",
	}, base.log)
	a, _, _ = base.Account(keyA)
	require.Equal(t, int64(2), a.PostedMinor)
	refs, _ := base.ExpiredHolds(10, 10)
	require.Len(t, refs, 1, "the base's expiry index follows the committed hold")

	// The overlay is empty again and reads through.
	base.log = nil
	require.NoError(t, o.Commit())
	require.Empty(t, base.log)
}

func TestOverlayDropDiscards(t *testing.T) {
	base := NewMemStore()
	before := snap(base)
	o := NewOverlay(base)
	require.NoError(t, o.PutAsset(Asset{Program: "p", Code: "X"}))
	require.NoError(t, o.PutControl("p", "X", 3))
	o.Reset()
	_, found, _ := o.Asset("p", "X")
	require.False(t, found)
	require.Equal(t, before, snap(base))
}

func TestOverlaySeq(t *testing.T) {
	base := NewMemStore()
	_, _ = base.NextSeq()
	_, _ = base.NextSeq() // base is at 2

	o := NewOverlay(base)
	n1, err := o.NextSeq()
	require.NoError(t, err)
	n2, _ := o.NextSeq()
	require.Equal(t, []uint64{3, 4}, []uint64{n1, n2})
	require.Equal(t, uint64(2), base.LastSeq(), "buffered")

	// Dropping gives the numbers back.
	dropped := NewOverlay(base)
	d1, _ := dropped.NextSeq()
	require.Equal(t, uint64(3), d1)
	_ = dropped // never committed

	// Stacked overlays.
	inner := NewOverlay(o)
	n3, err := inner.NextSeq()
	require.NoError(t, err)
	require.Equal(t, uint64(5), n3)
	require.NoError(t, inner.Commit())
	require.Equal(t, uint64(2), base.LastSeq())

	require.NoError(t, o.Commit())
	require.Equal(t, uint64(5), base.LastSeq())
	n, _ := base.NextSeq()
	require.Equal(t, uint64(6), n)

	// The base moved under the overlay: Commit refuses.
	o2 := NewOverlay(base)
	_, _ = o2.NextSeq()
	_, _ = base.NextSeq()
	require.ErrorIs(t, o2.Commit(), ErrInvariant)

	// A base that cannot lend numbers.
	o3 := NewOverlay(struct{ Store }{base}) // hides PeekSeq
	_, err = o3.NextSeq()
	require.Error(t, err)
}

func TestOverlayExpiredHolds(t *testing.T) {
	base := NewMemStore()
	put := func(s Store, key string, expiresAtMs int64, state HoldState) {
		t.Helper()
		require.NoError(t, s.PutHold(Hold{Program: "p", Member: "m", Key: key, State: state, ExpiresAtMs: expiresAtMs, AmountMinor: 1}))
	}
	put(base, "b1", 10, HoldOpen)
	put(base, "b2", 20, HoldOpen)
	put(base, "b3", 30, HoldOpen)
	put(base, "b4", 40, HoldOpen)
	put(base, "b5", 99, HoldOpen)

	o := NewOverlay(base)
	put(o, "b1", 10, HoldCaptured) // closed in the overlay: no longer listed
	put(o, "b3", 15, HoldOpen)     // moved earlier
	put(o, "o1", 5, HoldOpen)      // new
	put(o, "o2", 35, HoldOpen)     // new
	put(o, "o3", 100, HoldOpen)    // new, not yet expired

	keys := func(refs []HoldRef) []string {
		var out []string
		for _, r := range refs {
			out = append(out, fmt.Sprintf("%s@%d", r.Key, r.ExpiresAtMs))
		}
		return out
	}
	refs, err := o.ExpiredHolds(50, 100)
	require.NoError(t, err)
	require.Equal(t, []string{"o1@5", "b3@15", "b2@20", "o2@35", "b4@40"}, keys(refs))

	// The limit applies to the merged list even when the overlay hides base
	// entries that the base would have listed first.
	refs, _ = o.ExpiredHolds(50, 2)
	require.Equal(t, []string{"o1@5", "b3@15"}, keys(refs))
	refs, _ = o.ExpiredHolds(50, 3)
	require.Equal(t, []string{"o1@5", "b3@15", "b2@20"}, keys(refs))
	refs, _ = o.ExpiredHolds(50, 0)
	require.Empty(t, refs)

	// Once committed, the base lists the same.
	want, _ := o.ExpiredHolds(1000, 100)
	require.NoError(t, o.Commit())
	got, _ := base.ExpiredHolds(1000, 100)
	require.Equal(t, want, got)
}

func TestMemStoreListings(t *testing.T) {
	s := NewMemStore()
	for _, k := range []AccountKey{{"p", "b", "X"}, {"p", "a", "Y"}, {"a", "z", "X"}, {"p", "a", "X"}} {
		require.NoError(t, s.PutAccount(Account{Key: k, State: StateActive}))
	}
	var keys []string
	for _, a := range s.Accounts() {
		keys = append(keys, a.Key.String())
	}
	require.Equal(t, []string{"a/z/X", "p/a/X", "p/a/Y", "p/b/X"}, keys)

	require.NoError(t, s.PutControl("p", "X", -3))
	bal := s.Balances()
	require.Len(t, bal, 5)
	require.Equal(t, Balance{Program: "p", Member: ControlMember, Asset: "X", PostedMinor: -3}, bal[1], "'$' sorts first")

	// The expiry index follows hold states and times.
	require.NoError(t, s.PutHold(Hold{Program: "p", Member: "m", Key: "h1", State: HoldOpen, ExpiresAtMs: 20}))
	require.NoError(t, s.PutHold(Hold{Program: "p", Member: "m", Key: "h2", State: HoldOpen, ExpiresAtMs: 10}))
	require.NoError(t, s.PutHold(Hold{Program: "p", Member: "l", Key: "h3", State: HoldOpen, ExpiresAtMs: 20}))
	refs, _ := s.ExpiredHolds(20, 10)
	require.Equal(t, []HoldRef{
		{Program: "p", Member: "m", Key: "h2", ExpiresAtMs: 10},
		{Program: "p", Member: "l", Key: "h3", ExpiresAtMs: 20},
		{Program: "p", Member: "m", Key: "h1", ExpiresAtMs: 20},
	}, refs)
	refs, _ = s.ExpiredHolds(19, 10)
	require.Len(t, refs, 1)
	refs, _ = s.ExpiredHolds(20, 2)
	require.Len(t, refs, 2)
	require.NoError(t, s.PutHold(Hold{Program: "p", Member: "m", Key: "h2", State: HoldReleased, ExpiresAtMs: 10}))
	require.NoError(t, s.PutHold(Hold{Program: "p", Member: "m", Key: "h1", State: HoldOpen, ExpiresAtMs: 5}))
	refs, _ = s.ExpiredHolds(100, 10)
	require.Equal(t, []HoldRef{
		{Program: "p", Member: "m", Key: "h1", ExpiresAtMs: 5},
		{Program: "p", Member: "l", Key: "h3", ExpiresAtMs: 20},
	}, refs)

	// Clone is independent.
	c := s.Clone()
	require.NoError(t, c.PutControl("p", "X", 0))
	v, _ := s.Control("p", "X")
	require.Equal(t, int64(-3), v)
}

func TestConservation(t *testing.T) {
	b := func(program, member, asset string, posted int64) Balance {
		return Balance{Program: program, Member: member, Asset: asset, PostedMinor: posted}
	}
	require.NoError(t, Conservation(nil))
	require.NoError(t, Conservation([]Balance{
		b("p", "a", "X", 5), b("p", "b", "X", 7), b("p", ControlMember, "X", -12),
		b("p", "a", "Y", 0), b("q", "a", "X", 1), b("q", ControlMember, "X", -1),
	}))
	// Exact beyond 64 bits: two near-max accounts and two near-min controls.
	big := int64(1<<63 - 1)
	require.NoError(t, Conservation([]Balance{
		b("p", "a", "X", big), b("p", "b", "X", big), b("p", ControlMember, "X", -big), b("p", "$other", "X", -big),
	}))
	err := Conservation([]Balance{
		b("q", "a", "X", 2), b("p", "a", "Y", 1), b("p", ControlMember, "Y", 0), b("p", "a", "X", big), b("p", "b", "X", big),
	})
	require.ErrorIs(t, err, ErrInvariant)
	require.Contains(t, err.Error(), "p/X sums to 0x0000000000000000fffffffffffffffe (128-bit); p/Y sums to 1; q/X sums to 2")
	err = Conservation([]Balance{b("p", ControlMember, "X", -3)})
	require.Contains(t, err.Error(), "p/X sums to -3")
}
