package loadtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shopspring/decimal"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// Config configures one run.
type Config struct {
	Workload Workload
	// Clients is the number of concurrent clients: in a closed loop each
	// sends one request at a time; in an open loop it bounds requests in
	// flight (a request due while all are busy starts late, and its lateness
	// counts in its latency).
	Clients int
	// Batch is operations per request (1: single-operation requests, which
	// may be reads).
	Batch int
	// RatePerSec > 0 runs an open loop at that many requests per second.
	RatePerSec float64
	Duration   time.Duration
	// Warmup runs before the measured window; its ops are verified too.
	Warmup time.Duration
	// Seed makes the generated traffic replayable; 0 picks one.
	Seed uint64
	// RunID names the run's program and prefixes every idempotency key; ""
	// picks one.
	RunID string
	// OpTimeout bounds one call, retries included; a call that runs out
	// after it may have reached a server is indeterminate and resolved by
	// the verifier.
	OpTimeout time.Duration
	// HoldTTL is every hold's lifetime; longer than the run, so no hold
	// expires under the load.
	HoldTTL time.Duration
	// VerifyOps, VerifyBudget and VerifyAccounts bound the verifier (see
	// Verifier).
	VerifyOps, VerifyAccounts int
	VerifyBudget              time.Duration
	// Progress receives the live line once per second (nil: none); TTY
	// rewrites one line instead of printing one per second.
	Progress io.Writer
	TTY      bool
	// ServerPIDs are local server processes whose CPU time is reported
	// (Linux only; empty: none).
	ServerPIDs []int
}

// Defaults of Config.
const (
	DefaultClients   = 256
	DefaultDuration  = 15 * time.Second
	DefaultWarmup    = 2 * time.Second
	DefaultOpTimeout = 30 * time.Second
	DefaultHoldTTL   = time.Hour
	// By default every acked op and every account is checked: the run's
	// verdict is about all of them. A huge run may bound the ops (a
	// uniform random sample, reported as verify_mode "sample") or the
	// accounts (the hot ones, the budget and a random sample).
	DefaultVerifyOps      = -1
	DefaultVerifyBudget   = -1
	DefaultVerifyAccounts = 1 << 30
	// memberSeedMinor and hotSeedMinor are opening balances in points: far
	// above what a run's random walk of debits and holds takes, so debits
	// do not fail. The flash sale's hot members and the zipf scenario's
	// zipfRichMembers most popular ones get hotSeedMinor: zipf's first
	// member takes about 13% of the ops, and with memberSeedMinor its holds
	// had used up its balance after about 1.5 million ops (a review's
	// test). budgetSeedMinor is the campaign budget in cents (100 million
	// CNY).
	memberSeedMinor = 1_000_000
	hotSeedMinor    = 1_000_000_000
	zipfRichMembers = 1000
	budgetSeedMinor = 10_000_000_000
	// setupBatchOps is ops per setup request, the server's maximum; setup
	// sends setupParallel of them at a time.
	setupBatchOps = ledger.MaxBatchOps
	setupParallel = 4
	// verifyConcurrency is the verifier's lookups in flight.
	verifyConcurrency = 128
	convergeTimeout   = 20 * time.Second
)

func (c Config) withDefaults() Config {
	c.Workload = c.Workload.WithDefaults()
	if c.Clients <= 0 {
		c.Clients = DefaultClients
	}
	if c.Batch <= 0 {
		c.Batch = 1
	}
	if c.Duration <= 0 {
		c.Duration = DefaultDuration
	}
	if c.Warmup < 0 {
		c.Warmup = 0
	}
	if c.Seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		for _, x := range b {
			c.Seed = c.Seed<<8 | uint64(x)
		}
	}
	if c.RunID == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.RunID = "r" + time.Now().UTC().Format("0102150405") + hex.EncodeToString(b[:])
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = DefaultOpTimeout
	}
	if c.HoldTTL <= 0 {
		c.HoldTTL = DefaultHoldTTL
	}
	if c.VerifyOps == 0 {
		c.VerifyOps = DefaultVerifyOps
	}
	if c.VerifyBudget == 0 {
		c.VerifyBudget = DefaultVerifyBudget
	}
	if c.VerifyAccounts == 0 {
		c.VerifyAccounts = DefaultVerifyAccounts
	}
	return c
}

