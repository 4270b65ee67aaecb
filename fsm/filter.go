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
//
// It grows without rescanning (a scalable Bloom filter): when the newest
// layer is full, a layer twice its size is added, and a key may be present
// if any layer says so. Rebuilding by scanning every record took 16% of a
// node's CPU in the batched benchmark; a layer is one allocation.
type recordFilter struct {
	seed   maphash.Seed
	layers []filterLayer // oldest first; adds go to the last
}

type filterLayer struct {
	bits     []uint64
	count    int // keys added
	capacity int // keys the layer is sized for
}

const (
	// 14 bits and 10 hashes per key give ~0.1% false positives per layer,
	// so the sum over the few layers a shard grows stays well under 1%.
	filterBitsPerKey = 14
	filterHashes     = 10
	minFilterKeys    = 1 << 16
)

func newRecordFilter(capacity int) *recordFilter {
	f := &recordFilter{seed: maphash.MakeSeed()}
	f.addLayer(max(capacity, minFilterKeys))
	return f
}

func (f *recordFilter) addLayer(capacity int) {
	words := (capacity*filterBitsPerKey + 63) / 64
	f.layers = append(f.layers, filterLayer{bits: make([]uint64, words), capacity: capacity})
}

func (f *recordFilter) hashes(key []byte) (uint64, uint64) {
	h1 := maphash.Bytes(f.seed, key)
	h2 := h1>>33 | h1<<31 | 1
	return h1, h2
}

func (f *recordFilter) add(key []byte) {
	l := &f.layers[len(f.layers)-1]
	if l.count >= l.capacity {
		f.addLayer(2 * l.capacity)
		l = &f.layers[len(f.layers)-1]
	}
	h1, h2 := f.hashes(key)
	n := uint64(len(l.bits) * 64)
	for i := uint64(0); i < filterHashes; i++ {
		b := (h1 + i*h2) % n
		l.bits[b/64] |= 1 << (b % 64)
	}
	l.count++
}

func (f *recordFilter) mayContain(key []byte) bool {
	h1, h2 := f.hashes(key)
	for li := len(f.layers) - 1; li >= 0; li-- {
		if f.layers[li].mayContain(h1, h2) {
			return true
		}
	}
	return false
}

func (l *filterLayer) mayContain(h1, h2 uint64) bool {
	n := uint64(len(l.bits) * 64)
	for i := uint64(0); i < filterHashes; i++ {
		b := (h1 + i*h2) % n
		if l.bits[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

// count is the number of keys added.
func (f *recordFilter) count() int {
	n := 0
	for i := range f.layers {
		n += f.layers[i].count
	}
	return n
}

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
