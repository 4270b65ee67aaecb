package client

import (
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
// So each Client keeps the (program, key) pairs of its calls that ended
// indeterminate, and reports an answer that records nothing for such a key
// as indeterminate too, until a recorded answer settles the key or the
// record of it expires. A key is not the same op: a different op sent under
// a key seen indeterminate is marked all the same, which is the safe side
// (whichever op the key's earlier attempt carries may still apply).
//
// Other processes (another Client, a tallyctl re-run) know nothing of this
// record; the package doc tells their callers the rule.
const (
	// maxOpenKeys bounds the record (a key of up to a few hundred bytes
	// costs that much plus the map's overhead: some tens of MiB at most).
	// A client reaches it only when tens of thousands of calls have just
	// ended indeterminate (a long partition under load); it then forgets the
	// oldest key first, as its earlier attempt is the likeliest to have
	// been decided already. Refusing new keys instead would lose the freshest
	// ones, whose attempts are the likeliest still pending.
	maxOpenKeys = 1 << 16
	// openKeyTTL is how long a key stays recorded after the call that left
	// it open. An attempt stays pending at most about a leader's answer
	// timeout (the node's answerTimeout, 10 s) plus an election or a few
	// (an uncommitted entry is committed, or dropped, by the next leader);
	// two minutes leave a wide margin without keeping keys for good.
	openKeyTTL = 2 * time.Minute
)

// openKey names an op's dedup record: the ledger keys it by program and
// idempotency key.
type openKey struct{ program, key string }

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
	// n is len(at), read without mu: while nothing is open, which is
	// nearly always, a call costs one atomic load here.
	n atomic.Int64
	// now is time.Now; tests move it.
	now func() time.Time

	mu sync.Mutex
	at map[openKey]openStamp
	// order holds the keys in the order recorded. An entry whose gen is
	// no longer its key's (the key was settled, or recorded again since)
	// is stale and skipped; order is compacted once half of it may be.
	order []openRef
	gen   uint64
	// max is maxOpenKeys; tests lower it.
	max int
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
	return &openKeys{now: time.Now, at: make(map[openKey]openStamp), max: maxOpenKeys}
}

// empty reports whether no key is recorded (one atomic load).
func (o *openKeys) empty() bool { return o.n.Load() == 0 }

// answerLocked applies one call's answer for k to the record and reports
// whether that answer must be reported indeterminate: it recorded nothing,
// and k was left open by an earlier call not long ago. Callers hold o.mu
// and have pruned the record at now.
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
	_, open := o.at[k]
	return open
}

// answer is answerLocked for a call with one op.
func (o *openKeys) answer(k openKey, a answerKind) bool {
	if a != answerUnknown && o.empty() {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	now := o.now()
	o.pruneLocked(now)
	open := o.answerLocked(k, a, now)
	o.n.Store(int64(len(o.at)))
	return open
}

// addLocked records k as open from now (again, if it was).
func (o *openKeys) addLocked(k openKey, now time.Time) {
	if _, ok := o.at[k]; !ok {
		for len(o.at) >= o.max && o.popLocked() {
		}
	}
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

// pruneLocked forgets the keys recorded openKeyTTL or more before now.
func (o *openKeys) pruneLocked(now time.Time) {
	for len(o.order) > 0 {
		r := o.order[0]
		if s, ok := o.at[r.key]; ok && s.gen == r.gen && now.Sub(s.at) < openKeyTTL {
			return
		}
		o.popLocked()
	}
}

// popLocked forgets the oldest entry of order (its key too, unless the
// entry is stale) and reports whether there was one.
func (o *openKeys) popLocked() bool {
	if len(o.order) == 0 {
		return false
	}
	r := o.order[0]
	o.order[0] = openRef{}
	o.order = o.order[1:]
	if s, ok := o.at[r.key]; ok && s.gen == r.gen {
		delete(o.at, r.key)
	}
	return true
}
