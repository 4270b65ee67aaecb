package linearizability

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shopspring/decimal"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/internal/diskprobe"
	"github.com/tally-ledger/tally/ledger"
)

// Config is one run of the harness.
type Config struct {
	// Tallyd is the tallyd binary to run.
	Tallyd string
	// Seed drives the fault schedule and the workload.
	Seed uint64
	// ResultsDir receives the evidence (and the nodes' data directories,
	// removed after a run whose checks all pass unless KeepData is set).
	ResultsDir string
	KeepData   bool
	Shards     int // >= 2
	Clients    int // concurrent workers
	// Accounts is the number of members over all shards, per epoch; each
	// has an account in every asset of the workload.
	Accounts int
	// EpochLength, if set, moves the workload to a fresh set of Accounts
	// members every EpochLength, so long runs keep per-member histories
	// small (porcupine's cost grows fast with history length).
	EpochLength time.Duration
	// Faults are the kinds injected; each kind at least FaultRounds times,
	// and rounds continue until Duration has passed.
	Faults      []FaultKind
	FaultRounds int
	Duration    time.Duration
	Timing      Timing
	// MinOps: the workload continues after the faults (healed) until this
	// many operations are recorded, or MaxDuration ends the run.
	MinOps      int
	MaxDuration time.Duration
	// Coalesce makes all workers share one client with Config.Coalesce on,
	// so concurrent operations travel as batched Submits and reads as
	// GetAccounts, and a worker that gives up leaves a batch other workers
	// still wait on.
	Coalesce bool
	// UnsafeLocalReads is the deliberately broken variant: nodes run with
	// --unsafe-local-reads and reads go straight to a random node.
	UnsafeLocalReads bool
	// TLS runs every link of the cluster mutual TLS (ClusterConfig.TLS).
	TLS bool
	// CheckTimeout bounds porcupine per member; an undecided member
	// fails the linearizability check. Run's context bounds the checks as
	// a whole: members not checked when it ends fail the check too.
	CheckTimeout time.Duration
	// SnapshotThreshold, SnapshotLogBytes, TrailingLogs, CheckEvery: see
	// ClusterConfig.
	SnapshotThreshold uint64
	SnapshotLogBytes  uint64
	TrailingLogs      uint64
	CheckEvery        int64
	// Logf receives progress lines (nil: silent).
	Logf func(format string, args ...any)
}

