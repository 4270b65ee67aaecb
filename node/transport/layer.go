package transport

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer is one shard's raft.StreamLayer on a Mux.
type streamLayer struct {
	mux   *Mux
	shard uint32
	// acceptCh is unbuffered: a routed connection waits in its handshake
	// goroutine until Accept takes it, so none is stranded in a buffer.
	acceptCh  chan net.Conn
	closeCh   chan struct{}
	closeOnce sync.Once

	mu     sync.Mutex
	closed bool
	conns  map[*trackedConn]struct{} // accepted and dialed, still open

	// Read bound (Mux.BoundReads). boundMu orders changes of the bound
	// against the deadlines reads set, so that no read sets a deadline
	// after the bound is lifted. Lock order: boundMu, then mu.
	boundMu sync.RWMutex
	bounds  int           // holders of the bound
	bound   time.Duration // the bound while bounds > 0
	bounded atomic.Bool   // bounds > 0; read on every Read without the lock
}

var _ raft.StreamLayer = (*streamLayer)(nil)

func newStreamLayer(m *Mux, shard uint32) *streamLayer {
	return &streamLayer{
		mux:      m,
		shard:    shard,
		acceptCh: make(chan net.Conn),
		closeCh:  make(chan struct{}),
		conns:    make(map[*trackedConn]struct{}),
	}
}

// Accept implements net.Listener.
func (l *streamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.acceptCh:
		return c, nil
	case <-l.closeCh:
	case <-l.mux.closeCh:
	}
	// Mux.Close closes every layer as well, and select picks at random
	// among ready cases: name the mux when it is closed, whichever woke us.
	select {
	case <-l.mux.closeCh:
		return nil, ErrMuxClosed
	default:
		return nil, ErrLayerClosed
	}
}

// Close implements net.Listener. It closes every connection of this shard:
// raft's NetworkTransport.Close closes its stream layer but neither its pooled
// outgoing connections nor the incoming ones it is serving, so without this a
// stopped group would leak connections and goroutines until the peers hang up.
func (l *streamLayer) Close() error {
	l.closeOnce.Do(func() {
		l.mux.mu.Lock()
		if l.mux.layers[l.shard] == l {
			delete(l.mux.layers, l.shard)
		}
		l.mux.mu.Unlock()
		l.closeConns()
	})
	return nil
}

// closeConns marks the layer closed and closes its connections.
func (l *streamLayer) closeConns() {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.closeCh)
	}
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// Addr implements net.Listener: the Mux's advertised address, the same for
// every shard.
func (l *streamLayer) Addr() net.Addr { return l.mux.Addr() }

// Dial implements raft.StreamLayer.
func (l *streamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	select {
	case <-l.closeCh:
		return nil, ErrLayerClosed
	default:
	}
	c, err := l.mux.dial(l.shard, address, timeout, l.closeCh)
	if err != nil {
		return nil, err
	}
	tc, ok := l.track(c, false)
	if !ok {
		return nil, ErrLayerClosed
	}
	return tc, nil
}

// track wraps c so that the layer can close it; accepted says whether a peer
// dialed it. If the layer is already closed it closes c and reports false.
// An accepted connection beyond Options.MaxAccepted closes the accepted one
// that has gone longest without data: a live peer's busy connections are
// never that one, while connections held open and silent are.
func (l *streamLayer) track(c net.Conn, accepted bool) (*trackedConn, bool) {
	tc := &trackedConn{Conn: c, layer: l, accepted: accepted}
	tc.lastRead.Store(time.Now().UnixNano())
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		_ = c.Close()
		return nil, false
	}
	var evict *trackedConn
	if accepted {
		n := 0
		for o := range l.conns {
			if !o.accepted {
				continue
			}
			n++
			if evict == nil || o.lastRead.Load() < evict.lastRead.Load() {
				evict = o
			}
		}
		if n < l.mux.maxAccepted {
			evict = nil
		}
	}
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	if evict != nil {
		l.mux.logger.Warn("too many accepted connections; closing the one idle longest",
			"shard", l.shard, "remote", evict.RemoteAddr(), "limit", l.mux.maxAccepted,
			"idle", time.Duration(time.Now().UnixNano()-evict.lastRead.Load()))
		_ = evict.Close()
	}
	return tc, true
}

// bindReads adds a holder of the read bound d (the first holder's d counts).
// Reads already waiting on accepted connections get the deadline too.
func (l *streamLayer) bindReads(d time.Duration) {
	l.boundMu.Lock()
	defer l.boundMu.Unlock()
	l.bounds++
	if l.bounds > 1 {
		return
	}
	l.bound = d
	l.bounded.Store(true)
	l.setReadDeadlines(time.Now().Add(d))
}

// unbindReads drops a holder; the last one lifts the bound from every
// accepted connection.
func (l *streamLayer) unbindReads() {
	l.boundMu.Lock()
	defer l.boundMu.Unlock()
	l.bounds--
	if l.bounds > 0 {
		return
	}
	l.bounded.Store(false)
	l.setReadDeadlines(time.Time{})
}

// setReadDeadlines sets t on every accepted connection (boundMu held).
func (l *streamLayer) setReadDeadlines(t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		if c.accepted {
			_ = c.Conn.SetReadDeadline(t)
		}
	}
}

// trackedConn removes itself from its layer when closed.
type trackedConn struct {
	net.Conn
	layer    *streamLayer
	accepted bool // a peer dialed it: raft serves the peer's RPCs on it
	// lastRead is when a read last returned data (Unix ns), or when the
	// connection was tracked: track evicts the accepted one idle longest.
	lastRead atomic.Int64
	once     sync.Once
	err      error
}

// Read implements net.Conn. While the layer's reads are bounded, a read of
// an accepted connection waits at most the bound for data. Only the bound
// sets deadlines on accepted connections (raft sets none there), so a
// timeout means the peer stopped sending: the connection is closed, so that
// the next read fails at once too (raft drains the rest of a failed
// snapshot stream, which would otherwise wait again).
func (c *trackedConn) Read(p []byte) (int, error) {
	if !c.accepted {
		return c.Conn.Read(p)
	}
	l := c.layer
	if l.bounded.Load() {
		l.boundMu.RLock()
		if l.bounds > 0 {
			_ = c.Conn.SetReadDeadline(time.Now().Add(l.bound))
		}
		l.boundMu.RUnlock()
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		l.mux.logger.Warn("closing a connection whose peer sent nothing within the read bound",
			"shard", l.shard, "remote", c.RemoteAddr(), "bound", l.currentBound())
		_ = c.Close()
	}
	return n, err
}

// currentBound is the read bound, for logs.
func (l *streamLayer) currentBound() time.Duration {
	l.boundMu.RLock()
	defer l.boundMu.RUnlock()
	return l.bound
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.layer.mu.Lock()
		delete(c.layer.conns, c)
		c.layer.mu.Unlock()
		c.err = c.Conn.Close()
	})
	return c.err
}
