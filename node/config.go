package node

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/tally-ledger/tally/ledger"
)

// Peer is one member of the cluster as every node knows it.
type Peer struct {
	ID       string
	RaftAddr string // advertised Raft address (one port for all shards)
	GRPCAddr string // advertised client address
}

// RaftTuning holds the hashicorp/raft settings a deployment may change.
// Zero values take the defaults below.
type RaftTuning struct {
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	MaxAppendEntries   int
	// MaxAppendBytes bounds the entry data of one AppendEntries RPC: a
	// longer request is sent as consecutive RPCs (node/acks.go).
	MaxAppendBytes    int
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// SnapshotLogBytes is the least log a shard applies between two
	// snapshots; past it, a shard snapshots once its log since the last
	// snapshot is as big as that snapshot. A replica's first snapshot of
	// a shard waits up to nearly as much again, so that the replicas take
	// turns (node/snaptrigger.go).
	SnapshotLogBytes uint64
}

func (t RaftTuning) withDefaults() RaftTuning {
	// Failover within ~1-2 s on a LAN; hashicorp's 1 s defaults are tuned for
	// WANs. MaxAppendEntries stays at hashicorp's 64: raft reads a whole
	// request's entries before the transport splits it by bytes, and under
	// batched load an entry is up to ~2 MB, so 512 (used before) let one
	// catching-up follower cost the leader ~1 GB per shard; 64 is ~130 MB.
	// Measured against 512 (docs/BENCHMARKS.md, "MaxAppendEntries"): flash
	// sale and batched throughput no lower, catch-up after 15 s of load no
	// slower.
	//
	// CommitTimeout stays at hashicorp's 50 ms: at 5 ms an idle 3-node,
	// 8-shard cluster burned 0.64 of two cores in replication wake-ups (0.25
	// at 50 ms), and under load 50 ms gave 3,232 single ops/s against 2,661
	// (make bench, same box).
	// It only delays when followers learn the commit index, not acks.
	//
	// LeaderLeaseTimeout is how long a leader goes without hearing from a
	// quorum before it steps down. Reads never trust it (they confirm
	// leadership with a heartbeat round, shard.go), and failover after a
	// leader dies is driven by the followers' HeartbeatTimeout, so the lease
	// only decides how long a stall every node shares is ridden out. With
	// 250 ms, stopping all three nodes for 400 ms under 5,000 req/s made
	// every shard's leader step down in 2 of 3 runs (p99 1.1-1.3 s, max
	// 1.7-2.0 s); with 500 ms, in none of 3 (p99 0.22-0.28 s, max 0.52-0.61
	// s; docs/BENCHMARKS.md, "Stall tolerance"). hashicorp/raft requires it
	// to be at most HeartbeatTimeout.
	def := RaftTuning{
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 500 * time.Millisecond,
		CommitTimeout:      50 * time.Millisecond,
		MaxAppendEntries:   64,
		MaxAppendBytes:     defaultMaxAppendBytes,
		// The entry count is only a backstop (about 1M entries); snapshots
		// follow the log's bytes (SnapshotLogBytes, snaptrigger.go).
		SnapshotThreshold: 1 << 20,
		SnapshotInterval:  30 * time.Second,
		TrailingLogs:      10240,
		SnapshotLogBytes:  64 << 20,
	}
	setDefault(&t.HeartbeatTimeout, def.HeartbeatTimeout)
	// A longer HeartbeatTimeout raises the default ElectionTimeout with it,
	// which hashicorp/raft requires to be no shorter.
	setDefault(&t.ElectionTimeout, max(def.ElectionTimeout, t.HeartbeatTimeout))
	// A shorter HeartbeatTimeout than the default caps the default lease,
	// which hashicorp/raft requires to be no longer.
	setDefault(&t.LeaderLeaseTimeout, min(def.LeaderLeaseTimeout, t.HeartbeatTimeout))
	setDefault(&t.CommitTimeout, def.CommitTimeout)
	setDefault(&t.MaxAppendEntries, def.MaxAppendEntries)
	setDefault(&t.MaxAppendBytes, def.MaxAppendBytes)
	setDefault(&t.SnapshotThreshold, def.SnapshotThreshold)
	setDefault(&t.SnapshotInterval, def.SnapshotInterval)
	setDefault(&t.TrailingLogs, def.TrailingLogs)
	setDefault(&t.SnapshotLogBytes, def.SnapshotLogBytes)
	return t
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// Config configures a node.
type Config struct {
	ID          string
	DataDir     string
	GRPCAddr    string // listen address for clients; "" = this node's Peers entry
	RaftAddr    string // listen address for Raft (all shards); "" = this node's Peers entry
	MetricsAddr string // listen address for /metrics; "" disables it
	// Pprof also serves Go's /debug/pprof/ on MetricsAddr, for profiling.
	Pprof bool
	// MetricsTLS, if set, serves MetricsAddr over HTTPS with this
	// configuration (tallyd --metrics-tls: ServerTLS's, so a scraper needs
	// a certificate from the CA); nil: plain HTTP.
	MetricsTLS *tls.Config
	// RaftMetrics exports hashicorp/raft's own timings (raft_commitTime,
	// raft_rpc_appendEntries_storeLogs, raft_replication_appendEntries_rpc,
	// ...) as Prometheus summaries on /metrics. Raft reports them through a
	// process-wide sink without a shard label, so they cover every shard of
	// the node; only the first node started in a process gets them.
	RaftMetrics bool
	// Peers lists every node, this one included, in the same order on every
	// node: shard i prefers Peers[i mod len(Peers)] as its leader.
	Peers []Peer
	// Shards is fixed at bootstrap; every node must agree.
	Shards int
	// Bootstrap creates the cluster from Peers on first start. It is safe to
	// set on every node (each writes the same configuration) and a no-op once
	// a node has state.
	Bootstrap bool
	// DialRewrite maps a peer's advertised Raft address to the address to
	// dial, so a fault-injection proxy can sit on each link.
	DialRewrite map[string]string
	Raft        RaftTuning
	// MaxOpsPerEntry is where the proposer stops adding requests to a log
	// entry: the request that reaches it is still packed whole, so an entry
	// holds up to MaxOpsPerEntry + ledger.MaxBatchOps - 1 operations.
	MaxOpsPerEntry int
	// MaxInflightEntries bounds a shard's log entries proposed and queued
	// for their answer; with the one being answered and the one proposed
	// and waiting for room, up to MaxInflightEntries+2 are unanswered at
	// once. While they are in flight, requests queue and the next
	// entry packs them all: fewer, bigger entries under load (each entry
	// costs encoding, a log write and a decode on every replica).
	MaxInflightEntries int
	// RepairLogTail deletes a damaged tail of a shard's Raft log at start
	// instead of refusing to start (raftstore.Options.RepairTail); every
	// shard then refuses to vote until it has caught up (voteGuard).
	RepairLogTail bool
	// MaxVersion holds this node's shards at or below a rules version
	// (ledger.Version1...): the shards of the cluster are raised to the
	// newest version every node allows. 0 allows this binary's newest. Set
	// it on a node during a rolling upgrade to keep a downgrade possible:
	// once a shard is raised, older binaries refuse to open it. At 1 the
	// node also writes its Raft log in the codec older builds read
	// (raftstore.Options.LegacyCodec). A node whose shard is already above
	// MaxVersion refuses to start: versions never go down.
	MaxVersion uint32
	// BalanceInterval is how often the node hands leadership of shards it
	// leads to their preferred node; 0 = 2 s, negative disables it.
	BalanceInterval time.Duration
	// MaxClockOffset is how far this node's wall clock may be from its
	// peers' before it refuses every request (node/peercheck.go): a leader
	// stamps log time from its clock, and one far ahead would expire holds
	// early and push the shard's log time, which never goes back, into the
	// future. 0 = DefaultMaxClockOffset; negative disables the check.
	MaxClockOffset time.Duration
	// CheckEvery makes every replica hash its shard's whole state after
	// each entry whose index is a multiple of it, for the leader to compare
	// (replica consistency checks: node/consistency.go, fsm/check.go).
	// Every node of a cluster must use the same value. 0 =
	// DefaultCheckEvery; negative disables the checks.
	CheckEvery int64
	// checkInterval is consistencyInterval; tests shorten it.
	checkInterval time.Duration
	// Clock is the wall clock the node stamps log entries with and compares
	// with its peers' (nil: time.Now); tests skew it.
	Clock func() time.Time
	// ServerTLS, if set, makes the node's gRPC and Raft listeners mutual
	// TLS (internal/tlsfiles.Files.Server); PeerTLS is then what it dials
	// its peers with (Files.Client). Both or neither.
	ServerTLS, PeerTLS *tls.Config
	// UnsafeLocalReads serves reads from local state on any node, leader or
	// not, without confirming anything: NOT linearizable. It exists only so
	// the fault harness can prove its checker catches stale reads, and only
	// builds with the tally_unsafe tag accept it (UnsafeReadsBuilt).
	UnsafeLocalReads bool
	// LogLevel is hclog's level for Raft logs ("warn" by default).
	LogLevel  string
	LogOutput io.Writer
}

// defaultMaxInflightEntries: see Config.MaxInflightEntries. Measured with
// tally-load on a quiet 2-core box, 3 nodes, same binary, 10 s runs: 64 gave
// 6,531-7,101 coalesced single ops/s and 24,100-24,400 batched (B=1000);
// 4 gave 8,123 and 29,500; 2 gave 7,579 and 25,600.
const defaultMaxInflightEntries = 4

// DefaultMaxClockOffset: see Config.MaxClockOffset. Half a second is what
// CockroachDB allows by default; NTP keeps clocks within a few milliseconds.
const DefaultMaxClockOffset = 500 * time.Millisecond

// DefaultCheckEvery: see Config.CheckEvery. On the 2-CPU box, under
// batched load at ~44,000 ops/s, a walk of a shard of ~30 MB took 0.5-0.6 s
// (docs/BENCHMARKS.md, "Replica consistency checks"); there entries come
// at ~15 per second per shard batched and ~140 coalesced, so 32,768 of them
// take half an hour or four minutes.
const DefaultCheckEvery = 1 << 15

// checkEvery is the CheckEvery the FSMs are given (0: none).
func (c *Config) checkEvery() uint64 {
	switch {
	case c.CheckEvery < 0:
		return 0
	case c.CheckEvery == 0:
		return DefaultCheckEvery
	}
	return uint64(c.CheckEvery)
}

func (c *Config) consistencyInterval() time.Duration {
	if c.checkInterval > 0 {
		return c.checkInterval
	}
	return consistencyInterval
}

// DefaultShards is the number of shards a cluster gets unless told otherwise.
const DefaultShards = 8

// MaxShards bounds the shard count: each shard is a Raft group with its own
// heartbeats on every node.
const MaxShards = 256

func (c *Config) validate() error {
	if c.ID == "" {
		return errors.New("node: config: ID is required")
	}
	if c.UnsafeLocalReads && !UnsafeReadsBuilt {
		return errors.New("node: config: UnsafeLocalReads needs a build with -tags tally_unsafe (test builds only)")
	}
	if c.DataDir == "" {
		return errors.New("node: config: DataDir is required")
	}
	if (c.ServerTLS == nil) != (c.PeerTLS == nil) {
		return errors.New("node: config: ServerTLS and PeerTLS go together: a node dials its peers as they dial it")
	}
	if c.Shards < 1 || c.Shards > MaxShards {
		return fmt.Errorf("node: config: Shards must be 1..%d, got %d", MaxShards, c.Shards)
	}
	if len(c.Peers) == 0 {
		return errors.New("node: config: Peers is empty")
	}
	found := false
	ids := map[string]bool{}
	addrs := map[string]string{} // advertised address -> peer ID
	for _, p := range c.Peers {
		if p.ID == "" || p.RaftAddr == "" || p.GRPCAddr == "" {
			return fmt.Errorf("node: config: peer %+v needs ID, RaftAddr and GRPCAddr", p)
		}
		if ids[p.ID] {
			return fmt.Errorf("node: config: duplicate peer ID %q", p.ID)
		}
		ids[p.ID] = true
		for _, a := range []struct{ what, addr string }{{"RaftAddr", p.RaftAddr}, {"GRPCAddr", p.GRPCAddr}} {
			if err := dialable(a.addr); err != nil {
				return fmt.Errorf("node: config: peer %q %s: %w", p.ID, a.what, err)
			}
			// Two peers at one address would have a node's Raft dial itself
			// or clients take one node for two.
			key := addrKey(a.addr)
			if other, ok := addrs[key]; ok {
				return fmt.Errorf("node: config: peers %q and %q both advertise %s", other, p.ID, a.addr)
			}
			addrs[key] = p.ID
		}
		if p.ID == c.ID {
			found = true
			// Listen where the other nodes will dial unless told otherwise
			// (a wildcard address or a mapped port).
			if c.GRPCAddr == "" {
				c.GRPCAddr = p.GRPCAddr
			}
			if c.RaftAddr == "" {
				c.RaftAddr = p.RaftAddr
			}
		}
	}
	if !found {
		return fmt.Errorf("node: config: this node %q is not in Peers", c.ID)
	}
	if c.MaxOpsPerEntry < 0 || c.MaxInflightEntries < 0 {
		return fmt.Errorf("node: config: MaxOpsPerEntry (%d) and MaxInflightEntries (%d) must not be negative (0: default)",
			c.MaxOpsPerEntry, c.MaxInflightEntries)
	}
	if c.Raft.MaxAppendEntries < 0 || c.Raft.MaxAppendBytes < 0 {
		return fmt.Errorf("node: config: MaxAppendEntries (%d) and MaxAppendBytes (%d) must not be negative (0: default)",
			c.Raft.MaxAppendEntries, c.Raft.MaxAppendBytes)
	}
	if c.MaxOpsPerEntry == 0 {
		c.MaxOpsPerEntry = 16000
	}
	if c.MaxInflightEntries == 0 {
		c.MaxInflightEntries = defaultMaxInflightEntries
	}
	if c.MaxClockOffset == 0 {
		c.MaxClockOffset = DefaultMaxClockOffset
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.BalanceInterval == 0 {
		c.BalanceInterval = 2 * time.Second
	}
	if c.LogLevel == "" {
		c.LogLevel = "warn"
	}
	if hclog.LevelFromString(c.LogLevel) == hclog.NoLevel {
		return fmt.Errorf("node: config: log level %q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	if c.MaxInflightEntries > maxInflightEntries {
		// Sizes a channel per shard: a typo must not take the memory.
		return fmt.Errorf("node: config: MaxInflightEntries %d is above %d", c.MaxInflightEntries, maxInflightEntries)
	}
	if c.MaxVersion > ledger.MaxVersion {
		return fmt.Errorf("node: config: MaxVersion %d is above this binary's newest rules version %d", c.MaxVersion, ledger.MaxVersion)
	}
	c.Raft = c.Raft.withDefaults()
	// hashicorp/raft checks these too, but only once the stores are open:
	// a bad value must fail before anything is written to the data dir.
	if t := c.Raft; t.LeaderLeaseTimeout > t.HeartbeatTimeout {
		return fmt.Errorf("node: config: LeaderLeaseTimeout (%s) must be at most HeartbeatTimeout (%s)", t.LeaderLeaseTimeout, t.HeartbeatTimeout)
	} else if t.ElectionTimeout < t.HeartbeatTimeout {
		return fmt.Errorf("node: config: ElectionTimeout (%s) must be at least HeartbeatTimeout (%s)", t.ElectionTimeout, t.HeartbeatTimeout)
	}
	if err := raft.ValidateConfig(c.raftConfig()); err != nil {
		return fmt.Errorf("node: config: raft: %w", err)
	}
	return nil
}

// maxInflightEntries bounds Config.MaxInflightEntries.
const maxInflightEntries = 1024

// raftConfig is the hashicorp/raft configuration of every shard of this
// node, less its logger and restore-on-start choice (openShard's).
func (c *Config) raftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.ID)
	rc.HeartbeatTimeout = c.Raft.HeartbeatTimeout
	rc.ElectionTimeout = c.Raft.ElectionTimeout
	rc.LeaderLeaseTimeout = c.Raft.LeaderLeaseTimeout
	rc.CommitTimeout = c.Raft.CommitTimeout
	rc.MaxAppendEntries = c.Raft.MaxAppendEntries
	rc.SnapshotThreshold = c.Raft.SnapshotThreshold
	rc.SnapshotInterval = c.Raft.SnapshotInterval
	rc.TrailingLogs = c.Raft.TrailingLogs
	rc.BatchApplyCh = true
	return rc
}

// dialable reports why addr cannot be an advertised address: the other
// nodes dial a peer's RaftAddr and clients dial its GRPCAddr as given, so
// it needs a host and a port, and not a wildcard IP. (Dialing 0.0.0.0 or
// :: reaches whatever listens on the dialer's own host, so a wildcard
// advertised address would have each node talk to itself; listen on a
// wildcard with Config.RaftAddr or GRPCAddr instead.)
func dialable(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	if host == "" {
		return fmt.Errorf("%q has no host: advertise an address the others can dial", addr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("%q is a wildcard address: advertise an address the others can dial", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q has no valid port", addr)
	}
	return nil
}

// addrKey is a dialable address in one spelling per endpoint: host names
// lower-cased, IP literals in their canonical form ([0:0::1] is [::1]).
// (localhost and 127.0.0.1 still differ: resolving names is not for a
// config check.)
func addrKey(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip != nil {
		host = ip.String()
	}
	return net.JoinHostPort(strings.ToLower(host), port)
}

func (c *Config) peerByID(id string) (Peer, bool) {
	for _, p := range c.Peers {
		if p.ID == id {
			return p, true
		}
	}
	return Peer{}, false
}