// Program is the program a run works in: a fresh one per run, so runs never
// see each other's accounts or keys.
func (c Config) Program() string { return "lt-" + c.RunID }

// Report is everything a run measured and found. JSON field names are the
// benchmark's interface (deploy/bench.sh reads them).
type Report struct {
	RunID      string  `json:"run_id"`
	Program    string  `json:"program"`
	Seed       uint64  `json:"seed"`
	Scenario   string  `json:"scenario"`
	Mode       string  `json:"mode"` // closed or open
	Clients    int     `json:"clients"`
	Batch      int     `json:"batch"`
	Coalesce   bool    `json:"coalesce"`
	RatePerSec float64 `json:"target_rate_per_sec,omitempty"`
	Mix        string  `json:"mix"`
	Members    int     `json:"members"`
	SetupS     float64 `json:"setup_s"`
	DurationS  float64 `json:"duration_s"` // measured window

	// Ops and Requests are those of the measured window (sent in it, or
	// due in it for an open loop): the latencies and codes are theirs.
	// OpsPerSec is AnsweredOps over the window's length: the ops that ended
	// inside the window with an answer (OK or a business refusal, not a
	// failure), so an open loop that falls behind reports the rate it
	// achieved, not the one it offered, and failing fast does not count.
	// RequestsPerSec is Requests over the window: the rate sent (closed
	// loop) or due (open loop), answered or failed; the offered rate.
	Ops            int64                   `json:"ops"`
	AnsweredOps    int64                   `json:"answered_ops"`
	Requests       int64                   `json:"requests"`
	OpsPerSec      float64                 `json:"ops_per_sec"`
	RequestsPerSec float64                 `json:"requests_per_sec"`
	MeanMs         float64                 `json:"mean_ms"`
	P50Ms          float64                 `json:"p50_ms"`
	P90Ms          float64                 `json:"p90_ms"`
	P99Ms          float64                 `json:"p99_ms"`
	P999Ms         float64                 `json:"p999_ms"`
	MaxMs          float64                 `json:"max_ms"`
	ByKind         map[string]LatencyStats `json:"by_kind"`
	// FailedLatency is that of the requests none of whose ops was answered;
	// the percentiles above leave them out.
	FailedLatency LatencyStats     `json:"failed_latency"`
	Codes         map[string]int64 `json:"codes"`
	// Errors counts the ops the system failed by code (UNAVAILABLE,
	// NOT_LEADER, INTERNAL, INDETERMINATE: outcome unknown, ...); Refusals
	// the business answers (INSUFFICIENT_FUNDS, HOLD_EXPIRED, ...).
	Errors   map[string]int64 `json:"errors"`
	Refusals map[string]int64 `json:"refusals"`
	// LateStarts counts open-loop requests that started over a millisecond
	// after they were due (every client was busy): the load generator, or
	// the server through it, fell behind the schedule.
	LateStarts int64 `json:"late_starts,omitempty"`

	LostAcks     int64         `json:"lost_acks"`
	InvariantOK  bool          `json:"invariant_ok"`
	Verification *Verification `json:"verification"`

	LoadgenCPUS     float64 `json:"loadgen_cpu_s"`
	LoadgenCPUShare float64 `json:"loadgen_cpu_share"` // of the NumCPU CPUs it may run on
	ServerCPUS      float64 `json:"server_cpu_s,omitempty"`
	ServerCPUShare  float64 `json:"server_cpu_share,omitempty"` // of the ServerNumCPU CPUs they may run on
	NumCPU          int     `json:"num_cpu"`
	ServerNumCPU    int     `json:"server_num_cpu,omitempty"`

	Timeline []Tick `json:"timeline"`
	// Interrupted is set when the run was cancelled (Ctrl-C) before its
	// window ended: DurationS is then the part that ran.
	Interrupted bool `json:"interrupted,omitempty"`
	OK          bool `json:"ok"`
}

