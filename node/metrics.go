package node

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the node's Prometheus metrics, on a registry of its own so
// several nodes can run in one process (tests).
type metrics struct {
	reg            *prometheus.Registry
	ops            *prometheus.CounterVec
	requestLatency *prometheus.HistogramVec
	commitLatency  prometheus.Histogram
	entryOps       prometheus.Histogram
	appliedIndex   *prometheus.GaugeVec
	isLeader       *prometheus.GaugeVec
	leaderChanges  *prometheus.CounterVec
	verifyRounds   prometheus.Counter
}

func shardLabel(id uint32) string { return strconv.FormatUint(uint64(id), 10) }

func newMetrics(n *Node) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_ops_total", Help: "Operations applied through this node, by kind and result code.",
		}, []string{"kind", "code"}),
		requestLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tally_request_duration_seconds", Help: "gRPC request latency by method and outcome code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"rpc", "code"}),
		commitLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_raft_commit_apply_seconds", Help: "Time from proposing a log entry to its apply on this leader.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		entryOps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_entry_ops", Help: "Operations packed into one Raft log entry.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 15),
		}),
		appliedIndex: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_shard_applied_index", Help: "Last Raft index applied by the shard's state machine.",
		}, []string{"shard"}),
		isLeader: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_shard_is_leader", Help: "1 if this node leads the shard.",
		}, []string{"shard"}),
		leaderChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_shard_leader_changes_total", Help: "Leadership gained or lost by this node, per shard.",
		}, []string{"shard"}),
		verifyRounds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_read_verify_rounds_total", Help: "VerifyLeader rounds run for linearizable reads (shared by concurrent reads).",
		}),
	}
	reg.MustRegister(m.ops, m.requestLatency, m.commitLatency, m.entryOps, m.appliedIndex, m.isLeader,
		m.leaderChanges, m.verifyRounds,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
