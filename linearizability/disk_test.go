package linearizability

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestProbeSync(t *testing.T) {
	dir := t.TempDir()
	p, err := ProbeSync(dir, 5)
	require.NoError(t, err)
	require.Equal(t, 5, p.Syncs)
	require.Positive(t, p.Median)
	require.GreaterOrEqual(t, p.Max, p.Median)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, ents, "the probe's scratch file is removed")

	_, err = ProbeSync(dir, 0)
	require.Error(t, err)
	_, err = ProbeSync(dir+"/missing", 3)
	require.Error(t, err)
}

func TestOpsFloor(t *testing.T) {
	for _, tc := range []struct {
		minOps int
		sync   time.Duration
		want   int
	}{
		{5000, 0, 5000}, // no probe
		{5000, time.Millisecond, 5000},
		{5000, slowDiskSync - time.Microsecond, 5000},
		{5000, slowDiskSync, minOpsSlowDisk},
		{5000, 300 * time.Millisecond, minOpsSlowDisk},
		{300, time.Second, 300}, // never above the run's own floor
	} {
		require.Equal(t, tc.want, opsFloor(tc.minOps, tc.sync), "minOps %d, sync %s", tc.minOps, tc.sync)
	}
}

func TestSlowestSync(t *testing.T) {
	r := &Report{}
	require.Zero(t, r.SlowestSync())
	r.DiskSync = []SyncProbe{{Median: 2 * time.Millisecond, Max: 90 * time.Millisecond}, {Median: 30 * time.Millisecond}, {Median: time.Millisecond}}
	require.Equal(t, 30*time.Millisecond, r.SlowestSync(), "the slowest median, not the slowest single sync")
}
