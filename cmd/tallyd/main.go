// Command tallyd runs one Tally node.
//
//	tallyd --id n1 --data ./data/n1 --metrics 127.0.0.1:7301 --shards 8 --bootstrap \
//	  --peers n1=127.0.0.1:7201/127.0.0.1:7101,n2=127.0.0.1:7202/127.0.0.1:7102,n3=127.0.0.1:7203/127.0.0.1:7103
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tally-ledger/tally/internal/diskprobe"
	"github.com/tally-ledger/tally/internal/tlsfiles"
	"github.com/tally-ledger/tally/node"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return // the flag package printed the usage
		}
		fmt.Fprintln(os.Stderr, "tallyd:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("tallyd", flag.ContinueOnError)
	var (
		cfg       node.Config
		peers     string
		rewrite   string
		snapEvery uint64
		trailing  uint64
	)
	fs.StringVar(&cfg.ID, "id", "", "node ID (must appear in --peers)")
	fs.StringVar(&cfg.DataDir, "data", "", "data directory")
	fs.StringVar(&cfg.GRPCAddr, "grpc", "", "gRPC listen address (default: this node's address in --peers)")
	fs.StringVar(&cfg.RaftAddr, "raft", "", "Raft listen address, all shards (default: this node's address in --peers)")
	fs.StringVar(&cfg.MetricsAddr, "metrics", "", "Prometheus /metrics listen address (empty: off)")
	fs.StringVar(&peers, "peers", "", "every node as id=raftAddr/grpcAddr, comma-separated, same order on every node")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "also serve /debug/pprof/ on the metrics address")
	fs.BoolVar(&cfg.RaftMetrics, "raft-metrics", true, "also export hashicorp/raft's internal timings (all shards together) on /metrics")
	fs.IntVar(&cfg.Shards, "shards", node.DefaultShards, "number of shards (fixed at bootstrap)")
	fs.BoolVar(&cfg.Bootstrap, "bootstrap", false, "create the cluster from --peers on first start (safe on every node)")
	fs.StringVar(&rewrite, "raft-dial-rewrite", "", "advertised=dialed Raft address pairs, comma-separated (fault-injection proxies)")
	fs.StringVar(&cfg.LogLevel, "log-level", "warn", "Raft log level: trace, debug, info, warn, error")
	fs.Uint64Var(&snapEvery, "snapshot-threshold", 0, "log entries after which Raft snapshots regardless of bytes (0: default 1048576)")
	fs.Uint64Var(&cfg.Raft.SnapshotLogBytes, "snapshot-log-bytes", 0, "least log bytes per shard between snapshots; past it a shard snapshots once its log since the last one is as big as that snapshot (0: default 64 MiB)")
	fs.Uint64Var(&trailing, "trailing-logs", 0, "log entries kept after a snapshot (0: default 10240)")
	fs.DurationVar(&cfg.Raft.SnapshotInterval, "snapshot-interval", 0, "how often hashicorp/raft checks its entry-count backstop (--snapshot-threshold), randomized up to twice that (0: default 30s); the log-bytes trigger is checked every second")
	fs.DurationVar(&cfg.Raft.HeartbeatTimeout, "heartbeat-timeout", 0, "a follower that hears no leader for this long starts an election (0: default 500ms)")
	fs.DurationVar(&cfg.Raft.ElectionTimeout, "election-timeout", 0, "a candidate that wins no election in this long (randomized up to twice that) starts another (0: default 500ms, or --heartbeat-timeout if longer); raise both on a disk whose syncs take hundreds of ms")
	fs.DurationVar(&cfg.Raft.LeaderLeaseTimeout, "leader-lease-timeout", 0, "a leader that hears from no quorum for this long steps down; at most --heartbeat-timeout (0: default 500ms, capped by it)")
	fs.IntVar(&cfg.MaxInflightEntries, "max-inflight-entries", 0, "log entries per shard queued for their answer once proposed; up to two more can be proposed but unanswered (0: default 4)")
	fs.DurationVar(&cfg.BalanceInterval, "balance-interval", 0, "leadership balancing period (0: 2s, negative: off)")
	fs.DurationVar(&cfg.MaxClockOffset, "max-clock-offset", 0, "refuse every request while this node's wall clock is known to differ from a majority of its peers' by more than this (it stamps log time, which expires holds); 0: 500ms, negative: no check")
	fs.Int64Var(&cfg.CheckEvery, "check-every", 0, "every replica hashes its shard's whole state after each log entry whose index is a multiple of this, and the leader compares the hashes (replica consistency checks); every node must use the same value (0: default 32768, negative: off)")
	fs.BoolVar(&cfg.RepairLogTail, "repair-log-tail", false, "delete Raft log entries that fail verification at the end of a shard's log instead of refusing to start; the node then refuses to vote until it has caught up, as a node whose data was wiped does (README)")
	fs.Func("max-version", "hold this node's shards at or below this state machine rules version (0: this binary's newest); shards are raised to the newest version every node allows, after which older binaries refuse them, so set it during a rolling upgrade to keep a downgrade possible", func(v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		cfg.MaxVersion = uint32(n)
		return err
	})
	var tlsFiles tlsfiles.Files
	tlsFiles.AddFlags(fs)
	metricsTLS := fs.Bool("metrics-tls", false, "serve --metrics (and --pprof) over HTTPS with the --tls-* certificate, requiring a client certificate from the CA (a scraper's)")
	if node.UnsafeReadsBuilt { // test builds only (-tags tally_unsafe)
		fs.BoolVar(&cfg.UnsafeLocalReads, "unsafe-local-reads", false, "BROKEN ON PURPOSE: serve reads from any replica without checks (only to prove the linearizability checker catches it)")
		fs.Func("unsafe-clock-offset", "BROKEN ON PURPOSE: run this node's wall clock this far off (the fault harness's skewed clock)", func(v string) error {
			off, err := time.ParseDuration(v)
			cfg.Clock = func() time.Time { return time.Now().Add(off) }
			return err
		})
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	// The flag parser stops at the first argument that is not a flag
	// ("--bootstrap false"), and every flag after it would be dropped.
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (boolean flags take --flag or --flag=false)", fs.Arg(0))
	}
	if cfg.MetricsAddr == "" {
		// Both serve on the metrics address: without one they would be
		// accepted and do nothing.
		var ignored []string
		fs.Visit(func(f *flag.Flag) {
			// Turning an option off needs no address.
			if (f.Name == "pprof" || f.Name == "raft-metrics" || f.Name == "metrics-tls") && f.Value.String() == "true" {
				ignored = append(ignored, "--"+f.Name)
			}
		})
		if len(ignored) > 0 {
			return fmt.Errorf("%s needs --metrics (the address they are served on)", strings.Join(ignored, " and "))
		}
	}
	var err error
	if cfg.ServerTLS, err = tlsFiles.Server(); err != nil {
		return err
	}
	if cfg.PeerTLS, err = tlsFiles.Client(); err != nil {
		return err
	}
	if *metricsTLS {
		if cfg.ServerTLS == nil {
			return errors.New("--metrics-tls needs --tls-cert, --tls-key and --tls-ca")
		}
		cfg.MetricsTLS = cfg.ServerTLS
	}
	cfg.Raft.SnapshotThreshold = snapEvery
	timeoutsSet := cfg.Raft.HeartbeatTimeout > 0 || cfg.Raft.ElectionTimeout > 0
	cfg.Raft.TrailingLogs = trailing
	if cfg.Peers, err = parsePeers(peers); err != nil {
		return err
	}
	for _, w := range listenWarnings(cfg) {
		fmt.Fprintf(os.Stderr, "tallyd %s: WARNING: %s\n", cfg.ID, w)
	}
	if rewrite != "" {
		cfg.DialRewrite = map[string]string{}
		for _, kv := range strings.Split(rewrite, ",") {
			from, to, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("--raft-dial-rewrite: %q is not advertised=dialed", kv)
			}
			cfg.DialRewrite[from] = to
		}
	}
	// From before Start: a start can take a while (a snapshot restore), and
	// a SIGTERM meanwhile must stop the node cleanly once it is up, not
	// kill it half-started.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	n, err := node.Start(cfg)
	if err != nil {
		return err
	}
	fmt.Printf("tallyd %s: grpc %s, raft %s, metrics %s, %d shards, data %s\n",
		cfg.ID, n.GRPCAddr(), n.RaftAddr(), orNone(cfg.MetricsAddr), cfg.Shards, cfg.DataDir)
	// A slow disk stops elections from finishing with the default timeouts;
	// say so at start rather than leave an operator to find it in the
	// metrics. A few syncs: milliseconds on a normal disk.
	if p, err := diskprobe.Probe(cfg.DataDir, slowDiskProbeSyncs); err == nil {
		if w := slowDiskWarning(p, timeoutsSet); w != "" {
			fmt.Fprintf(os.Stderr, "tallyd %s: %s\n", cfg.ID, w)
		}
	}

	<-sig
	fmt.Printf("tallyd %s: stopping\n", cfg.ID)
	done := make(chan error, 1)
	go func() { done <- n.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		return fmt.Errorf("shutdown took over 15s")
	}
}