// Run sets up, loads and verifies. coalesce says whether l coalesces (it is
// only reported). The error is a failure to run at all (setup failed); a run
// whose checks fail returns a Report with OK false.
func Run(ctx context.Context, l Ledger, coalesce bool, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	w := cfg.Workload
	if err := w.Validate(); err != nil {
		return nil, err
	}
	if cfg.Batch > ledger.MaxBatchOps {
		return nil, fmt.Errorf("batch %d is above the maximum %d", cfg.Batch, ledger.MaxBatchOps)
	}
	if cfg.Batch > 1 {
		w.Mix = w.Mix.WithoutReads()
		if w.Mix.total() == 0 {
			return nil, fmt.Errorf("batch mode needs mutating operations in the mix")
		}
	}
	rep := &Report{
		RunID: cfg.RunID, Program: cfg.Program(), Seed: cfg.Seed, Scenario: w.Scenario.String(),
		Mode: "closed", Clients: cfg.Clients, Batch: cfg.Batch, Coalesce: coalesce, RatePerSec: cfg.RatePerSec,
		Mix: w.Mix.String(), Members: w.Members, NumCPU: runtime.NumCPU(),
	}
	if cfg.RatePerSec > 0 {
		rep.Mode = "open"
	}

	setupStart := time.Now()
	if err := setup(ctx, l, cfg); err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	rep.SetupS = time.Since(setupStart).Seconds()

	r := newRunner(cfg, w, l)
	r.load(ctx, rep)

	var log []ackRecord
	for _, lg := range r.logs {
		log = append(log, lg...)
	}
	r.logs = nil
	vf := &Verifier{
		L: l, W: w, Program: cfg.Program(), RunID: cfg.RunID, SeedMinor: seedOf(w), OpOf: r.op,
		MaxOps: cfg.VerifyOps, OpsBudget: cfg.VerifyBudget, MaxAccounts: cfg.VerifyAccounts, Concurrency: verifyConcurrency,
		ConvergeTimeout: convergeTimeout, Seed: cfg.Seed,
	}
	// An interrupted load (Ctrl-C) is still verified: with ctx, every
	// lookup failed and was reported as a lost ack.
	v := vf.Verify(context.WithoutCancel(ctx), log)
	v.UnexpectedCodes += r.badReads.Load()
	v.UnexpectedExamples = append(v.UnexpectedExamples, r.readExamples...)
	v.SentReads, v.AnsweredReads = r.sentReads.Load(), r.answeredReads.Load()
	rep.Verification = v
	rep.LostAcks = v.LostAcks
	rep.InvariantOK = v.InvariantOK
	rep.OK = v.OK()
	return rep, nil
}

// seedOf returns each account's opening balance (minor units).
func seedOf(w Workload) func(int) int64 {
	return func(i int) int64 {
		switch {
		case i == w.Budget():
			return budgetSeedMinor
		case w.Scenario == FlashSale && i < w.HotMembers, w.Scenario == Zipf && i < zipfRichMembers:
			return hotSeedMinor
		}
		return memberSeedMinor
	}
}

