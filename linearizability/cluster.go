package linearizability

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/internal/diskprobe"
	"github.com/tally-ledger/tally/internal/freeport"
	"github.com/tally-ledger/tally/internal/tlsfiles"
)

// ClusterSize is the number of tallyd processes: the smallest cluster that
// survives one fault.
const ClusterSize = 3

// Limits of cluster management.
const (
	// startupTimeout bounds waiting for a (re)started node to answer
	// ClusterInfo; Pebble and Raft log replay on restart take a moment.
	startupTimeout = 30 * time.Second
	// pollInterval is how often readiness and convergence are polled.
	pollInterval = 100 * time.Millisecond
	// maxRestartAttempts bounds Heal's restarts of one dead node.
	maxRestartAttempts = 3
)

// ClusterConfig configures a process cluster.
type ClusterConfig struct {
	Tallyd string // path to the tallyd binary
	Dir    string // data directories and node logs go under it
	Shards int
	// UnsafeLocalReads starts every node with --unsafe-local-reads (the
	// deliberately broken build the checker must catch).
	UnsafeLocalReads bool
	// SnapshotThreshold, SnapshotLogBytes and TrailingLogs are passed to
	// tallyd (0: its defaults); small values make snapshots (by entry count
	// and by log bytes) and snapshot installs happen within a short run.
	SnapshotThreshold uint64
	SnapshotLogBytes  uint64
	TrailingLogs      uint64
	// CheckEvery is passed to tallyd as --check-every (0: its default):
	// small values make replica consistency checks happen within a run.
	CheckEvery int64
	// HeartbeatTimeout, ElectionTimeout and LeaderLeaseTimeout are passed
	// to tallyd. Left at 0, StartCluster probes the disk under Dir (or
	// takes DiskProbe) and on a slow one uses diskprobe's slow-disk
	// timeouts, as an operator would; else tallyd's defaults.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	DiskProbe          *diskprobe.Result
	// TLS runs every link mutual TLS, with a CA and certificates written
	// under Dir/tls (internal/tlsfiles): the proxies then carry TLS.
	TLS bool
}

// procNode is one tallyd process slot.
type procNode struct {
	id       string
	grpcAddr string
	raftAddr string
	dataDir  string
	logPath  string
	args     []string
	// extra are flags of this run of the process alone (RestartWith); a
	// plain Restart drops them.
	extra []string

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd's Wait returns
	paused bool
}

// Cluster is three tallyd processes on 127.0.0.1 with a Proxy on every
// directed Raft link and one on the workers' links to each node's gRPC
// listener; nodes can be killed, wiped, restarted and paused.
// Methods are safe for concurrent use.
type Cluster struct {
	cfg     ClusterConfig
	mu      sync.Mutex
	nodes   []*procNode
	proxies map[[2]int]*Proxy // [from, to] -> proxy of the link
	// clientProxies[i] carries the workers' connections to node i's gRPC
	// listener (ClientDialer); the nemesis and the checker dial directly.
	clientProxies []*Proxy
	closed        bool
	crashes       []string // nodes that exited without being killed
	slow          bool     // started with the slow-disk Raft timeouts
	// tlsArgs are tallyd's --tls-* flags, clientTLS what clients dial
	// with and operatorTLS what an operator's tallyctl dials with (a
	// node's certificate, which backups and restores need), under
	// ClusterConfig.TLS; nil otherwise.
	tlsArgs     []string
	clientTLS   *tls.Config
	operatorTLS *tls.Config
}

// ClientTLS is the client.Config.TLS of the cluster's clients: nil unless
// it runs with ClusterConfig.TLS.
func (c *Cluster) ClientTLS() *tls.Config { return c.clientTLS }

// OperatorTLS is the client.Config.TLS of an operator's client (backups
// and restores): nil unless it runs with ClusterConfig.TLS.
func (c *Cluster) OperatorTLS() *tls.Config { return c.operatorTLS }