func (cfg *Config) defaults() error {
	if cfg.Tallyd == "" {
		return errors.New("config: Tallyd (path to the binary) is required")
	}
	if cfg.ResultsDir == "" {
		return errors.New("config: ResultsDir is required")
	}
	if cfg.Shards < 2 {
		cfg.Shards = 2
	}
	if cfg.Clients <= 0 {
		cfg.Clients = 8
	}
	if cfg.Accounts <= 0 {
		cfg.Accounts = 12
	}
	if cfg.Accounts < cfg.Shards {
		cfg.Accounts = cfg.Shards
	}
	if len(cfg.Faults) == 0 {
		cfg.Faults = AllFaults
	}
	if cfg.FaultRounds <= 0 {
		cfg.FaultRounds = 1
	}
	if cfg.Timing == (Timing{}) {
		cfg.Timing = DefaultTiming
	}
	if cfg.MaxDuration <= 0 {
		cfg.MaxDuration = cfg.Duration + 5*time.Minute
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = time.Minute
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return nil
}

// Report is what a run found.
type Report struct {
	Seed       uint64 `json:"seed"`
	ResultsDir string `json:"results_dir"`
	Broken     bool   `json:"unsafe_local_reads"`
	Shards     int    `json:"shards"`
	Clients    int    `json:"clients"`
	Members    int    `json:"members"`
	// Accounts is every member's accounts together (before members had
	// one account each, and it counted members).
	Accounts int           `json:"accounts"`
	Workload time.Duration `json:"workload_ns"`
	Total    time.Duration `json:"total_ns"`
	// Ops counts recorded operations by kind and by outcome.
	Ops      int            `json:"ops"`
	OpsBy    map[string]int `json:"ops_by_kind"`
	Outcomes map[string]int `json:"outcomes"`
	// Indeterminate writes: resolved as applied, or never applied.
	ResolvedApplied    int                    `json:"resolved_applied"`
	ResolvedNotApplied int                    `json:"resolved_not_applied"`
	Faults             map[FaultKind]int      `json:"faults"`
	Timeline           []TimelineEvent        `json:"timeline"`
	Checks             []CheckResult          `json:"checks"`
	AccountResults     []AccountResult        `json:"account_results"`
	Replicas           map[int][]ReplicaState `json:"replicas"`
	Crashes            []string               `json:"crashes,omitempty"`
	// DiskSync is the sync latency of the disk under the nodes' data,
	// probed before the cluster starts, with every progress line and after
	// the workload.
	DiskSync []diskprobe.Result `json:"disk_sync"`
	// SlowDiskTimeouts is set when the first probe found a slow disk and
	// the nodes ran with the longer Raft timeouts.
	SlowDiskTimeouts bool `json:"slow_disk_timeouts"`
	// TLS is set when every link ran mutual TLS.
	TLS bool `json:"tls"`
	// HedgedWrites counts the writes sent a second time, with the same
	// key and client, while the first call still waited.
	HedgedWrites int `json:"hedged_writes"`
}

// SlowestSync is the highest median sync latency of all the disk probes:
// the disk at its slowest, which bounded the run's throughput then.
func (r *Report) SlowestSync() time.Duration {
	var d time.Duration
	for _, p := range r.DiskSync {
		d = max(d, p.Median)
	}
	return d
}

// OK reports whether every check passed.
func (r *Report) OK() bool {
	for _, c := range r.Checks {
		if !c.OK {
			return false
		}
	}
	return len(r.Checks) > 0
}

// Check returns the named check.
func (r *Report) Check(name string) (CheckResult, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return CheckResult{}, false
}

// Summary renders the report for a terminal.
func (r *Report) Summary() string {
	var b strings.Builder
	verdict := "PASS"
	if !r.OK() {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "tally chaos %s: seed %d, results %s\n", verdict, r.Seed, r.ResultsDir)
	if r.Broken {
		fmt.Fprintf(&b, "  BROKEN VARIANT: --unsafe-local-reads, reads sent to random nodes\n")
	}
	fmt.Fprintf(&b, "  cluster: %d nodes, %d shards, %d members (%d accounts), %d clients; workload %s, total %s\n",
		ClusterSize, r.Shards, r.Members, r.Accounts, r.Clients, r.Workload.Round(time.Second), r.Total.Round(time.Second))
	fmt.Fprintf(&b, "  ops: %d  by kind: %s\n", r.Ops, formatCounts(r.OpsBy))
	fmt.Fprintf(&b, "  outcomes: %s\n", formatCounts(r.Outcomes))
	fmt.Fprintf(&b, "  indeterminate writes resolved after the run: %d applied, %d never applied\n", r.ResolvedApplied, r.ResolvedNotApplied)
	fmt.Fprintf(&b, "  hedged writes (a second call with the key while the first waited): %d\n", r.HedgedWrites)
	fc := map[string]int{}
	for k, v := range r.Faults {
		fc[string(k)] = v
	}
	fmt.Fprintf(&b, "  faults: %s\n", formatCounts(fc))
	if n := len(r.DiskSync); n > 0 {
		fmt.Fprintf(&b, "  disk sync (4 KiB write + fsync; %d probes, before, every %s, after): first %s; last %s; slowest median %s\n",
			n, progressInterval, r.DiskSync[0], r.DiskSync[n-1], r.SlowestSync().Round(10*time.Microsecond))
	}
	if r.SlowDiskTimeouts {
		fmt.Fprintf(&b, "  slow disk: nodes ran with %s\n", diskprobe.SlowTimeoutFlags())
	}
	if r.TLS {
		fmt.Fprintf(&b, "  mutual TLS on every link (clients, peers, Raft)\n")
	}
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(&b, "  [%s] %-15s %s\n", mark, c.Name, c.Detail)
		for _, f := range c.Findings {
			fmt.Fprintf(&b, "         - %s\n", f)
		}
		for _, u := range c.Unknown {
			fmt.Fprintf(&b, "         ? %s\n", u)
		}
	}
	for _, c := range r.Crashes {
		fmt.Fprintf(&b, "  crash: %s\n", c)
	}
	if !r.OK() {
		fmt.Fprintf(&b, "  replay: same seed (%d); evidence under %s\n", r.Seed, r.ResultsDir)
	}
	return b.String()
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// Run starts a cluster, runs the workload under the fault schedule, heals,
// checks and writes the evidence. The error is for a harness that could not
// run (the cluster did not start); check failures are in the Report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	began := time.Now()
	if err := os.MkdirAll(cfg.ResultsDir, 0o755); err != nil {
		return nil, err
	}
	logf := cfg.Logf
	logf("seed %d, results %s", cfg.Seed, cfg.ResultsDir)
	_ = os.WriteFile(filepath.Join(cfg.ResultsDir, "seed"), []byte(fmt.Sprintf("%d\n", cfg.Seed)), 0o644)

	// The disk is probed before, during (with each progress line) and
	// after the run: a disk that slows down mid-run (a cloud volume out of
	// burst credit) shows in the slowest probe.
	var (
		probeMu sync.Mutex
		probes  []diskprobe.Result
	)
	probe := func(when string) string {
		p, err := diskprobe.Probe(cfg.ResultsDir, diskprobe.DefaultSyncs)
		if err != nil {
			return fmt.Sprintf("disk sync probe %s: %v", when, err)
		}
		probeMu.Lock()
		probes = append(probes, p)
		probeMu.Unlock()
		return fmt.Sprintf("disk sync %s", p)
	}
	logf("%s", probe("before the run"))

	clusterDir := filepath.Join(cfg.ResultsDir, "cluster")
	ccfg := ClusterConfig{Tallyd: cfg.Tallyd, Dir: clusterDir, Shards: cfg.Shards,
		UnsafeLocalReads: cfg.UnsafeLocalReads, SnapshotThreshold: cfg.SnapshotThreshold,
		SnapshotLogBytes: cfg.SnapshotLogBytes, TrailingLogs: cfg.TrailingLogs, CheckEvery: cfg.CheckEvery, TLS: cfg.TLS}
	if len(probes) > 0 {
		// StartCluster need not probe the same disk again.
		first := probes[0]
		ccfg.DiskProbe = &first
	}
	c, err := StartCluster(ctx, ccfg)
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	if c.SlowDisk() {
		logf("slow disk: nodes run with %s", diskprobe.SlowTimeoutFlags())
	}
	defer c.Close()

	epochs := [][]string{Members("", cfg.Accounts, cfg.Shards)}
	if cfg.EpochLength > 0 {
		n := int((cfg.Duration + cfg.EpochLength - 1) / cfg.EpochLength)
		epochs = nil
		for e := 0; e < max(n, 1); e++ {
			epochs = append(epochs, Members(fmt.Sprintf("e%03d-", e), cfg.Accounts, cfg.Shards))
		}
	}
	var members []string
	for _, ms := range epochs {
		members = append(members, ms...)
	}
	if err := setup(ctx, c, members); err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	logf("cluster up (%s), %d members with %d accounts open; workload and faults start", strings.Join(c.GRPCAddrs(), ","), len(members), len(members)*len(assetScales))

	hist := NewHistory()
	timeline := &Timeline{}
	var clients []*client.Client
	defer func() {
		for _, cl := range clients {
			cl.Close()
		}
	}()
	direct, directConns, err := newDirectClients(c.GRPCAddrs(), c.creds())
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, cc := range directConns {
			cc.Close()
		}
	}()
	var workers []*worker
	var shared *client.Client
	if cfg.Coalesce {
		shared, err = client.Dial(ctx, client.Config{Addrs: c.GRPCAddrs(), TLS: c.ClientTLS(), RequestTimeout: requestTimeout, Coalesce: true, Dialer: c.ClientDialer()})
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		clients = append(clients, shared)
	}
	for i := 0; i < cfg.Clients; i++ {
		cl := shared
		if cl == nil {
			if cl, err = client.Dial(ctx, client.Config{Addrs: c.GRPCAddrs(), TLS: c.ClientTLS(), RequestTimeout: requestTimeout, Dialer: c.ClientDialer()}); err != nil {
				return nil, fmt.Errorf("dial: %w", err)
			}
			clients = append(clients, cl)
		}
		w := &worker{id: i, rng: rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1)), cl: cl, hist: hist,
			epochs: epochs, epochLen: cfg.EpochLength, began: time.Now(), impatient: i%4 == 3, hedging: i%4 == 2}
		if cfg.UnsafeLocalReads {
			w.direct = direct
		}
		workers = append(workers, w)
	}
	stop := make(chan struct{})
	// One PCG stream per purpose, all from the seed: stream 0 the nemesis,
	// stream i+1 worker i.
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { w.run(stop) })
	}

	nctx, ncancel := context.WithTimeout(ctx, cfg.MaxDuration)
	defer ncancel()
	nem := &nemesis{c: c, rng: rand.New(rand.NewPCG(cfg.Seed, 0)), hist: hist, timeline: timeline,
		timing: cfg.Timing, kinds: cfg.Faults, shards: cfg.Shards, direct: direct}
	progressDone := make(chan struct{})
	go func() {
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				logf("progress: %s, %d ops, faults %s; %s", time.Since(began).Round(time.Second), hist.Len(),
					formatFaults(timeline.Counts()), probe("now"))
			case <-progressDone:
				return
			}
		}
	}()
	nem.run(nctx, cfg.FaultRounds, cfg.Duration)
	close(progressDone)
	logf("faults done (%s) after %s, %d ops so far; healing", formatFaults(timeline.Counts()),
		time.Since(began).Round(time.Second), hist.Len())
	if err := c.Heal(ctx); err != nil {
		logf("heal: %v", err)
	}
	for hist.Len() < cfg.MinOps && nctx.Err() == nil {
		time.Sleep(pollInterval)
	}
	close(stop)
	wg.Wait()
	workload := time.Since(began)
	logf("workload stopped: %d ops in %s", hist.Len(), workload.Round(time.Second))
	logf("%s", probe("after the workload"))

	rep := &Report{Seed: cfg.Seed, ResultsDir: cfg.ResultsDir, Broken: cfg.UnsafeLocalReads, Shards: cfg.Shards,
		Clients: cfg.Clients, Members: len(members), Accounts: len(members) * len(assetScales), Workload: workload, Timeline: timeline.Events(), Faults: timeline.Counts(),
		SlowDiskTimeouts: c.SlowDisk(), TLS: cfg.TLS}
	probeMu.Lock()
	rep.DiskSync = slices.Clone(probes)
	probeMu.Unlock()
	check(ctx, cfg, c, hist, members, rep)
	rep.Checks = append(rep.Checks, checkFaults(cfg, timeline.Events(), c.silentLinks()), checkWorkload(hist.Entries()),
		checkRefusals(hist.Entries()), checkShardOrder(hist.Entries(), cfg.Shards), checkWriteTimes(hist.Entries()))
	rep.Crashes = c.Crashes()
	if len(rep.Crashes) > 0 {
		rep.Checks = append(rep.Checks, CheckResult{Name: "no-crashes", Detail: "nodes exited on their own", Findings: rep.Crashes})
	}
	rep.Total = time.Since(began)
	c.Close()
	if err := writeEvidence(cfg, rep, hist, timeline); err != nil {
		logf("writing evidence: %v", err)
	}
	if rep.OK() && !cfg.KeepData {
		_ = removeDataDirs(clusterDir)
	}
	return rep, nil
}

