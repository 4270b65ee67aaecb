package node

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/tally-ledger/tally/api/tallypb"
)

func TestSnapshotDue(t *testing.T) {
	const min = 64 << 20
	for _, tc := range []struct {
		name                   string
		logBytes, lastSnapshot uint64
		due                    bool
	}{
		{"no snapshot yet, little log", 1 << 20, 0, false},
		{"no snapshot yet, min log", min, 0, true},
		{"small state: the minimum rules", min - 1, 1 << 20, false},
		{"small state, min reached", min, 1 << 20, true},
		{"big state: log as big as it", 300 << 20, 300 << 20, true},
		{"big state: min is not enough", 200 << 20, 300 << 20, false},
	} {
		require.Equal(t, tc.due, snapshotDue(tc.logBytes, min, tc.lastSnapshot), tc.name)
	}
}

// Snapshots follow the log's bytes, not its entry count: with the entry
// trigger out of reach, a shard snapshots once its log passes the minimum,
// then not again until its log is as big as that snapshot.
func TestShardsSnapshotByLogBytes(t *testing.T) {
	const minBytes = 4 << 10
	c := newTestCluster(t, 3, 1, func(cfg *Config) {
		cfg.Raft.SnapshotThreshold = 1 << 40
		cfg.Raft.SnapshotLogBytes = minBytes
		cfg.BalanceInterval = -1
	})
	c.defineAsset("shop", "POINTS", 0)
	rs := c.mustSubmit(op(tallypb.OpKind_OPEN_ACCOUNT, "open-m", "m", "POINTS", ""))
	require.Equal(t, "OK", rs[0].Code)

	newest := func(i int) (index, size uint64) {
		metas, err := c.nodes[i].shards[0].snaps.List()
		require.NoError(t, err)
		if len(metas) == 0 {
			return 0, 0
		}
		return metas[0].Index, uint64(metas[0].Size)
	}
	waitSnapshot := func(after uint64) {
		deadline := time.Now().Add(10 * time.Second)
		for i := range c.nodes {
			for {
				if idx, _ := newest(i); idx > after {
					break
				}
				require.True(t, time.Now().Before(deadline), "node %d took no snapshot after index %d", i, after)
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	credit := func(from, to int) {
		for r := from; r < to; r++ {
			rs := c.mustSubmit(op(tallypb.OpKind_CREDIT, fmt.Sprintf("cr-%d", r), "m", "POINTS", "1"))
			require.Equal(t, "OK", rs[0].Code, rs[0].Message)
		}
	}

	r := 0
	for c.nodes[0].shards[0].fsm.LogBytes() < minBytes {
		require.Less(t, r, 10000, "the log never reached %d bytes", minBytes)
		credit(r, r+10)
		r += 10
	}
	waitSnapshot(0)
	first, size := newest(0)
	require.Greater(t, size, uint64(0))

	// No new log: no new snapshot, however many checks pass.
	time.Sleep(2500 * time.Millisecond)
	again, _ := newest(0)
	require.Equal(t, first, again)

	// Enough new log: the next snapshot follows.
	need := max(uint64(minBytes), size)
	startBytes := c.nodes[0].shards[0].fsm.LogBytes()
	for c.nodes[0].shards[0].fsm.LogBytes()-startBytes < need {
		require.Less(t, r, 20000, "the log never grew by %d bytes", need)
		credit(r, r+10)
		r += 10
	}
	waitSnapshot(first)
	c.checkReplicas()
}