// creds are the gRPC credentials of a direct connection to a node.
func (c *Cluster) creds() credentials.TransportCredentials {
	if c.clientTLS != nil {
		return credentials.NewTLS(c.clientTLS)
	}
	return insecure.NewCredentials()
}

// SlowDisk reports whether the nodes run with the slow-disk Raft timeouts.
func (c *Cluster) SlowDisk() bool { return c.slow }

// Crashes lists the nodes that exited on their own (a finding: a node
// must never stop by itself, e.g. on an invariant violation).
func (c *Cluster) Crashes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.crashes...)
}

// reservePort listens on a free port and keeps listening, so that no port
// picked meanwhile (another node's, a proxy's) can be the same one. start
// closes it just before the nodes start. Closing it at once let a proxy get
// a node's gRPC port, and that node then failed to start
// (TestChaosCatchesStaleReads, seed 1795421501053748640). The port lies
// below the ephemeral range (internal/freeport), so no outgoing connection
// takes it while a killed node is down.
func reservePort() (net.Listener, error) {
	return freeport.Listen()
}

// StartCluster starts the proxies and the three nodes and waits until every
// node answers. On error everything started is stopped.
func StartCluster(ctx context.Context, cfg ClusterConfig) (*Cluster, error) {
	c := &Cluster{cfg: cfg, proxies: map[[2]int]*Proxy{}}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, err
	}
	if cfg.HeartbeatTimeout == 0 && cfg.ElectionTimeout == 0 && cfg.LeaderLeaseTimeout == 0 {
		probe := cfg.DiskProbe
		if probe == nil {
			if p, err := diskprobe.Probe(cfg.Dir, diskprobe.DefaultSyncs); err == nil {
				probe = &p
			}
		}
		if probe != nil && probe.Slow() {
			c.cfg.HeartbeatTimeout, c.cfg.ElectionTimeout, c.cfg.LeaderLeaseTimeout =
				diskprobe.SlowHeartbeatTimeout, diskprobe.SlowElectionTimeout, diskprobe.SlowLeaseTimeout
			c.slow = true
		}
	}
	if cfg.TLS {
		g, err := tlsfiles.Generate(filepath.Join(cfg.Dir, "tls"), []string{"127.0.0.1"}, 24*time.Hour)
		if err != nil {
			return nil, err
		}
		if c.clientTLS, err = g.User.Client(); err != nil {
			return nil, err
		}
		if c.operatorTLS, err = g.Node.Client(); err != nil {
			return nil, err
		}
		c.tlsArgs = []string{"--tls-cert", g.Node.Cert, "--tls-key", g.Node.Key, "--tls-ca", g.Node.CA}
	}
	if err := c.start(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context) error {
	var held []net.Listener
	release := func() {
		for _, l := range held {
			_ = l.Close()
		}
		held = nil
	}
	defer release()
	for i := 0; i < ClusterSize; i++ {
		g, err := reservePort()
		if err != nil {
			return err
		}
		held = append(held, g)
		r, err := reservePort()
		if err != nil {
			return err
		}
		held = append(held, r)
		id := fmt.Sprintf("n%d", i+1)
		c.nodes = append(c.nodes, &procNode{id: id, grpcAddr: g.Addr().String(), raftAddr: r.Addr().String(),
			dataDir: filepath.Join(c.cfg.Dir, id), logPath: filepath.Join(c.cfg.Dir, id+".log")})
	}
	var peers []string
	for _, n := range c.nodes {
		peers = append(peers, fmt.Sprintf("%s=%s/%s", n.id, n.raftAddr, n.grpcAddr))
	}
	for from := range c.nodes {
		var rewrite []string
		for to := range c.nodes {
			if from == to {
				continue
			}
			p, err := NewProxy(fmt.Sprintf("%s->%s", c.nodes[from].id, c.nodes[to].id), c.nodes[to].raftAddr)
			if err != nil {
				return err
			}
			c.proxies[[2]int{from, to}] = p
			rewrite = append(rewrite, c.nodes[to].raftAddr+"="+p.Addr())
		}
		n := c.nodes[from]
		n.args = []string{"--id", n.id, "--data", n.dataDir, "--grpc", n.grpcAddr, "--raft", n.raftAddr,
			"--shards", fmt.Sprint(c.cfg.Shards), "--bootstrap", "--peers", strings.Join(peers, ","),
			"--raft-dial-rewrite", strings.Join(rewrite, ",")}
		n.args = append(n.args, c.tlsArgs...)
		if c.cfg.UnsafeLocalReads {
			n.args = append(n.args, "--unsafe-local-reads")
		}
		if c.cfg.SnapshotThreshold > 0 {
			n.args = append(n.args, "--snapshot-threshold", fmt.Sprint(c.cfg.SnapshotThreshold))
		}
		if c.cfg.SnapshotLogBytes > 0 {
			n.args = append(n.args, "--snapshot-log-bytes", fmt.Sprint(c.cfg.SnapshotLogBytes))
		}
		if c.cfg.TrailingLogs > 0 {
			n.args = append(n.args, "--trailing-logs", fmt.Sprint(c.cfg.TrailingLogs))
		}
		if c.cfg.CheckEvery != 0 {
			n.args = append(n.args, "--check-every", fmt.Sprint(c.cfg.CheckEvery))
		}
		for _, d := range []struct {
			flag string
			v    time.Duration
		}{
			{"--heartbeat-timeout", c.cfg.HeartbeatTimeout},
			{"--election-timeout", c.cfg.ElectionTimeout},
			{"--leader-lease-timeout", c.cfg.LeaderLeaseTimeout},
		} {
			if d.v > 0 {
				n.args = append(n.args, d.flag, d.v.String())
			}
		}
	}
	for _, n := range c.nodes {
		p, err := NewProxy("clients->"+n.id, n.grpcAddr)
		if err != nil {
			return err
		}
		c.clientProxies = append(c.clientProxies, p)
	}
	release() // the nodes bind their ports now; the proxies keep theirs
	for i := range c.nodes {
		if err := c.spawn(i); err != nil {
			return err
		}
	}
	for i := range c.nodes {
		if err := c.waitReady(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// spawn starts node i's process in its own process group, appending its
// output to its log file.
func (c *Cluster) spawn(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("cluster closed")
	}
	n := c.nodes[i]
	if n.cmd != nil {
		return fmt.Errorf("%s is already running", n.id)
	}
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := append(append([]string(nil), n.args...), n.extra...)
	fmt.Fprintf(logf, "=== %s start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(c.cfg.Tallyd, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group, so a kill reaches anything the node starts; and
	// die with the harness if it dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", n.id, err)
	}
	exited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		logf.Close()
		c.mu.Lock()
		if n.cmd == cmd && !c.closed {
			// Not killed by the harness: the node died on its own.
			c.crashes = append(c.crashes, fmt.Sprintf("%s exited unexpectedly at %s: %v (see %s)",
				n.id, time.Now().Format(time.RFC3339Nano), err, n.logPath))
		}
		c.mu.Unlock()
		close(exited)
	}()
	n.cmd, n.exited, n.paused = cmd, exited, false
	return nil
}

// waitReady waits until node i answers ClusterInfo.
func (c *Cluster) waitReady(ctx context.Context, i int) error {
	addr := c.GRPCAddr(i)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(c.creds()))
	if err != nil {
		return err
	}
	defer cc.Close()
	lc := tallypb.NewLedgerClient(cc)
	deadline := time.Now().Add(startupTimeout)
	for time.Now().Before(deadline) {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = lc.ClusterInfo(actx, &tallypb.ClusterInfoRequest{})
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !c.Running(i) {
			return fmt.Errorf("%s exited during startup (see %s)", c.nodes[i].id, c.nodes[i].logPath)
		}
		time.Sleep(pollInterval)
	}
	return fmt.Errorf("%s did not answer within %s: %v", c.nodes[i].id, startupTimeout, err)
}

