package transport

import (
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/tlsfiles"
)

// cluster is one Raft group per shard, each replicated on every mux.
type cluster struct {
	muxes  []*Mux
	shards []uint32
	rafts  map[uint32][]*raft.Raft
	fsms   map[uint32][]*sumFSM
	want   map[uint32]uint64 // sum of all commands applied so far, per shard
	seq    map[uint32]uint64 // last command value sent, per shard
	down   bool
}

func startCluster(t *testing.T, muxes []*Mux, shards []uint32) *cluster {
	t.Helper()
	c := &cluster{muxes: muxes, shards: shards, rafts: map[uint32][]*raft.Raft{}, fsms: map[uint32][]*sumFSM{}, want: map[uint32]uint64{}, seq: map[uint32]uint64{}}
	t.Cleanup(func() { c.shutdown(t) })
	for _, shard := range shards {
		var servers []raft.Server
		for i, m := range muxes {
			id := raft.ServerID(fmt.Sprintf("n%d", i))
			trans := m.NewTransport(shard, TransportConfig{Logger: nullLogger(), Timeout: 2 * time.Second})
			require.Equal(t, raft.ServerAddress(m.Addr().String()), trans.LocalAddr())
			store := raft.NewInmemStore()
			fsm := &sumFSM{}
			r, err := raft.NewRaft(fastRaftConfig(id), fsm, store, store, raft.NewInmemSnapshotStore(), trans)
			require.NoError(t, err)
			c.rafts[shard] = append(c.rafts[shard], r)
			c.fsms[shard] = append(c.fsms[shard], fsm)
			servers = append(servers, raft.Server{ID: id, Address: trans.LocalAddr()})
		}
		require.NoError(t, c.rafts[shard][0].BootstrapCluster(raft.Configuration{Servers: servers}).Error())
	}
	return c
}

func (c *cluster) leader(t *testing.T, shard uint32) *raft.Raft {
	t.Helper()
	var leader *raft.Raft
	waitFor(t, 10*time.Second, fmt.Sprintf("a leader of shard %d", shard), func() bool {
		for _, r := range c.rafts[shard] {
			if r.State() == raft.Leader {
				leader = r
				return true
			}
		}
		return false
	})
	return leader
}

// applyAndCheck applies n commands to every shard and waits for every replica
// to reach the same sum.
func (c *cluster) applyAndCheck(t *testing.T, n int) {
	t.Helper()
	for _, shard := range c.shards {
		want := c.want[shard]
		for i := 1; i <= n; i++ {
			c.seq[shard]++
			v := c.seq[shard] // unique per shard, so the FSM's dedup is exact
			for attempt := 0; ; attempt++ {
				err := c.leader(t, shard).Apply(binary.BigEndian.AppendUint64(nil, v), 2*time.Second).Error()
				if err == nil {
					break
				}
				t.Logf("shard %d apply %d attempt %d: %v", shard, v, attempt, err)
				require.Less(t, attempt, 10, "shard %d apply: %v", shard, err)
			}
			want += v
		}
		c.want[shard] = want
		for i, f := range c.fsms[shard] {
			waitFor(t, 5*time.Second, fmt.Sprintf("shard %d replica %d to apply (want %d, have %d)", shard, i, want, f.sum.Load()), func() bool { return f.sum.Load() == want })
		}
	}
}

func (c *cluster) shutdown(t *testing.T) {
	t.Helper()
	if c.down {
		return
	}
	c.down = true
	for _, rs := range c.rafts {
		for _, r := range rs {
			require.NoError(t, r.Shutdown().Error())
		}
	}
	for _, m := range c.muxes {
		require.NoError(t, m.Close())
	}
}

func listenN(t *testing.T, n int, opts func(i int) Options) []*Mux {
	t.Helper()
	var muxes []*Mux
	for i := 0; i < n; i++ {
		o := Options{Logger: nullLogger()}
		if opts != nil {
			o = opts(i)
		}
		m, err := Listen("127.0.0.1:0", o)
		require.NoError(t, err)
		muxes = append(muxes, m)
	}
	return muxes
}