func formatFaults(m map[FaultKind]int) string {
	fc := map[string]int{}
	for k, v := range m {
		fc[string(k)] = v
	}
	return formatCounts(fc)
}

// progressInterval is how often a run logs its progress.
const progressInterval = 30 * time.Second

// setupKeyPrefix marks the idempotency keys of the setup, which the
// history does not record.
const setupKeyPrefix = "setup-"

// setup defines the asset and opens the accounts, retrying until the
// cluster has leaders.
func setup(ctx context.Context, c *Cluster, members []string) error {
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cl, err := client.Dial(sctx, client.Config{Addrs: c.GRPCAddrs(), TLS: c.ClientTLS(), RequestTimeout: 2 * time.Second})
	if err != nil {
		return err
	}
	defer cl.Close()
	for _, a := range assetScales {
		for {
			_, err := cl.DefineAsset(sctx, Program, a.code, uint8(a.scale), setupKeyPrefix+"define-"+a.code)
			if err == nil {
				break
			}
			if sctx.Err() != nil {
				return fmt.Errorf("define asset %s: %w", a.code, err)
			}
			time.Sleep(pollInterval)
		}
	}
	// Accounts open in unlinked requests of up to setupBatch ops (the
	// client splits them by shard), so setup takes a few commits however
	// many epochs a long run has. A retry of a request that applied replays
	// it.
	var ops []client.Op
	for _, m := range members {
		for _, a := range assetScales {
			op := client.Op{Kind: ledger.OpOpenAccount, Program: Program, Member: m, Asset: a.code,
				IdempotencyKey: setupKeyPrefix + "open-" + accountName(m, a.code)}
			if a.maxBalance > 0 {
				limit := decimal.New(a.maxBalance, -a.scale)
				op.MaxBalance = &limit
			}
			ops = append(ops, op)
		}
	}
	for len(ops) > 0 {
		batch := ops[:min(len(ops), setupBatch)]
		res, err := cl.Submit(sctx, batch, false)
		for i := 0; err == nil && i < len(res); i++ {
			// An op's own code is the rules' answer, the same on every
			// retry: only request-level errors are worth retrying.
			if c := res[i].Code; c != ledger.CodeOK && c != ledger.CodeAccountExists {
				return fmt.Errorf("open account %s: %s %s", accountName(batch[i].Member, batch[i].Asset), c, res[i].Message)
			}
		}
		if err == nil {
			ops = ops[len(batch):]
			continue
		}
		if sctx.Err() != nil {
			return fmt.Errorf("open accounts: %w", err)
		}
		time.Sleep(pollInterval)
	}
	// The workload starts under the newest rules on every shard (the
	// leaders raise them within seconds of start): checkJournal expects
	// every hold expiry in the journal, which rules version 3 began.
	for shard := range cl.Shards() {
		for node := range ClusterSize {
			for {
				st, err := cl.ShardState(sctx, c.GRPCAddr(node), uint32(shard))
				if err == nil && st.Version >= ledger.MaxVersion {
					break
				}
				if sctx.Err() != nil {
					return fmt.Errorf("shard %d on %s not at rules version %d: %v (version %d)", shard, c.NodeID(node), ledger.MaxVersion, err, st.Version)
				}
				time.Sleep(pollInterval)
			}
		}
	}
	return nil
}

