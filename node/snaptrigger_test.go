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

func TestSnapshotStagger(t *testing.T) {
	const min = 90
	require.Equal(t, uint64(0), snapshotStagger(min, 0, 3))
	require.Equal(t, uint64(30), snapshotStagger(min, 1, 3))
	require.Equal(t, uint64(60), snapshotStagger(min, 2, 3))
	require.Equal(t, uint64(0), snapshotStagger(min, 3, 3), "the slot wraps")
	require.Equal(t, uint64(30), snapshotStagger(min, 4, 3))
	require.Equal(t, uint64(0), snapshotStagger(min, 1, 1), "a single node has no one to stagger with")
}

func TestNextSnapshotRetry(t *testing.T) {
	for _, tc := range []struct {
		name       string
		prev, want time.Duration
	}{
		{"first failure: the next tick", 0, snapshotCheckTick},
		{"doubles", snapshotCheckTick, 2 * snapshotCheckTick},
		{"doubles again", 8 * time.Second, 16 * time.Second},
		{"capped", 3 * time.Minute, snapshotRetryMax},
		{"stays capped", snapshotRetryMax, snapshotRetryMax},
	} {
		require.Equal(t, tc.want, nextSnapshotRetry(tc.prev), tc.name)
	}
}

// TestSnapshotRetrySpacesFailures runs snapshotLoop's retry gate over check
// ticks with a snapshot due at every one: failed attempts come further and
// further apart, never more than snapshotRetryMax, and a success brings
// back an attempt per tick (and starts the next backoff over).
func TestSnapshotRetrySpacesFailures(t *testing.T) {
	maxTicks := int(snapshotRetryMax / snapshotCheckTick)
	for _, tc := range []struct {
		name  string
		fails func(attempt int) bool // attempts count from 1
		ticks int
		want  []int // the ticks with an attempt
	}{
		{"never failing", func(int) bool { return false }, 5, []int{1, 2, 3, 4, 5}},
		{"disk full for ten minutes", func(int) bool { return true }, 600,
			[]int{1, 2, 4, 8, 16, 32, 64, 128, 256, 256 + maxTicks}},
		{"recovers after three failures", func(a int) bool { return a <= 3 }, 12,
			[]int{1, 2, 4, 8, 9, 10, 11, 12}},
		{"fails again after a success", func(a int) bool { return a != 3 }, 20,
			[]int{1, 2, 4, 5, 6, 8, 12, 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r snapshotRetry
			var got []int
			for tick := 1; tick <= tc.ticks; tick++ {
				r.elapse(snapshotCheckTick)
				if !r.ready() {
					continue
				}
				got = append(got, tick)
				if tc.fails(len(got)) {
					r.failed()
				} else {
					r.succeeded()
				}
			}
			require.Equal(t, tc.want, got)
		})
	}
}

// Snapshots follow the log's bytes, not its entry count: with the entry
// trigger out of reach, a shard snapshots once its log passes the minimum,
// then not again until its log is as big as that snapshot. The replicas
// take their first snapshot at different points of the log (each a third
// of the minimum after the one before it), not all at once.
func TestShardsSnapshotByLogBytes(t *testing.T) {
	const minBytes = 16 << 10
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
	waitSnapshot := func(after uint64, nodes ...int) {
		deadline := time.Now().Add(10 * time.Second)
		for _, i := range nodes {
			for {
				if idx, _ := newest(i); idx > after {
					break
				}
				require.True(t, time.Now().Before(deadline), "node %d took no snapshot after index %d", i, after)
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	r := 0
	// creditTo credits one op at a time until a replica's log holds at
	// least want bytes, then waits for the others to apply as much: the
	// log overshoots want by at most one credit.
	creditTo := func(want uint64) {
		least := func() (lo, hi uint64) {
			lo = ^uint64(0)
			for _, n := range c.nodes {
				b := n.shards[0].fsm.LogBytes()
				lo, hi = min(lo, b), max(hi, b)
			}
			return lo, hi
		}
		for _, hi := least(); hi < want; _, hi = least() {
			require.Less(t, r, 20000, "the log never reached %d bytes", want)
			rs := c.mustSubmit(op(tallypb.OpKind_CREDIT, fmt.Sprintf("cr-%d", r), "m", "POINTS", "1"))
			require.Equal(t, "OK", rs[0].Code, rs[0].Message)
			r++
		}
		deadline := time.Now().Add(10 * time.Second)
		for lo, _ := least(); lo < want; lo, _ = least() {
			require.True(t, time.Now().Before(deadline), "the replicas did not apply %d bytes of log", want)
			time.Sleep(10 * time.Millisecond)
		}
	}

	slots := len(c.nodes) // one shard: a node's slot is its place in Peers
	for i := range c.nodes {
		creditTo(minBytes + snapshotStagger(minBytes, i, slots))
		waitSnapshot(0, i)
		if i == len(c.nodes)-1 {
			break
		}
		require.Less(t, c.nodes[i+1].shards[0].fsm.LogBytes(), minBytes+snapshotStagger(minBytes, i+1, slots), "one credit overshot a third of the minimum")
		time.Sleep(2500 * time.Millisecond) // two checks at least
		for j := i + 1; j < len(c.nodes); j++ {
			idx, _ := newest(j)
			require.Zero(t, idx, "node %d snapshotted with node %d", j, i)
		}
	}
	first, size := newest(0)
	require.Greater(t, size, uint64(0))
	i1, _ := newest(1)
	i2, _ := newest(2)
	require.Less(t, first, i1)
	require.Less(t, i1, i2)

	// No new log: no new snapshot, however many checks pass.
	time.Sleep(2500 * time.Millisecond)
	again, _ := newest(0)
	require.Equal(t, first, again)

	// Enough new log: the next snapshot follows.
	need := max(uint64(minBytes), size)
	startBytes := c.nodes[0].shards[0].fsm.LogBytes()
	creditTo(startBytes + need)
	waitSnapshot(first, 0)
	c.checkReplicas()
}
