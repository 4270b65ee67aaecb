package node

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	gometrics "github.com/hashicorp/go-metrics"
	gometricsprom "github.com/hashicorp/go-metrics/prometheus"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/fsm"
	"github.com/tally-ledger/tally/ledger"
)

// metrics are the node's Prometheus metrics, on a registry of its own so
// several nodes can run in one process (tests).
type metrics struct {
	reg            *prometheus.Registry
	ops            *prometheus.CounterVec
	opsReplayed    *prometheus.CounterVec
	requestLatency *prometheus.HistogramVec
	commitLatency  prometheus.Histogram
	entryOps       prometheus.Histogram
	unanswered     prometheus.Counter
	overloaded     prometheus.Counter
	applyBatch     prometheus.Histogram
	applyLatency   prometheus.Histogram
	isLeader       *prometheus.GaugeVec
	leaderChanges  *prometheus.CounterVec
	raftDrops      *prometheus.CounterVec
	verifyRounds   prometheus.Counter
	readRounds     prometheus.Counter
	snapshots      *prometheus.CounterVec
	snapshotTime   *prometheus.HistogramVec
	snapshotBytes  prometheus.Histogram
	checks         *prometheus.CounterVec
	checkTime      prometheus.Histogram
	replicaChecks  *prometheus.CounterVec
	// replicasDiverged is set by the leader's comparisons (consistency.go).
	replicasDiverged *prometheus.GaugeVec
}

func shardLabel(id uint32) string { return strconv.FormatUint(uint64(id), 10) }

// latencyBuckets span 0.25 ms to ~8 s.
var latencyBuckets = prometheus.ExponentialBuckets(0.00025, 2, 16)

