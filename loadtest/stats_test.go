package loadtest

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tally-ledger/tally/ledger"
)

func TestRecorderWindowAndPercentiles(t *testing.T) {
	t0 := time.Unix(0, 0)
	r := NewRecorder(t0)
	ok := []ledger.Code{ledger.CodeOK}
	// Outside the window: only the live interval sees it.
	r.Record(0, KindCredit, time.Second, ok, false, false)
	for i := range 1000 { // 1..1000 ms, spread over clients and stripes
		r.Record(i, KindDebit, time.Duration(i+1)*time.Millisecond, ok, true, true)
	}
	// A refusal is an answer; a failure and an unknown outcome are not.
	r.Record(3, KindBatch, 5*time.Millisecond, []ledger.Code{ledger.CodeOK, ledger.CodeInsufficientFunds, ledger.CodeOK}, true, true)
	r.Record(4, KindBatch, 5*time.Millisecond, []ledger.Code{ledger.CodeUnavailable, codeIndeterminate}, true, true)
	// Due in the window, ended after it (an open loop behind its schedule):
	// its latency counts, its op is not throughput.
	r.Record(5, KindCredit, 3*time.Second, ok, true, false)
	r.Record(0, KindCredit, time.Minute, ok, false, false)

	tot := r.Totals()
	if tot.Requests != 1003 || tot.Ops != 1006 || tot.Answered != 1003 {
		t.Fatalf("requests %d ops %d answered %d, want 1003, 1006 and 1003", tot.Requests, tot.Ops, tot.Answered)
	}
	if c := tot.ByKind["credit"]; c.Count != 1 {
		t.Errorf("credit stats %+v: want only the one due in the window", c)
	}
	d := tot.ByKind["debit"]
	if d.Count != 1000 || d.P50Ms < 499 || d.P50Ms > 501 || d.P99Ms < 989 || d.P99Ms > 991 || d.MaxMs < 999 || d.MaxMs > 1001 {
		t.Errorf("debit stats %+v, want p50 500, p99 990, max 1000 ms", d)
	}
	if tot.Codes["OK"] != 1003 || tot.Codes["INSUFFICIENT_FUNDS"] != 1 || tot.Codes["UNAVAILABLE"] != 1 || tot.Codes["INDETERMINATE"] != 1 {
		t.Errorf("codes %v", tot.Codes)
	}
	errs, refusals := errorsOf(tot.Codes)
	if len(errs) != 2 || errs["UNAVAILABLE"] != 1 || errs["INDETERMINATE"] != 1 || len(refusals) != 1 || refusals["INSUFFICIENT_FUNDS"] != 1 {
		t.Errorf("errors %v, refusals %v", errs, refusals)
	}

	tk := r.Tick(t0.Add(2 * time.Second))
	if tk.OpsPerSec != 1006.0/2 || tk.Errors != 2 || tk.MaxMs < 59_000 {
		t.Errorf("tick %+v: want 503 ops/s, 2 errors, max ~60000 ms", tk)
	}
	if tk2 := r.Tick(t0.Add(3 * time.Second)); tk2.OpsPerSec != 0 || tk2.P99Ms != 0 {
		t.Errorf("second tick not reset: %+v", tk2)
	}
	// Latencies up to an hour are kept (an open loop behind schedule
	// measures from when requests were due); beyond it they are clamped,
	// never dropped.
	r.Record(0, KindRead, 3*time.Minute, ok, true, true)
	r.Record(0, KindRead, 2*time.Hour, ok, true, true)
	r.Record(0, KindRead, 0, ok, true, true)
	got := r.Totals().ByKind["read"]
	if got.Count != 3 || got.P50Ms < 179_000 || got.P50Ms > 181_000 || got.MaxMs < 3_590_000 || got.MaxMs > 3_610_000 {
		t.Errorf("read stats %+v: want p50 3 min, max 1 h", got)
	}
}

func TestReportJSONHasTheBenchmarkFields(t *testing.T) {
	rep := &Report{OpsPerSec: 1234.5, P50Ms: 1, P99Ms: 9, P999Ms: 20, Errors: map[string]int64{"INSUFFICIENT_FUNDS": 3},
		LostAcks: 0, InvariantOK: true, Verification: &Verification{InvariantOK: true}, OK: true,
		Timeline: []Tick{{AtS: 1, OpsPerSec: 100, P99Ms: 3, Measuring: true}}}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ops_per_sec", "p50_ms", "p99_ms", "p999_ms", "errors", "lost_acks", "invariant_ok", "timeline"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	if m["ops_per_sec"].(float64) != 1234.5 || m["errors"].(map[string]any)["INSUFFICIENT_FUNDS"].(float64) != 3 {
		t.Errorf("JSON values: %s", b)
	}
	var sum, plot bytes.Buffer
	Summary(&sum, rep)
	if !strings.Contains(sum.String(), "1234 ops/s") || !strings.Contains(sum.String(), "result: PASS") {
		t.Errorf("summary:\n%s", sum.String())
	}
	if err := WritePlot(&plot, rep); err != nil || !strings.Contains(plot.String(), "<polyline") {
		t.Errorf("plot: %v\n%s", err, plot.String())
	}
}

// TestFailedRequestsLeaveThePercentiles: requests whose every op failed
// (fast) do not pull the percentiles down; they have a latency of their
// own (found by review: half the requests failing at once gave p50 0.025
// ms while every answered request took 20 ms).
func TestFailedRequestsLeaveThePercentiles(t *testing.T) {
	r := NewRecorder(time.Unix(0, 0))
	for i := range 100 {
		r.Record(i, KindCredit, 20*time.Millisecond, []ledger.Code{ledger.CodeOK}, true, true)
		r.Record(i, KindCredit, 25*time.Microsecond, []ledger.Code{ledger.CodeUnavailable}, true, true)
	}
	// A batch with one op answered is an answered request.
	r.Record(0, KindBatch, 30*time.Millisecond, []ledger.Code{ledger.CodeUnavailable, ledger.CodeOK}, true, true)
	tot := r.Totals()
	if tot.All.Count != 101 || tot.All.P50Ms < 19.9 || tot.Failed.Count != 100 || tot.Failed.MaxMs > 0.03 {
		t.Fatalf("all %+v, failed %+v: want 101 answered requests at p50 20 ms and 100 failed apart", tot.All, tot.Failed)
	}
	if c := tot.ByKind["credit"]; c.Count != 100 || c.P50Ms < 19.9 {
		t.Errorf("credit %+v: want the 100 answered ones", c)
	}
	if tk := r.Tick(time.Unix(1, 0)); tk.P50Ms < 19.9 {
		t.Errorf("tick %+v: the live p50 counts failures too", tk)
	}
}
