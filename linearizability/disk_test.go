package linearizability

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/diskprobe"
)

func TestOpsFloor(t *testing.T) {
	for _, tc := range []struct {
		minOps int
		sync   time.Duration
		want   int
	}{
		{5000, 0, 5000}, // no probe
		{5000, time.Millisecond, 5000},
		{5000, diskprobe.SlowMedian - time.Microsecond, 5000},
		{5000, diskprobe.SlowMedian, minOpsSlowDisk},
		{5000, 300 * time.Millisecond, minOpsSlowDisk},
		{300, time.Second, 300}, // never above the run's own floor
	} {
		require.Equal(t, tc.want, opsFloor(tc.minOps, tc.sync), "minOps %d, sync %s", tc.minOps, tc.sync)
	}
}

func TestSlowestSync(t *testing.T) {
	r := &Report{}
	require.Zero(t, r.SlowestSync())
	r.DiskSync = []diskprobe.Result{{Median: 2 * time.Millisecond, Max: 90 * time.Millisecond}, {Median: 30 * time.Millisecond}, {Median: time.Millisecond}}
	require.Equal(t, 30*time.Millisecond, r.SlowestSync(), "the slowest median, not the slowest single sync")
}
