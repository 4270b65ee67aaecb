package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// Client talks to a Tally cluster. It is safe for concurrent use; create one
// per process and Close it when done.
type Client struct {
	cfg Config

	// ctx is cancelled by Close; it bounds coalesced batches, whose callers
	// may all have contexts without deadlines.
	ctx    context.Context
	cancel context.CancelFunc

	// rotate spreads ClusterInfo refreshes over the known nodes.
	rotate atomic.Uint32

	// noGetAccounts is set once a server answered GetAccounts with
	// Unimplemented (a node from before it): reads then go one by one.
	noGetAccounts atomic.Bool

	// open records the keys of calls that ended indeterminate, so that a
	// later answer for one that records nothing is not taken for "not
	// applied" (see openkeys.go).
	open *openKeys

	mu         sync.Mutex
	closed     bool
	conns      map[string]*grpc.ClientConn // one per node address
	nodeAddrs  []string                    // seeds, then nodes learnt from ClusterInfo
	shards     int                         // > 0 once Dial returned
	leaders    []string                    // shard -> leader gRPC address, "" unknown
	refreshing chan struct{}               // closed when the refresh in progress ends
	queues     map[int]*shardQueue         // coalescing queues, created on first use
	readQueues map[int]*readQueue          // read coalescing queues, likewise
}

// Dial connects to the cluster: it asks the nodes in cfg.Addrs for
// ClusterInfo, retrying with backoff until one answers or cfg.DialTimeout (or
// ctx) ends.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	if len(cfg.Addrs) == 0 {
		return nil, newError(ledger.CodeInvalidArgument, -1, "client config: no addresses")
	}
	c := &Client{cfg: cfg, conns: make(map[string]*grpc.ClientConn), queues: make(map[int]*shardQueue),
		readQueues: make(map[int]*readQueue), open: newOpenKeys()}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	for _, a := range cfg.Addrs {
		c.addNodeAddrLocked(a)
	}

	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	var last *Error
	for backoff := cfg.BackoffMin; ; backoff = c.nextBackoff(backoff) {
		for _, addr := range cfg.Addrs {
			// Capped per node, as in refresh: one seed that accepts and
			// never answers must not take the whole DialTimeout.
			info, err := c.clusterInfoFrom(dctx, addr, min(cfg.RequestTimeout, maxClusterInfoTimeout))
			if err == nil && info.Shards > 0 {
				c.applyClusterInfo(info)
				return c, nil
			}
			if err != nil {
				last = err
			} else {
				last = newError(ledger.CodeUnavailable, -1, "node %s reports %d shards", addr, info.Shards)
			}
		}
		if !c.sleep(dctx, backoff) {
			c.Close()
			e := giveUpError(dctx.Err(), -1, last, false)
			e.Message = "no node of " + joinAddrs(cfg.Addrs) + " answered ClusterInfo; " + e.Message
			return nil, e
		}
	}
}

// Close stops coalescing senders, fails queued coalesced calls with ErrClosed
// and closes all connections. Calls in flight end with ErrClosed (those that
// may have reached a server as indeterminate).
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conns := c.conns
	c.conns = nil
	queues := c.queues
	c.queues = nil
	readQueues := c.readQueues
	c.readQueues = nil
	c.mu.Unlock()

	c.cancel()
	for _, q := range queues {
		q.close()
	}
	for _, q := range readQueues {
		q.close()
	}
	for _, cc := range conns {
		_ = cc.Close()
	}
	return nil
}

// Shards returns the cluster's shard count.
func (c *Client) Shards() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shards
}

// ShardOf returns the shard that owns a member of a program.
func (c *Client) ShardOf(program, member string) int {
	return ledger.ShardOf(program, member, c.Shards())
}

// MaxOpBytes bounds one op on the wire. A valid op, every field at its
// longest, is under 1 KiB; Submit refuses a bigger one as INVALID_ARGUMENT,
// so a request of MaxBatchOps ops stays under the node's 16 MiB message
// bound (node's TestLargestRequestFits checks both).
const MaxOpBytes = 2048

// maxMsgBytes bounds a response (and a request, which MaxOpBytes keeps far
// below the node's own bound). gRPC's default receive limit, 4 MiB, is
// below the answer to a full request: 8,000 hold results with 100-byte
// names come to 4-5 MB. A response over the limit
// fails as RESOURCE_EXHAUSTED after the server applied the request, and that
// code is retried: the applied batch was re-sent (each replay as big) until
// the caller gave up, every caller told "indeterminate".
const maxMsgBytes = 64 << 20