// setupBatch is the most accounts setup opens in one request.
const setupBatch = 256

// check runs every check after the run and fills rep.
func check(ctx context.Context, cfg Config, c *Cluster, hist *History, members []string, rep *Report) {
	logf := cfg.Logf
	cl, err := client.Dial(ctx, client.Config{Addrs: c.GRPCAddrs(), TLS: c.ClientTLS(), RequestTimeout: 3 * time.Second, DialTimeout: 30 * time.Second})
	if err != nil {
		rep.Checks = append(rep.Checks, CheckResult{Name: "checker-client", Detail: "could not dial the healed cluster: " + err.Error()})
		return
	}
	defer cl.Close()

	replicas, conservation, states := checkReplicas(ctx, clusterStates{cl, c}, cfg.Shards)
	rep.Replicas = states
	logf("replicas: %s; conservation: %s", replicas.Detail, conservation.Detail)
	awaitComparisons(ctx, clusterStates{cl, c}, states, cfg.CheckEvery)
	consistency := checkReplicaChecks(states, c.LogPaths(), cfg.CheckEvery)
	logf("replica-checks: %s", consistency.Detail)

	entries := hist.Entries()
	exactly, applied, notApplied := checkExactlyOnce(ctx, cl, entries)
	rep.ResolvedApplied, rep.ResolvedNotApplied = applied, notApplied
	pinResolved(entries, hist.Now())
	logf("exactly-once: %s (indeterminate writes: %d applied, %d never applied)", exactly.Detail, applied, notApplied)

	// Final linearizable reads of every account join the history: lost
	// writes show up as a final balance no linearization explains.
	// Every one must succeed: a failed one constrains nothing, and it is
	// also how a shard that stayed without a leader after the heal shows.
	finalPosted, finalHeld := map[string]int64{}, map[string]int64{} // by accountName
	var finalFails findings
	finalReads := 0
	for _, m := range members {
		for _, a := range assetScales {
			e := Entry{ClientID: cfg.Clients, Input: Input{Kind: KindRead, Member: m, Asset: a.code}, CallNs: hist.Now(), Attempts: 1}
			rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
			out, err := readAccount(rctx, cl, m, a.code)
			cancel()
			e.ReturnNs = hist.Now()
			out.WallMs = time.Now().UnixMilli()
			if err != nil {
				e.Output, e.ReturnNs, e.Err = Output{Status: Indeterminate, Code: client.CodeOf(err)}, ReturnNever, err.Error()
				finalFails.addf("%s: final read failed: %v", accountName(m, a.code), err)
			} else {
				e.Output = out
				finalPosted[accountName(m, a.code)] = e.Output.Posted
				finalHeld[accountName(m, a.code)] = e.Output.Held
			}
			entries = append(entries, e)
			finalReads++
		}
	}
	reread := func(ctx context.Context, member, asset string) (int64, int64, error) {
		out, err := readAccount(ctx, cl, member, asset)
		return out.Posted, out.Held, err
	}
	journal := checkJournal(ctx, cl, reread, entries, members, finalPosted, finalHeld)
	logf("journal: %s", journal.Detail)

	lin, accounts := checkLinearizable(ctx, entries, members, cfg.CheckTimeout, cfg.ResultsDir, rep.Timeline)
	rep.AccountResults = accounts
	logf("linearizability: %s", lin.Detail)

	final := finalFails.result("final-reads", fmt.Sprintf("all %d accounts read after the heal", finalReads))
	// Last: a restore discards what was applied after its backup. With
	// TLS it takes an operator's (a node's) certificate.
	backup := CheckResult{Name: "backup-restore"}
	if ocl, err := client.Dial(ctx, client.Config{Addrs: c.GRPCAddrs(), TLS: c.OperatorTLS(), RequestTimeout: 3 * time.Second, DialTimeout: 30 * time.Second}); err != nil {
		backup.Detail = "could not dial the healed cluster as an operator: " + err.Error()
	} else {
		backup = checkBackupRestore(ctx, ocl, clusterStates{cl, c}, cfg.Shards)
		_ = ocl.Close()
	}
	logf("backup-restore: %s", backup.Detail)
	rep.Checks = append(rep.Checks, lin, exactly, journal, conservation, replicas, consistency, final, backup)
	rep.Ops = len(entries) - finalReads
	rep.OpsBy, rep.Outcomes = map[string]int{}, map[string]int{}
	for _, e := range entries[:rep.Ops] {
		rep.OpsBy[e.Input.Kind.String()]++
		if e.Hedged > 0 {
			rep.HedgedWrites++
		}
		switch e.Output.Status {
		case Known:
			rep.Outcomes[string(e.Output.Code)]++
		case NotApplied:
			// By code: many "gave up before any attempt" (UNAVAILABLE)
			// mean requests queued behind slow commits. The op's own
			// UNAVAILABLE (a backlog deferral) apart: checkRefusals
			// fails on it.
			if e.OpUnavailable > 0 {
				rep.Outcomes[e.Output.Status.String()+":op-"+string(e.Output.Code)]++
				break
			}
			rep.Outcomes[e.Output.Status.String()+":"+string(e.Output.Code)]++
		default:
			rep.Outcomes[e.Output.Status.String()]++
		}
	}
	// Keep the resolved history for the evidence.
	hist.mu.Lock()
	hist.ops = entries
	hist.mu.Unlock()
}

