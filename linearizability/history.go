package linearizability

import (
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// ReturnNever is the return time of an indeterminate operation: +infinity,
// so the checker may linearize it anywhere after its call (or, in effect,
// not at all).
const ReturnNever = int64(math.MaxInt64)

// Entry is one recorded operation: one idempotency key from the first call
// to the last answer, retries included.
type Entry struct {
	ClientID int    `json:"client"`
	Input    Input  `json:"input"`
	Output   Output `json:"output"`
	CallNs   int64  `json:"call_ns"`   // since the history's start
	ReturnNs int64  `json:"return_ns"` // ReturnNever if indeterminate
	Attempts int    `json:"attempts"`  // calls made with this key
	Err      string `json:"err,omitempty"`
	// Resolved is set when an indeterminate outcome was learnt after the
	// run from GetOperation.
	Resolved bool `json:"resolved,omitempty"`
	// OpUnavailable counts the calls that the op itself (not the request)
	// answered UNAVAILABLE: deferred while its shard releases a backlog of
	// expired holds (ledger.Version4). checkRefusals fails the run on any.
	OpUnavailable int `json:"op_unavailable,omitempty"`
	// Hedged counts the calls made while an earlier call with the key was
	// still waiting (a hedging worker's second call).
	Hedged int `json:"hedged,omitempty"`
	// CallWallMs and ReturnWallMs are the wall clock (ms) at the first call
	// and at the last answer (0: not recorded, for hand-made histories).
	// The nodes stamp log time from the same host's clock, so a write's
	// log time lies between them (checkWriteTimes).
	CallWallMs   int64 `json:"call_wall_ms,omitempty"`
	ReturnWallMs int64 `json:"return_wall_ms,omitempty"`
}

// History records operations concurrently. Times are nanoseconds of the
// monotonic clock since the history started.
type History struct {
	start time.Time
	mu    sync.Mutex
	ops   []Entry
}

// NewHistory starts a history now.
func NewHistory() *History { return &History{start: time.Now()} }

// Now is the history's clock.
func (h *History) Now() int64 { return time.Since(h.start).Nanoseconds() }

// Since converts a wall time to the history's clock.
func (h *History) Since(t time.Time) int64 { return t.Sub(h.start).Nanoseconds() }

// Add records a completed (or given up) operation.
func (h *History) Add(e Entry) {
	h.mu.Lock()
	h.ops = append(h.ops, e)
	h.mu.Unlock()
}

// Entries returns a copy of the history.
func (h *History) Entries() []Entry {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Entry(nil), h.ops...)
}

// Len is the number of operations recorded.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

// opMeta is what the visualization shows next to an operation.
type opMeta struct {
	key      string
	attempts int
	err      string
	resolved bool
}

func (m opMeta) String() string {
	s := m.key
	if m.attempts > 1 {
		s += " attempts=" + strconv.Itoa(m.attempts)
	}
	if m.resolved {
		s += " (resolved after the run)"
	}
	if m.err != "" {
		s += " err=" + m.err
	}
	return s
}

// Operations converts entries to porcupine operations.
func Operations(entries []Entry) []porcupine.Operation {
	out := make([]porcupine.Operation, 0, len(entries))
	for _, e := range entries {
		key := e.Input.Key
		if e.Input.Kind == KindLinked {
			key = describeKeys(e.Input.Ops)
		}
		out = append(out, porcupine.Operation{
			ClientId: e.ClientID,
			Input:    e.Input,
			Call:     e.CallNs,
			Output:   e.Output,
			Return:   e.ReturnNs,
			Metadata: opMeta{key: key, attempts: e.Attempts, err: e.Err, resolved: e.Resolved},
		})
	}
	return out
}