// Running reports whether node i's process is alive (paused counts).
func (c *Cluster) Running(i int) bool {
	c.mu.Lock()
	n := c.nodes[i]
	cmd, exited := n.cmd, n.exited
	c.mu.Unlock()
	if cmd == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL to node i's process group and waits for it to exit.
func (c *Cluster) Kill(i int) error {
	c.mu.Lock()
	n := c.nodes[i]
	cmd, exited := n.cmd, n.exited
	n.cmd, n.exited, n.paused = nil, nil, false
	c.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("%s is not running", n.id)
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-exited:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s did not exit 10s after SIGKILL", n.id)
	}
}

// Restart starts node i again with the same data directory and flags.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	return c.RestartWith(ctx, i, nil)
}

// RestartWith starts node i again with the same data directory and flags,
// and extra flags for this run of the process alone.
func (c *Cluster) RestartWith(ctx context.Context, i int, extra []string) error {
	c.mu.Lock()
	c.nodes[i].extra = extra
	c.mu.Unlock()
	if err := c.spawn(i); err != nil {
		return err
	}
	return c.waitReady(ctx, i)
}

// Wipe deletes node i's whole data directory, as an operator replacing
// its disk would; its log file, outside it, stays. The node must be down
// (Kill it first); Restart then starts it with the same ID, addresses and
// flags on an empty directory.
func (c *Cluster) Wipe(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock() // no spawn while the directory goes
	n := c.nodes[i]
	if n.cmd != nil {
		return fmt.Errorf("%s is running: kill it before wiping its data", n.id)
	}
	if err := os.RemoveAll(n.dataDir); err != nil {
		return fmt.Errorf("wipe %s: %w", n.id, err)
	}
	if _, err := os.Stat(n.dataDir); !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("wipe %s: %s still there (%v)", n.id, n.dataDir, err)
	}
	if logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		fmt.Fprintf(logf, "=== %s wiped data directory %s\n", time.Now().Format(time.RFC3339Nano), n.dataDir)
		logf.Close()
	}
	return nil
}

