package client

import (
	"encoding/binary"
	"hash/maphash"
	"slices"
	"sync/atomic"
)

// Calls in flight. An answer that records nothing (openkeys.go) says only
// that its call applied nothing. Another call of this Client sending the
// same key at some time during this one may have applied the op already, or
// may have an attempt still queued at a leader that applies it later: a
// webhook delivered twice, or a caller that re-sends while its first call is
// still waiting. The record of open keys does not see that call, as it holds
// only keys whose calls have ended indeterminate; and told "not applied",
// this call's caller would give the op up, or retry it under a new key, and
// pay twice. So each Client counts its calls in progress by key, and an
// unrecorded answer for a key that another call held at any time during
// this call is reported indeterminate.
//
// The count is kept per slot of a hash of the key (program, key, shard),
// not per key, so that a call costs a few atomic operations per key and no
// lock or allocation beyond one slice. Two keys sharing a slot look like one
// key sent twice, and an unrecorded answer for either is then reported
// indeterminate although it need not be: the safe side (the caller re-sends
// under the same key and learns the outcome), and only unrecorded answers,
// which are rare, are affected. For a call during which N ops of other calls
// are in progress or start, the chance of that is about N/flightSlots.
const flightSlots = 1 << 15

type flightSlot struct {
	// calls counts the calls in progress holding a key of this slot.
	calls atomic.Int32
	// overlaps counts the calls that took the slot while another held it.
	overlaps atomic.Uint32
}

// inflightKeys is a Client's count of its calls in progress, by key slot.
type inflightKeys struct {
	seed  maphash.Seed
	slots []flightSlot
}

func newInflightKeys() *inflightKeys {
	return &inflightKeys{seed: maphash.MakeSeed(), slots: make([]flightSlot, flightSlots)}
}

// slotOf is the slot of k.
func (f *inflightKeys) slotOf(k openKey) uint32 {
	var h maphash.Hash
	h.SetSeed(f.seed)
	_, _ = h.WriteString(k.program)
	_ = h.WriteByte(0)
	_, _ = h.WriteString(k.key)
	_ = h.WriteByte(0)
	var b [8]byte
	_, _ = h.Write(binary.LittleEndian.AppendUint64(b[:0], uint64(int64(k.shard))))
	return uint32(h.Sum64() % flightSlots)
}

// held reports whether a call in progress holds a slot of one of keys.
func (f *inflightKeys) held(keys []openKey) bool {
	for _, k := range keys {
		if k.key != "" && f.slots[f.slotOf(k)].calls.Load() > 0 {
			return true
		}
	}
	return false
}

// flight is one call's hold on the slots of its keys.
type flight struct {
	f     *inflightKeys
	holds []flightHold // sorted by slot, one per slot
}

type flightHold struct {
	slot uint32
	// seen is the slot's overlaps as read before the call took it.
	seen uint32
	// overlapped: another call held the slot when this one took it.
	overlapped bool
}

// add appends k's hold to holds, unless k is empty: refused as missing, it
// is never recorded.
func (f *inflightKeys) add(holds []flightHold, k openKey) []flightHold {
	if k.key == "" {
		return holds
	}
	return append(holds, flightHold{slot: f.slotOf(k)})
}

// take takes the slots of holds (made by add) for a call until end.
//
// Each call reads a slot's overlaps before it counts itself in, and the
// call that finds another already counted bumps overlaps: of two calls that
// overlap, whichever counts itself in second sees the first, and the first
// then finds overlaps moved past what it read.
func (f *inflightKeys) take(holds []flightHold) flight {
	// One hold per slot: two keys of one call sharing a slot must not count
	// as each other's overlap.
	slices.SortFunc(holds, func(a, b flightHold) int { return int(a.slot) - int(b.slot) })
	holds = slices.CompactFunc(holds, func(a, b flightHold) bool { return a.slot == b.slot })
	for i := range holds {
		s := &f.slots[holds[i].slot]
		holds[i].seen = s.overlaps.Load()
		if s.calls.Add(1) > 1 {
			s.overlaps.Add(1)
			holds[i].overlapped = true
		}
	}
	return flight{f: f, holds: holds}
}

// end releases the call's slots. The call's answers are settled first
// (settleOpenKeys), so that a call that overlapped it and is judged after
// end finds this call's outcome in the record of open keys.
func (fl flight) end() {
	for _, h := range fl.holds {
		fl.f.slots[h.slot].calls.Add(-1)
	}
}

// overlapped reports whether another call held k's slot at some time since
// this call took it.
func (fl flight) overlapped(k openKey) bool {
	if k.key == "" {
		return false
	}
	slot := fl.f.slotOf(k)
	i, ok := slices.BinarySearchFunc(fl.holds, slot, func(h flightHold, s uint32) int { return int(h.slot) - int(s) })
	if !ok {
		return false
	}
	return fl.holdOverlapped(fl.holds[i])
}

// holdOverlapped: another call held h's slot when this one took it, took it
// since (overlaps moved), or holds it now. The last covers the window in
// take between a later call's count and its bump of overlaps (found by
// review); this call holds the slot once, so any count above 1 is another's.
func (fl flight) holdOverlapped(h flightHold) bool {
	s := &fl.f.slots[h.slot]
	return h.overlapped || s.overlaps.Load() != h.seen || s.calls.Load() > 1
}

// anyOverlapped reports whether another call held one of this call's slots
// at some time since this call took it.
func (fl flight) anyOverlapped() bool {
	for _, h := range fl.holds {
		if fl.holdOverlapped(h) {
			return true
		}
	}
	return false
}
