package node

import (
	"testing"
	"time"

	gometrics "github.com/hashicorp/go-metrics"
	"github.com/stretchr/testify/require"
)

// The raft metrics filter keeps the documented timings and drops the
// per-entry and per-peer-name ones.
func TestRaftMetricsFilter(t *testing.T) {
	sink := gometrics.NewInmemSink(time.Hour, time.Hour)
	m, err := gometrics.New(raftMetricsConfig(), sink)
	require.NoError(t, err)
	start := time.Now().Add(-time.Millisecond)
	peer := []gometrics.Label{{Name: "peer_id", Value: "n2"}}

	m.MeasureSince([]string{"raft", "commitTime"}, start)
	m.MeasureSince([]string{"raft", "leader", "dispatchLog"}, start)
	m.MeasureSince([]string{"raft", "rpc", "appendEntries", "storeLogs"}, start)
	m.MeasureSinceWithLabels([]string{"raft", "replication", "appendEntries", "rpc"}, start, peer)
	m.IncrCounter([]string{"raft", "state", "leader"}, 1)
	// Dropped: per entry, per RPC, or the legacy per-peer-name copy.
	m.IncrCounter([]string{"raft", "apply"}, 1)
	m.MeasureSince([]string{"raft", "fsm", "enqueue"}, start)
	m.MeasureSinceWithLabels([]string{"raft", "net", "rpcDecode"}, start, nil)
	m.MeasureSince([]string{"raft", "replication", "appendEntries", "rpc", "n2"}, start)

	data := sink.Data()
	require.NotEmpty(t, data)
	got := map[string]bool{}
	for _, iv := range data {
		for k := range iv.Samples {
			got[k] = true
		}
		for k := range iv.Counters {
			got[k] = true
		}
	}
	for _, k := range []string{"raft.commitTime", "raft.leader.dispatchLog", "raft.rpc.appendEntries.storeLogs",
		"raft.replication.appendEntries.rpc;peer_id=n2", "raft.state.leader"} {
		require.True(t, got[k], "%s kept (got %v)", k, got)
	}
	for _, k := range []string{"raft.apply", "raft.fsm.enqueue", "raft.net.rpcDecode", "raft.replication.appendEntries.rpc.n2"} {
		require.False(t, got[k], "%s dropped", k)
	}
}
