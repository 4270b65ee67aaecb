package linearizability

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/tally-ledger/tally/internal/diskprobe"
)

// Environment of the fault tests.
const (
	// envSeed replays a seed: TALLY_CHAOS_SEED=1234 go test -run TestChaos ./linearizability/
	envSeed = "TALLY_CHAOS_SEED"
	// envResults overrides where results go (default <repo>/results/linearizability).
	envResults = "TALLY_CHAOS_RESULTS"
)

// tallydPath is the tallyd binary TestMain builds (without -race, to leave
// the CPU to the cluster); "" under -short. unsafeTallydPath is the same
// built with -tags tally_unsafe, the only kind that takes
// --unsafe-local-reads.
var tallydPath, unsafeTallydPath string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	// Flags are parsed by m.Run; -short must be known before building.
	short := false
	for _, a := range os.Args[1:] {
		if a == "-test.short" || a == "-test.short=true" {
			short = true
		}
	}
	if !short {
		dir, err := os.MkdirTemp("", "tally-chaos-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		tallydPath = filepath.Join(dir, "tallyd")
		unsafeTallydPath = filepath.Join(dir, "tallyd-unsafe")
		for _, b := range [][]string{
			{"-o", tallydPath},
			{"-tags", "tally_unsafe", "-o", unsafeTallydPath},
		} {
			cmd := exec.Command("go", append(append([]string{"build"}, b...), "./cmd/tallyd")...)
			cmd.Dir = ".."
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintln(os.Stderr, "building tallyd:", err)
				return 1
			}
		}
	}
	return m.Run()
}

func testSeed(t *testing.T) uint64 {
	if s := os.Getenv(envSeed); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", envSeed, s, err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

func resultsDir(t *testing.T, seed uint64) string {
	base := os.Getenv(envResults)
	if base == "" {
		abs, err := filepath.Abs(filepath.Join("..", "results", "linearizability"))
		if err != nil {
			t.Fatal(err)
		}
		base = abs
	}
	return filepath.Join(base, fmt.Sprintf("%s-%s-seed%d", t.Name(), time.Now().Format("20060102-150405"), seed))
}

// reportMargin is the time a fault test keeps, before the test binary's
// -timeout, for what follows the checks: Run kills the nodes (waiting up
// to 10 s for each), writes the evidence (history.jsonl can be tens of MB)
// and the test logs the summary. Without it a run whose checks are slow
// would be killed by the -timeout panic with no summary and no evidence.
const reportMargin = time.Minute

// runContext is the context of one Run: it ends after limit, or
// reportMargin before the test binary's -timeout, whichever comes first,
// so Run's checks stop and fail by themselves in time to be reported.
func runContext(t *testing.T, limit time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	deadline, ok := t.Deadline()
	if !ok {
		return ctx, cancel
	}
	// The earlier of the two deadlines wins.
	ctx, dcancel := context.WithDeadline(ctx, deadline.Add(-reportMargin))
	end, _ := ctx.Deadline()
	t.Logf("the run ends by %s (limit %s; -timeout at %s, less %s to report)", end.Format(time.TimeOnly), limit,
		deadline.Format(time.TimeOnly), reportMargin)
	return ctx, func() { dcancel(); cancel() }
}

func needCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster and injects faults for minutes; skipped under -short")
	}
	if tallydPath == "" {
		t.Fatal("tallyd was not built")
	}
}

// CIProfile is the fault run of `make test`: at least 5,000 operations, at
// least 3 faults of each kind (AllFaults and skewed clocks) over 2 shards,
// within about 3 minutes on two cores with the race detector on the test
// process. tallyd must be a tally_unsafe build (FaultClock).
func CIProfile(tallyd string, seed uint64, dir string, logf func(string, ...any)) Config {
	return Config{
		Tallyd: tallyd, Seed: seed, ResultsDir: dir, Logf: logf,
		Shards: 2, Clients: 8, Accounts: 12,
		Faults: append(slices.Clone(AllFaults), FaultClock), FaultRounds: 3, Duration: 60 * time.Second,
		// Fresh members every 20 s keep each history to a few hundred
		// operations, which porcupine decides well within CheckTimeout (an
		// undecided history fails the check).
		EpochLength: 20 * time.Second,
		MinOps:      5000, MaxDuration: 210 * time.Second,
		CheckTimeout:      20 * time.Second,
		SnapshotThreshold: 1024, SnapshotLogBytes: 256 << 10, TrailingLogs: 256,
		CheckEvery: 64,
	}
}

// Floors of a CI run on a slow disk.
const (
	// minOpsSlowDisk is the operation floor on a slow disk. A commit waits
	// for a sync on the leader and then one on a follower, so eight workers
	// make a few operations a second per 100 ms of sync. One CI run made
	// 3,963 operations in 214 s, a twentieth of this machine's rate, while
	// passing every check. Here, with the disk throttled (blkio cgroup) to
	// 60 write IOPS for the whole test suite (syncs of 100-300 ms), a run
	// made 884; at 20 IOPS for the chaos test alone, 1,394. The floor still
	// proves that the workload ran through the faults.
	minOpsSlowDisk = 500
)

