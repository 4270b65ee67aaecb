package fsm

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Consistency checks.
//
// Replicas of a shard that applied the same entries hold the same state,
// byte for byte: the state hash covers every key and value, the meta
// record and its applied index included. A replica that does not (a bug
// in the rules or in Pebble, a disk that returned other bytes than it was
// given, a snapshot installed wrongly) would go on answering reads and
// applying entries on its own wrong state for as long as nobody compared.
// So, once SetCheckEvery has set n, every replica hashes its whole state
// right after applying each entry whose index is a multiple of n:
// ApplyBatch ends its Pebble batch at that entry, takes an iterator (a
// point-in-time view, cheap to take) and hands it to a goroutine that
// hashes it while apply goes on. Every replica therefore hashes the state
// as of the same entries, whatever batches Raft handed it. The node's
// leader compares its hashes with the others' (node/consistency.go).
//
// A replica may have no result at a check index: it installed a snapshot
// past it, applied it before a restart, or was still hashing the one
// before (one walk at a time, so a slow replica falls behind rather than
// piling up walks). Nothing here writes state: a check cannot make
// replicas differ.

// keptChecks is how many of its newest checks a replica keeps for the
// leader to compare against.
const keptChecks = 8

var errCheckStopped = errors.New("fsm: consistency check stopped")

// Check is the outcome of one consistency check on this replica.
type Check struct {
	// Index is the entry after which the state was hashed.
	Index uint64
	// Hash is the state hash as FSM.State reports it at Index; nil when
	// Err is set.
	Hash []byte
	// Conservation is non-nil when some (program, asset) of the state
	// does not sum to zero, or when an account or control record does not
	// decode: its bytes are hashed all the same, so a replica holding
	// bytes no entry wrote reports a hash that differs from the others'.
	Conservation error
	// Err is set when the walk failed (reading the DB).
	Err error
	// Took is how long the walk took.
	Took time.Duration
}

// checks is an FSM's consistency-check bookkeeping.
type checks struct {
	every   uint64      // check after each entry whose index is a multiple; 0: never
	running atomic.Bool // a walk is under way
	stop    atomic.Bool // StopChecks was called: walks end early, none start
	skipped atomic.Uint64
	wg      sync.WaitGroup

	mu   sync.Mutex // guards done, and orders stop against wg.Add
	done []Check    // oldest first, at most keptChecks
}

// SetCheckEvery makes the replica check its state after every entry whose
// index is a multiple of n (0: never). Call it before Raft starts: every
// replica of a shard must be given the same n for their checks to meet.
func (f *FSM) SetCheckEvery(n uint64) { f.chk.every = n }

// isCheckIndex reports whether the state after entry index is checked.
func (f *FSM) isCheckIndex(index uint64) bool {
	return f.chk.every != 0 && index%f.chk.every == 0
}

// startCheck starts hashing the shard as the DB holds it now: right after
// ApplyBatch committed entry index. It runs on Raft's FSM goroutine.
func (f *FSM) startCheck(index uint64) {
	f.chk.mu.Lock()
	if f.chk.stop.Load() || !f.chk.running.CompareAndSwap(false, true) {
		f.chk.mu.Unlock()
		f.chk.skipped.Add(1)
		return
	}
	f.chk.wg.Add(1)
	f.chk.mu.Unlock()
	lower, upper := shardBounds(f.shard)
	it, err := f.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		f.chk.running.Store(false)
		f.chk.wg.Done()
		f.recordCheck(Check{Index: index, Err: err})
		return
	}
	go func() {
		defer f.chk.wg.Done()
		defer f.chk.running.Store(false)
		start := time.Now()
		info, err := f.hashView(it, &f.chk.stop)
		if errors.Is(err, errCheckStopped) {
			return
		}
		c := Check{Index: index, Took: time.Since(start)}
		switch {
		case err != nil:
			c.Err = err
		case info.AppliedIndex != index:
			// The view was taken between this entry's batch and the
			// next: anything else is a bug in ApplyBatch's split.
			c.Err = fmt.Errorf("fsm: shard %d: check view at applied index %d, not %d", f.shard, info.AppliedIndex, index)
		default:
			c.Hash, c.Conservation = info.Hash, info.Conservation
		}
		f.recordCheck(c)
	}()
}

// recordCheck keeps c among the newest checks and tells the hook.
func (f *FSM) recordCheck(c Check) {
	f.chk.mu.Lock()
	if len(f.chk.done) == keptChecks {
		f.chk.done = append(f.chk.done[:0], f.chk.done[1:]...)
	}
	f.chk.done = append(f.chk.done, c)
	f.chk.mu.Unlock()
	if f.hooks.OnCheck != nil {
		f.hooks.OnCheck(c)
	}
}

// LastCheck returns the newest finished check, if any.
func (f *FSM) LastCheck() (Check, bool) {
	f.chk.mu.Lock()
	defer f.chk.mu.Unlock()
	if len(f.chk.done) == 0 {
		return Check{}, false
	}
	return f.chk.done[len(f.chk.done)-1], true
}

// CheckAt returns the finished check at index, if this replica keeps one.
func (f *FSM) CheckAt(index uint64) (Check, bool) {
	f.chk.mu.Lock()
	defer f.chk.mu.Unlock()
	for _, c := range f.chk.done {
		if c.Index == index {
			return c, true
		}
	}
	return Check{}, false
}

// ChecksSkipped counts the check indexes this replica applied while a walk
// was still running (or after StopChecks), so it has no result there.
func (f *FSM) ChecksSkipped() uint64 { return f.chk.skipped.Load() }

// StopChecks ends a running walk early and starts no more. Call it once
// Raft is shut down and before the DB is closed: a walk holds an iterator.
func (f *FSM) StopChecks() {
	f.chk.mu.Lock()
	f.chk.stop.Store(true)
	f.chk.mu.Unlock()
	f.chk.wg.Wait()
}
