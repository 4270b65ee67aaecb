package loadtest

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/tally-ledger/tally/ledger"
)

// Histogram bounds: latencies are recorded in microseconds from 1 µs to an
// hour with 3 significant digits, so p99.9 of a few milliseconds is exact to
// a few µs. The bound is an hour, not the request timeout: an open loop
// that falls behind its schedule measures from when each request was due,
// and those latencies grow with the run (they used to be clamped at a
// minute, so an overloaded run's p99.9 and max read exactly 60 s).
const (
	minLatencyUs  = 1
	maxLatencyUs  = 3_600_000_000
	latencyDigits = 3
	// numStripes spreads recording over this many locks. Clients pick a
	// stripe by index, so 256 clients share 16 locks that each are held for
	// a histogram update (tens of ns).
	numStripes = 16
)

func newHistogram() *hdr.Histogram { return hdr.New(minLatencyUs, maxLatencyUs, latencyDigits) }

func recordLatency(h *hdr.Histogram, d time.Duration) {
	us := min(max(d.Microseconds(), minLatencyUs), maxLatencyUs)
	_ = h.RecordValue(us) // in range by construction
}

// codeIndeterminate is the outcome of an op whose request gave up after it
// may have reached a server: neither applied nor refused as far as the
// load generator knows (the verifier resolves it after the run).
const codeIndeterminate ledger.Code = "INDETERMINATE"

// failed reports whether an op's code says the system did not answer it:
// unavailable, no leader, an internal error, an outcome unknown, or a
// request the ledger should never have seen from this workload. Business
// refusals (INSUFFICIENT_FUNDS, HOLD_EXPIRED, ACCOUNT_FROZEN, ...) are the
// ledger doing its job: they count as answered operations.
func failed(c ledger.Code) bool {
	switch c {
	case ledger.CodeUnavailable, ledger.CodeNotLeader, ledger.CodeInternal, codeIndeterminate,
		ledger.CodeInvalidArgument, ledger.CodeWrongShard, ledger.CodeIdempotencyKeyReused:
		return true
	}
	return false
}

type stripe struct {
	mu sync.Mutex
	// Measured window (after warmup, before stop).
	kinds [numKinds]*hdr.Histogram
	all   *hdr.Histogram
	// failedLat holds the requests none of whose ops was answered: a
	// failure that comes back at once must not pull the percentiles down.
	failedLat *hdr.Histogram
	ops       int64
	requests  int64
	// answered counts the ops that completed inside the window with an
	// answer (OK or a business refusal): what throughput is made of.
	answered int64
	codes    map[ledger.Code]int64
	// Since the last Tick, measured or not (the live line and the timeline).
	interval     *hdr.Histogram
	intervalOps  int64
	intervalErrs int64
}

// Recorder collects latencies and outcomes from many clients.
type Recorder struct {
	stripes [numStripes]stripe
	// measuring only marks timeline ticks; what is measured is decided
	// per request by the caller (Record's measured).
	measuring atomic.Bool
	start     time.Time // of the recorder: timeline times are relative to it
	lastTick  time.Time
	tickMu    sync.Mutex
	scratch   *hdr.Histogram
}

// NewRecorder returns a recorder that is not yet measuring.
func NewRecorder(now time.Time) *Recorder {
	r := &Recorder{start: now, lastTick: now, scratch: newHistogram()}
	for i := range r.stripes {
		s := &r.stripes[i]
		for k := range s.kinds {
			s.kinds[k] = newHistogram()
		}
		s.all = newHistogram()
		s.failedLat = newHistogram()
		s.interval = newHistogram()
		s.codes = make(map[ledger.Code]int64)
	}
	return r
}

// SetMeasuring marks the ticks that follow as inside (or outside) the
// measured window.
func (r *Recorder) SetMeasuring(on bool) { r.measuring.Store(on) }

// Record records one request of client with latency lat whose operations
// ended with codes (one per op; a read is one op). measured says whether
// its latency and outcomes belong to the measured window (the caller
// decides by when the request was due or sent, not when it ended, so the
// slow requests at the end of a window count); endedIn says whether it
// ended inside the window, which is what throughput counts (an open loop
// that falls behind still sends every request due in the window, late, and
// counting those by when they were due reported the offered rate, not the
// achieved one). Every request counts in the live interval. The latency
// percentiles are those of answered requests (at least one op answered);
// a request whose every op failed goes to a latency of its own: failures
// that come back at once would pull the percentiles far below what every
// answered request took (TestFailedRequestsLeaveThePercentiles).
func (r *Recorder) Record(client int, kind Kind, lat time.Duration, codes []ledger.Code, measured, endedIn bool) {
	nFailed := int64(0)
	for _, c := range codes {
		if failed(c) {
			nFailed++
		}
	}
	answeredReq := nFailed < int64(len(codes))
	s := &r.stripes[client%numStripes]
	s.mu.Lock()
	if answeredReq {
		recordLatency(s.interval, lat)
	}
	s.intervalOps += int64(len(codes)) - nFailed
	s.intervalErrs += nFailed
	if endedIn {
		s.answered += int64(len(codes)) - nFailed
	}
	if measured {
		if answeredReq {
			recordLatency(s.kinds[kind], lat)
			recordLatency(s.all, lat)
		} else {
			recordLatency(s.failedLat, lat)
		}
		s.ops += int64(len(codes))
		s.requests++
		for _, c := range codes {
			s.codes[c]++
		}
	}
	s.mu.Unlock()
}