// setup defines the assets, opens every account and seeds its balance, in
// batches of setupBatchOps. Every op must come back OK.
func setup(ctx context.Context, l Ledger, cfg Config) error {
	w, program := cfg.Workload, cfg.Program()
	// A program set up before (a --run-id used again) would turn the run's
	// first operations into replays of the earlier run's: cheap dedup hits
	// counted as throughput (found by review). Its budget account exists
	// only if a setup got that far.
	if err := notSetUp(ctx, l, program); err != nil {
		return err
	}
	if c, ok := l.(interface {
		DefineAsset(ctx context.Context, program, asset string, scale uint8, key string) (client.Result, error)
	}); ok {
		for _, a := range []struct {
			code  string
			scale uint8
		}{{MemberAsset, memberScale}, {BudgetAsset, budgetScale}} {
			if _, err := c.DefineAsset(ctx, program, a.code, a.scale, cfg.RunID+"-asset-"+a.code); err != nil {
				return fmt.Errorf("define asset %s: %w", a.code, err)
			}
		}
	}
	seed := seedOf(w)
	ops := make([]client.Op, 0, 2*w.Accounts())
	for i := range w.Accounts() {
		member, asset := w.MemberName(i), w.AssetOf(i)
		ops = append(ops,
			client.Op{Kind: ledger.OpOpenAccount, Program: program, Member: member, Asset: asset,
				IdempotencyKey: cfg.RunID + "-open-" + member},
			client.Op{Kind: ledger.OpCredit, Program: program, Member: member, Asset: asset,
				Amount: decimal.New(seed(i), -w.ScaleOf(i)), IdempotencyKey: cfg.RunID + "-seed-" + member, Memo: "seed"})
	}
	var (
		next     atomic.Int64
		firstErr error
		mu       sync.Mutex
		wg       sync.WaitGroup
	)
	nBatches := (len(ops) + setupBatchOps - 1) / setupBatchOps
	for range setupParallel {
		wg.Go(func() {
			for {
				b := int(next.Add(1) - 1)
				if b >= nBatches {
					return
				}
				part := ops[b*setupBatchOps : min((b+1)*setupBatchOps, len(ops))]
				res, err := l.Submit(ctx, part, false)
				if err == nil {
					for k, r := range res {
						if r.Code != ledger.CodeOK {
							err = fmt.Errorf("%s %s: %s %s", part[k].Kind, part[k].Member, r.Code, r.Message)
							break
						}
					}
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return firstErr
}

// Bounds of notSetUp's probe.
const (
	setupProbeAttempts = 20
	setupProbeWait     = 250 * time.Millisecond
)

// atomicMax raises v to at least x.
func atomicMax(v *atomic.Int64, x int64) {
	for {
		old := v.Load()
		if old >= x || v.CompareAndSwap(old, x) {
			return
		}
	}
}

// badAnswer counts an answer that fails the run (badReads) and keeps the
// first few as examples.
func (r *runner) badAnswer(format string, args ...any) {
	if r.badReads.Add(1) <= maxExamples {
		r.readMu.Lock()
		r.readExamples = append(r.readExamples, fmt.Sprintf(format, args...))
		r.readMu.Unlock()
	}
}

// notSetUp returns nil once a read of program's budget account says it does
// not exist. A read that fails (an election, a node restarting) says
// nothing either way, so it is asked again, a bounded number of times: a
// setup that went ahead on one failed read reused an earlier run's keys,
// and its replays passed every check (found by review).
func notSetUp(ctx context.Context, l Ledger, program string) error {
	var err error
	for range setupProbeAttempts {
		_, err = l.GetAccount(ctx, program, BudgetMember, BudgetAsset)
		switch client.CodeOf(err) {
		case ledger.CodeOK:
			return fmt.Errorf("program %s is already set up (a run id used before): pick another --run-id", program)
		case ledger.CodeAccountNotFound, ledger.CodeUnknownAsset:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(setupProbeWait):
		}
	}
	return fmt.Errorf("could not tell whether program %s is already set up: %w", program, err)
}

func newRunner(cfg Config, w Workload, l Ledger) *runner {
	return &runner{cfg: cfg, w: w, l: l, program: cfg.Program(), logs: make([][]ackRecord, cfg.Clients),
		updated: make([]atomic.Int64, w.Accounts())}
}

type runner struct {
	cfg     Config
	w       Workload
	l       Ledger
	program string
	rec     *Recorder
	stop    atomic.Bool
	logs    [][]ackRecord // per client
	late    atomic.Int64
	// badReads counts reads that ended with a code a read never should
	// (expectedCode), and reads and write results that describe an
	// impossible account (impossibleRead); readExamples keeps a few.
	badReads atomic.Int64
	// sentReads and answeredReads count the load's reads and those
	// answered (with a possible account): a run that sent reads and had
	// none answered proves nothing about them.
	sentReads, answeredReads atomic.Int64
	// updated[i] is the latest UpdatedAtMs of account i that any
	// acknowledged write's result reported. Log time never goes back, so
	// a read sent after that acknowledgement must report at least it: a
	// smaller one is a stale read (a replica behind, a cache), which the
	// other read checks cannot see.
	updated      []atomic.Int64
	readMu       sync.Mutex
	readExamples []string
	// The measured window (see load).
	warmEnd, loadEnd time.Time
}

// load runs the clients for Warmup + Duration and fills rep's figures. The
// measured window is [warmEnd, loadEnd): a request belongs to it when it was
// sent (closed loop) or due (open loop) inside it, however long it then
// took, so the slowest requests at the end of the window are not dropped.
// Clients stop sending at loadEnd; the open loop's requests are all due
// before it.
func (r *runner) load(ctx context.Context, rep *Report) {
	cfg := r.cfg
	now := time.Now()
	r.rec = NewRecorder(now)
	// A short lead so the first open-loop requests are not all late.
	start := now.Add(10 * time.Millisecond)
	r.warmEnd = start.Add(cfg.Warmup)
	r.loadEnd = r.warmEnd.Add(cfg.Duration)

	var sched *Schedule
	var count uint64
	var nextReq atomic.Uint64
	if cfg.RatePerSec > 0 {
		sched = &Schedule{Start: start, RatePerSec: cfg.RatePerSec, End: r.loadEnd}
		count = sched.Count()
	}

	var wg sync.WaitGroup
	for c := range cfg.Clients {
		wg.Go(func() { r.client(ctx, int32(c), sched, count, &nextReq) })
	}

	// CPU time over the window, and the live line once per second.
	done := make(chan struct{})
	var cpu0, srv0 float64
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		warm := time.NewTimer(time.Until(r.warmEnd))
		defer warm.Stop()
		end := time.NewTimer(time.Until(r.loadEnd))
		defer end.Stop()
		cancelled := ctx.Done()
		ended := false
		endWindow := func() {
			if ended {
				return
			}
			ended = true
			r.rec.SetMeasuring(false)
			rep.LoadgenCPUS = selfCPU() - cpu0
			rep.ServerCPUS = processesCPU(cfg.ServerPIDs) - srv0
		}
		for {
			select {
			case <-warm.C:
				cpu0, srv0 = selfCPU(), processesCPU(cfg.ServerPIDs)
				r.rec.SetMeasuring(true)
			case <-end.C:
				endWindow()
			case t := <-tick.C:
				tk := r.rec.Tick(t)
				rep.Timeline = append(rep.Timeline, tk)
				r.progress(tk)
			case <-done:
				// done and end.C can be ready together, and select picks
				// at random: the window's CPU must still be taken.
				endWindow()
				if cfg.Progress != nil && cfg.TTY {
					fmt.Fprintln(cfg.Progress)
				}
				return
			case <-cancelled:
				r.stop.Store(true)
				cancelled = nil // once: a closed channel would spin the loop
			}
		}
	}()
	wg.Wait()
	close(done)
	<-progressDone

	t := r.rec.Totals()
	secs := cfg.Duration.Seconds()
	if ctx.Err() != nil { // cancelled: the window ended early
		secs = min(max(time.Since(r.warmEnd).Seconds(), 0), secs)
		rep.Interrupted = true
	}
	rep.DurationS = secs
	rep.Ops, rep.Requests, rep.AnsweredOps = t.Ops, t.Requests, t.Answered
	if secs > 0 {
		rep.OpsPerSec = float64(t.Answered) / secs
		rep.RequestsPerSec = float64(t.Requests) / secs
		rep.LoadgenCPUShare = rep.LoadgenCPUS / (secs * float64(runtime.NumCPU()))
		rep.ServerNumCPU = processesCPUCount(cfg.ServerPIDs)
		if rep.ServerNumCPU == 0 {
			rep.ServerNumCPU = runtime.NumCPU()
		}
		rep.ServerCPUShare = rep.ServerCPUS / (secs * float64(rep.ServerNumCPU))
	}
	rep.MeanMs, rep.P50Ms, rep.P90Ms = t.All.MeanMs, t.All.P50Ms, t.All.P90Ms
	rep.P99Ms, rep.P999Ms, rep.MaxMs = t.All.P99Ms, t.All.P999Ms, t.All.MaxMs
	rep.ByKind, rep.Codes, rep.FailedLatency = t.ByKind, t.Codes, t.Failed
	rep.Errors, rep.Refusals = errorsOf(t.Codes)
	rep.LateStarts = r.late.Load()
}

// inWindow reports whether a request sent or due at t is measured.
func (r *runner) inWindow(t time.Time) bool { return !t.Before(r.warmEnd) && t.Before(r.loadEnd) }

func (r *runner) progress(t Tick) {
	if r.cfg.Progress == nil {
		return
	}
	phase := "warmup"
	if t.Measuring {
		phase = "measure"
	}
	line := fmt.Sprintf("[%5.1fs %-7s] %9.0f ops/s  p50 %7.2fms  p99 %7.2fms  max %8.2fms  errors %d",
		t.AtS, phase, t.OpsPerSec, t.P50Ms, t.P99Ms, t.MaxMs, t.Errors)
	if r.cfg.TTY {
		fmt.Fprintf(r.cfg.Progress, "\r\033[K%s", line)
	} else {
		// A log keeps the wall-clock time too, to line a stall up with the
		// nodes' logs and metrics.
		fmt.Fprintf(r.cfg.Progress, "%s  at %s\n", line, time.Now().UTC().Format("15:04:05.0"))
	}
}

// lateThreshold is how late an open-loop request may start before it
// counts as late.
const lateThreshold = time.Millisecond

// client is one client's loop: closed (sched nil) until stop, or open,
// taking due requests from the shared schedule until none is left.
func (r *runner) client(ctx context.Context, id int32, sched *Schedule, count uint64, nextReq *atomic.Uint64) {
	gen := NewGenerator(r.w, r.cfg.Seed, int(id))
	specs := make([]Spec, 0, r.cfg.Batch)
	ops := make([]client.Op, 0, r.cfg.Batch)
	codes := make([]ledger.Code, 0, r.cfg.Batch)
	var log []ackRecord
	defer func() { r.logs[id] = log }()
	for ctx.Err() == nil {
		var due time.Time
		if sched != nil {
			i := nextReq.Add(1) - 1
			if i >= count || r.stop.Load() {
				return
			}
			due = sched.Due(i)
			if d := time.Until(due); d > 0 {
				// A Ctrl-C must not wait out a far slot.
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return
				}
			} else if -d > lateThreshold {
				r.late.Add(1)
			}
		} else if r.stop.Load() || !time.Now().Before(r.loadEnd) {
			return
		}

		specs = specs[:0]
		for range r.cfg.Batch {
			specs = append(specs, gen.Next())
		}
		start := time.Now()
		if sched == nil {
			due = start
		}
		kind := specs[0].Kind
		if r.cfg.Batch > 1 {
			kind = KindBatch
		}
		codes = codes[:0]
		if kind == KindRead {
			member, asset := r.w.MemberName(specs[0].Account), r.w.AssetOf(specs[0].Account)
			floor := r.updated[specs[0].Account].Load()
			cctx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
			acct, err := r.l.GetAccount(cctx, r.program, member, asset)
			cancel()
			code := client.CodeOf(err)
			bad := ""
			switch {
			case !expectedCode(KindRead, code):
				bad = string(code)
			case err == nil:
				// An answer about another account (or an impossible
				// balance) is no answer: it must not count as a read.
				if why := impossibleRead(&acct, r.program, member, asset, r.w.ScaleOf(specs[0].Account)); why != "" {
					bad = why
					code = ledger.CodeInternal
				} else if acct.UpdatedAtMs < floor {
					bad = fmt.Sprintf("stale: updated at %d, before %d, which a write acknowledged before the read was sent reported",
						acct.UpdatedAtMs, floor)
					code = ledger.CodeInternal
				}
			}
			r.sentReads.Add(1)
			if err == nil && bad == "" {
				r.answeredReads.Add(1)
			}
			if bad != "" {
				r.badAnswer("read of %s/%s: %s", member, asset, bad)
			}
			codes = append(codes, code)
			end := time.Now()
			r.rec.Record(int(id), kind, CorrectedLatency(due, end), codes, r.inWindow(due), r.inWindow(end))
			continue
		}
		ops = ops[:0]
		for _, s := range specs {
			ops = append(ops, r.op(id, s))
		}
		cctx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
		res, err := r.l.Submit(cctx, ops, false)
		cancel()
		end := time.Now()
		// Parts of a request over several shards fail apart: an op is
		// indeterminate if its own result says so (or, without results,
		// if the call's error does).
		indeterminate := err != nil && client.IsIndeterminate(err)
		for k, s := range specs {
			if k < len(res) {
				indeterminate = res[k].Indeterminate
			}
			rec := ackRecord{client: id, spec: s}
			switch {
			case k < len(res) && res[k].Seq > 0:
				rec.state, rec.code, rec.seq, rec.digest = stateAcked, res[k].Code, res[k].Seq, resultDigest(res[k])
				if s.Kind == KindHold && res[k].Code == ledger.CodeOK {
					gen.HoldAcked(s)
				}
				if a := res[k].Account; a != nil {
					atomicMax(&r.updated[s.Account], a.UpdatedAtMs)
					member, asset := r.w.MemberName(s.Account), r.w.AssetOf(s.Account)
					if why := impossibleRead(a, r.program, member, asset, r.w.ScaleOf(s.Account)); why != "" {
						r.badAnswer("%s result on %s/%s: %s", s.Kind, member, asset, why)
					}
				}
			case indeterminate:
				rec.state, rec.code = stateIndeterminate, codeIndeterminate
			case k < len(res) && res[k].Code != "" && !failed(res[k].Code):
				// The ledger stamps a seq on every outcome it records,
				// refusals included: an outcome without one was recorded
				// nowhere, yet the client was told it (found by review).
				// As an ack of seq 0 its lookup finds no record, or
				// another seq: a lost ack.
				rec.state, rec.code, rec.digest = stateAcked, res[k].Code, resultDigest(res[k])
			default:
				rec.state = stateFailed
				rec.code = client.CodeOf(err)
				if k < len(res) && res[k].Code != "" {
					rec.code = res[k].Code
				}
			}
			codes = append(codes, rec.code)
			log = append(log, rec)
		}
		r.rec.Record(int(id), kind, CorrectedLatency(due, end), codes, r.inWindow(due), r.inWindow(end))
	}
}

// op builds the client.Op of s.
func (r *runner) op(id int32, s Spec) client.Op {
	member := r.w.MemberName(s.Account)
	op := client.Op{Program: r.program, Member: member, IdempotencyKey: keyOf(r.cfg.RunID, id, s.Seq)}
	amount := decimal.New(s.AmountMinor, -r.w.ScaleOf(s.Account))
	switch s.Kind {
	case KindCredit:
		op.Kind, op.Asset, op.Amount = ledger.OpCredit, r.w.AssetOf(s.Account), amount
	case KindDebit, KindDraw:
		op.Kind, op.Asset, op.Amount = ledger.OpDebit, r.w.AssetOf(s.Account), amount
	case KindHold:
		op.Kind, op.Asset, op.Amount, op.HoldTTL = ledger.OpHold, r.w.AssetOf(s.Account), amount, r.cfg.HoldTTL
	case KindCapture:
		op.Kind, op.HoldKey = ledger.OpCaptureHold, keyOf(r.cfg.RunID, id, s.HoldSeq)
	default:
		panic("loadtest: no op for kind " + s.Kind.String())
	}
	return op
}

// Summary writes rep as text.
func Summary(out io.Writer, rep *Report) {
	var b strings.Builder
	fmt.Fprintf(&b, "run %s (program %s, seed %d)\n", rep.RunID, rep.Program, rep.Seed)
	mode := fmt.Sprintf("closed loop, %d clients", rep.Clients)
	if rep.Mode == "open" {
		mode = fmt.Sprintf("open loop at %.0f req/s (latency from intended start), up to %d in flight", rep.RatePerSec, rep.Clients)
	}
	fmt.Fprintf(&b, "scenario %s, %d members, mix %s, batch %d, coalesce %v, %s\n",
		rep.Scenario, rep.Members, rep.Mix, rep.Batch, rep.Coalesce, mode)
	fmt.Fprintf(&b, "setup %.1fs; measured %.1fs: %d ops in %d requests\n", rep.SetupS, rep.DurationS, rep.Ops, rep.Requests)
	if rep.Interrupted {
		b.WriteString("interrupted: the measured window was cut short (the figures are of the part that ran)\n")
	}
	sent := "sent"
	if rep.Mode == "open" {
		sent = "due on the schedule" // the offered rate, answered or not
	}
	fmt.Fprintf(&b, "throughput  %.0f ops/s answered in the window (%d ops; %.0f requests/s %s)\n", rep.OpsPerSec, rep.AnsweredOps, rep.RequestsPerSec, sent)
	fmt.Fprintf(&b, "latency     p50 %.2fms  p90 %.2fms  p99 %.2fms  p99.9 %.2fms  max %.2fms  mean %.2fms\n",
		rep.P50Ms, rep.P90Ms, rep.P99Ms, rep.P999Ms, rep.MaxMs, rep.MeanMs)
	for _, k := range sortedKeys(rep.ByKind) {
		s := rep.ByKind[k]
		fmt.Fprintf(&b, "  %-8s %9d  p50 %7.2fms  p99 %7.2fms  p99.9 %7.2fms  max %8.2fms\n", k, s.Count, s.P50Ms, s.P99Ms, s.P999Ms, s.MaxMs)
	}
	if f := rep.FailedLatency; f.Count > 0 {
		fmt.Fprintf(&b, "  %-8s %9d  p50 %7.2fms  p99 %7.2fms  p99.9 %7.2fms  max %8.2fms  (requests with no op answered; not in the figures above)\n",
			"failed", f.Count, f.P50Ms, f.P99Ms, f.P999Ms, f.MaxMs)
	}
	fmt.Fprintf(&b, "outcomes   ")
	for _, c := range sortedKeys(rep.Codes) {
		fmt.Fprintf(&b, " %s=%d", c, rep.Codes[c])
	}
	b.WriteString("\n")
	if rep.Mode == "open" {
		fmt.Fprintf(&b, "late starts %d (over %v after due)\n", rep.LateStarts, lateThreshold)
	}
	fmt.Fprintf(&b, "cpu         load generator %.1fs = %.0f%% of %d CPUs", rep.LoadgenCPUS, 100*rep.LoadgenCPUShare, rep.NumCPU)
	if rep.ServerCPUS > 0 {
		fmt.Fprintf(&b, "; servers %.1fs = %.0f%% of %d CPUs", rep.ServerCPUS, 100*rep.ServerCPUShare, rep.ServerNumCPU)
	}
	b.WriteString("\n")
	if v := rep.Verification; v != nil {
		fmt.Fprintf(&b, "verify (%.1fs): %d of %d acked ops looked up (%s): lost_acks=%d keys_reused=%d lookup_failed=%d; indeterminate %d, settled by re-send (recorded %d, refused %d, unresolved %d)\n",
			v.DurationS, v.VerifiedOps, v.AckedOps, v.VerifyMode, v.LostAcks, v.KeysReused, v.LookupFailed, v.Indeterminate, v.ResolvedApplied, v.ResolvedRefused, v.UnresolvedOps)
		fmt.Fprintf(&b, "  failed ops: %d looked up, %d stored anyway; unexpected codes and impossible answers: %d\n", v.FailedChecked, v.FailedStored, v.UnexpectedCodes)
		if v.SentReads > 0 {
			fmt.Fprintf(&b, "  reads: %d of %d answered\n", v.AnsweredReads, v.SentReads)
		}
		fmt.Fprintf(&b, "  balances: %d accounts checked, %d mismatches (%d skipped: unknown outcome)\n",
			v.AccountsChecked, v.BalanceMismatch, v.AccountsSkipped)
		fmt.Fprintf(&b, "  invariants over %d shards: conservation_ok=%v replicas_equal=%v invariant_ok=%v\n",
			v.ShardsChecked, v.ConservationOK, v.ReplicasEqual, v.InvariantOK)
		var examples []string
		for _, e := range [][]string{v.LostAckExamples, v.FailedExamples, v.UnexpectedExamples, v.BalanceExamples, v.InvariantDetails} {
			examples = append(examples, e...)
		}
		for _, s := range examples {
			fmt.Fprintf(&b, "  ! %s\n", s)
		}
	}
	if rep.OK {
		if v := rep.Verification; v != nil && v.VerifyMode == "sample" {
			// Balances and invariants were checked in full; the acks by sample.
			fmt.Fprintf(&b, "result: PASS (acks sampled: %d of %d looked up)\n", v.VerifiedOps, v.AckedOps)
		} else {
			b.WriteString("result: PASS\n")
		}
	} else {
		b.WriteString("result: FAIL\n")
	}
	_, _ = io.WriteString(out, b.String())
}

// impossibleRead says what is wrong with acct as the answer to a read of
// program/member/asset, or "" if nothing is: it names another account, or
// holds balances the ledger's invariants forbid (ledger.CheckAccount) or
// that do not add up (available = posted - held).
func impossibleRead(acct *client.Account, program, member, asset string, scale int32) string {
	switch {
	case acct.Program != program || acct.Member != member || acct.Asset != asset:
		return fmt.Sprintf("answered with account %s/%s/%s", acct.Program, acct.Member, acct.Asset)
	case int32(acct.Scale) != scale:
		return fmt.Sprintf("scale %d, the asset's is %d", acct.Scale, scale)
	case acct.Held.IsNegative() || acct.Held.GreaterThan(acct.Posted):
		return fmt.Sprintf("held %s outside [0, posted %s]", acct.Held, acct.Posted)
	case !acct.Available.Equal(acct.Posted.Sub(acct.Held)):
		return fmt.Sprintf("available %s is not posted %s - held %s", acct.Available, acct.Posted, acct.Held)
	case acct.MaxBalance != nil && acct.Posted.GreaterThan(*acct.MaxBalance):
		return fmt.Sprintf("posted %s above its max balance %s", acct.Posted, acct.MaxBalance)
	}
	return ""
}
