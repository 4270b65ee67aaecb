// Command tally-chaos runs Tally's fault harness for as long as asked: a
// three-node cluster of tallyd processes on 127.0.0.1 under kill -9,
// SIGSTOP pauses, partitions and delays, cut or slowed client links, nodes
// restarted with a skewed clock (and, opt-in with --faults, wipes of a
// node's data directory), with concurrent clients, then the
// checks (linearizability per member, exactly-once, journal, conservation,
// replica equality) and a summary. Exit status 1 when a check fails.
//
//	go run ./cmd/tally-chaos --duration 30m --results ./results/chaos
//	go run ./cmd/tally-chaos --seed 1234 ...   # replay a seed
//	go run ./cmd/tally-chaos --faults kill,pause,partition,delay,client,clock,wipe ...
//
// Skewed clocks and --unsafe-local-reads need a tallyd built with -tags
// tally_unsafe (the one it builds without --tallyd; make chaos passes one).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tally-ledger/tally/linearizability"
)

func main() {
	code, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "tally-chaos:", err)
	}
	os.Exit(code)
}

// kindList renders fault kinds for help and errors: "kill, pause, ...".
func kindList(kinds []linearizability.FaultKind) string {
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = string(k)
	}
	return strings.Join(parts, ", ")
}

func run(args []string) (int, error) {
	fs := flag.NewFlagSet("tally-chaos", flag.ContinueOnError)
	var (
		duration = fs.Duration("duration", 5*time.Minute, "how long to inject faults (the workload runs as long)")
		seed     = fs.Uint64("seed", 0, "seed of the fault schedule and workload (0: from the clock)")
		results  = fs.String("results", "results/chaos", "folder for the results; each run gets a subfolder")
		shards   = fs.Int("shards", 3, "shards (>= 2)")
		clients  = fs.Int("clients", 8, "concurrent clients")
		accounts = fs.Int("accounts", 16, "members over all shards (per epoch), each with a points and a stored-value account")
		epoch    = fs.Duration("epoch", time.Minute, "move the workload to fresh members this often, so per-member histories stay checkable (0: never)")
		minOps   = fs.Int("min-ops", 0, "keep the (healed) workload going until this many operations")
		faults   = fs.String("faults", "kill,pause,partition,delay,client,clock", "fault kinds, comma-separated: "+kindList(linearizability.KnownFaults)+
			"; wipe (kill -9 a node, delete its data directory, restart it empty; only while no replica is vote guarded and every node is up) is opt-in")
		coalesce = fs.Bool("coalesce", false, "all workers share one coalescing client (batched Submits and GetAccounts reads)")
		useTLS   = fs.Bool("tls", false, "run every link mutual TLS, with a CA and certificates written under the results directory")
		unsafe   = fs.Bool("unsafe-local-reads", false, "BROKEN ON PURPOSE: nodes serve reads locally and reads go to random nodes; the run must fail (needs a tallyd built with -tags tally_unsafe)")
		tallyd   = fs.String("tallyd", "", "tallyd binary (default: build ./cmd/tallyd)")
		keep     = fs.Bool("keep-data", false, "keep the nodes' data directories after a passing run")
		timeout  = fs.Duration("check-timeout", time.Minute, "porcupine time limit per member (an undecided member fails the run)")
		snap     = fs.Uint64("snapshot-threshold", 1024, "tallyd --snapshot-threshold (small: snapshots happen during the run)")
		snapLog  = fs.Uint64("snapshot-log-bytes", 256<<10, "tallyd --snapshot-log-bytes (small: byte-triggered snapshots happen during the run too)")
		trailing = fs.Uint64("trailing-logs", 256, "tallyd --trailing-logs")
		every    = fs.Int64("check-every", 64, "tallyd --check-every (small: replica consistency checks happen during the run, and the harness fails on any mismatch)")
	)
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	if fs.NArg() > 0 { // the flags after it would be dropped
		return 2, fmt.Errorf("unexpected argument %q (boolean flags take --flag or --flag=false)", fs.Arg(0))
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano())
	}
	var kinds []linearizability.FaultKind
	for _, k := range strings.Split(*faults, ",") {
		if k = strings.TrimSpace(k); k != "" {
			kinds = append(kinds, linearizability.FaultKind(k))
		}
	}
	if len(kinds) == 0 {
		return 2, fmt.Errorf("--faults names no fault kind (%s)", kindList(linearizability.KnownFaults))
	}
	if *shards < 2 {
		return 2, fmt.Errorf("--shards must be at least 2 (cross-shard routing is part of what is checked), got %d", *shards)
	}
	for _, k := range kinds {
		known := false
		for _, a := range linearizability.KnownFaults {
			known = known || k == a
		}
		if !known {
			return 2, fmt.Errorf("--faults: unknown kind %q (known: %s)", k, kindList(linearizability.KnownFaults))
		}
	}
	dir, err := filepath.Abs(filepath.Join(*results, fmt.Sprintf("%s-seed%d", time.Now().Format("20060102-150405"), *seed)))
	if err != nil {
		return 2, err
	}
	if *tallyd == "" {
		bin, err := os.MkdirTemp("", "tally-chaos-bin-")
		if err != nil {
			return 1, err
		}
		defer os.RemoveAll(bin)
		*tallyd = filepath.Join(bin, "tallyd")
		// The tally_unsafe build: the release build's code, plus the
		// flags a skewed clock and --unsafe-local-reads need.
		cmd := exec.Command("go", "build", "-tags", "tally_unsafe", "-o", *tallyd, "./cmd/tallyd")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return 1, fmt.Errorf("build tallyd (run from the repository root, or pass --tallyd): %w", err)
		}
	}
	fmt.Printf("tally-chaos: seed %d, results %s\n", *seed, dir)

	// No deadline: a long run's checks take as long as they take, each
	// member bounded by --check-timeout. An interrupt ends the workload
	// and the checks (the linearizability check after the member in
	// progress), and the members left unchecked fail the run.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, args ...any) {
		fmt.Printf("%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
	rep, err := linearizability.Run(ctx, linearizability.Config{
		Tallyd: *tallyd, Seed: *seed, ResultsDir: dir, KeepData: *keep,
		Shards: *shards, Clients: *clients, Accounts: *accounts, EpochLength: *epoch,
		Faults: kinds, FaultRounds: 1, Duration: *duration,
		MinOps: *minOps, MaxDuration: *duration + 10*time.Minute,
		Coalesce: *coalesce, UnsafeLocalReads: *unsafe, CheckTimeout: *timeout, TLS: *useTLS,
		SnapshotThreshold: *snap, SnapshotLogBytes: *snapLog, TrailingLogs: *trailing, CheckEvery: *every,
		Logf: logf,
	})
	if err != nil {
		return 1, fmt.Errorf("seed %d: %w", *seed, err)
	}
	fmt.Print(rep.Summary())
	if !rep.OK() {
		return 1, nil
	}
	return 0, nil
}