// TestRaftGroupsShareOnePort runs several 3-node Raft groups whose nodes each
// use one Mux (one port) for all groups.
func TestRaftGroupsShareOnePort(t *testing.T) {
	checkNoLeaks(t)
	muxes := listenN(t, 3, nil)
	c := startCluster(t, muxes, []uint32{0, 1, 2, 7, 1<<32 - 1})
	c.applyAndCheck(t, 30)

	// A leader change in one shard moves traffic over the same ports.
	// A transfer may time out on a busy machine (raft allows it one election
	// timeout), so it is asked again until another node leads.
	leader := c.leader(t, 1)
	waitFor(t, 20*time.Second, "a new leader of shard 1", func() bool {
		if c.leader(t, 1) != leader {
			return true
		}
		if err := leader.LeadershipTransfer().Error(); err != nil {
			t.Logf("leadership transfer: %v", err)
		}
		return false
	})
	c.applyAndCheck(t, 10)
	c.shutdown(t)
}

// TestDialRewrite puts a forwarder on every link and checks that the Raft
// traffic really flows through them.
func TestDialRewrite(t *testing.T) {
	checkNoLeaks(t)
	targets := listenN(t, 3, nil)
	var fwds []*forwarder
	rewrites := make([]map[string]string, 3)
	for i := range targets {
		rewrites[i] = map[string]string{}
		for j := range targets {
			if i != j {
				f := newForwarder(t, targets[j].Addr().String())
				t.Cleanup(f.close)
				fwds = append(fwds, f)
				rewrites[i][targets[j].Addr().String()] = f.addr()
			}
		}
	}
	// A forwarder needs its target's port and a Mux copies DialRewrite at
	// Listen, so the rewrites are installed after the fact (same package,
	// before any dial). TestDialRewriteOption covers the Options path.
	for i, m := range targets {
		m.dialRewrite = rewrites[i]
	}
	c := startCluster(t, targets, []uint32{3, 4})
	c.applyAndCheck(t, 20)
	// Every leader dials each of its followers, and every such dial must go
	// through a forwarder: so each node that followed in some shard received
	// forwarded connections.
	forwardedTo := map[string]int64{}
	for _, f := range fwds {
		forwardedTo[f.target] += f.accepted.Load()
	}
	for _, shard := range c.shards {
		leader := c.leader(t, shard)
		for i, r := range c.rafts[shard] {
			if r != leader {
				addr := targets[i].Addr().String()
				require.Positive(t, forwardedTo[addr], "no forwarded connection reached follower %s of shard %d", addr, shard)
			}
		}
	}
	c.shutdown(t)
}

// TestDialRewriteOption checks the documented Options path end to end with
// a single stream.
func TestDialRewriteOption(t *testing.T) {
	checkNoLeaks(t)
	server := listenN(t, 1, nil)[0]
	f := newForwarder(t, server.Addr().String())
	client, err := Listen("127.0.0.1:0", Options{Logger: nullLogger(), DialRewrite: map[string]string{server.Addr().String(): f.addr()}})
	require.NoError(t, err)

	accepted := make(chan net.Conn, 1)
	ln := server.StreamLayer(9)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	conn, err := client.StreamLayer(9).Dial(raft.ServerAddress(server.Addr().String()), time.Second)
	require.NoError(t, err)
	_, err = conn.Write([]byte("ping"))
	require.NoError(t, err)
	var got net.Conn
	select {
	case got = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("no connection accepted")
	}
	buf := make([]byte, 4)
	require.NoError(t, got.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = io.ReadFull(got, buf)
	require.NoError(t, err)
	require.Equal(t, "ping", string(buf))
	require.EqualValues(t, 1, f.accepted.Load())

	require.NoError(t, client.Close())
	require.NoError(t, server.Close())
	f.close()
}

// TestBadHeaderIsDropped sends malformed or missing headers and checks the
// connection is closed by the Mux, never reaches Accept, and does not stall
// good connections.
func TestBadHeaderIsDropped(t *testing.T) {
	checkNoLeaks(t)
	const shard = 7
	var dropsMu sync.Mutex
	drops := map[string]int{}
	server, err := Listen("127.0.0.1:0", Options{Logger: nullLogger(), HeaderTimeout: 300 * time.Millisecond,
		OnDrop: func(reason string) {
			dropsMu.Lock()
			defer dropsMu.Unlock()
			drops[reason]++
		}})
	require.NoError(t, err)
	client := listenN(t, 1, nil)[0]
	layer := server.StreamLayer(shard)

	var accepted atomic.Int64
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := layer.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_ = c.Close()
		}
	}()

	header := func(magic, version byte, s uint32) []byte {
		return binary.BigEndian.AppendUint32([]byte{magic, version}, s)
	}
	cases := []struct {
		name   string
		send   []byte
		reason string // what OnDrop is told
	}{
		{"bad magic", header(0x00, headerVersion, shard), "bad_header"},
		{"bad version", header(headerMagic, headerVersion+1, shard), "bad_header"},
		{"unknown shard", header(headerMagic, headerVersion, shard+1), "unknown_shard"},
		{"short header then silence", []byte{headerMagic, headerVersion}, "no_header"},
		{"silence", nil, "no_header"},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n"), "bad_header"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", server.Addr().String())
			require.NoError(t, err)
			defer conn.Close()
			if len(tc.send) > 0 {
				_, err = conn.Write(tc.send)
				require.NoError(t, err)
			}

			// While this client stalls, a good connection still gets through.
			before := accepted.Load()
			good, err := client.StreamLayer(shard).Dial(raft.ServerAddress(server.Addr().String()), time.Second)
			require.NoError(t, err)
			waitFor(t, 2*time.Second, "the good connection to be accepted", func() bool { return accepted.Load() > before })
			_ = good.Close()

			// The bad one is closed by the server: a read ends with EOF or a
			// reset well before our own deadline.
			require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
			_, err = io.ReadAll(conn)
			var ne net.Error
			require.False(t, errors.As(err, &ne) && ne.Timeout(), "server never closed the connection")
		})
	}
	want := map[string]int{}
	for _, tc := range cases {
		want[tc.reason]++
	}
	dropsMu.Lock()
	assert.Equal(t, want, drops, "every drop told, with its reason")
	dropsMu.Unlock()
	require.NoError(t, server.Close())
	require.NoError(t, client.Close())
	<-acceptDone
	require.EqualValues(t, len(cases), accepted.Load(), "only the good connections may be accepted")
}

