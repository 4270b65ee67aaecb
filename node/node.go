package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/fsm"
	"github.com/tally-ledger/tally/internal/atomicfile"
	"github.com/tally-ledger/tally/ledger"
	"github.com/tally-ledger/tally/node/raftstore"
	"github.com/tally-ledger/tally/node/transport"
)

// Node is one running Tally process.
type Node struct {
	cfg    Config
	logger hclog.Logger

	logs    *raftstore.DB
	state   *fsm.DB
	mux     *transport.Mux
	shards  []*shard
	metrics *metrics

	grpcLis    net.Listener
	grpcServer *grpc.Server
	admission  *admission    // node-wide bound on calls in progress
	fullStates chan struct{} // admits maxFullStates full ShardState walks at a time
	backupMu   sync.Mutex    // held by the one Backup or Restore running (node/backup.go)
	httpServer *http.Server
	peers      *peerConns
	assets     assetCache
	// misconfigured is set while a majority of this node's cluster is not
	// known to run its shard count, from Start on (shardCountLoop); every
	// request is refused.
	misconfigured atomic.Pointer[string]
	// clockSkewed is set while this node's clock is known to be off from a
	// majority of its cluster's by more than cfg.MaxClockOffset
	// (judgeClock); every request is refused, as for misconfigured.
	clockSkewed atomic.Pointer[string]
	// clockRef is this node's wall clock (ms) and a monotonic reading
	// taken together when a check last found its clock agreeing with a
	// majority's: stampMs measures how far the wall clock has stepped
	// since.
	clockRef atomic.Pointer[clockReading]
	// clockUnconfirmed is the clock refusal a node starts with (set before
	// it serves, then only read).
	clockUnconfirmed *string
	// clockLogged is the last clock disagreement logged (judgeClock; used
	// by the peer check's goroutine alone).
	clockLogged string

	stop chan struct{}
	wg   sync.WaitGroup
	// balancing tracks balanceLoop alone: close waits for it before it
	// shuts Raft down (see close).
	balancing sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start opens the node's storage, starts every shard's Raft group and serves
// gRPC (and metrics). On a first start with cfg.Bootstrap it creates the
// cluster from cfg.Peers.
func Start(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	out := cfg.LogOutput
	if out == nil {
		out = os.Stderr
	}
	n := &Node{
		cfg:  cfg,
		stop: make(chan struct{}),
		logger: hclog.New(&hclog.LoggerOptions{
			Name:   "tally." + cfg.ID,
			Level:  hclog.LevelFromString(cfg.LogLevel),
			Output: out,
		}),
	}
	n.peers = newPeerConns(n.peerCreds())
	n.admission = newAdmission(maxActiveRPCs)
	n.fullStates = make(chan struct{}, maxFullStates)
	n.metrics = newMetrics(n)
	n.refuseUntilAgreed() // before open serves anything
	if err := n.open(); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// maxRequestBytes bounds one request message; maxStreamsPerConn bounds the
// requests one client connection may have open at once (gRPC's default is
// unbounded); a client past it waits for a stream to end.
const (
	maxRequestBytes   = 16 << 20
	maxStreamsPerConn = 1024
)

func (n *Node) open() error {
	cfg := n.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if err := n.checkShardCount(); err != nil {
		return err
	}
	var err error
	if n.logs, err = raftstore.Open(filepath.Join(cfg.DataDir, "raft"), raftstore.Options{Logger: n.slogger(), RepairTail: cfg.RepairLogTail,
		// A node held at rules version 1 keeps its Raft log readable by the
		// builds before versions too, so it can be downgraded whole.
		LegacyCodec: n.maxVersion() < ledger.Version2}); err != nil {
		if errors.Is(err, syscall.EAGAIN) { // Pebble's directory lock is held
			return fmt.Errorf("%w (data directory %s in use: is another tallyd running on it?)", err, cfg.DataDir)
		}
		return err
	}
	if n.state, err = fsm.OpenDB(filepath.Join(cfg.DataDir, "state")); err != nil {
		return err
	}
	// Under the Raft log's directory lock: no other tallyd spools here.
	removeRestoreSpools(cfg.DataDir)
	if n.mux, err = transport.Listen(cfg.RaftAddr, transport.Options{DialRewrite: cfg.DialRewrite,
		ServerTLS: cfg.ServerTLS, ClientTLS: cfg.PeerTLS, VerifyPeer: n.verifyPeerCert,
		OnDrop: func(reason string) { n.metrics.raftDrops.WithLabelValues(reason).Inc() }}); err != nil {
		return err
	}
	for i := 0; i < cfg.Shards; i++ {
		s, err := n.openShard(uint32(i))
		if err != nil {
			return err
		}
		n.shards = append(n.shards, s)
	}
	for _, s := range n.shards {
		s.start()
	}

	if n.grpcLis, err = net.Listen("tcp", cfg.GRPCAddr); err != nil {
		return fmt.Errorf("node: listen grpc %s: %w", cfg.GRPCAddr, err)
	}
	n.grpcLis = netutil.LimitListener(n.grpcLis, maxClientConns)
	n.grpcServer = grpc.NewServer(
		grpc.Creds(n.serverCreds()),
		grpc.InTapHandle(n.admission.tap),
		grpc.UnaryInterceptor(n.admission.intercept),
		// Stop (after GracefulStop's 2 s) waits for running handlers, so
		// none touches the state DB after Close closes it.
		grpc.WaitForHandlers(true),
		// The largest valid request is under 8 MiB (TestLargestRequestFits);
		// gRPC holds a whole message in memory before the handler sees it,
		// so this and the stream limit bound what one connection can make
		// the node hold. Results of 8,000 ops are a few MiB.
		grpc.MaxRecvMsgSize(maxRequestBytes),
		grpc.MaxSendMsgSize(64<<20),
		grpc.MaxConcurrentStreams(maxStreamsPerConn),
		// Clients ping idle connections (client.Config.KeepaliveTime, 30 s by
		// default); grpc's default policy would answer pings more often than
		// every 5 min with GOAWAY.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	tallypb.RegisterLedgerServer(n.grpcServer, &server{n: n})
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		_ = n.grpcServer.Serve(n.grpcLis)
	}()

	if cfg.MetricsAddr != "" {
		lis, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("node: listen metrics %s: %w", cfg.MetricsAddr, err)
		}
		if cfg.RaftMetrics {
			if err := exportRaftMetrics(n.metrics.reg); err != nil {
				return err
			}
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{Registry: n.metrics.reg}))
		if cfg.Pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		// A clone: ServeTLS adds its protocols to the server's TLSConfig,
		// which may be ServerTLS, shared with gRPC and the Raft mux (and, in
		// tests, with other nodes).
		var metricsTLS *tls.Config
		if cfg.MetricsTLS != nil {
			metricsTLS = cfg.MetricsTLS.Clone()
		}
		n.httpServer = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, TLSConfig: metricsTLS}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			if cfg.MetricsTLS != nil {
				// The certificate comes from TLSConfig (GetCertificate).
				_ = n.httpServer.ServeTLS(lis, "", "")
				return
			}
			_ = n.httpServer.Serve(lis)
		}()
	}
	if cfg.BalanceInterval > 0 {
		n.balancing.Add(1)
		go n.balanceLoop()
	}
	n.wg.Add(1)
	go n.shardCountLoop()
	return nil
}