// listenWarnings flags a --grpc or --raft that other nodes and clients
// cannot reach at the address --peers gives this node (which is the one
// they dial): another port, or another IP than the one given unless it is
// a wildcard. A port mapping or NAT can make either right, so these are
// warnings. (The old fixed defaults made every node but n1 listen on n1's
// loopback ports this way.)
func listenWarnings(cfg node.Config) []string {
	var warnings []string
	for _, p := range cfg.Peers {
		if p.ID != cfg.ID {
			continue
		}
		for _, a := range []struct{ flag, listen, peer string }{
			{"--grpc", cfg.GRPCAddr, p.GRPCAddr}, {"--raft", cfg.RaftAddr, p.RaftAddr},
		} {
			if a.listen == "" {
				continue
			}
			lh, lp, err1 := net.SplitHostPort(a.listen)
			ph, pp, err2 := net.SplitHostPort(a.peer)
			if err1 != nil || err2 != nil {
				continue
			}
			var why string
			lip, pip := net.ParseIP(lh), net.ParseIP(ph)
			switch {
			case lp != pp:
				why = "port " + lp
			case lh != "" && lip != nil && !lip.IsUnspecified() && pip != nil && !lip.Equal(pip):
				why = "IP " + lh
			default:
				continue
			}
			warnings = append(warnings, fmt.Sprintf("%s %s listens on %s, but --peers gives %s for %s: "+
				"that address is dialed, so this works only behind a port mapping or NAT", a.flag, a.listen, why, a.peer, cfg.ID))
		}
	}
	return warnings
}

