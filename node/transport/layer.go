package transport

import (
	"net"
	"sync"
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
	c, err := l.mux.dial(l.shard, address, timeout)
	if err != nil {
		return nil, err
	}
	tc, ok := l.track(c)
	if !ok {
		return nil, ErrLayerClosed
	}
	return tc, nil
}

// track wraps c so that the layer can close it. If the layer is already
// closed it closes c and reports false.
func (l *streamLayer) track(c net.Conn) (*trackedConn, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = c.Close()
		return nil, false
	}
	tc := &trackedConn{Conn: c, layer: l}
	l.conns[tc] = struct{}{}
	return tc, true
}

// trackedConn removes itself from its layer when closed.
type trackedConn struct {
	net.Conn
	layer *streamLayer
	once  sync.Once
	err   error
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