func TestStreamLayerIdentityAndClose(t *testing.T) {
	checkNoLeaks(t)
	m := listenN(t, 1, nil)[0]
	peer := listenN(t, 1, nil)[0]

	a := m.StreamLayer(1)
	require.Same(t, a, m.StreamLayer(1))
	require.NotSame(t, a, m.StreamLayer(2))
	require.Equal(t, m.Addr().String(), a.Addr().String())
	require.Equal(t, m.Addr().String(), m.StreamLayer(2).Addr().String())

	// An established connection is closed with its layer.
	acceptedCh := make(chan net.Conn, 1)
	go func() {
		if c, err := a.Accept(); err == nil {
			acceptedCh <- c
		}
	}()
	out, err := peer.StreamLayer(1).Dial(raft.ServerAddress(m.Addr().String()), time.Second)
	require.NoError(t, err)
	var in net.Conn
	select {
	case in = <-acceptedCh:
	case <-time.After(5 * time.Second):
		t.Fatal("not accepted")
	}
	require.NoError(t, a.Close())
	_, err = a.Accept()
	require.ErrorIs(t, err, ErrLayerClosed)
	_, err = in.Read(make([]byte, 1))
	require.Error(t, err)
	require.NoError(t, out.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = out.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF, "peer sees the close")
	_ = out.Close()

	// A closed layer is replaced on the next call, so a shard can restart.
	b := m.StreamLayer(1)
	require.NotSame(t, a, b)

	// Close unblocks Accept with an error.
	acceptErr := make(chan error, 1)
	go func() {
		_, err := b.Accept()
		acceptErr <- err
	}()
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, m.Close())
	require.NoError(t, m.Close())
	select {
	case err := <-acceptErr:
		require.ErrorIs(t, err, ErrMuxClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Accept not unblocked by Close")
	}
	_, err = m.StreamLayer(5).Accept()
	require.Error(t, err)
	_, err = b.Dial(raft.ServerAddress(peer.Addr().String()), time.Second)
	require.Error(t, err)
	// Nothing listens any more.
	_, err = net.DialTimeout("tcp", m.Addr().String(), time.Second)
	require.Error(t, err)
	require.NoError(t, peer.Close())
}

func TestAdvertise(t *testing.T) {
	m, err := Listen("127.0.0.1:0", Options{Logger: nullLogger(), Advertise: "node-1.example:7000"})
	require.NoError(t, err)
	defer m.Close()
	require.Equal(t, "node-1.example:7000", m.Addr().String())
	require.Equal(t, "node-1.example:7000", m.StreamLayer(3).Addr().String())
}