// Tick is one second (or so) of the run: what the live line and the
// latency-over-time plot show.
type Tick struct {
	AtS       float64 `json:"t_s"` // end of the interval, since the recorder started
	OpsPerSec float64 `json:"ops_per_sec"`
	Errors    int64   `json:"errors"` // failed ops in the interval (see failed); OpsPerSec counts the others
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	P999Ms    float64 `json:"p999_ms"`
	MaxMs     float64 `json:"max_ms"`
	Measuring bool    `json:"measuring"` // inside the measured window
}

// Tick closes the current interval and returns its figures.
func (r *Recorder) Tick(now time.Time) Tick {
	r.tickMu.Lock()
	defer r.tickMu.Unlock()
	h := r.scratch
	h.Reset()
	var ops, errs int64
	for i := range r.stripes {
		s := &r.stripes[i]
		s.mu.Lock()
		h.Merge(s.interval)
		s.interval.Reset()
		ops += s.intervalOps
		errs += s.intervalErrs
		s.intervalOps, s.intervalErrs = 0, 0
		s.mu.Unlock()
	}
	secs := now.Sub(r.lastTick).Seconds()
	r.lastTick = now
	t := Tick{AtS: now.Sub(r.start).Seconds(), Errors: errs, Measuring: r.measuring.Load()}
	if secs > 0 {
		t.OpsPerSec = float64(ops) / secs
	}
	if h.TotalCount() > 0 {
		t.P50Ms = usToMs(h.ValueAtQuantile(50))
		t.P99Ms = usToMs(h.ValueAtQuantile(99))
		t.P999Ms = usToMs(h.ValueAtQuantile(99.9))
		t.MaxMs = usToMs(h.Max())
	}
	return t
}

func usToMs(us int64) float64 { return float64(us) / 1000 }

// LatencyStats summarises one histogram.
type LatencyStats struct {
	Count  int64   `json:"count"`
	MeanMs float64 `json:"mean_ms"`
	P50Ms  float64 `json:"p50_ms"`
	P90Ms  float64 `json:"p90_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	MaxMs  float64 `json:"max_ms"`
}

func statsOf(h *hdr.Histogram) LatencyStats {
	if h.TotalCount() == 0 {
		return LatencyStats{}
	}
	return LatencyStats{
		Count:  h.TotalCount(),
		MeanMs: h.Mean() / 1000,
		P50Ms:  usToMs(h.ValueAtQuantile(50)),
		P90Ms:  usToMs(h.ValueAtQuantile(90)),
		P99Ms:  usToMs(h.ValueAtQuantile(99)),
		P999Ms: usToMs(h.ValueAtQuantile(99.9)),
		MaxMs:  usToMs(h.Max()),
	}
}

// Totals is the measured window merged over all clients.
type Totals struct {
	Ops, Requests int64
	// Answered is the ops that ended in the window with an answer.
	Answered int64
	All      LatencyStats
	ByKind   map[string]LatencyStats
	Codes    map[string]int64
	// Failed is the latency of the requests none of whose ops was answered
	// (All and ByKind leave them out).
	Failed LatencyStats
}

// Totals merges the measured window of every stripe.
func (r *Recorder) Totals() Totals {
	all, failedLat := newHistogram(), newHistogram()
	kinds := [numKinds]*hdr.Histogram{}
	for k := range kinds {
		kinds[k] = newHistogram()
	}
	t := Totals{ByKind: map[string]LatencyStats{}, Codes: map[string]int64{}}
	for i := range r.stripes {
		s := &r.stripes[i]
		s.mu.Lock()
		all.Merge(s.all)
		failedLat.Merge(s.failedLat)
		for k := range kinds {
			kinds[k].Merge(s.kinds[k])
		}
		t.Ops += s.ops
		t.Requests += s.requests
		t.Answered += s.answered
		for c, n := range s.codes {
			t.Codes[string(c)] += n
		}
		s.mu.Unlock()
	}
	t.All = statsOf(all)
	t.Failed = statsOf(failedLat)
	for k, h := range kinds {
		if h.TotalCount() > 0 {
			t.ByKind[Kind(k).String()] = statsOf(h)
		}
	}
	return t
}

// errorsOf returns the codes of failed ops (see failed) and the business
// refusals, apart.
func errorsOf(codes map[string]int64) (errs, refusals map[string]int64) {
	errs, refusals = map[string]int64{}, map[string]int64{}
	for c, n := range codes {
		switch {
		case c == string(ledger.CodeOK):
		case failed(ledger.Code(c)):
			errs[c] = n
		default:
			refusals[c] = n
		}
	}
	return errs, refusals
}

// sortedKeys returns m's keys sorted, for stable output.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
