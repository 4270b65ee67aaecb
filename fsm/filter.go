package fsm

import (
	"hash/maphash"

	"github.com/cockroachdb/pebble/v2"
)

// recordFilter is an in-memory Bloom filter over the (program, idempotency
// key) of every dedup record of a shard. Nearly every operation carries a new
// key, and proving a key absent through Pebble costs a lookup in every
// memtable and level; the filter answers "certainly absent" from memory.
//
// It must never miss a stored key: it is built from a scan of the shard's
// records when the FSM opens and after a restore, and every PutRecord adds to
// it. A false positive only costs the Pebble lookup it would have done
// anyway, so answers, and so the state machine, do not depend on it.
type recordFilter struct {
	seed     maphash.Seed
	bits     []uint64
	count    int // keys added
	capacity int // keys the filter is sized for (~1% false positives)
}

const (
	filterBitsPerKey = 10
	filterHashes     = 7
	minFilterKeys    = 1 << 16
)

func newRecordFilter(capacity int) *recordFilter {
	capacity = max(capacity, minFilterKeys)
	words := (capacity*filterBitsPerKey + 63) / 64
	return &recordFilter{seed: maphash.MakeSeed(), bits: make([]uint64, words), capacity: capacity}
}

func (f *recordFilter) hashes(key []byte) (uint64, uint64) {
	h1 := maphash.Bytes(f.seed, key)
	h2 := h1>>33 | h1<<31 | 1
	return h1, h2
}

func (f *recordFilter) add(key []byte) {
	h1, h2 := f.hashes(key)
	n := uint64(len(f.bits) * 64)
	for i := uint64(0); i < filterHashes; i++ {
		b := (h1 + i*h2) % n
		f.bits[b/64] |= 1 << (b % 64)
	}
	f.count++
}

func (f *recordFilter) mayContain(key []byte) bool {
	h1, h2 := f.hashes(key)
	n := uint64(len(f.bits) * 64)
	for i := uint64(0); i < filterHashes; i++ {
		b := (h1 + i*h2) % n
		if f.bits[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

func (f *recordFilter) full() bool { return f.count >= f.capacity }

// buildRecordFilter scans every record key of the shard into a new filter
// sized for at least twice as many: one pass to count, one to add, so a big
// shard's keys are never all held in memory.
func buildRecordFilter(db *pebble.DB, kb keyBuilder) (*recordFilter, error) {
	lower := kb.key(tagRecord)
	opts := &pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(lower)}
	scan := func(fn func(key []byte)) error {
		it, err := db.NewIter(opts)
		if err != nil {
			return err
		}
		for valid := it.First(); valid; valid = it.Next() {
			fn(it.Key())
		}
		return it.Close()
	}
	n := 0
	if err := scan(func([]byte) { n++ }); err != nil {
		return nil, err
	}
	f := newRecordFilter(2 * n)
	if err := scan(f.add); err != nil {
		return nil, err
	}
	return f, nil
}