// TestNoPipelining pins pipelined replication off: with it on, hashicorp/raft
// can wedge replication to a follower and hang Shutdown (issue #612), which
// TestRaftGroupsShareOnePort hit in CI before the transport refused it.
func TestNoPipelining(t *testing.T) {
	checkNoLeaks(t)
	m := listenN(t, 1, nil)[0]
	trans := m.NewTransport(1, TransportConfig{Logger: nullLogger()})
	p, err := trans.AppendEntriesPipeline("n1", raft.ServerAddress(m.Addr().String()))
	require.Nil(t, p)
	require.ErrorIs(t, err, raft.ErrPipelineReplicationNotSupported)
	require.NoError(t, trans.Close())
	require.NoError(t, m.Close())
}

// boundReadsSetup starts two muxes and a connection the second dials to the
// first's layer for shard 1, all closed at cleanup (and checked for leaks).
func boundReadsSetup(t *testing.T) (m, peer *Mux, in, out net.Conn) {
	t.Helper()
	checkNoLeaks(t)
	muxes := listenN(t, 2, nil)
	m, peer = muxes[0], muxes[1]
	t.Cleanup(func() { require.NoError(t, peer.Close()) })
	t.Cleanup(func() { require.NoError(t, m.Close()) })
	in, out = acceptedPair(t, m, peer, 1)
	t.Cleanup(func() { _ = out.Close() })
	return m, peer, in, out
}

// acceptedPair returns both ends of a connection that peer dials to m's
// layer for shard: the one m's layer accepted, and the one peer dialed.
func acceptedPair(t *testing.T, m, peer *Mux, shard uint32) (in, out net.Conn) {
	t.Helper()
	acceptedCh := make(chan net.Conn, 1)
	go func() {
		if c, err := m.StreamLayer(shard).Accept(); err == nil {
			acceptedCh <- c
		}
	}()
	out, err := peer.StreamLayer(shard).Dial(raft.ServerAddress(m.Addr().String()), time.Second)
	require.NoError(t, err)
	select {
	case in = <-acceptedCh:
	case <-time.After(5 * time.Second):
		t.Fatal("not accepted")
	}
	return in, out
}

// readResult is one read's outcome.
type readResult struct {
	b   []byte
	err error
	at  time.Time
}

func readAsync(c net.Conn) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		ch <- readResult{buf[:n], err, time.Now()}
	}()
	return ch
}

// TestBoundReadsFailAStalledStream: while reads are bounded, a peer that
// keeps sending keeps its connection, and one that stops mid-stream has it
// closed after the bound, so that a follower reading a snapshot stream
// from a stalled leader gets its main loop back.
func TestBoundReadsFailAStalledStream(t *testing.T) {
	m, _, in, out := boundReadsSetup(t)

	const bound = 200 * time.Millisecond
	release := m.BoundReads(1, bound)
	defer release()
	// A byte every 50 ms: slower than nothing, faster than the bound.
	for i := range 12 {
		_, err := out.Write([]byte{byte(i)})
		require.NoError(t, err)
		r := <-readAsync(in)
		require.NoError(t, r.err, "read %d of a stream that keeps moving", i)
		time.Sleep(50 * time.Millisecond)
	}
	// The peer stalls.
	start := time.Now()
	r := <-readAsync(in)
	require.ErrorIs(t, r.err, os.ErrDeadlineExceeded)
	require.GreaterOrEqual(t, r.at.Sub(start), bound-20*time.Millisecond)
	require.Less(t, r.at.Sub(start), 10*bound, "a stalled read outlasted its bound")
	// The connection is closed: the next read (raft drains the rest of a
	// failed snapshot) fails at once, and the peer sees the close.
	_, err := in.Read(make([]byte, 1))
	require.ErrorIs(t, err, net.ErrClosed)
	require.NoError(t, out.SetReadDeadline(time.Now().Add(5*time.Second)))
	_, err = out.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
}