// maxPassingHistory is the most operations whose history a passing run
// writes to history.jsonl (about 300 bytes each); a failing run always
// writes it.
const maxPassingHistory = 100_000

// writeEvidence writes the summary, the fault timeline and the history.
func writeEvidence(cfg Config, rep *Report, hist *History, timeline *Timeline) error {
	dir := cfg.ResultsDir
	var errs []error
	errs = append(errs, os.WriteFile(filepath.Join(dir, "summary.txt"), []byte(rep.Summary()), 0o644))
	if b, err := json.MarshalIndent(rep, "", "  "); err == nil {
		errs = append(errs, os.WriteFile(filepath.Join(dir, "summary.json"), b, 0o644))
	} else {
		errs = append(errs, err)
	}
	errs = append(errs, os.WriteFile(filepath.Join(dir, "timeline.txt"), []byte(timeline.String()), 0o644))
	if rep.OK() && hist.Len() > maxPassingHistory {
		return errors.Join(errs...)
	}
	f, err := os.Create(filepath.Join(dir, "history.jsonl"))
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	enc := json.NewEncoder(f)
	for _, e := range hist.Entries() {
		errs = append(errs, enc.Encode(e))
	}
	errs = append(errs, f.Close())
	return errors.Join(errs...)
}

// removeDataDirs removes the nodes' data directories, keeping their logs.
func removeDataDirs(clusterDir string) error {
	ents, err := os.ReadDir(clusterDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() {
			errs = append(errs, os.RemoveAll(filepath.Join(clusterDir, e.Name())))
		}
	}
	return errors.Join(errs...)
}
