package node

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
)

// hashicorp/raft refuses a LeaderLeaseTimeout longer than HeartbeatTimeout,
// so a default must never produce one.
func TestRaftTuningDefaultLease(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		in                       RaftTuning
		wantHeartbeat, wantLease time.Duration
		wantElection             time.Duration
	}{
		{"all defaults", RaftTuning{}, 500 * time.Millisecond, 500 * time.Millisecond, 500 * time.Millisecond},
		{"short heartbeat caps the default lease", RaftTuning{HeartbeatTimeout: 200 * time.Millisecond}, 200 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond},
		{"long heartbeat keeps the default lease, raises the election timeout", RaftTuning{HeartbeatTimeout: 2 * time.Second}, 2 * time.Second, 500 * time.Millisecond, 2 * time.Second},
		{"an explicit lease is kept", RaftTuning{HeartbeatTimeout: time.Second, LeaderLeaseTimeout: 100 * time.Millisecond}, time.Second, 100 * time.Millisecond, time.Second},
		{"an explicit election timeout is kept", RaftTuning{HeartbeatTimeout: time.Second, ElectionTimeout: 3 * time.Second}, time.Second, 500 * time.Millisecond, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.withDefaults()
			require.Equal(t, tc.wantHeartbeat, got.HeartbeatTimeout)
			require.Equal(t, tc.wantLease, got.LeaderLeaseTimeout)
			require.Equal(t, tc.wantElection, got.ElectionTimeout)
			require.LessOrEqual(t, got.LeaderLeaseTimeout, got.HeartbeatTimeout)
			require.GreaterOrEqual(t, got.ElectionTimeout, got.HeartbeatTimeout)
		})
	}
}

func TestConfigRejectsRaftTimeouts(t *testing.T) {
	base := func() Config {
		return Config{ID: "n1", DataDir: t.TempDir(), Shards: 1,
			Peers: []Peer{{ID: "n1", RaftAddr: "127.0.0.1:1", GRPCAddr: "127.0.0.1:2"}}}
	}
	c := base()
	c.Raft = RaftTuning{HeartbeatTimeout: time.Second, LeaderLeaseTimeout: 2 * time.Second}
	require.ErrorContains(t, c.validate(), "LeaderLeaseTimeout (2s) must be at most HeartbeatTimeout (1s)")
	c = base()
	c.Raft = RaftTuning{HeartbeatTimeout: 2 * time.Second, ElectionTimeout: time.Second}
	require.ErrorContains(t, c.validate(), "ElectionTimeout (1s) must be at least HeartbeatTimeout (2s)")
	c = base()
	c.Raft = RaftTuning{HeartbeatTimeout: time.Second, ElectionTimeout: 2 * time.Second, LeaderLeaseTimeout: time.Second}
	require.NoError(t, c.validate())
	c = base()
	c.LogLevel = "bogus"
	require.ErrorContains(t, c.validate(), `log level "bogus"`)
	c.LogLevel = "DEBUG"
	require.NoError(t, c.validate())
	// Negative sizes are refused, not a panic at start (makechan).
	c = base()
	c.MaxInflightEntries = -1
	require.ErrorContains(t, c.validate(), "must not be negative")
	c = base()
	c.Raft.MaxAppendBytes = -1
	require.ErrorContains(t, c.validate(), "must not be negative")
	// Found by review: these passed validate and failed (or crashed, out
	// of memory) only after the data directory was written.
	c = base()
	c.MaxInflightEntries = 100_000_000_000
	require.ErrorContains(t, c.validate(), "MaxInflightEntries 100000000000 is above 1024")
	c = base()
	c.Raft.HeartbeatTimeout = -time.Second
	require.ErrorContains(t, c.validate(), "raft:")
	c = base()
	c.Raft.SnapshotInterval = -time.Second
	require.ErrorContains(t, c.validate(), "raft:")
	c = base()
	c.MaxVersion = ledger.MaxVersion + 1
	require.ErrorContains(t, c.validate(), "above this binary's newest rules version")
	// Non-linearizable reads: only a test build (-tags tally_unsafe).
	c = base()
	c.UnsafeLocalReads = true
	if UnsafeReadsBuilt {
		require.NoError(t, c.validate())
	} else {
		require.ErrorContains(t, c.validate(), "-tags tally_unsafe")
	}
}

