package loadtest

import (
	"testing"
	"time"
)

func TestScheduleDueIsExactAndDoesNotDrift(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := Schedule{Start: t0, RatePerSec: 3, End: t0.Add(time.Hour)}
	// 1/3 s is not a whole number of ns; adding it up would drift.
	if got, want := s.Due(3_000_000), t0.Add(1_000_000*time.Second); !got.Equal(want) {
		t.Errorf("Due(3e6) = %v, want %v", got.Sub(t0), want.Sub(t0))
	}
	if got, want := s.Due(1), t0.Add(333_333_333*time.Nanosecond); !got.Equal(want) {
		t.Errorf("Due(1) = %v, want %v", got.Sub(t0), want.Sub(t0))
	}
	if got, want := s.Due(2), t0.Add(666_666_667*time.Nanosecond); !got.Equal(want) {
		t.Errorf("Due(2) = %v, want %v", got.Sub(t0), want.Sub(t0))
	}
}

func TestScheduleCount(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		rate float64
		d    time.Duration
		want uint64
	}{
		{1000, time.Second, 1000},     // due at 0 .. 999 ms; 1000 ms is End
		{1000, time.Second + 1, 1001}, // 1000 ms is before End
		{3, time.Second, 3},           // 0, 1/3, 2/3
		{0.5, 10 * time.Second, 5},    // every 2 s
		{10_000, 15 * time.Second, 150_000},
		{100, 0, 0},
	} {
		s := Schedule{Start: t0, RatePerSec: tc.rate, End: t0.Add(tc.d)}
		if got := s.Count(); got != tc.want {
			t.Errorf("rate %v over %v: Count = %d, want %d", tc.rate, tc.d, got, tc.want)
		}
		n := s.Count()
		if n > 0 && !s.Due(n-1).Before(s.End) {
			t.Errorf("rate %v over %v: request %d is due at End or later", tc.rate, tc.d, n-1)
		}
		if tc.d > 0 && s.Due(n).Before(s.End) {
			t.Errorf("rate %v over %v: request %d is due before End but not counted", tc.rate, tc.d, n)
		}
	}
}

// TestCoordinatedOmissionCorrection simulates a server that answers in 1 ms
// but stalls once for 100 ms, driven by one client at 1000 req/s. A closed
// loop's service times show one slow request; latencies from the due time
// show the ~100 requests the stall delayed, which is what users saw.
func TestCoordinatedOmissionCorrection(t *testing.T) {
	t0 := time.Unix(0, 0)
	s := Schedule{Start: t0, RatePerSec: 1000, End: t0.Add(time.Second)}
	stallAt, stall, service := 200*time.Millisecond, 100*time.Millisecond, time.Millisecond
	h, raw := newHistogram(), newHistogram()
	free := t0 // when the one client is free again
	for i := range s.Count() {
		due := s.Due(i)
		sent := due
		if free.After(sent) {
			sent = free // the client was busy: the request starts late
		}
		took := service
		if sent.Sub(t0) >= stallAt && sent.Sub(t0) < stallAt+service {
			took += stall
		}
		done := sent.Add(took)
		free = done
		recordLatency(h, CorrectedLatency(due, done))
		recordLatency(raw, done.Sub(sent))
	}
	if p99 := raw.ValueAtQuantile(99); p99 > 2000 {
		t.Errorf("service-time p99 = %dµs; the stall should hide in it", p99)
	}
	// Requests due during the stall waited for it: ~10% of the second.
	if p90 := h.ValueAtQuantile(92); p90 < 10_000 {
		t.Errorf("corrected p92 = %dµs, want the stall (>= 10ms) visible", p90)
	}
	if max := h.Max(); max < 100_000 {
		t.Errorf("corrected max = %dµs, want >= the 100ms stall", max)
	}
	if got := CorrectedLatency(t0.Add(time.Second), t0); got != 0 {
		t.Errorf("latency before due = %v, want 0", got)
	}
}