// opsFloor is the operation count a run must reach: minOps, or
// minOpsSlowDisk when the slowest probe of the disk shows a slow one. The
// floor is about coverage, not speed; the checks are the same either way.
func opsFloor(minOps int, slowestSync time.Duration) int {
	if slowestSync >= diskprobe.SlowMedian {
		return min(minOps, minOpsSlowDisk)
	}
	return minOps
}

// TestChaos is the CI profile: Tally under kill -9, pauses, partitions,
// delays, cut client links and skewed clocks must stay linearizable,
// exactly-once, conserving and convergent.
func TestChaos(t *testing.T) {
	needCluster(t)
	seed := testSeed(t)
	dir := resultsDir(t, seed)
	t.Logf("seed %d (replay: %s=%d), results %s", seed, envSeed, seed, dir)
	// The tally_unsafe build, for --unsafe-clock-offset: its code is the
	// release build's but for the flags only that tag accepts.
	cfg := CIProfile(unsafeTallydPath, seed, dir, t.Logf)
	// Odd seeds run the workers through one coalescing client (batched
	// Submits, GetAccounts reads), even seeds through a client each: over
	// CI runs both paths meet the faults, and a seed replays its mode.
	cfg.Coalesce = seed%2 == 1
	// Seeds whose second bit is set run every link mutual TLS: the four
	// combinations with coalescing each come up, and a seed replays its own.
	cfg.TLS = seed&2 != 0
	t.Logf("coalescing client: %v, mutual TLS: %v", cfg.Coalesce, cfg.TLS)
	ctx, cancel := runContext(t, 8*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("seed %d: harness: %v (results %s)", seed, err, dir)
	}
	t.Log("\n" + rep.Summary())
	if !rep.OK() {
		t.Errorf("seed %d: checks failed; evidence under %s", seed, dir)
	}
	if floor := opsFloor(cfg.MinOps, rep.SlowestSync()); rep.Ops < floor {
		t.Errorf("only %d operations, want >= %d (slowest median disk sync %s)", rep.Ops, floor, rep.SlowestSync())
	} else if floor < cfg.MinOps {
		t.Logf("WARNING: a median disk sync took %s (an SSD takes about 1 ms); every commit waits for two, so the floor was %d operations, not %d",
			rep.SlowestSync(), floor, cfg.MinOps)
	}
	for _, k := range cfg.Faults {
		if rep.Faults[k] < 3 {
			t.Errorf("%d faults of kind %s, want >= 3", rep.Faults[k], k)
		}
	}
}

// TestChaosCatchesStaleReads proves the checker has teeth: with
// --unsafe-local-reads and reads sent to random nodes, a node cut off from
// the others serves stale balances, and the run must fail linearizability.
func TestChaosCatchesStaleReads(t *testing.T) {
	needCluster(t)
	seed := testSeed(t)
	dir := resultsDir(t, seed)
	t.Logf("seed %d (replay: %s=%d), results %s", seed, envSeed, seed, dir)
	cfg := Config{
		Tallyd: unsafeTallydPath, Seed: seed, ResultsDir: dir, Logf: t.Logf,
		Shards: 2, Clients: 6, Accounts: 6, UnsafeLocalReads: true,
		Faults: []FaultKind{FaultPartition}, FaultRounds: 4,
		Timing:      Timing{FaultMin: 3 * time.Second, FaultMax: 5 * time.Second, GapMin: 500 * time.Millisecond, GapMax: time.Second},
		MinOps:      300,
		MaxDuration: 90 * time.Second, CheckTimeout: 20 * time.Second,
	}
	ctx, cancel := runContext(t, 4*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("seed %d: harness: %v (results %s)", seed, err, dir)
	}
	t.Log("\n" + rep.Summary())
	lin, ok := rep.Check("linearizable")
	if !ok || lin.OK {
		t.Fatalf("seed %d: stale reads from followers passed the linearizability check: the checker has no teeth", seed)
	}
	// Only reads were made unsafe (the reads clients make, and the edge's
	// hold lookups, which can now wrongly answer HOLD_NOT_FOUND, which the
	// model also refuses): the other checks must still pass, so the failure
	// above is the stale reads and not something else.
	for _, name := range []string{"exactly-once", "journal", "conservation", "replicas-equal", "final-reads"} {
		if c, ok := rep.Check(name); !ok || !c.OK {
			t.Errorf("check %s: want ok with only reads made unsafe, got %+v", name, c)
		}
	}
	found := false
	for _, a := range rep.AccountResults {
		if a.Visualization != "" {
			if _, err := os.Stat(a.Visualization); err != nil {
				t.Errorf("visualization %s: %v", a.Visualization, err)
			}
			found = true
		}
	}
	if !found {
		t.Errorf("no visualization written for the failing members")
	}
	for _, name := range []string{"timeline.txt", "summary.txt", "history.jsonl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("evidence %s: %v", name, err)
		}
	}
	if !t.Failed() {
		// The failure was the point: keep the evidence, not the data.
		_ = removeDataDirs(filepath.Join(dir, "cluster"))
	}
}