// checkShardCount pins the shard count in the data directory: changing it
// would re-shard accounts and must never happen silently.
func (n *Node) checkShardCount() error {
	path := filepath.Join(n.cfg.DataDir, "SHARDS")
	want := fmt.Sprintf("%d\n", n.cfg.Shards)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return writeFileAtomic(path, []byte(want))
	}
	if err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if string(b) != want {
		return fmt.Errorf("node: data dir %s was created with %q shards, config says %d",
			n.cfg.DataDir, strings.TrimSpace(string(b)), n.cfg.Shards)
	}
	return nil
}

// writeFileAtomic writes path so that a crash leaves it absent or whole,
// never empty or torn (a torn SHARDS file would stop the node at start).
func writeFileAtomic(path string, b []byte) error {
	if err := atomicfile.Write(path, func(w io.Writer) error { _, err := w.Write(b); return err }); err != nil {
		return fmt.Errorf("node: write %s: %w", path, err)
	}
	return nil
}

// maxNoCommandScan bounds the entries noCommandsBetween reads.
const maxNoCommandScan = 4096

// noCommandsBetween reports whether every entry in (applied, snapIndex] is
// still in the log and none is a command, so the state at applied is the
// state at snapIndex. hashicorp/raft does not hand no-op or barrier entries
// to a BatchingFSM, so the durable applied index stays at the last command
// or configuration entry; a snapshot taken just after a leader change on a
// quiet shard ends on a no-op, and without this check every restart would
// restore (copy) the whole snapshot. Raft then starts at the snapshot's
// index and replays the entries after it.
//
// The local entry at snapIndex must also have the snapshot's term. A node
// killed while installing a leader's snapshot has the snapshot on disk but
// may still hold an old, divergent tail from a deposed leader; if that tail
// held only no-ops, the type check alone would skip the restore and lose the
// leader's commands in that range. Equal terms at snapIndex mean, by Raft's
// log matching, that the whole local prefix is the snapshot's.
func noCommandsBetween(logs raft.LogStore, applied, snapIndex, snapTerm uint64) bool {
	if snapIndex <= applied || snapIndex-applied > maxNoCommandScan {
		return false
	}
	var l raft.Log
	for i := applied + 1; i <= snapIndex; i++ {
		if err := logs.GetLog(i, &l); err != nil || l.Type == raft.LogCommand {
			return false
		}
	}
	return l.Term == snapTerm
}

