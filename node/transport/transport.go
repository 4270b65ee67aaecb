package transport

import (
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Defaults for TransportConfig fields left zero.
const (
	// defaultMaxPool is the number of idle outgoing connections kept per peer.
	// Replication, heartbeats, votes and the occasional snapshot each take
	// one from the pool while their RPC is in flight.
	defaultMaxPool = 3
	// defaultTimeout is the I/O deadline for one RPC (scaled up by raft for
	// snapshot installs). Generous, because a timeout tears down a connection
	// and a busy peer fsyncing behind 64 groups may answer slowly.
	defaultTimeout = 10 * time.Second
)

const (
	// noPipelining turns off raft's pipelined replication (it needs at least
	// 2 RPCs in flight). With it on, once the pipeline's response decoder
	// stops (a rejected append, a newer term) the sender can block forever on
	// the pipeline's hand-off channel: replication to that follower stops
	// while its heartbeats go on, so it never calls an election, and Shutdown
	// hangs. hashicorp/raft issue #612; our transport test hit it in CI. Not
	// configurable, so no caller can opt back into it. Large AppendEntries
	// batches (raft.Config.MaxAppendEntries) recover most of what pipelining
	// would give.
	noPipelining = 1
)

// TransportConfig configures NewTransport. The zero value is usable.
type TransportConfig struct {
	// MaxPool is the number of pooled connections per peer; 0 means
	// defaultMaxPool.
	MaxPool int
	// Timeout is the per-RPC I/O deadline; 0 means defaultTimeout.
	Timeout time.Duration
	// Logger is raft's transport logger; nil means a logger named
	// "raft-net" tagged with the shard, derived from the Mux's logger.
	Logger hclog.Logger
	// ServerAddressProvider, if set, resolves server IDs to addresses.
	ServerAddressProvider raft.ServerAddressProvider
}

// NewTransport returns a raft.NetworkTransport for shard running over the
// Mux. Closing it closes the shard's StreamLayer and all of its connections.
func (m *Mux) NewTransport(shard uint32, cfg TransportConfig) *raft.NetworkTransport {
	if cfg.MaxPool <= 0 {
		cfg.MaxPool = defaultMaxPool
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = defaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = m.logger.Named("raft-net").With("shard", shard)
	}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		ServerAddressProvider: cfg.ServerAddressProvider,
		Logger:                cfg.Logger,
		Stream:                m.StreamLayer(shard),
		MaxPool:               cfg.MaxPool,
		MaxRPCsInFlight:       noPipelining,
		Timeout:               cfg.Timeout,
	})
}