// Paused reports whether node i is stopped by Pause.
func (c *Cluster) Paused(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].paused
}

// Pause stops node i with SIGSTOP; Resume continues it.
func (c *Cluster) Pause(i int) error { return c.signal(i, syscall.SIGSTOP, true) }

// Resume continues node i after Pause.
func (c *Cluster) Resume(i int) error { return c.signal(i, syscall.SIGCONT, false) }

func (c *Cluster) signal(i int, sig syscall.Signal, paused bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.cmd == nil {
		return fmt.Errorf("%s is not running", n.id)
	}
	n.paused = paused
	return syscall.Kill(-n.cmd.Process.Pid, sig)
}

// SetLink sets the mode and delay of the directed link from -> to.
func (c *Cluster) SetLink(from, to int, mode LinkMode, delay time.Duration) {
	c.proxies[[2]int{from, to}].Set(mode, delay)
}

// SetClientLink sets the mode and delay of the workers' links to node i.
func (c *Cluster) SetClientLink(i int, mode LinkMode, delay time.Duration) {
	c.clientProxies[i].Set(mode, delay)
}

// ClientDialer is a client.Config.Dialer that reaches each node through its
// client proxy (an address of no node is dialled directly).
func (c *Cluster) ClientDialer() func(ctx context.Context, addr string) (net.Conn, error) {
	via := map[string]string{}
	for i, n := range c.nodes {
		via[n.grpcAddr] = c.clientProxies[i].Addr()
	}
	var d net.Dialer
	return func(ctx context.Context, addr string) (net.Conn, error) {
		if p, ok := via[addr]; ok {
			addr = p
		}
		return d.DialContext(ctx, "tcp", addr)
	}
}

