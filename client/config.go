package client

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"time"

	"github.com/tally-ledger/tally/internal/tlsfiles"
	"github.com/tally-ledger/tally/ledger"
)

// Defaults of Config. Each is used when the corresponding field is zero.
const (
	// DefaultDialTimeout bounds Dial's search for a node that answers
	// ClusterInfo; long enough to ride out one node restarting.
	DefaultDialTimeout = 5 * time.Second
	// DefaultRequestTimeout bounds one attempt of one RPC. A leader that does
	// not answer within it is presumed gone: the client refreshes its view of
	// the cluster and retries (with the same idempotency keys).
	DefaultRequestTimeout = 5 * time.Second
	// DefaultMaxInflightPerShard bounds the concurrent coalesced RPCs (Submit
	// or GetAccounts) that one client keeps in flight to one shard. One is
	// enough: the leader already pipelines entries from many clients, and
	// while the one RPC is out the next batch grows, so each RPC carries more
	// operations for the same CPU. Measured against 4 (docs/BENCHMARKS.md,
	// run 16): flash sale +20%, coalesced reads +37%, and open-loop p99 at
	// 3,600 req/s 22-25 ms instead of 28-34 ms.
	DefaultMaxInflightPerShard = 1
	// DefaultBackoffMin and DefaultBackoffMax bound the wait between retries:
	// it starts at the minimum and doubles, with jitter, up to the maximum. An
	// election takes a few hundred milliseconds, so the cap is about that.
	DefaultBackoffMin = 5 * time.Millisecond
	DefaultBackoffMax = 500 * time.Millisecond
	// DefaultKeepaliveTime is how long a connection with RPCs in flight may be
	// silent before the client pings the server, and keepaliveTimeout how long
	// it then waits for the ack before it closes the connection, so a dead
	// peer is noticed in bounded time. The server's keepalive enforcement
	// must allow pings this often.
	DefaultKeepaliveTime = 30 * time.Second
	keepaliveTimeout     = 10 * time.Second
	// DefaultMaxCallDuration bounds a call whose context has no deadline:
	// retries against a shard without a leader (or a leader that never
	// answers) must not hold the caller, and its coalesced batch, for good.
	DefaultMaxCallDuration = time.Minute
	// DefaultMaxQueuedOps bounds the operations (and, separately, the reads)
	// waiting in one shard's coalescing queue: 32 full requests.
	DefaultMaxQueuedOps = 32 * ledger.MaxBatchOps
)

// Internal limits.
const (
	// maxClusterInfoTimeout caps one ClusterInfo attempt during a refresh: the
	// answer is cheap, and a partitioned node must not stall the search for
	// one that knows the leader.
	maxClusterInfoTimeout = time.Second
	// maxImmediateRedirects bounds how many NOT_LEADER hints in a row are
	// followed without backing off, so two nodes that name each other (stale
	// views during an election) cannot make the client spin.
	maxImmediateRedirects = 3
)

// Config configures a Client. Only Addrs is required.
type Config struct {
	// Addrs are gRPC addresses ("host:port") of some nodes of the cluster.
	// Any one that answers is enough; the rest of the cluster is learnt from
	// ClusterInfo.
	Addrs []string
	// DialTimeout bounds Dial (default DefaultDialTimeout).
	DialTimeout time.Duration
	// RequestTimeout bounds each attempt of each RPC; the caller's context
	// bounds the whole call, retries included (default DefaultRequestTimeout).
	RequestTimeout time.Duration
	// MaxBatchOps is the most operations sent in one Submit RPC (default and
	// upper bound ledger.MaxBatchOps). Larger unlinked batches are split.
	MaxBatchOps int
	// Coalesce queues concurrent unlinked submissions per shard and sends
	// them together (see the package doc).
	Coalesce bool
	// MaxInflightPerShard bounds coalesced RPCs (Submit or GetAccounts) in
	// flight per shard
	// (default DefaultMaxInflightPerShard).
	MaxInflightPerShard int
	// BackoffMin and BackoffMax bound the wait between retries (defaults
	// DefaultBackoffMin, DefaultBackoffMax).
	BackoffMin, BackoffMax time.Duration
	// KeepaliveTime is the gRPC client keepalive interval (default
	// DefaultKeepaliveTime).
	KeepaliveTime time.Duration
	// MaxCallDuration bounds a call whose context has no deadline, retries
	// and every chunk of a split Submit or GetAccounts included (default
	// DefaultMaxCallDuration; negative: no bound). A call
	// it ends fails as the context's deadline would: UNAVAILABLE,
	// indeterminate if an attempt may have applied.
	MaxCallDuration time.Duration
	// MaxQueuedOps bounds the operations, and separately the reads, waiting
	// in one shard's coalescing queue (default DefaultMaxQueuedOps). A call
	// that would pass it fails at once with UNAVAILABLE, not indeterminate:
	// nothing of it was sent. (A call into an empty queue is always taken.)
	MaxQueuedOps int
	// Dialer, when set, opens the connection to each node's gRPC address
	// ("host:port", as given in Addrs or learnt from ClusterInfo) instead of
	// a plain TCP dial: a tunnel, a proxy, or a test's fault injector on the
	// client's links (package linearizability).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// TLS, when set, makes every connection mutual TLS with this
	// configuration: a certificate to present, and the CA the nodes'
	// certificates must chain to (internal/tlsfiles.Files.Client builds one
	// from PEM files). Nil: plaintext.
	TLS *tls.Config
}

// LoadTLS makes a Config.TLS from PEM files: this client's certificate and
// key, which are re-read when they change (a certificate rotated in place is
// presented from the next connection on), and the CA the nodes'
// certificates must chain to, read once. The nodes' names are verified
// against the addresses dialled.
func LoadTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("client: LoadTLS needs a certificate, its key and a CA file")
	}
	return tlsfiles.Files{Cert: certFile, Key: keyFile, CA: caFile}.Client()
}

// withDefaults returns cfg with zero fields set to their defaults and
// MaxBatchOps clamped to the server's limit.
func (cfg Config) withDefaults() Config {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MaxBatchOps <= 0 || cfg.MaxBatchOps > ledger.MaxBatchOps {
		cfg.MaxBatchOps = ledger.MaxBatchOps
	}
	if cfg.MaxInflightPerShard <= 0 {
		cfg.MaxInflightPerShard = DefaultMaxInflightPerShard
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffMin)
	}
	if cfg.KeepaliveTime <= 0 {
		cfg.KeepaliveTime = DefaultKeepaliveTime
	}
	if cfg.MaxCallDuration == 0 {
		cfg.MaxCallDuration = DefaultMaxCallDuration
	}
	if cfg.MaxQueuedOps <= 0 {
		cfg.MaxQueuedOps = DefaultMaxQueuedOps
	}
	cfg.Addrs = append([]string(nil), cfg.Addrs...)
	return cfg
}