// TestBoundReadsLiftedOnRelease: the bound lasts while any holder holds it,
// reaches a read already waiting, covers only connections peers opened (a
// node's own dialed connections carry raft's deadlines), and once released
// leaves a waiting read waiting.
func TestBoundReadsLiftedOnRelease(t *testing.T) {
	m, peer, in, _ := boundReadsSetup(t)
	_, dialed := acceptedPair(t, peer, m, 1) // m dialed it
	defer dialed.Close()

	const bound = 150 * time.Millisecond
	waiting := readAsync(in)
	dialedRead := readAsync(dialed)
	r1 := m.BoundReads(1, bound)
	r2 := m.BoundReads(1, bound)
	r1()
	r1() // idempotent: r2 still holds the bound
	select {
	case r := <-waiting:
		require.ErrorIs(t, r.err, os.ErrDeadlineExceeded, "the waiting read gets the bound")
	case <-time.After(10 * bound):
		t.Fatal("a read waiting when the bound came ignored it")
	}
	r2()

	in2, out2 := acceptedPair(t, m, peer, 1)
	defer out2.Close()
	r3 := m.BoundReads(1, bound)
	waiting = readAsync(in2)
	r3()
	select {
	case r := <-waiting:
		t.Fatalf("a read ended after the bound was lifted: %v", r.err)
	case r := <-dialedRead:
		t.Fatalf("a dialed connection's read ended under the bound: %v", r.err)
	case <-time.After(4 * bound):
	}
	_, err := out2.Write([]byte("y"))
	require.NoError(t, err)
	r := <-waiting
	require.NoError(t, r.err)
	require.Equal(t, "y", string(r.b))
	require.NoError(t, dialed.Close())
	<-dialedRead

	// A shard with no layer: nothing to bound.
	m.BoundReads(99, bound)()
}

// TestAcceptedConnectionsBounded: hashicorp/raft holds an accepted
// connection (a goroutine and its buffers) until the peer hangs up, so
// clients that send a header and then nothing must not pile up: beyond
// MaxAccepted the one idle longest is closed (found by review).
func TestAcceptedConnectionsBounded(t *testing.T) {
	checkNoLeaks(t)
	const shard, limit, extra = 3, 4, 2
	server, err := Listen("127.0.0.1:0", Options{Logger: nullLogger(), MaxAccepted: limit})
	require.NoError(t, err)
	layer := server.StreamLayer(shard)
	var serving sync.WaitGroup
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := layer.Accept()
			if err != nil {
				return
			}
			serving.Add(1)
			go func() { // as raft's handleConn: read until the connection fails
				defer serving.Done()
				_, _ = io.Copy(io.Discard, c)
				_ = c.Close()
			}()
		}
	}()

	var conns []net.Conn
	for i := range limit + extra {
		conn, err := net.Dial("tcp", server.Addr().String())
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.Write(binary.BigEndian.AppendUint32([]byte{headerMagic, headerVersion}, shard))
		require.NoError(t, err)
		conns = append(conns, conn)
		if i == 0 {
			// The first one stays busy: it is never the idlest.
			go func() {
				for range 40 {
					if _, err := conn.Write([]byte{0}); err != nil {
						return
					}
					time.Sleep(25 * time.Millisecond)
				}
			}()
		}
		waitFor(t, 2*time.Second, "the connection to be tracked", func() bool {
			layer.(*streamLayer).mu.Lock()
			defer layer.(*streamLayer).mu.Unlock()
			return len(layer.(*streamLayer).conns) == min(i+1, limit)
		})
		time.Sleep(20 * time.Millisecond) // distinct idle times
	}
	closed := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		return err != nil && !(errors.As(err, &ne) && ne.Timeout())
	}
	assert.False(t, closed(conns[0]), "the busy connection was closed")
	for i := 1; i <= extra; i++ {
		assert.True(t, closed(conns[i]), "silent connection %d (among the idlest) still open", i)
	}
	for i := extra + 1; i < len(conns); i++ {
		assert.False(t, closed(conns[i]), "connection %d closed though within the limit", i)
	}
	require.NoError(t, server.Close())
	<-acceptDone
	serving.Wait()
}

