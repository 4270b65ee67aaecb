package loadtest

import (
	"math"
	"time"
)

// Schedule is an open loop's timetable: request i is due at Start + i/Rate,
// whatever happened to earlier requests. Latency is measured from the due
// time, not from when a client got round to sending it, so a server stall
// that delays later sends shows up in their latencies instead of vanishing
// (coordinated omission).
type Schedule struct {
	Start time.Time
	// RatePerSec is requests per second (> 0).
	RatePerSec float64
	// End: no request is due at or after it.
	End time.Time
}

// Due returns when request i is due. It is computed from i, not by adding
// intervals, so rounding never accumulates.
func (s Schedule) Due(i uint64) time.Time {
	return s.Start.Add(time.Duration(math.Round(float64(i) * 1e9 / s.RatePerSec)))
}

// Count is how many requests are due before End.
func (s Schedule) Count() uint64 {
	d := s.End.Sub(s.Start)
	if d <= 0 || s.RatePerSec <= 0 {
		return 0
	}
	// The smallest i with Due(i) >= End, found from the estimate and fixed
	// up for rounding.
	n := uint64(math.Ceil(d.Seconds() * s.RatePerSec))
	for n > 0 && !s.Due(n-1).Before(s.End) {
		n--
	}
	for s.Due(n).Before(s.End) {
		n++
	}
	return n
}

// CorrectedLatency is the open-loop latency of a request due at due that
// finished at done: from the due time, never negative. Service time
// (done - sent) is what a closed-loop tester would report instead.
func CorrectedLatency(due, done time.Time) time.Duration {
	return max(done.Sub(due), 0)
}