// hindered is how many times faults have hindered the Raft links' traffic,
// over every link (Proxy.Hindered).
func (c *Cluster) hindered() int64 {
	var n int64
	for _, p := range c.proxies {
		n += p.Hindered()
	}
	return n
}

// clientHindered is hindered for the workers' links. (Apart: client faults
// run beside the others, nemesis.run.)
func (c *Cluster) clientHindered() int64 {
	var n int64
	for _, p := range c.clientProxies {
		n += p.Hindered()
	}
	return n
}

// clientTraffic is how many bytes the workers' links delivered.
func (c *Cluster) clientTraffic() int64 {
	var n int64
	for _, p := range c.clientProxies {
		n += p.Forwarded()
	}
	return n
}

// silentLinks names the node pairs whose links delivered no byte either
// way: Raft traffic does not pass through them, so faults on them would do
// nothing. (A pair, not a link: a node dials only while it leads or
// campaigns, so one leading nothing may never use its own outgoing links.)
// The workers' links count as one: a node that leads no shard may never
// hear from them.
func (c *Cluster) silentLinks() []string {
	var out []string
	if c.clientTraffic() == 0 {
		out = append(out, "the workers' clients -> every node")
	}
	for a := 0; a < ClusterSize; a++ {
		for b := a + 1; b < ClusterSize; b++ {
			if c.proxies[[2]int{a, b}].Forwarded()+c.proxies[[2]int{b, a}].Forwarded() == 0 {
				out = append(out, fmt.Sprintf("%s <-> %s", c.NodeID(a), c.NodeID(b)))
			}
		}
	}
	return out
}

// Heal resumes paused nodes, restarts dead ones and makes every link pass
// without delay.
func (c *Cluster) Heal(ctx context.Context) error {
	for _, p := range c.proxies {
		p.Set(LinkPass, 0)
	}
	for _, p := range c.clientProxies {
		p.Set(LinkPass, 0)
	}
	var errs []error
	for i := range c.nodes {
		c.mu.Lock()
		paused := c.nodes[i].paused
		c.mu.Unlock()
		if paused {
			errs = append(errs, c.Resume(i))
		}
		// A node left running with flags of a fault (a skewed clock) is
		// started again without them.
		c.mu.Lock()
		faulty := len(c.nodes[i].extra) > 0
		c.mu.Unlock()
		if faulty && c.Running(i) {
			errs = append(errs, c.Kill(i))
		}
		// A restart can fail if another socket took the node's port while
		// it was down; try a few times.
		for attempt := 0; attempt < maxRestartAttempts && !c.Running(i); attempt++ {
			c.mu.Lock()
			c.nodes[i].cmd = nil
			c.mu.Unlock()
			if err := c.Restart(ctx, i); err != nil {
				errs = append(errs, err)
				time.Sleep(time.Second)
			}
		}
	}
	return errors.Join(errs...)
}

// GRPCAddr is node i's client address.
func (c *Cluster) GRPCAddr(i int) string { return c.nodes[i].grpcAddr }

// GRPCAddrs are every node's client addresses.
func (c *Cluster) GRPCAddrs() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.grpcAddr
	}
	return out
}

// NodeID is node i's ID.
func (c *Cluster) NodeID(i int) string { return c.nodes[i].id }

// LogPaths are the nodes' log files.
func (c *Cluster) LogPaths() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.logPath
	}
	return out
}

// Close kills every node (SIGKILL to each process group, paused or not) and
// closes the proxies. Safe to call more than once.
func (c *Cluster) Close() {
	c.mu.Lock()
	c.closed = true
	var waits []chan struct{}
	for _, n := range c.nodes {
		if n.cmd != nil {
			_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
			waits = append(waits, n.exited)
			n.cmd = nil
		}
	}
	c.mu.Unlock()
	for _, w := range waits {
		select {
		case <-w:
		case <-time.After(10 * time.Second):
		}
	}
	for _, p := range c.proxies {
		p.Close()
	}
	for _, p := range c.clientProxies {
		p.Close()
	}
}