// TestTLS: muxes with certificates from one CA carry Raft over TLS; a
// plaintext dial to them is dropped before its header reaches a layer, and
// a dial with another CA's certificate fails its handshake.
func TestTLS(t *testing.T) {
	checkNoLeaks(t)
	gen, err := tlsfiles.Generate(t.TempDir(), []string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	other, err := tlsfiles.Generate(t.TempDir(), []string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	withTLS := func(f tlsfiles.Files) Options {
		server, err := f.Server()
		require.NoError(t, err)
		client, err := f.Client()
		require.NoError(t, err)
		return Options{Logger: nullLogger(), ServerTLS: server, ClientTLS: client}
	}
	muxes := listenN(t, 3, func(int) Options { return withTLS(gen.Node) })
	c := startCluster(t, muxes, []uint32{0, 1})
	c.applyAndCheck(t, 20)
	c.shutdown(t)

	// A certificate from the CA that names no node (a client's) may not
	// speak Raft: VerifyPeer wants the nodes' host.
	mOpts := withTLS(gen.Node)
	mOpts.VerifyPeer = func(leaf *x509.Certificate) error { return leaf.VerifyHostname("127.0.0.1") }
	var dropsMu sync.Mutex
	drops := map[string]int{}
	mOpts.OnDrop = func(reason string) {
		dropsMu.Lock()
		defer dropsMu.Unlock()
		drops[reason]++
	}
	dropped := func(reason string) int {
		dropsMu.Lock()
		defer dropsMu.Unlock()
		return drops[reason]
	}
	m := listenN(t, 1, func(int) Options { return mOpts })[0]
	t.Cleanup(func() { require.NoError(t, m.Close()) })
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := m.StreamLayer(5).Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	plain := listenN(t, 1, nil)[0]
	t.Cleanup(func() { require.NoError(t, plain.Close()) })
	out, err := plain.StreamLayer(5).Dial(raft.ServerAddress(m.Addr().String()), time.Second)
	require.NoError(t, err, "the header goes out before anything is read")
	requireDropped(t, out, "a plaintext connection to a TLS mux")
	waitFor(t, 5*time.Second, "the plaintext drop counted", func() bool { return dropped("tls") == 1 })

	client := listenN(t, 1, func(int) Options { return withTLS(gen.User) })[0]
	t.Cleanup(func() { require.NoError(t, client.Close()) })
	out, err = client.StreamLayer(5).Dial(raft.ServerAddress(m.Addr().String()), time.Second)
	require.NoError(t, err, "the client's side of the handshake succeeds")
	requireDropped(t, out, "a client's certificate")
	waitFor(t, 5*time.Second, "the client certificate's drop counted", func() bool { return dropped("not_peer") == 1 })

	stranger := listenN(t, 1, func(int) Options { return withTLS(other.Node) })[0]
	t.Cleanup(func() { require.NoError(t, stranger.Close()) })
	_, err = stranger.StreamLayer(5).Dial(raft.ServerAddress(m.Addr().String()), time.Second)
	require.Error(t, err, "another CA's certificate")

	select {
	case c := <-accepted:
		t.Fatalf("a layer accepted %v", c.RemoteAddr())
	default:
	}
	// A node's certificate passes.
	peer := listenN(t, 1, func(int) Options { return withTLS(gen.Node) })[0]
	t.Cleanup(func() { require.NoError(t, peer.Close()) })
	out, err = peer.StreamLayer(5).Dial(raft.ServerAddress(m.Addr().String()), time.Second)
	require.NoError(t, err)
	defer out.Close()
	select {
	case c := <-accepted:
		_ = c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a node's certificate was not accepted")
	}
}

// requireDropped closes out after checking that the other side closed it
// (a read fails at once, not at its deadline).
func requireDropped(t *testing.T, out net.Conn, what string) {
	t.Helper()
	defer out.Close()
	_ = out.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := out.Read(make([]byte, 1))
	require.Error(t, err, "%s is dropped", what)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "%s: dropped, not left open: %v", what, err)
}

// TestCloseEndsADialInProgress: a paused peer completes the TCP connect
// from its backlog and never answers. A TLS dial then waited in its
// handshake for the whole dial timeout (raft's 10 s) after Mux.Close or the
// layer's Close, holding up a closing node (found by review).
func TestCloseEndsADialInProgress(t *testing.T) {
	checkNoLeaks(t)
	gen, err := tlsfiles.Generate(t.TempDir(), []string{"127.0.0.1"}, time.Hour)
	require.NoError(t, err)
	server, err := gen.Node.Server()
	require.NoError(t, err)
	client, err := gen.Node.Client()
	require.NoError(t, err)
	for _, tc := range []struct {
		name         string
		tls, byLayer bool
	}{
		{"plaintext, mux closed", false, false},
		{"tls, mux closed", true, false},
		{"tls, layer closed", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{Logger: nullLogger()}
			if tc.tls {
				o.ServerTLS, o.ClientTLS = server, client
			}
			m := listenN(t, 1, func(int) Options { return o })[0]
			defer m.Close()
			paused, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer paused.Close()
			layer := m.StreamLayer(1)
			done := make(chan error, 1)
			go func() {
				c, err := layer.Dial(raft.ServerAddress(paused.Addr().String()), 10*time.Second)
				if c != nil {
					_ = c.Close()
				}
				done <- err
			}()
			time.Sleep(300 * time.Millisecond)
			if tc.byLayer {
				require.NoError(t, layer.Close())
			} else {
				require.NoError(t, m.Close())
			}
			select {
			case <-done:
			case <-time.After(2 * time.Second):
				t.Fatal("the dial still runs 2 s after Close")
			}
		})
	}
}