// slowDiskProbeSyncs is how many synced writes the start-up probe makes.
const slowDiskProbeSyncs = 5

// slowDiskWarning is the warning for a disk probe, or "" when the disk is
// fast or the operator already chose the Raft timeouts.
func slowDiskWarning(p diskprobe.Result, timeoutsSet bool) string {
	if !p.Slow() || timeoutsSet {
		return ""
	}
	return fmt.Sprintf("WARNING: this disk syncs a 4 KiB write in %s (median of %d); every Raft append and vote waits for a sync, "+
		"and with the default 500 ms timeouts elections may never finish: consider %s",
		p.Median.Round(time.Millisecond), p.Syncs, diskprobe.SlowTimeoutFlags())
}

func parsePeers(s string) ([]node.Peer, error) {
	if s == "" {
		return nil, fmt.Errorf("--peers is required")
	}
	var out []node.Peer
	for _, item := range strings.Split(s, ",") {
		id, addrs, ok := strings.Cut(item, "=")
		raftAddr, grpcAddr, ok2 := strings.Cut(addrs, "/")
		if !ok || !ok2 || id == "" || raftAddr == "" || grpcAddr == "" {
			return nil, fmt.Errorf("--peers: %q is not id=raftAddr/grpcAddr", item)
		}
		out = append(out, node.Peer{ID: id, RaftAddr: raftAddr, GRPCAddr: grpcAddr})
	}
	return out, nil
}

func orNone(s string) string {
	if s == "" {
		return "off"
	}
	return s
}