func newMetrics(n *Node) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_ops_total",
			Help: "Operations answered by this node's Submit (and DefineAsset, for the shards it leads), by kind and code: the result of applying them (from rules version 4 that includes UNAVAILABLE, not applied and not recorded, for an op deferred while its shard has expired holds to release), or the error the request failed with: a refusal before any result (NOT_LEADER, INVALID_ARGUMENT, ...), or UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED, which may also mean an outcome not yet known (the op may have applied; its retry then counts in tally_ops_replayed_total). Retries answered from their record are in tally_ops_replayed_total.",
		}, []string{"kind", "code"}),
		opsReplayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_ops_replayed_total",
			Help: "Retried operations answered from their stored record (nothing applied again), by kind and the stored result's code.",
		}, []string{"kind", "code"}),
		requestLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tally_request_duration_seconds", Help: "gRPC request latency by method and outcome code.",
			Buckets: latencyBuckets,
		}, []string{"rpc", "code"}),
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_raft_commit_apply_seconds", Help: "Time from proposing a log entry to its apply on this leader.",
			Buckets: latencyBuckets,
		}),
		entryOps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_entry_ops", Help: "Operations packed into one Raft log entry by the leader.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16), // to 32768: entries reach MaxOpsPerEntry+MaxBatchOps-1
		}),
		unanswered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_raft_unanswered_total",
			Help: "Raft futures (log entries, read barriers, leadership checks, expiry ticks, version raises) not answered within 10 s; their requests got UNAVAILABLE. Should stay 0.",
		}),
		overloaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_overloaded_total",
			Help: "Requests refused (UNAVAILABLE, nothing proposed) because their shard already had the most operations waiting for an entry.",
		}),
		applyBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_apply_batch_ops", Help: "Operations applied in one FSM batch (one Pebble batch).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 17), // to 65536: parts reach maxApplyOps
		}),
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_apply_batch_seconds", Help: "Time to apply one FSM batch.",
			Buckets: latencyBuckets,
		}),
		isLeader: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_shard_is_leader", Help: "1 if this node leads the shard.",
		}, []string{"shard"}),
		leaderChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_shard_leader_changes_total", Help: "Leaders this node has seen take the shard over (another leader, or the same one in a new term), per shard. Every node counts each change: take the max over nodes, not the sum.",
		}, []string{"shard"}),
		raftDrops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_raft_connections_dropped_total", Help: "Connections to the Raft port dropped before any shard saw them, by reason: tls (the handshake failed or timed out), not_peer (a certificate that is not a node's), no_header, bad_header, unknown_shard. Connections refused because too many are in their handshake are not counted.",
		}, []string{"reason"}),
		verifyRounds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_read_verify_rounds_total", Help: "VerifyLeader calls made for linearizable reads (a round makes one, more only if fresh answers do not come within 50 ms).",
		}),
		readRounds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_read_rounds_total", Help: "Leadership confirmation rounds for linearizable reads; concurrent reads share one.",
		}),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_snapshots_total", Help: "FSM snapshots persisted or restored, by result.",
		}, []string{"op", "result"}),
		snapshotTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tally_snapshot_seconds", Help: "Time to persist or restore an FSM snapshot.",
			Buckets: latencyBuckets,
		}, []string{"op"}),
		snapshotBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_snapshot_bytes", Help: "Size of persisted FSM snapshots.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 12),
		}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_consistency_checks_total",
			Help: "This replica's consistency checks (a hash of the shard's whole state at a log index every replica hashes at; --check-every), by result: ok, error (the walk failed), conservation (the state does not sum to zero).",
		}, []string{"shard", "result"}),
		checkTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_consistency_check_seconds", Help: "Time to hash a shard's state for a consistency check.",
			Buckets: latencyBuckets,
		}),
		replicaChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_replica_checks_total",
			Help: "A shard leader's comparisons of its consistency check with another replica's at the same index, by result: match, mismatch (the replica's state differs: alert), error (the replica's walk failed).",
		}, []string{"shard", "result"}),
		replicasDiverged: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_replicas_diverged",
			Help: "Replicas of the shard whose newest comparison did not match this leader's check: a different state hash, or a walk that failed (0 when none, and on non-leaders): alert on any value above 0.",
		}, []string{"shard"}),
	}
	reg.MustRegister(m.ops, m.opsReplayed, m.requestLatency, m.commitLatency, m.entryOps, m.unanswered, m.overloaded, m.applyBatch, m.applyLatency,
		m.isLeader, m.leaderChanges, m.raftDrops, m.verifyRounds, m.readRounds, m.snapshots, m.snapshotTime, m.snapshotBytes,
		m.checks, m.checkTime, m.replicaChecks, m.replicasDiverged,
		&stateCollector{n: n},
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tally_admission_refused_total",
			Help: "Calls refused (UNAVAILABLE, not_applied, overloaded) before their message was read because the node already had the most calls in progress.",
		}, func() float64 {
			if n.admission == nil {
				return 0
			}
			return float64(n.admission.refused.Load())
		}),
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			// Scheduler latency: how long runnable goroutines wait for a CPU.
			collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/sched/latencies:seconds$`)})), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if n.cfg.ServerTLS != nil && n.cfg.ServerTLS.GetCertificate != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tally_tls_certificate_expiry_timestamp_seconds",
			Help: "When the certificate this node presents now expires (Unix time); a certificate rotated in place shows within a second of its next use.",
		}, func() float64 { return certExpiry(n.cfg.ServerTLS) }))
	}
	return m
}

// certExpiry is the NotAfter of the certificate cfg presents now, as Unix
// seconds; 0 if it has none.
func certExpiry(cfg *tls.Config) float64 {
	c, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil || c == nil {
		return 0
	}
	leaf := c.Leaf
	if leaf == nil && len(c.Certificate) > 0 {
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return 0
		}
	}
	if leaf == nil {
		return 0
	}
	return float64(leaf.NotAfter.Unix())
}

// countResult counts one op's result; a retry answered from its record was
// counted when it applied, and goes to opsReplayed.
func (m *metrics) countResult(kind ledger.OpKind, r ledger.Result) {
	c := m.ops
	if r.Replayed {
		c = m.opsReplayed
	}
	c.WithLabelValues(kind.String(), string(r.Code)).Inc()
}

// countFailed counts the ops of a Submit that ended with code before any
// result (NOT_LEADER, UNAVAILABLE, INVALID_ARGUMENT, a deadline, ...).
func (m *metrics) countFailed(ops []*tallypb.Op, code ledger.Code) {
	for _, op := range ops {
		kind := "UNKNOWN" // a kind outside the enum: label values stay bounded
		if k := op.GetKind(); k > tallypb.OpKind_OP_KIND_UNSPECIFIED && k <= tallypb.OpKind_EXPIRE_HOLD {
			kind = ledger.OpKind(k).String()
		}
		m.ops.WithLabelValues(kind, string(code)).Inc()
	}
}

func resultLabel(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

func (m *metrics) fsmHooks() fsm.Hooks {
	return fsm.Hooks{
		OnApply: func(_ uint64, entries, ops int, took time.Duration) {
			if entries > 0 {
				m.applyBatch.Observe(float64(ops))
				m.applyLatency.Observe(took.Seconds())
			}
		},
		OnSnapshot: func(bytes int64, took time.Duration, err error) {
			m.snapshots.WithLabelValues("persist", resultLabel(err)).Inc()
			m.snapshotTime.WithLabelValues("persist").Observe(took.Seconds())
			if err == nil {
				m.snapshotBytes.Observe(float64(bytes))
			}
		},
		OnRestore: func(took time.Duration, err error) {
			m.snapshots.WithLabelValues("restore", resultLabel(err)).Inc()
			m.snapshotTime.WithLabelValues("restore").Observe(took.Seconds())
		},
	}
}

// stateCollector reads Raft and Pebble state at scrape time.
type stateCollector struct{ n *Node }

var (
	// The applied index is read at scrape time, not set on apply: a
	// snapshot restore moves it too.
	descAppliedIndex = prometheus.NewDesc("tally_shard_applied_index", "Last Raft index applied by the shard's state machine.", []string{"shard"}, nil)
	descCommitIndex  = prometheus.NewDesc("tally_shard_commit_index", "Raft commit index known to this node.", []string{"shard"}, nil)
	descApplyLag     = prometheus.NewDesc("tally_shard_apply_lag_entries", "Commit index minus the index Raft has handed to the FSM on this node (entries committed but not yet applied).", []string{"shard"}, nil)
	descTerm         = prometheus.NewDesc("tally_shard_term", "Current Raft term.", []string{"shard"}, nil)
	descCheckIndex   = prometheus.NewDesc("tally_consistency_check_index", "Log index of this replica's newest consistency check (0: none since the node started; --check-every).", []string{"shard"}, nil)
	descVersion      = prometheus.NewDesc("tally_shard_version", "Version of the rules the shard's state machine applies (raised through the log once every node allows it).", []string{"shard"}, nil)
	descLastContact  = prometheus.NewDesc("tally_shard_last_contact_seconds", "Time since this follower last heard from its leader (0 on the leader, +Inf if it never has).", []string{"shard"}, nil)
	descCompactions  = prometheus.NewDesc("tally_pebble_compactions_total", "Pebble compactions.", []string{"db"}, nil)
	descCompactDebt  = prometheus.NewDesc("tally_pebble_compaction_debt_bytes", "Pebble's estimated compaction debt.", []string{"db"}, nil)
	descFlushes      = prometheus.NewDesc("tally_pebble_flushes_total", "Pebble memtable flushes.", []string{"db"}, nil)
	descWALBytes     = prometheus.NewDesc("tally_pebble_wal_bytes_written_total", "Bytes written to Pebble's WAL.", []string{"db"}, nil)
	descWALFiles     = prometheus.NewDesc("tally_pebble_wal_files", "Live WAL files.", []string{"db"}, nil)
	descL0Files      = prometheus.NewDesc("tally_pebble_l0_files", "Files in L0 (write stalls grow with it).", []string{"db"}, nil)
	descReadAmp      = prometheus.NewDesc("tally_pebble_read_amplification", "Pebble read amplification.", []string{"db"}, nil)
	descDiskBytes    = prometheus.NewDesc("tally_pebble_disk_bytes", "Disk space used by the Pebble DB.", []string{"db"}, nil)
	descMemtable     = prometheus.NewDesc("tally_pebble_memtable_bytes", "Memtable bytes.", []string{"db"}, nil)
	descStalls       = prometheus.NewDesc("tally_pebble_write_stalls_total", "Pebble write stalls (memtables or L0 full: every write waits).", []string{"db"}, nil)
	descStallTime    = prometheus.NewDesc("tally_pebble_write_stall_seconds_total", "Time spent in finished Pebble write stalls.", []string{"db"}, nil)
	descWALFsync     = prometheus.NewDesc("tally_pebble_wal_fsync_seconds", "Latency of Pebble's WAL fsyncs (only the Raft log DB has a WAL): every Raft append waits for one on the leader and one on a follower.", []string{"db"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAppliedIndex, descCommitIndex, descApplyLag, descTerm, descVersion, descCheckIndex, descLastContact, descCompactions,
		descCompactDebt, descFlushes, descWALBytes, descWALFiles, descL0Files, descReadAmp, descDiskBytes, descMemtable, descStalls, descStallTime, descWALFsync} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.n.shards {
		if s.raft == nil {
			continue
		}
		label := shardLabel(s.id)
		commit := s.raft.CommitIndex()
		applied := s.fsm.AppliedIndex()
		// Lag counts from what Raft has handed the FSM, not from the
		// FSM's own index: Raft hands it commands only, so after a no-op
		// or a read's barrier an idle shard's FSM index stays below the
		// commit index for good (a lag of 1 on every quiet shard, found by
		// review). The FSM's queue behind that is bounded.
		lag := 0.0
		if handed := s.raft.AppliedIndex(); commit > handed {
			lag = float64(commit - handed)
		}
		contact := 0.0
		if s.raft.State() != raft.Leader {
			if last := s.raft.LastContact(); last.IsZero() {
				contact = math.Inf(1) // never heard from a leader
			} else {
				contact = time.Since(last).Seconds()
			}
		}
		ch <- prometheus.MustNewConstMetric(descAppliedIndex, prometheus.GaugeValue, float64(applied), label)
		ch <- prometheus.MustNewConstMetric(descCommitIndex, prometheus.GaugeValue, float64(commit), label)
		ch <- prometheus.MustNewConstMetric(descApplyLag, prometheus.GaugeValue, lag, label)
		ch <- prometheus.MustNewConstMetric(descTerm, prometheus.GaugeValue, float64(s.raft.CurrentTerm()), label)
		ch <- prometheus.MustNewConstMetric(descVersion, prometheus.GaugeValue, float64(s.fsm.Version()), label)
		checkIndex := 0.0
		if c, ok := s.fsm.LastCheck(); ok {
			checkIndex = float64(c.Index)
		}
		ch <- prometheus.MustNewConstMetric(descCheckIndex, prometheus.GaugeValue, checkIndex, label)
		ch <- prometheus.MustNewConstMetric(descLastContact, prometheus.GaugeValue, contact, label)
	}
	if c.n.logs != nil {
		m := c.n.logs.Metrics()
		collectPebble(ch, "raftlog", m)
		// Only the Raft log DB has a WAL; the state DB's histogram would
		// be an empty series.
		if m != nil {
			if h, ok := fsyncHistogram(m.LogWriter.FsyncLatency, "raftlog"); ok {
				ch <- h
			}
		}
		collectStalls(ch, "raftlog", c.n.logs)
	}
	if c.n.state != nil {
		collectPebble(ch, "state", c.n.state.Metrics())
		collectStalls(ch, "state", c.n.state)
	}
}

func collectPebble(ch chan<- prometheus.Metric, db string, m *pebble.Metrics) {
	if m == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descCompactions, prometheus.CounterValue, float64(m.Compact.Count), db)
	ch <- prometheus.MustNewConstMetric(descCompactDebt, prometheus.GaugeValue, float64(m.Compact.EstimatedDebt), db)
	ch <- prometheus.MustNewConstMetric(descFlushes, prometheus.CounterValue, float64(m.Flush.Count), db)
	ch <- prometheus.MustNewConstMetric(descWALBytes, prometheus.CounterValue, float64(m.WAL.BytesWritten), db)
	ch <- prometheus.MustNewConstMetric(descWALFiles, prometheus.GaugeValue, float64(m.WAL.Files), db)
	ch <- prometheus.MustNewConstMetric(descL0Files, prometheus.GaugeValue, float64(m.Levels[0].TablesCount), db)
	ch <- prometheus.MustNewConstMetric(descReadAmp, prometheus.GaugeValue, float64(m.ReadAmp()), db)
	ch <- prometheus.MustNewConstMetric(descDiskBytes, prometheus.GaugeValue, float64(m.DiskSpaceUsage()), db)
	ch <- prometheus.MustNewConstMetric(descMemtable, prometheus.GaugeValue, float64(m.MemTable.Size), db)
}

// fsyncHistogram re-exports Pebble's WAL fsync histogram, which has no name
// and counts nanoseconds, as seconds under descWALFsync. Pebble's own
// buckets are kept (100 of them: 0.1 ms steps to 5 ms, then exponential to
// 10 s), so the counts stay exact. A slow disk shows here first: on one
// whose syncs took 100-300 ms, elections with the default timeouts never
// finished (docs/ARCHITECTURE.md, "Log").
func fsyncHistogram(h prometheus.Histogram, db string) (prometheus.Metric, bool) {
	if h == nil {
		return nil, false
	}
	var pb dto.Metric
	if err := h.Write(&pb); err != nil || pb.GetHistogram() == nil {
		return nil, false
	}
	src := pb.GetHistogram()
	buckets := make(map[float64]uint64, len(src.GetBucket()))
	for _, b := range src.GetBucket() {
		buckets[b.GetUpperBound()/1e9] = b.GetCumulativeCount()
	}
	m, err := prometheus.NewConstHistogram(descWALFsync, src.GetSampleCount(), src.GetSampleSum()/1e9, buckets, db)
	if err != nil {
		return nil, false
	}
	return m, true
}

func collectStalls(ch chan<- prometheus.Metric, db string, s interface {
	Stalls() (uint64, time.Duration)
}) {
	n, d := s.Stalls()
	ch <- prometheus.MustNewConstMetric(descStalls, prometheus.CounterValue, float64(n), db)
	ch <- prometheus.MustNewConstMetric(descStallTime, prometheus.CounterValue, d.Seconds(), db)
}

// raftMetricsConfig is the go-metrics configuration hashicorp/raft reports
// through: no host name, no runtime stats (the Go collector has them), and
// only raftMetricsAllowed.
func raftMetricsConfig() *gometrics.Config {
	conf := gometrics.DefaultConfig("")
	conf.EnableHostname = false
	conf.EnableRuntimeMetrics = false
	conf.FilterDefault = false
	conf.AllowedPrefixes = raftMetricsAllowed
	conf.BlockedPrefixes = raftMetricsBlocked
	return conf
}

// raftMetricsAllowed are the hashicorp/raft metrics exported. Everything
// else is dropped before it reaches the sink: each sample feeds a quantile
// summary, and with every metric on, the sink took 3.4% of a node's CPU in
// the single-op benchmark (profile of n1, run 9), most of it for
// per-entry and per-RPC timings nobody reads (raft.apply, fsm.enqueue,
// net.rpc*, per-peer copies of labelled timings).
var raftMetricsAllowed = []string{
	"raft.commitTime",                    // leader: dispatch to commit
	"raft.leader.dispatchLog",            // leader's log write + fsync
	"raft.rpc.appendEntries.storeLogs",   // follower's log write + fsync
	"raft.replication.appendEntries.rpc", // AppendEntries round trip, peer_id label
	"raft.fsm.applyBatch",
	"raft.leader.lastContact",
	"raft.state", "raft.transition", "raft.candidate", "raft.peers",
	"raft.snapshot", "raft.fsm.snapshot", "raft.fsm.restore", "raft.restore", "raft.compactLogs",
	"raft.rpc.installSnapshot", "raft.replication.installSnapshot",
}

// raftMetricsBlocked drops the legacy copies of labelled timings, which
// carry the peer in the metric name (raft.replication.appendEntries.rpc.<peer>).
var raftMetricsBlocked = []string{
	"raft.replication.appendEntries.rpc.",
	"raft.replication.installSnapshot.",
}

// raftMetricsOnce guards go-metrics' process-wide sink, which hashicorp/raft
// reports to.
var raftMetricsOnce sync.Once

// exportRaftMetrics routes hashicorp/raft's go-metrics into reg (once per
// process; see Config.RaftMetrics).
func exportRaftMetrics(reg prometheus.Registerer) error {
	var err error
	raftMetricsOnce.Do(func() {
		var sink *gometricsprom.PrometheusSink
		// Expiration 0: series never expire. With a minute, a rare counter
		// (raft_state_candidate, raft_restore, ...) was deleted after a
		// quiet minute and came back at 1, going backwards (found by
		// review). raftMetricsAllowed bounds the series instead.
		sink, err = gometricsprom.NewPrometheusSinkFrom(gometricsprom.PrometheusOpts{Registerer: reg, Expiration: 0})
		if err != nil {
			return
		}
		_, err = gometrics.NewGlobal(raftMetricsConfig(), sink)
	})
	if err != nil {
		return fmt.Errorf("node: raft metrics: %w", err)
	}
	return nil
}