// ledgerClient returns a stub on the cached connection to addr, creating the
// connection (which connects lazily) on first use.
func (c *Client) ledgerClient(addr string) (tallypb.LedgerClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	cc, ok := c.conns[addr]
	if !ok {
		creds := insecure.NewCredentials()
		if c.cfg.TLS != nil {
			creds = credentials.NewTLS(c.cfg.TLS)
		}
		opts := []grpc.DialOption{
			grpc.WithTransportCredentials(creds),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgBytes), grpc.MaxCallSendMsgSize(maxMsgBytes)),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{
				Time:    c.cfg.KeepaliveTime,
				Timeout: keepaliveTimeout,
			}),
		}
		if c.cfg.Dialer != nil {
			opts = append(opts, grpc.WithContextDialer(c.cfg.Dialer))
		}
		var err error
		cc, err = grpc.NewClient(addr, opts...)
		if err != nil {
			return nil, err
		}
		c.conns[addr] = cc
	}
	return tallypb.NewLedgerClient(cc), nil
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// leader returns the cached leader address of shard ("" if unknown).
func (c *Client) leader(shard int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if shard < 0 || shard >= len(c.leaders) {
		return ""
	}
	return c.leaders[shard]
}

// setLeader records a leader hint.
func (c *Client) setLeader(shard int, addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if shard >= 0 && shard < len(c.leaders) {
		c.leaders[shard] = addr
	}
	c.addNodeAddrLocked(addr)
}

// forgetLeader clears shard's leader if it is still addr, so the next attempt
// refreshes ClusterInfo instead of going back to a node that failed.
func (c *Client) forgetLeader(shard int, addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if shard >= 0 && shard < len(c.leaders) && c.leaders[shard] == addr {
		c.leaders[shard] = ""
	}
}

func (c *Client) addNodeAddrLocked(addr string) {
	if addr == "" {
		return
	}
	for _, a := range c.nodeAddrs {
		if a == addr {
			return
		}
	}
	c.nodeAddrs = append(c.nodeAddrs, addr)
}

func (c *Client) applyClusterInfo(info ClusterInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if info.Shards != c.shards {
		c.shards = info.Shards
		c.leaders = make([]string, info.Shards)
	}
	// A shard the answer names no leader of keeps the one cached: refresh
	// applies an answer that lacks the wanted shard's leader (a node cut off
	// from the cluster knows none) when no node knows better, and clearing
	// every shard's entry then sent every other shard's next call to a
	// refresh of its own. A stale entry costs one NOT_LEADER or failed
	// attempt, after which invoke forgets it.
	for _, l := range info.Leaders {
		if int(l.Shard) < len(c.leaders) && l.LeaderAddr != "" {
			c.leaders[l.Shard] = l.LeaderAddr
		}
		c.addNodeAddrLocked(l.LeaderAddr)
	}
	for _, n := range info.Nodes {
		c.addNodeAddrLocked(n.GRPCAddr)
	}
}

// clusterInfoFrom asks one node, in one attempt bounded by timeout.
func (c *Client) clusterInfoFrom(ctx context.Context, addr string, timeout time.Duration) (ClusterInfo, *Error) {
	lc, err := c.ledgerClient(addr)
	if err != nil {
		return ClusterInfo{}, &Error{Code: ledger.CodeUnavailable, Message: "node " + addr, Shard: -1, OpIndex: -1, Err: err}
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := lc.ClusterInfo(actx, &tallypb.ClusterInfoRequest{})
	if err != nil {
		return ClusterInfo{}, fromRPC(err, -1)
	}
	return clusterInfoFromProto(resp), nil
}

// refresh updates the cached ClusterInfo. It asks the known nodes in turn
// (starting at a rotating one) and prefers the first answer that knows the
// leader of wantShard (-1: any answer), since a node cut off from the
// cluster may not. Concurrent refreshes share one: a caller that finds one
// in progress waits for it.
func (c *Client) refresh(ctx context.Context, wantShard int) {
	c.mu.Lock()
	if ch := c.refreshing; ch != nil {
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		return
	}
	ch := make(chan struct{})
	c.refreshing = ch
	addrs := append([]string(nil), c.nodeAddrs...)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.refreshing = nil
		c.mu.Unlock()
		close(ch)
	}()

	timeout := min(c.cfg.RequestTimeout, maxClusterInfoTimeout)
	start := int(c.rotate.Add(1))
	var first *ClusterInfo
	for i := range addrs {
		if ctx.Err() != nil {
			break
		}
		info, err := c.clusterInfoFrom(ctx, addrs[(start+i)%len(addrs)], timeout)
		if err != nil || info.Shards <= 0 {
			continue
		}
		if wantShard < 0 || (wantShard < len(info.Leaders) && leaderOf(info, wantShard) != "") {
			c.applyClusterInfo(info)
			return
		}
		if first == nil {
			first = &info
		}
	}
	if first != nil {
		c.applyClusterInfo(*first)
	}
}

func leaderOf(info ClusterInfo, shard int) string {
	for _, l := range info.Leaders {
		if int(l.Shard) == shard {
			return l.LeaderAddr
		}
	}
	return ""
}

// nextBackoff doubles d up to the configured maximum.
func (c *Client) nextBackoff(d time.Duration) time.Duration {
	return min(2*d, c.cfg.BackoffMax)
}

