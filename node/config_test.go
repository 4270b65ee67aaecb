package node

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// hashicorp/raft refuses a LeaderLeaseTimeout longer than HeartbeatTimeout,
// so a default must never produce one.
func TestRaftTuningDefaultLease(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		in                       RaftTuning
		wantHeartbeat, wantLease time.Duration
	}{
		{"all defaults", RaftTuning{}, 500 * time.Millisecond, 500 * time.Millisecond},
		{"short heartbeat caps the default lease", RaftTuning{HeartbeatTimeout: 200 * time.Millisecond}, 200 * time.Millisecond, 200 * time.Millisecond},
		{"long heartbeat keeps the default lease", RaftTuning{HeartbeatTimeout: 2 * time.Second}, 2 * time.Second, 500 * time.Millisecond},
		{"an explicit lease is kept", RaftTuning{HeartbeatTimeout: time.Second, LeaderLeaseTimeout: 100 * time.Millisecond}, time.Second, 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.withDefaults()
			require.Equal(t, tc.wantHeartbeat, got.HeartbeatTimeout)
			require.Equal(t, tc.wantLease, got.LeaderLeaseTimeout)
			require.LessOrEqual(t, got.LeaderLeaseTimeout, got.HeartbeatTimeout)
		})
	}
}