// TestConfigRejectsUndialablePeers: every peer address is dialed as given
// (by the other nodes, or by clients), so a wildcard, a missing host or
// port, or two peers at one address is refused before anything starts.
func TestConfigRejectsUndialablePeers(t *testing.T) {
	for _, tc := range []struct {
		name, raft, grpc, other, want string
	}{
		{"wildcard raft", "0.0.0.0:7201", "10.0.0.1:7101", "10.0.0.2:7201", `peer "n1" RaftAddr: "0.0.0.0:7201" is a wildcard address`},
		{"wildcard grpc v6", "10.0.0.1:7201", "[::]:7101", "10.0.0.2:7201", `peer "n1" GRPCAddr: "[::]:7101" is a wildcard address`},
		{"no host", ":7201", "10.0.0.1:7101", "10.0.0.2:7201", `peer "n1" RaftAddr: ":7201" has no host`},
		{"no port", "10.0.0.1", "10.0.0.1:7101", "10.0.0.2:7201", `peer "n1" RaftAddr: "10.0.0.1" is not host:port`},
		{"bad port", "10.0.0.1:0", "10.0.0.1:7101", "10.0.0.2:7201", `peer "n1" RaftAddr: "10.0.0.1:0" has no valid port`},
		{"named port", "db1:raft", "10.0.0.1:7101", "10.0.0.2:7201", `peer "n1" RaftAddr: "db1:raft" has no valid port`},
		{"shared address", "10.0.0.1:7201", "10.0.0.1:7101", "10.0.0.1:7201", `peers "n1" and "n2" both advertise 10.0.0.1:7201`},
		{"one port for raft and grpc", "10.0.0.1:7201", "10.0.0.1:7201", "10.0.0.2:7201", `peers "n1" and "n1" both advertise 10.0.0.1:7201`},
		{"one host in two spellings", "DB1.example:7201", "10.0.0.1:7101", "db1.example:7201", `peers "n1" and "n2" both advertise db1.example:7201`},
		{"one IPv6 address in two spellings", "[::1]:7201", "10.0.0.1:7101", "[0:0::1]:7201", `peers "n1" and "n2" both advertise [0:0::1]:7201`},
		{"ok", "10.0.0.1:7201", "db1.example:7101", "10.0.0.2:7201", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{ID: "n1", DataDir: t.TempDir(), Shards: 1, Peers: []Peer{
				{ID: "n1", RaftAddr: tc.raft, GRPCAddr: tc.grpc},
				{ID: "n2", RaftAddr: tc.other, GRPCAddr: "10.0.0.2:7101"},
			}}
			err := c.validate()
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// TestListenAddressesDefaultToOwnPeer: a node told nothing else listens
// where the others dial it; explicit addresses are kept.
func TestListenAddressesDefaultToOwnPeer(t *testing.T) {
	peers := []Peer{
		{ID: "n1", RaftAddr: "10.0.0.1:7201", GRPCAddr: "10.0.0.1:7101"},
		{ID: "n2", RaftAddr: "10.0.0.2:7201", GRPCAddr: "10.0.0.2:7101"},
	}
	c := Config{ID: "n2", DataDir: t.TempDir(), Shards: 1, Peers: peers}
	require.NoError(t, c.validate())
	require.Equal(t, "10.0.0.2:7101", c.GRPCAddr)
	require.Equal(t, "10.0.0.2:7201", c.RaftAddr)
	c = Config{ID: "n2", DataDir: t.TempDir(), Shards: 1, Peers: peers, GRPCAddr: "0.0.0.0:7101", RaftAddr: "0.0.0.0:7201"}
	require.NoError(t, c.validate())
	require.Equal(t, "0.0.0.0:7101", c.GRPCAddr)
	require.Equal(t, "0.0.0.0:7201", c.RaftAddr)
}

// TestShardCountIsPinned: the first start writes SHARDS, later starts with
// another count are refused, and a damaged file is an error, not a panic.
func TestShardCountIsPinned(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, (&Node{cfg: Config{DataDir: dir, Shards: 3}}).checkShardCount())
	require.NoError(t, (&Node{cfg: Config{DataDir: dir, Shards: 3}}).checkShardCount())
	require.ErrorContains(t, (&Node{cfg: Config{DataDir: dir, Shards: 4}}).checkShardCount(), `created with "3" shards, config says 4`)

	require.NoError(t, os.WriteFile(filepath.Join(dir, "SHARDS"), nil, 0o644))
	require.ErrorContains(t, (&Node{cfg: Config{DataDir: dir, Shards: 3}}).checkShardCount(), `created with "" shards`)
}