// sleep waits a jittered d (uniform in [d/2, d], so that clients that failed
// together do not retry together) and reports whether ctx and the client are
// still alive.
func (c *Client) sleep(ctx context.Context, d time.Duration) bool {
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return !c.isClosed()
	case <-ctx.Done():
		return false
	case <-c.ctx.Done():
		return false
	}
}

// rpcFunc is one attempt of an RPC against one node.
type rpcFunc func(ctx context.Context, lc tallypb.LedgerClient) error

// invoke runs call against the leader of shard, retrying as the package doc
// describes until it succeeds, fails on the merits, or ctx (or the client)
// ends. mutating marks calls whose attempts may apply operations: if such a
// call gives up after an attempt that may have reached a server, the error is
// indeterminate. anyShard marks calls any shard's leader can serve
// (DefineAsset): a NOT_LEADER naming another shard moves the call there.
// Calls that route by member trust their own shard: the hint is for it.
func (c *Client) invoke(ctx context.Context, shard int, mutating, anyShard bool, call rpcFunc) *Error {
	e, _ := c.invokeTracked(ctx, shard, mutating, anyShard, call)
	return e
}

// invokeTracked is invoke that also reports, when the call succeeds, whether
// an earlier attempt of it may have applied (an unknown outcome before the
// one that answered). That attempt may still commit after the answer: an
// answer that left an op unrecorded (UNAVAILABLE, rules version 4) is then
// no proof that the op did not apply (see unsettled).
func (c *Client) invokeTracked(ctx context.Context, shard int, mutating, anyShard bool, call rpcFunc) (e *Error, mayHaveApplied bool) {
	ctx, cancel := c.bounded(ctx)
	defer cancel()
	var (
		last      *Error
		redirects int
		backoff   = c.cfg.BackoffMin
	)
	giveUp := func() *Error {
		// A closed client cancels the contexts of coalesced requests too:
		// say ErrClosed, not a Canceled its callers would take for theirs.
		cause := ctx.Err()
		if cause == nil || c.isClosed() {
			cause = ErrClosed
		}
		return giveUpError(cause, shard, last, mutating && mayHaveApplied)
	}
	wait := func() bool {
		ok := c.sleep(ctx, backoff)
		backoff = c.nextBackoff(backoff)
		redirects = 0
		return ok
	}
	for {
		if ctx.Err() != nil || c.isClosed() {
			return giveUp(), mayHaveApplied
		}
		addr := c.leader(shard)
		if addr == "" {
			c.refresh(ctx, shard)
			if addr = c.leader(shard); addr == "" {
				last = newError(ledger.CodeUnavailable, shard, "no known leader of shard %d", shard)
				if !wait() {
					return giveUp(), mayHaveApplied
				}
				continue
			}
		}
		lc, err := c.ledgerClient(addr)
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return giveUp(), mayHaveApplied
			}
			// An address gRPC cannot parse: ask the cluster again.
			last = &Error{Code: ledger.CodeUnavailable, Message: "node " + addr, Shard: shard, OpIndex: -1, Err: err}
			c.forgetLeader(shard, addr)
			if !wait() {
				return giveUp(), mayHaveApplied
			}
			continue
		}
		actx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
		err = call(actx, lc)
		cancel()
		if err == nil {
			return nil, mayHaveApplied
		}
		e := fromRPC(err, shard)
		last = e
		if !e.definitelyNotApplied() {
			mayHaveApplied = true
		}
		// A clear answer beats the context ending at the same moment.
		if !e.retryable() {
			e.Indeterminate = mutating && mayHaveApplied
			return e, mayHaveApplied
		}
		if ctx.Err() != nil || c.isClosed() {
			return giveUp(), mayHaveApplied
		}
		if e.Code == ledger.CodeNotLeader {
			if anyShard && e.Shard >= 0 && e.Shard < c.Shards() {
				shard = e.Shard
			}
			if e.Leader != "" && e.Leader != addr && redirects < maxImmediateRedirects {
				c.setLeader(shard, e.Leader)
				redirects++
				continue
			}
		}
		if !e.overloaded {
			// A live leader whose queue is full stays the one to ask;
			// anything else may mean the node or its leadership is gone.
			c.forgetLeader(shard, addr)
		}
		if !wait() {
			return giveUp(), mayHaveApplied
		}
	}
}

// bounded is ctx, bounded by Config.MaxCallDuration when it has no
// deadline of its own and is not a coalesced batch's (whose callers are
// bounded each).
func (c *Client) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || c.cfg.MaxCallDuration < 0 || ctx.Value(batchLifeKey{}) != nil {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.cfg.MaxCallDuration)
}

func joinAddrs(addrs []string) string {
	s := ""
	for i, a := range addrs {
		if i > 0 {
			s += ","
		}
		s += a
	}
	return s
}
