package client

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Open keys. An indeterminate op is settled only by an answer that the
// ledger recorded under its key (its outcome, OK or a refusal, or a replay
// of it; IDEMPOTENCY_KEY_REUSED too: the key belongs to another op for
// good). An answer that records nothing (an op-level UNAVAILABLE under
// rules version 4, a refusal before proposal, NOT_LEADER, a call given up
// before any attempt carried the op) says only that this call applied
// nothing: the key stays free, and the earlier call's attempt, still queued
// at a leader or in an uncommitted Raft entry, may apply the op afterwards.
// Told "not applied", a caller would give the payment up, or retry it under a
// new key, and pay twice.
//
// So each Client keeps the keys of its calls that ended indeterminate, and
// reports an answer that records nothing for such a key as indeterminate
// too, until a recorded answer settles the key or the record of it expires.
// An answer is recorded exactly when it is a replay, carries a sequence
// number (the ledger stamps one on every outcome it records, refusals
// included, and on nothing else), or is IDEMPOTENCY_KEY_REUSED (the key
// belongs to another op for good): recordsAnswer. A key is not the same op:
// a different op sent under a key seen indeterminate is marked all the same,
// which is the safe side (whichever op the key's earlier attempt carries may
// still apply).
//
// The ledger deduplicates a key on its member's shard, so the record is
// keyed by shard too: a key reused for a member of another shard is another
// record there, and its answers settle nothing here. DefineAsset applies on
// every shard under one key; its key is recorded under defineAssetShard,
// which only DefineAsset's own answers touch: its recorded answer settles
// it, and no Submit answer does (nor is a Submit's answer held
// indeterminate by it: a Submit op under that key is another op, as is one
// under the same key on another shard).
//
// The record is bounded in time and size, so it can lose a key whose
// attempt is still pending (an entry in a follower's log commits whenever
// quorum returns). Two rules keep that to keys left alone: every unrecorded
// answer for an open key re-stamps it, so the TTL counts from the last sign
// that it is still unsettled; and a key dropped for room sets an overflow
// window of openKeyTTL in which every unrecorded answer, for any key, is
// reported indeterminate. A key not re-sent for openKeyTTL is forgotten.
//
// Other processes (another Client, a tallyctl re-run) know nothing of this
// record, nor does this Client past its window; the package doc tells
// callers the rule. Calls of this Client that send one key at the same time
// do not see each other here; inflight.go covers them.
const (
	// maxOpenKeys bounds the record (a key of up to a few hundred bytes
	// costs that much plus the map's overhead: some tens of MiB at most).
	// A client reaches it only when tens of thousands of calls have just
	// ended indeterminate (a long partition under load); it then forgets the
	// oldest key first, as its earlier attempt is the likeliest to have
	// been decided already, and opens the overflow window, in which every
	// unrecorded answer is indeterminate, so that the forgotten key is not
	// reported "not applied". Refusing new keys instead would lose the
	// freshest ones, whose attempts are the likeliest still pending.
	maxOpenKeys = 1 << 16
	// openKeyTTL is how long a key stays recorded after the last answer
	// that left it open (an indeterminate call, or an unrecorded answer
	// since), and how long an overflow window lasts. While a leader holds
	// its quorum an attempt stays pending at most about its answer timeout
	// (the node's answerTimeout, 10 s) plus an election or a few (an
	// uncommitted entry is committed, or dropped, by the next leader); two
	// minutes leave a wide margin without keeping keys for good. Without a
	// quorum an entry in a follower's log can wait longer; re-sending renews
	// the key, and the package doc tells the caller to re-send.
	openKeyTTL = 2 * time.Minute
)

// defineAssetShard is the shard of a DefineAsset key in the record: none,
// as it applies on every shard (see above).
const defineAssetShard = -1

// openKey names an op's dedup record: the ledger keys it by program and
// idempotency key on the shard of the op's member (defineAssetShard for
// DefineAsset).
type openKey struct {
	program, key string
	shard        int
}

// answerKind is what one call's answer for an op says about its key.
type answerKind uint8

const (
	// answerUnrecorded: not applied by this call, and nothing recorded
	// under the key. The zero value, so that an answer left unclassified
	// errs on the safe side.
	answerUnrecorded answerKind = iota
	// answerRecorded: the ledger recorded an outcome under the key (or the
	// key belongs to another op): it settles the key.
	answerRecorded
	// answerUnknown: the call ended indeterminate for the op.
	answerUnknown
)

// openKeys is the record of keys left open; a Client holds one.
type openKeys struct {
	// active is len(at) > 0 || overflowing, read without mu: while nothing
	// is open, which is nearly always, a call costs one atomic load here.
	active atomic.Bool
	// now is time.Now; tests move it.
	now func() time.Time

	mu sync.Mutex
	at map[openKey]openStamp
	// order holds the keys in the order recorded. An entry whose gen is
	// no longer its key's (the key was settled, or recorded again since)
	// is stale and skipped; order is compacted once half of it may be.
	order []openRef
	gen   uint64
	// overflowUntil, if set, ends the window opened when a key still open
	// was dropped for room: until then every unrecorded answer is reported
	// indeterminate, as it could be the dropped key's.
	overflowUntil time.Time
	// max is maxOpenKeys; tests lower it.
	max int
	// inflight counts the calls in progress by key (inflight.go).
	inflight *inflightKeys
}