// hasLogState reports whether a shard's Raft log or stable store holds
// anything: a term, or an entry.
func hasLogState(logs *raftstore.GroupStore) (bool, error) {
	term, err := logs.GetUint64([]byte("CurrentTerm")) // hashicorp/raft's key
	if err != nil && !errors.Is(err, raftstore.ErrKeyNotFound) {
		return false, err
	}
	last, err := logs.LastIndex()
	if err != nil {
		return false, err
	}
	return term != 0 || last != 0, nil
}

func (n *Node) openShard(id uint32) (*shard, error) {
	cfg := n.cfg
	f, err := fsm.New(n.state, id)
	if err != nil {
		return nil, err
	}
	f.SetCheckEvery(cfg.checkEvery())
	if v := f.Version(); cfg.MaxVersion != 0 && v > cfg.MaxVersion {
		// The operator means to keep a downgrade possible, but this shard
		// was raised already and never goes back: say so rather than run
		// on a promise the node cannot keep.
		return nil, fmt.Errorf("node: shard %d is at rules version %d, above --max-version %d: a shard's version never goes down, "+
			"so this node cannot hold it there (an older build will not open this data); start it with --max-version %d or without the flag",
			id, v, cfg.MaxVersion, v)
	}
	snapDir := filepath.Join(cfg.DataDir, "snapshots", fmt.Sprintf("shard-%03d", id))
	// A crash while a snapshot was written or received left its sink's
	// directory, which the store never removes. Leaving one is only lost
	// disk, so a failure here does not stop the shard.
	removed, err := removeCrashedSinks(snapDir)
	for _, path := range removed {
		n.logger.Warn("removed an unfinished snapshot left by a crash", "shard", id, "path", path)
	}
	if err != nil {
		n.logger.Warn("could not remove unfinished snapshots", "shard", id, "error", err)
	}
	fileSnaps, err := raft.NewFileSnapshotStoreWithLogger(snapDir, 2, n.logger.Named(fmt.Sprintf("snap%d", id)))
	if err != nil {
		return nil, fmt.Errorf("node: shard %d: snapshot store: %w", id, err)
	}
	snaps := newSyncingSnapshots(fileSnaps, snapDir)
	snaps.boundReads = func() func() { return n.mux.BoundReads(id, snapshotReadBound) }
	var snapIndex, snapTerm uint64
	if metas, err := snaps.List(); err != nil {
		return nil, fmt.Errorf("node: shard %d: list snapshots: %w", id, err)
	} else if len(metas) > 0 {
		snapIndex, snapTerm = metas[0].Index, metas[0].Term
	}
	logs := n.logs.Group(id)
	// The transport never pipelines replication (hashicorp/raft #612); see
	// transport.noPipelining.
	trans := newAckTransport(n.mux.NewTransport(id, transport.TransportConfig{
		Logger: n.logger.Named(fmt.Sprintf("net%d", id)),
	}))
	trans.maxAppendBytes = cfg.Raft.MaxAppendBytes
	trans.logger = n.logger.Named(fmt.Sprintf("raft%d", id))
	// Raft owns the transport once it starts; until then a failure here
	// must close it, or its accept loop outlives the node.
	started := false
	defer func() {
		if !started {
			_ = trans.Close()
		}
	}()

	rc := cfg.raftConfig()
	rc.Logger = n.logger.Named(fmt.Sprintf("raft%d", id))
	// The FSM's state is durable up to its applied index; Raft need not
	// restore a snapshot on start unless that state is behind the snapshot,
	// and it is not when only entries that change no state lie between.
	rc.NoSnapshotRestoreOnStart = !f.NeedsRestore(snapIndex) || noCommandsBetween(logs, f.StateIndex(), snapIndex, snapTerm)
	if !rc.NoSnapshotRestoreOnStart {
		n.logger.Warn("state is behind the newest snapshot; restoring it", "shard", id,
			"applied", f.AppliedIndex(), "state", f.StateIndex(), "snapshot", snapIndex)
	}

	has, err := raft.HasExistingState(logs, logs, snaps)
	if err != nil {
		return nil, fmt.Errorf("node: shard %d: %w", id, err)
	}
	// HasExistingState counts snapshots too, but a snapshot keeps neither
	// the votes this replica cast nor what it acknowledged after it: one
	// whose raft folder was lost while its snapshots remain is as wiped
	// (found by review).
	logState, err := hasLogState(logs)
	if err != nil {
		return nil, fmt.Errorf("node: shard %d: %w", id, err)
	}
	if !logState || cfg.RepairLogTail {
		// No Raft log or term (a new shard, or wiped data) or a repaired
		// log tail: this replica may lack entries it acknowledged
		// (voteGuard).
		trans.guard, trans.guardStop = newVoteGuard(), make(chan struct{})
	}
	if cfg.Bootstrap {
		if !has {
			var servers []raft.Server
			for _, p := range cfg.Peers {
				servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr)})
			}
			if err := raft.BootstrapCluster(rc, logs, logs, snaps, trans, raft.Configuration{Servers: servers}); err != nil {
				return nil, fmt.Errorf("node: shard %d: bootstrap: %w", id, err)
			}
		}
	}
	s := newShard(n, id, f)
	hooks := n.metrics.fsmHooks()
	onRestore := hooks.OnRestore
	hooks.OnRestore = func(took time.Duration, err error) {
		onRestore(took, err)
		// A restore from a backup can take the shard back to before an
		// asset was defined (see assetCache).
		n.assets.forgetShard(id)
		s.restores.Add(1)
	}
	hooks.OnCheck = func(c fsm.Check) { n.observeCheck(id, c) }
	f.SetHooks(hooks)
	r, err := raft.NewRaft(rc, f, logs, logs, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("node: shard %d: start raft: %w", id, err)
	}
	started = true
	s.raft = r
	s.snaps = snaps
	s.trans = trans
	return s, nil
}

