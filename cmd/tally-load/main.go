// Command tally-load drives a Tally cluster with a synthetic workload, prints
// throughput and latency, and verifies afterwards that every acknowledged
// operation is stored as acknowledged and that conservation holds. It exits
// 1 when a check fails and 2 when the run could not be made.
//
//	tally-load --scenario uniform --clients 256 --duration 15s
//	tally-load --scenario uniform --batch 1000 --clients 16
//	tally-load --scenario flash-sale --coalesce --json out.json --plot out.html
//	tally-load --scenario uniform --rate 10000 --clients 2048   # open loop
//	tally-load --scenario uniform --mix read=100                 # linearizable reads
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/internal/tlsfiles"
	"github.com/tally-ledger/tally/loadtest"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// Exit codes.
const (
	exitPass      = 0
	exitCheckFail = 1
	exitNoRun     = 2
)

func run(args []string) int {
	fs := flag.NewFlagSet("tally-load", flag.ContinueOnError)
	var (
		cfg         loadtest.Config
		addrs       = fs.String("addrs", "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103", "gRPC addresses of some nodes, comma-separated")
		scenario    = fs.String("scenario", "uniform", "uniform, zipf or flash-sale")
		mix         = fs.String("mix", loadtest.DefaultMix.String(), "operation mix as kind=weight (credit, debit, hold, capture, read); batches drop reads")
		coalesce    = fs.Bool("coalesce", false, "coalesce concurrent single-op requests in the client (client.Config.Coalesce)")
		inflight    = fs.Int("max-inflight-per-shard", 0, "coalesced requests in flight per shard (0: client default)")
		jsonOut     = fs.String("json", "", "write the report as JSON to this file")
		plotOut     = fs.String("plot", "", "write a latency-over-time plot (self-contained HTML) to this file")
		pids        = fs.String("server-pids", "", "local server process IDs whose CPU time to report, comma-separated")
		cpuProfile  = fs.String("cpuprofile", "", "write the load generator's CPU profile to this file")
		dialTimeout = fs.Duration("dial-timeout", 10*time.Second, "how long to wait for the cluster to answer")
	)
	var tlsFiles tlsfiles.Files
	tlsFiles.FromEnv()
	tlsFiles.AddFlags(fs)
	fs.IntVar(&cfg.Workload.Members, "members", loadtest.DefaultMembers, "members (POINTS accounts)")
	fs.Float64Var(&cfg.Workload.ZipfS, "zipf-s", loadtest.DefaultZipfS, "zipf exponent (> 1)")
	fs.IntVar(&cfg.Workload.HotMembers, "hot-members", loadtest.DefaultHotMembers, "flash sale: hot members")
	fs.Float64Var(&cfg.Workload.HotShare, "hot-share", loadtest.DefaultHotShare, "flash sale: share of ops on the hot set (hot members and budget)")
	fs.Float64Var(&cfg.Workload.BudgetShare, "budget-share", loadtest.DefaultBudgetShare, "flash sale: share of ops (captures aside) on the campaign budget; its writes are draws (with the default mix, about 0.72 of this share of all ops)")
	fs.Int64Var(&cfg.Workload.MaxAmountMinor, "max-amount", loadtest.DefaultMaxAmount, "largest amount in minor units (points; cents for budget draws)")
	fs.IntVar(&cfg.Clients, "clients", loadtest.DefaultClients, "concurrent clients (open loop: most requests in flight)")
	fs.IntVar(&cfg.Batch, "batch", 1, "operations per request (1: single operations)")
	fs.Float64Var(&cfg.RatePerSec, "rate", 0, "open loop: requests per second (0: closed loop)")
	fs.DurationVar(&cfg.Duration, "duration", loadtest.DefaultDuration, "measured window")
	fs.DurationVar(&cfg.Warmup, "warmup", loadtest.DefaultWarmup, "load before the measured window")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "random seed (0: random; printed)")
	fs.StringVar(&cfg.RunID, "run-id", "", "run ID: program name and key prefix (default: time and random)")
	fs.DurationVar(&cfg.OpTimeout, "op-timeout", loadtest.DefaultOpTimeout, "bound on one call, retries included")
	fs.IntVar(&cfg.VerifyOps, "verify-ops", loadtest.DefaultVerifyOps, "look up at most this many acked ops, in random order (-1: all; fewer is a sample, reported as one)")
	fs.DurationVar(&cfg.VerifyBudget, "verify-budget", loadtest.DefaultVerifyBudget, "stop looking up acked ops after this long (a random sample); negative: no limit")
	fs.IntVar(&cfg.VerifyAccounts, "verify-accounts", loadtest.DefaultVerifyAccounts, "balances compared: all accounts up to this many (0 or less: all), else the hot ones plus a sample of this many")
	if err := fs.Parse(args); err != nil {
		return exitNoRun
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "tally-load: "+format+"\n", a...)
		return exitNoRun
	}
	if fs.NArg() > 0 { // the flag parser stopped there: the flags after it would be dropped
		return fail("unexpected argument %q (boolean flags take --flag or --flag=false)", fs.Arg(0))
	}
	// The library fills zero values with defaults; typed out, they are
	// mistakes, and a run with other settings than asked must not start.
	switch {
	case cfg.Clients <= 0:
		return fail("--clients must be positive, got %d", cfg.Clients)
	case cfg.Batch <= 0:
		return fail("--batch must be positive, got %d", cfg.Batch)
	case cfg.Workload.ZipfS <= 1:
		return fail("--zipf-s must be above 1, got %v", cfg.Workload.ZipfS)
	case cfg.Workload.Members <= 0:
		return fail("--members must be positive, got %d", cfg.Workload.Members)
	case cfg.Workload.HotMembers <= 0:
		return fail("--hot-members must be positive, got %d", cfg.Workload.HotMembers)
	case cfg.Workload.HotShare <= 0 || cfg.Workload.HotShare > 1:
		return fail("--hot-share must be in (0, 1], got %v", cfg.Workload.HotShare)
	case cfg.Workload.BudgetShare <= 0 || cfg.Workload.BudgetShare > 1:
		return fail("--budget-share must be in (0, 1], got %v", cfg.Workload.BudgetShare)
	case cfg.Workload.MaxAmountMinor <= 0:
		return fail("--max-amount must be positive, got %d", cfg.Workload.MaxAmountMinor)
	case cfg.RatePerSec < 0:
		return fail("--rate must be positive (or 0: closed loop), got %v", cfg.RatePerSec)
	case cfg.Duration <= 0:
		return fail("--duration must be positive, got %v", cfg.Duration)
	case cfg.Warmup < 0:
		return fail("--warmup must not be negative, got %v", cfg.Warmup)
	case cfg.OpTimeout <= 0:
		return fail("--op-timeout must be positive, got %v", cfg.OpTimeout)
	}
	var err error
	if cfg.Workload.Scenario, err = loadtest.ParseScenario(*scenario); err != nil {
		return fail("%v", err)
	}
	if cfg.Workload.Mix, err = loadtest.ParseMix(*mix); err != nil {
		return fail("%v", err)
	}
	if cfg.VerifyOps < 0 {
		cfg.VerifyOps = int(^uint(0) >> 1)
	}
	for _, p := range strings.Split(*pids, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		pid, err := strconv.Atoi(p)
		if err != nil {
			return fail("--server-pids: %q is not a process ID", p)
		}
		cfg.ServerPIDs = append(cfg.ServerPIDs, pid)
	}
	if st, err := os.Stderr.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
		cfg.TTY = true
	}
	cfg.Progress = os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The first Ctrl-C ends the load, and the run still verifies what it
	// acked; a second one, with the signals' default action back, stops it.
	go func() { <-ctx.Done(); stop() }()
	tlsCfg, err := tlsFiles.Client()
	if err != nil {
		return fail("%v", err)
	}
	dctx, cancel := context.WithTimeout(ctx, *dialTimeout)
	c, err := client.Dial(dctx, client.Config{
		Addrs: strings.Split(*addrs, ","), DialTimeout: *dialTimeout,
		Coalesce: *coalesce, MaxInflightPerShard: *inflight, TLS: tlsCfg,
	})
	cancel()
	if err != nil {
		return fail("dial: %v", err)
	}
	defer c.Close()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fail("%v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fail("cpu profile: %v", err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}

	rep, err := loadtest.Run(ctx, c, *coalesce, cfg)
	if err != nil {
		return fail("%v", err)
	}
	loadtest.Summary(os.Stdout, rep)
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err == nil {
			err = os.WriteFile(*jsonOut, append(b, '\n'), 0o644)
		}
		if err != nil {
			return fail("json: %v", err)
		}
	}
	if *plotOut != "" {
		f, err := os.Create(*plotOut)
		if err == nil {
			err = loadtest.WritePlot(f, rep)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return fail("plot: %v", err)
		}
	}
	if !rep.OK {
		return exitCheckFail
	}
	return exitPass
}
