package ledger

import (
	"cmp"
	"maps"
	"slices"
	"strings"
)

// MemStore is an in-memory Store for tests, here and in other packages; make
// one with NewMemStore (the zero value is not usable). It is
// deterministic: listings are sorted, never in map order. It is not safe for
// concurrent use.
type MemStore struct {
	assets   map[assetID]Asset
	accounts map[AccountKey]Account
	controls map[assetID]int64
	holds    map[holdID]Hold
	records  map[recordID]*Record // pointers: records are large and never change
	// expiry is the index of open holds, sorted by compareHoldRef.
	expiry []HoldRef
	// journals holds each member's successful records, oldest first.
	journals map[memberID][]*Record
	lastSeq  uint64
}

type memberID struct{ program, member string }

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{
		assets:   make(map[assetID]Asset),
		accounts: make(map[AccountKey]Account),
		controls: make(map[assetID]int64),
		holds:    make(map[holdID]Hold),
		records:  make(map[recordID]*Record),
		journals: make(map[memberID][]*Record),
	}
}

var (
	_ Store     = (*MemStore)(nil)
	_ SeqPeeker = (*MemStore)(nil)
)

// Asset implements Store.
func (m *MemStore) Asset(program, code string) (Asset, bool, error) {
	a, ok := m.assets[assetID{program, code}]
	return a, ok, nil
}

// PutAsset implements Store.
func (m *MemStore) PutAsset(a Asset) error {
	m.assets[assetID{a.Program, a.Code}] = a
	return nil
}

// Account implements Store.
func (m *MemStore) Account(k AccountKey) (Account, bool, error) {
	a, ok := m.accounts[k]
	return a, ok, nil
}

// PutAccount implements Store.
func (m *MemStore) PutAccount(a Account) error {
	m.accounts[a.Key] = a
	return nil
}

// Control implements Store.
func (m *MemStore) Control(program, asset string) (int64, error) {
	return m.controls[assetID{program, asset}], nil
}

// PutControl implements Store.
func (m *MemStore) PutControl(program, asset string, balanceMinor int64) error {
	m.controls[assetID{program, asset}] = balanceMinor
	return nil
}

// Hold implements Store.
func (m *MemStore) Hold(program, member, key string) (Hold, bool, error) {
	h, ok := m.holds[holdID{program, member, key}]
	return h, ok, nil
}

// PutHold implements Store, keeping the expiry index in step.
func (m *MemStore) PutHold(h Hold) error {
	id := holdID{h.Program, h.Member, h.Key}
	if old, ok := m.holds[id]; ok && old.State == HoldOpen {
		ref := holdRef(&old)
		if i, found := slices.BinarySearchFunc(m.expiry, ref, compareHoldRef); found {
			m.expiry = deleteAt(m.expiry, i)
		}
	}
	m.holds[id] = h
	if h.State == HoldOpen {
		ref := holdRef(&h)
		i, _ := slices.BinarySearchFunc(m.expiry, ref, compareHoldRef)
		m.expiry = slices.Insert(m.expiry, i, ref)
	}
	return nil
}

// deleteAt removes refs[i], moving whichever side of i is shorter: expiries
// remove from the front and captures mostly near the back, so both stay
// cheap on a large index.
func deleteAt(refs []HoldRef, i int) []HoldRef {
	if i < len(refs)/2 {
		copy(refs[1:i+1], refs[:i])
		refs[0] = HoldRef{}
		return refs[1:]
	}
	return slices.Delete(refs, i, i+1)
}

func holdRef(h *Hold) HoldRef {
	return HoldRef{Program: h.Program, Member: h.Member, Key: h.Key, ExpiresAtMs: h.ExpiresAtMs}
}

// ExpiredHolds implements Store.
func (m *MemStore) ExpiredHolds(nowMs int64, limit int) ([]HoldRef, error) {
	var refs []HoldRef
	for _, r := range m.expiry {
		if r.ExpiresAtMs > nowMs || len(refs) >= limit {
			break
		}
		refs = append(refs, r)
	}
	return refs, nil
}