// slogger is the structured logger given to storage: warnings and errors
// only, to the node's log output.
func (n *Node) slogger() *slog.Logger {
	out := n.cfg.LogOutput
	if out == nil {
		out = os.Stderr
	}
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", n.cfg.ID)
}

// peerRank returns this node's place in Peers.
func (n *Node) peerRank() int {
	for i, p := range n.cfg.Peers {
		if p.ID == n.cfg.ID {
			return i
		}
	}
	return 0 // validate refuses a config without this node
}

// ID returns the node's ID.
func (n *Node) ID() string { return n.cfg.ID }

// GRPCAddr is the address the gRPC server listens on.
func (n *Node) GRPCAddr() string {
	if n.grpcLis == nil {
		return ""
	}
	return n.grpcLis.Addr().String()
}

// RaftAddr is the address the Raft port (all shards) listens on.
func (n *Node) RaftAddr() string {
	if n.mux == nil {
		return ""
	}
	return n.mux.Addr().String()
}

// Shards returns the number of shards.
func (n *Node) Shards() int { return n.cfg.Shards }

// IsLeader reports whether this node leads shard id.
func (n *Node) IsLeader(id int) bool { return n.shards[id].raft.State() == raft.Leader }

// WaitLeaders blocks until every shard has a known leader or ctx ends.
func (n *Node) WaitLeaders(ctx context.Context) error {
	for {
		ok := true
		for _, s := range n.shards {
			if addr, _ := s.raft.LeaderWithID(); addr == "" {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close stops serving, shuts every Raft group down and closes storage. It
// is safe to call more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { n.closeErr = n.close() })
	return n.closeErr
}

// closeHandlersWait bounds how long Close waits for running gRPC handlers
// before it closes the state DB anyway.
const closeHandlersWait = 30 * time.Second

// waitHandlers waits, at most d, until no gRPC handler runs.
func (n *Node) waitHandlers(d time.Duration) {
	if n.admission == nil {
		return
	}
	deadline := time.Now().Add(d)
	for n.admission.active.Load() > 0 {
		if time.Now().After(deadline) {
			n.logger.Warn("closing the state DB with gRPC handlers still running", "handlers", n.admission.active.Load())
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (n *Node) close() error {
	close(n.stop)
	var errs []error
	if n.grpcServer != nil {
		done := make(chan struct{})
		go func() { n.grpcServer.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			n.grpcServer.Stop()
		}
	}
	if n.httpServer != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = n.httpServer.Shutdown(ctx)
		cancel()
	}
	// The balancer must be done before Raft shuts down. A leadership
	// transfer asked of a shut-down hashicorp/raft may be queued on a
	// channel nobody reads any more (initiateLeadershipTransfer selects at
	// random between the queue and shutdownCh), and its Error() then
	// blocks forever: a test's Close hung for 13 minutes that way. While
	// Raft runs, a transfer resolves within its timeout.
	n.balancing.Wait()
	// Every shard is told to stop, and every Raft group to shut down,
	// before anything is waited for; then the transport is closed, and only
	// then are the shutdowns awaited. A follower installing a snapshot
	// reads the stream inside Raft's main loop: if the sender stalls (a
	// paused leader), the main loop stays blocked until the read bound
	// (snapshotReadBound, 30 s) fails it, and so would Shutdown().Error()
	// and a snapshot loop waiting on raft.Snapshot(), unless the
	// connection is closed first.
	var shutdowns []raft.Future
	for _, s := range n.shards {
		close(s.stop)
		if s.raft != nil {
			shutdowns = append(shutdowns, s.raft.Shutdown())
		}
	}
	if n.mux != nil {
		errs = append(errs, n.mux.Close())
	}
	for _, f := range shutdowns {
		if err := f.Error(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range n.shards {
		s.wg.Wait()
		// A consistency check's walk holds a state DB iterator.
		s.fsm.StopChecks()
	}
	n.wg.Wait()
	n.peers.close()
	// A full ShardState walk or a read may be iterating the state DB:
	// closing it under them would fail them with a closed-DB panic (found
	// by review). grpcServer.Stop waits for running handlers
	// (WaitForHandlers), having cancelled their contexts; this checks
	// again, bounded, for any handler the admission count still sees.
	// Raft is down, so handlers waiting on it have returned; a walk ends
	// within its shard's size.
	n.waitHandlers(closeHandlersWait)
	if n.state != nil {
		// Flush so a clean restart resumes from the applied index without
		// replaying the log.
		errs = append(errs, n.state.Flush(), n.state.Close())
	}
	if n.logs != nil {
		errs = append(errs, n.logs.Close())
	}
	return errors.Join(errs...)
}

var _ io.Closer = (*Node)(nil)

// registry exposes the node's Prometheus registry (for tests and embedding).
func (n *Node) registry() *prometheus.Registry { return n.metrics.reg }