type openStamp struct {
	at  time.Time
	gen uint64
}

type openRef struct {
	key openKey
	gen uint64
}

func newOpenKeys() *openKeys {
	return &openKeys{now: time.Now, at: make(map[openKey]openStamp), max: maxOpenKeys,
		inflight: newInflightKeys()}
}

// empty reports whether no key is recorded and the record has not
// overflowed (one atomic load).
func (o *openKeys) empty() bool { return !o.active.Load() }

// publishLocked updates active; callers hold o.mu and call it after any
// change.
func (o *openKeys) publishLocked() {
	o.active.Store(len(o.at) > 0 || !o.overflowUntil.IsZero())
}

// lock takes o.mu and prunes the record at the time it returns; unlock
// publishes the record and releases o.mu.
func (o *openKeys) lock() (now time.Time) {
	o.mu.Lock()
	now = o.now()
	o.pruneLocked(now)
	return now
}

func (o *openKeys) unlock() {
	o.publishLocked()
	o.mu.Unlock()
}

// overflowingLocked reports whether the overflow window is open at now.
func (o *openKeys) overflowingLocked(now time.Time) bool {
	return !o.overflowUntil.IsZero() && now.Before(o.overflowUntil)
}

// answerLocked applies one call's answer for k to the record and reports
// whether that answer must be reported indeterminate: it recorded nothing,
// and k was left open by an earlier call not long ago (k is then
// re-stamped), or the record overflowed not long ago. Callers hold o.mu,
// have pruned the record at now, and publish it after.
func (o *openKeys) answerLocked(k openKey, a answerKind, now time.Time) bool {
	if k.key == "" {
		return false // refused by the server as missing: no record to settle
	}
	switch a {
	case answerUnknown:
		o.addLocked(k, now)
		return false
	case answerRecorded:
		o.removeLocked(k)
		return false
	}
	if _, open := o.at[k]; open {
		// Still nothing recorded under k: its TTL counts from now.
		o.addLocked(k, now)
		return true
	}
	return o.overflowingLocked(now)
}

// anyOpen reports whether a call whose keys are keys, refused by the client
// before anything was sent, must be reported indeterminate: one of them is
// open, or the record overflowed. It re-stamps nothing: a refusal by the
// client is no news of the ledger's record.
func (o *openKeys) anyOpen(keys []openKey) bool {
	if o.empty() {
		return false
	}
	now := o.lock()
	defer o.unlock()
	overflowing := o.overflowingLocked(now)
	for _, k := range keys {
		if k.key == "" {
			continue // as in answerLocked: refused as missing, never recorded
		}
		if _, open := o.at[k]; open || overflowing {
			return true
		}
	}
	return false
}

// answer is answerLocked for a call with one op.
func (o *openKeys) answer(k openKey, a answerKind) bool {
	if a != answerUnknown && o.empty() {
		return false
	}
	now := o.lock()
	defer o.unlock()
	return o.answerLocked(k, a, now)
}

// addLocked records k as open from now (again, if it was). Full, it drops
// the oldest key first and opens the overflow window.
func (o *openKeys) addLocked(k openKey, now time.Time) {
	if _, ok := o.at[k]; !ok {
		for len(o.at) >= o.max {
			popped, dropped := o.popLocked()
			if !popped {
				break
			}
			if dropped {
				o.overflowUntil = now.Add(openKeyTTL)
			}
		}
	}
	// Copies, so that the record does not keep alive whatever larger
	// strings of the caller's the key and program may be slices of. (An
	// assignment to a key already in the map stores the new key too.)
	k = openKey{program: strings.Clone(k.program), key: strings.Clone(k.key), shard: k.shard}
	o.gen++
	o.at[k] = openStamp{at: now, gen: o.gen}
	o.order = append(o.order, openRef{key: k, gen: o.gen})
	if len(o.order) >= 2*max(o.max, 1) {
		live := o.order[:0]
		for _, r := range o.order {
			if s, ok := o.at[r.key]; ok && s.gen == r.gen {
				live = append(live, r)
			}
		}
		clear(o.order[len(live):])
		o.order = live
	}
}

func (o *openKeys) removeLocked(k openKey) {
	delete(o.at, k)
	if len(o.at) == 0 {
		clear(o.order)
		o.order = o.order[:0]
	}
}

// pruneLocked forgets the keys recorded openKeyTTL or more before now, and
// closes an overflow window that has ended.
func (o *openKeys) pruneLocked(now time.Time) {
	if !o.overflowUntil.IsZero() && !now.Before(o.overflowUntil) {
		o.overflowUntil = time.Time{}
	}
	for len(o.order) > 0 {
		r := o.order[0]
		if s, ok := o.at[r.key]; ok && s.gen == r.gen && now.Sub(s.at) < openKeyTTL {
			return
		}
		o.popLocked()
	}
}

// popLocked forgets the oldest entry of order, and its key unless the
// entry is stale; it reports whether there was an entry, and whether a key
// was dropped.
func (o *openKeys) popLocked() (popped, dropped bool) {
	if len(o.order) == 0 {
		return false, false
	}
	r := o.order[0]
	o.order[0] = openRef{}
	o.order = o.order[1:]
	if s, ok := o.at[r.key]; ok && s.gen == r.gen {
		delete(o.at, r.key)
		return true, true
	}
	return true, false
}
