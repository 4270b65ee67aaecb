package diskprobe

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestProbe(t *testing.T) {
	dir := t.TempDir()
	r, err := Probe(dir, 5)
	require.NoError(t, err)
	require.Equal(t, 5, r.Syncs)
	require.Positive(t, r.Median)
	require.GreaterOrEqual(t, r.Max, r.Median)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, ents, "the probe's scratch file is removed")

	_, err = Probe(dir, 0)
	require.Error(t, err)
	_, err = Probe(dir+"/missing", 3)
	require.Error(t, err)
}

func TestSlow(t *testing.T) {
	require.False(t, Result{Median: time.Millisecond}.Slow())
	require.False(t, Result{Median: SlowMedian - time.Microsecond, Max: time.Second}.Slow(), "the median decides, not one slow sync")
	require.True(t, Result{Median: SlowMedian}.Slow())
	// The slow-disk timeouts are ones hashicorp/raft accepts.
	require.LessOrEqual(t, SlowLeaseTimeout, SlowHeartbeatTimeout)
	require.GreaterOrEqual(t, SlowElectionTimeout, SlowHeartbeatTimeout)
}