// Record implements Store.
func (m *MemStore) Record(program, key string) (Record, bool, error) {
	r, ok := m.records[recordID{program, key}]
	if !ok {
		return Record{}, false, nil
	}
	return *r, true, nil
}

// PutRecord implements Store. Successful ops that name a member are appended
// to that member's journal.
func (m *MemStore) PutRecord(r Record) error {
	p := &r
	m.records[recordID{r.Op.Program, r.Op.IdempotencyKey}] = p
	if r.Result.OK() && r.Op.Member != "" {
		id := memberID{r.Op.Program, r.Op.Member}
		m.journals[id] = append(m.journals[id], p)
	}
	return nil
}

// NextSeq implements Store.
func (m *MemStore) NextSeq() (uint64, error) {
	m.lastSeq++
	return m.lastSeq, nil
}

// PeekSeq implements SeqPeeker.
func (m *MemStore) PeekSeq() (uint64, error) { return m.lastSeq + 1, nil }

// LastSeq returns the last sequence number handed out (0 if none).
func (m *MemStore) LastSeq() uint64 { return m.lastSeq }

// Journal returns a member's successful records, newest first.
func (m *MemStore) Journal(program, member string) []Record {
	j := m.journals[memberID{program, member}]
	out := make([]Record, len(j))
	for i := range j {
		out[len(j)-1-i] = *j[i]
	}
	return out
}

// Accounts returns every member account, sorted by (Program, Member, Asset).
func (m *MemStore) Accounts() []Account {
	out := slices.Collect(maps.Values(m.accounts))
	slices.SortFunc(out, func(a, b Account) int { return compareAccountKey(a.Key, b.Key) })
	return out
}

// Holds returns every hold, sorted by (Program, Member, Key).
func (m *MemStore) Holds() []Hold {
	out := slices.Collect(maps.Values(m.holds))
	slices.SortFunc(out, func(a, b Hold) int {
		if c := strings.Compare(a.Program, b.Program); c != 0 {
			return c
		}
		if c := strings.Compare(a.Member, b.Member); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out
}

// Assets returns every asset, sorted by (Program, Code).
func (m *MemStore) Assets() []Asset {
	out := slices.Collect(maps.Values(m.assets))
	slices.SortFunc(out, func(a, b Asset) int {
		if c := strings.Compare(a.Program, b.Program); c != 0 {
			return c
		}
		return strings.Compare(a.Code, b.Code)
	})
	return out
}

// Balances returns the posted balance of every member account and every
// control account (Member ControlMember), sorted by (Program, Member, Asset):
// the input of Conservation.
func (m *MemStore) Balances() []Balance {
	out := make([]Balance, 0, len(m.accounts)+len(m.controls))
	for _, a := range m.accounts {
		out = append(out, Balance{Program: a.Key.Program, Member: a.Key.Member, Asset: a.Key.Asset, PostedMinor: a.PostedMinor})
	}
	for id, c := range m.controls {
		out = append(out, Balance{Program: id.program, Member: ControlMember, Asset: id.code, PostedMinor: c})
	}
	slices.SortFunc(out, func(a, b Balance) int {
		return compareAccountKey(
			AccountKey{Program: a.Program, Member: a.Member, Asset: a.Asset},
			AccountKey{Program: b.Program, Member: b.Member, Asset: b.Asset})
	})
	return out
}

// Clone returns an independent copy of m.
func (m *MemStore) Clone() *MemStore {
	c := &MemStore{
		assets:   maps.Clone(m.assets),
		accounts: maps.Clone(m.accounts),
		controls: maps.Clone(m.controls),
		holds:    maps.Clone(m.holds),
		records:  maps.Clone(m.records),
		expiry:   slices.Clone(m.expiry),
		journals: make(map[memberID][]*Record, len(m.journals)),
		lastSeq:  m.lastSeq,
	}
	for k, v := range m.journals {
		c.journals[k] = slices.Clone(v)
	}
	return c
}

func compareAccountKey(a, b AccountKey) int {
	return cmp.Or(
		strings.Compare(a.Program, b.Program),
		strings.Compare(a.Member, b.Member),
		strings.Compare(a.Asset, b.Asset))
}
