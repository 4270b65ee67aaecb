package node

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/api/tallypb"
)

// TestReplicaChecksFindADivergedReplica: replicas hash their state at the
// same log indexes and the leader compares. While they agree every
// comparison matches; once one replica's state DB holds bytes that no
// entry wrote (a bad disk, a bug), the leader reports that replica, and
// only it, as diverged: a key too many, or an account record that no
// longer decodes (which once made the replica's walk fail, and the leader
// count an error rather than a divergence).
func TestReplicaChecksFindADivergedReplica(t *testing.T) {
	for _, tc := range []struct {
		name string
		// change returns the write to make in the replica's state DB,
		// given its keys.
		change func(t *testing.T, keys [][]byte) (key, value []byte)
	}{
		{"stray key", func(t *testing.T, keys [][]byte) ([]byte, []byte) {
			for _, k := range keys {
				// The meta record: the shard prefix ('s', then the
				// shard), then tag 'm' (fsm/keys.go).
				if len(k) == 6 && k[0] == 's' && k[5] == 'm' {
					return append(k[:5:5], "zstray"...), []byte("written by no entry")
				}
			}
			t.Fatal("no meta record in the state DB")
			return nil, nil
		}},
		{"account that does not decode", func(t *testing.T, keys [][]byte) ([]byte, []byte) {
			for _, k := range keys {
				// bob's account (tag 'A'), which no later entry touches.
				if len(k) > 6 && k[0] == 's' && k[5] == 'A' && bytes.Contains(k, []byte("bob")) {
					return k, []byte("garbage")
				}
			}
			t.Fatal("no account of bob in the state DB")
			return nil, nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { testReplicaChecksFindADivergedReplica(t, tc.change) })
	}
}

func testReplicaChecksFindADivergedReplica(t *testing.T, change func(t *testing.T, keys [][]byte) (key, value []byte)) {
	const every = 8
	logs := map[string]*lockedBuffer{}
	c := newTestCluster(t, 3, 1, func(cfg *Config) {
		cfg.CheckEvery = every
		cfg.checkInterval = 50 * time.Millisecond
		logs[cfg.ID] = &lockedBuffer{}
		cfg.LogOutput = logs[cfg.ID]
	})
	c.creditAnn(3 * every)
	c.mustSubmit(op(tallypb.OpKind_OPEN_ACCOUNT, "ob", "bob", "POINTS", ""))

	// waitCompared waits until the shard's leader has compared a check at
	// or after index from with both other replicas, and returns the
	// leader and its comparisons. A replica skips a check index that
	// comes while it still hashes the one before (under -race, walks are
	// slow), so while it waits it adds an entry now and then: check
	// indexes keep coming until one is on every replica.
	nudges := 0
	waitCompared := func(from uint64) (leader int, byNode map[string]*tallypb.ReplicaCheck) {
		t.Helper()
		polls := 0
		require.Eventually(t, func() bool {
			if polls++; polls%10 == 0 {
				// Not mustSubmit: this runs on Eventually's goroutine.
				nudges++
				_, _ = c.submit(op(tallypb.OpKind_CREDIT, fmt.Sprintf("nudge%d", nudges), "ann", "POINTS", "1"))
			}
			leader = c.leaderOf(0)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := c.client(c.cfgs[leader].GRPCAddr).ShardState(ctx, &tallypb.ShardStateRequest{Shard: 0})
			if err != nil || !st.GetLeader() || st.GetCheckIndex() < from {
				return false
			}
			byNode = map[string]*tallypb.ReplicaCheck{}
			for _, r := range st.GetReplicaChecks() {
				if r.GetIndex() == st.GetCheckIndex() {
					byNode[r.GetNodeId()] = r
				}
			}
			return len(byNode) == 2
		}, 30*time.Second, 20*time.Millisecond, "the leader compared no check at or after %d with both replicas", from)
		return leader, byNode
	}

	leader, byNode := waitCompared(every)
	for id, r := range byNode {
		require.True(t, r.GetMatch(), "replica %s differs at %d before anything was changed", id, r.GetIndex())
	}
	require.Zero(t, metricValues(t, c.nodes[leader], "tally_replicas_diverged")["shard=0"])
	require.Positive(t, metricValues(t, c.nodes[leader], "tally_replica_checks_total")["result=match,shard=0"])
	for i, n := range c.nodes {
		require.Positive(t, metricValues(t, n, "tally_consistency_checks_total")["result=ok,shard=0"], "node %d", i)
		// A walk of a nudge may end between the two reads: read again.
		require.Eventually(t, func() bool {
			last, ok := n.shards[0].fsm.LastCheck()
			return ok && float64(last.Index) == metricValues(t, n, "tally_consistency_check_index")["shard=0"]
		}, 5*time.Second, 10*time.Millisecond, "node %d: tally_consistency_check_index is not its newest check", i)
	}

	// Write into a follower's shard what no entry wrote.
	bad := (leader + 1) % 3
	want := c.nodes[leader].shards[0].fsm.AppliedIndex()
	require.Eventually(t, func() bool { return c.nodes[bad].shards[0].fsm.AppliedIndex() >= want },
		10*time.Second, 10*time.Millisecond, "the replica to change did not catch up")
	c.stop(bad)
	db, err := pebble.Open(filepath.Join(c.cfgs[bad].DataDir, "state"), &pebble.Options{})
	require.NoError(t, err)
	it, err := db.NewIter(nil)
	require.NoError(t, err)
	var keys [][]byte
	for valid := it.First(); valid; valid = it.Next() {
		keys = append(keys, append([]byte(nil), it.Key()...))
	}
	require.NoError(t, it.Close())
	k, v := change(t, keys)
	require.NoError(t, db.Set(k, v, pebble.Sync))
	require.NoError(t, db.Close())
	c.start(bad)

	applied := c.nodes[c.leaderOf(0)].shards[0].fsm.AppliedIndex()
	for i := range 2 * every {
		c.mustSubmit(op(tallypb.OpKind_CREDIT, fmt.Sprintf("after%d", i), "ann", "POINTS", "1"))
	}
	leader, byNode = waitCompared(applied + 1)
	badID := c.cfgs[bad].ID
	wantDiverged := 1
	if leader == bad {
		wantDiverged = 2 // it differs from both, which agree with each other
	}
	for id, r := range byNode {
		require.Equal(t, leader != bad && id != badID, r.GetMatch(), "replica %s at %d (leader n%d, changed %s)",
			id, r.GetIndex(), leader+1, badID)
	}
	require.Equal(t, float64(wantDiverged), metricValues(t, c.nodes[leader], "tally_replicas_diverged")["shard=0"])
	require.Positive(t, metricValues(t, c.nodes[leader], "tally_replica_checks_total")["result=mismatch,shard=0"])
	// The line the chaos harness looks for in node logs
	// (linearizability/check.go, checkFailureMarkers), naming each
	// replica found different.
	logged := logs[c.cfgs[leader].ID].String()
	require.Contains(t, logged, "REPLICA STATE DIFFERS")
	for id, r := range byNode {
		if !r.GetMatch() {
			require.Contains(t, logged, "replica="+id)
		}
	}
}

// lockedBuffer is a log output that nodes' goroutines may write at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
