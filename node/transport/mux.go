package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Connection header, written by the dialer before anything else.
const (
	headerMagic   byte = 0xA7 // arbitrary; rejects stray non-Tally clients early
	headerVersion byte = 1
	headerBytes        = 1 + 1 + 4 // magic, version, shard (uint32 BE)

	// defaultHeaderTimeout bounds how long an accepted connection may take to
	// send its header. A peer sends the header together with its first RPC,
	// so anything slower is broken or hostile.
	defaultHeaderTimeout = 2 * time.Second

	// maxPendingHandshakes bounds the connections whose header is still being
	// read. Each costs a goroutine for up to the header timeout; beyond this
	// many, new connections are closed at once instead of piling up.
	maxPendingHandshakes = 1024

	// defaultMaxAccepted bounds the accepted connections one shard's layer
	// keeps open. hashicorp/raft serves each with a goroutine and ~512 KiB
	// of buffers and sets no read deadline on them, so without a bound a
	// client that sends a header and then nothing holds them until TCP
	// fails. A peer uses at most a few per shard (MaxPool pooled ones plus
	// those of concurrent RPCs), so 32 leaves room for a cluster of 5-7.
	defaultMaxAccepted = 32

	// acceptRetryMax caps the backoff after a failing Accept (for example
	// EMFILE), so the loop neither spins nor stays asleep for long.
	acceptRetryMax = time.Second
)

// Errors returned by Accept and Dial.
var (
	// ErrMuxClosed is returned after Mux.Close.
	ErrMuxClosed = errors.New("transport: mux closed")
	// ErrLayerClosed is returned after the StreamLayer itself was closed.
	ErrLayerClosed = errors.New("transport: stream layer closed")
)

// Options configures Listen. The zero value is usable.
type Options struct {
	// DialRewrite maps a peer's advertised Raft address to the address
	// actually dialed (lets a fault-injection proxy sit on each link). nil =
	// dial as advertised.
	DialRewrite map[string]string
	// Advertise is the address peers should dial to reach this Mux, reported
	// by every StreamLayer's Addr. Empty means the listener's address, which
	// is right unless listening on a wildcard address or behind NAT.
	Advertise string
	// HeaderTimeout bounds reading an incoming connection's header; 0 means
	// defaultHeaderTimeout.
	HeaderTimeout time.Duration
	// MaxAccepted bounds the accepted connections each shard keeps open;
	// 0 means defaultMaxAccepted. One more closes the one idle longest.
	MaxAccepted int
	// Logger receives connection-level warnings; nil means hclog.Default().
	Logger hclog.Logger
	// ServerTLS, if set, makes every accepted connection TLS (before its
	// header), with this configuration; ClientTLS does the same for dialled
	// ones, its ServerName set to the host of the address dialled (before
	// DialRewrite). A cluster sets both or neither.
	ServerTLS, ClientTLS *tls.Config
	// VerifyPeer, with ServerTLS, vets the certificate of every accepted
	// connection after its handshake: one it refuses is dropped before its
	// header is read. The CA's signature is not enough where the CA also
	// signs clients' certificates: a client must not speak Raft.
	VerifyPeer func(leaf *x509.Certificate) error
	// OnDrop, if set, is told why the Mux dropped an accepted connection
	// before handing it to a layer: "tls" (the handshake failed or timed
	// out), "not_peer"
	// (VerifyPeer refused its certificate, or it had none), "no_header",
	// "bad_header" or "unknown_shard". Drops while the Mux closes, and
	// connections refused because maxPendingHandshakes are waiting, are not
	// told. A node counts them (tally_raft_connections_dropped_total).
	OnDrop func(reason string)
}

// Mux accepts the connections of all Raft groups of a node on one listener
// and routes them to per-shard StreamLayers.
type Mux struct {
	ln            net.Listener
	addr          net.Addr
	dialRewrite   map[string]string
	serverTLS     *tls.Config
	clientTLS     *tls.Config
	verifyPeer    func(*x509.Certificate) error
	onDrop        func(string)
	headerTimeout time.Duration
	maxAccepted   int
	logger        hclog.Logger

	closeCh chan struct{}
	// wg counts the accept loop and the header-reading goroutines.
	wg sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	layers  map[uint32]*streamLayer
	pending map[net.Conn]struct{} // connections whose header is being read
}

// Listen starts a Mux on addr (for example "127.0.0.1:0").
func Listen(addr string, opts Options) (*Mux, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: listen %s: %w", addr, err)
	}
	m := &Mux{
		ln:            ln,
		addr:          ln.Addr(),
		dialRewrite:   make(map[string]string, len(opts.DialRewrite)),
		serverTLS:     opts.ServerTLS,
		clientTLS:     opts.ClientTLS,
		verifyPeer:    opts.VerifyPeer,
		onDrop:        opts.OnDrop,
		headerTimeout: opts.HeaderTimeout,
		maxAccepted:   opts.MaxAccepted,
		logger:        opts.Logger,
		closeCh:       make(chan struct{}),
		layers:        make(map[uint32]*streamLayer),
		pending:       make(map[net.Conn]struct{}),
	}
	// Copy so later changes by the caller cannot race with Dial.
	for k, v := range opts.DialRewrite {
		m.dialRewrite[k] = v
	}
	if opts.Advertise != "" {
		m.addr = advertisedAddr(opts.Advertise)
	}
	if m.headerTimeout <= 0 {
		m.headerTimeout = defaultHeaderTimeout
	}
	if m.maxAccepted <= 0 {
		m.maxAccepted = defaultMaxAccepted
	}
	if m.logger == nil {
		m.logger = hclog.Default()
	}
	m.logger = m.logger.Named("transport")
	m.wg.Add(1)
	go m.acceptLoop()
	return m, nil
}

// Addr returns the advertised address shared by all shards.
func (m *Mux) Addr() net.Addr { return m.addr }

// StreamLayer returns the stream layer of shard, creating it on demand.
// Repeated calls return the same layer until it is closed (raft closes it in
// NetworkTransport.Close); after that a call creates a fresh one, so a shard's
// Raft can be restarted on the same Mux. After Mux.Close the returned layer
// is already closed.
func (m *Mux) StreamLayer(shard uint32) raft.StreamLayer {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.layers[shard]; ok {
		return l
	}
	l := newStreamLayer(m, shard)
	if m.closed {
		l.closeConns()
		return l
	}
	m.layers[shard] = l
	return l
}

// BoundReads bounds, until release is called, how long a read of any
// connection that a peer opened to shard's layer may wait for data: a read
// that waits longer than d fails, and its connection is closed. Holders
// nest; the bound lasts until the last one releases it, and release is
// idempotent. With no open layer for shard it does nothing.
//
// hashicorp/raft sets no read deadline on the connections it serves, and a
// follower reads an installing snapshot's stream inside its main loop: a
// leader that stalls mid-stream (a paused VM, whose kernel keeps the
// connection up) would keep the follower from voting or taking entries for
// as long as the stall lasts. A node bounds its reads while it writes a
// snapshot, so a stalled stream fails after d instead. Idle connections of
// the shard may be closed too while the bound lasts longer than d; their
// peer dials again.
func (m *Mux) BoundReads(shard uint32, d time.Duration) (release func()) {
	m.mu.Lock()
	l := m.layers[shard]
	m.mu.Unlock()
	if l == nil || d <= 0 {
		return func() {}
	}
	l.bindReads(d)
	var once sync.Once
	return func() { once.Do(l.unbindReads) }
}

// Close stops accepting, closes every layer and connection, and waits for the
// Mux's goroutines to exit. It is safe to call more than once.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.closeCh)
	layers := make([]*streamLayer, 0, len(m.layers))
	for _, l := range m.layers {
		layers = append(layers, l)
	}
	pending := make([]net.Conn, 0, len(m.pending))
	for c := range m.pending {
		pending = append(pending, c)
	}
	m.mu.Unlock()

	err := m.ln.Close()
	for _, c := range pending {
		_ = c.Close()
	}
	for _, l := range layers {
		_ = l.Close()
	}
	m.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (m *Mux) acceptLoop() {
	defer m.wg.Done()
	var retry time.Duration
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closeCh:
				return
			default:
			}
			retry = min(max(2*retry, 5*time.Millisecond), acceptRetryMax)
			m.logger.Warn("accept failed; retrying", "error", err, "retry_in", retry)
			select {
			case <-m.closeCh:
				return
			case <-time.After(retry):
			}
			continue
		}
		retry = 0

		m.mu.Lock()
		if m.closed || len(m.pending) >= maxPendingHandshakes {
			closed := m.closed
			m.mu.Unlock()
			_ = c.Close()
			if closed {
				return
			}
			m.logger.Warn("too many connections awaiting their header; dropping", "remote", c.RemoteAddr(), "limit", maxPendingHandshakes)
			continue
		}
		m.pending[c] = struct{}{}
		m.wg.Add(1)
		m.mu.Unlock()
		// The header is read in its own goroutine so that a slow or silent
		// client cannot hold up other connections.
		go m.handshake(c)
	}
}

// handshake reads c's header (after a TLS handshake, with ServerTLS) and
// hands c to its shard's layer, or closes it.
func (m *Mux) handshake(raw net.Conn) {
	defer m.wg.Done()
	var h [headerBytes]byte
	c := raw
	// The deadline bounds the TLS handshake too, which writes.
	_ = raw.SetDeadline(time.Now().Add(m.headerTimeout))
	var err error
	reason := "no_header"
	if m.serverTLS != nil {
		tc := tls.Server(raw, m.serverTLS)
		if err = tc.Handshake(); err != nil {
			reason = "tls"
		}
		if certs := tc.ConnectionState().PeerCertificates; err == nil && m.verifyPeer != nil {
			reason = "not_peer"
			if len(certs) == 0 {
				err = errors.New("no client certificate")
			} else if err = m.verifyPeer(certs[0]); err != nil {
				m.logger.Warn("dropping connection: its certificate is not a peer's", "remote", raw.RemoteAddr(), "error", err)
			}
			if err == nil {
				reason = "no_header"
			}
		}
		c = tc
	}
	if err == nil {
		_, err = io.ReadFull(c, h[:])
	}
	if err == nil {
		err = raw.SetDeadline(time.Time{})
	}

	m.mu.Lock()
	delete(m.pending, raw)
	m.mu.Unlock()

	if err != nil {
		m.logger.Debug("dropping connection: no header", "remote", c.RemoteAddr(), "reason", reason, "error", err)
		m.dropped(reason)
		_ = c.Close()
		return
	}
	if h[0] != headerMagic || h[1] != headerVersion {
		m.logger.Warn("dropping connection: bad header", "remote", c.RemoteAddr(), "magic", h[0], "version", h[1])
		m.dropped("bad_header")
		_ = c.Close()
		return
	}
	shard := binary.BigEndian.Uint32(h[2:])
	m.mu.Lock()
	l := m.layers[shard]
	m.mu.Unlock()
	if l == nil {
		m.logger.Warn("dropping connection: unknown shard", "remote", c.RemoteAddr(), "shard", shard)
		m.dropped("unknown_shard")
		_ = c.Close()
		return
	}
	tc, ok := l.track(c, true)
	if !ok {
		return // layer closed meanwhile; track closed c
	}
	select {
	case l.acceptCh <- tc:
	case <-l.closeCh:
		_ = tc.Close()
	case <-m.closeCh:
		_ = tc.Close()
	}
}

// dropped tells OnDrop, unless the Mux is closing (it closes the
// connections still in their handshake).
func (m *Mux) dropped(reason string) {
	if m.onDrop == nil {
		return
	}
	select {
	case <-m.closeCh:
	default:
		m.onDrop(reason)
	}
}

// dial connects to address (after DialRewrite) and writes the shard header.
// Closing the Mux or stop (the layer's) ends a dial in progress: a paused
// peer completes the TCP connect from its backlog but never the TLS
// handshake, which would otherwise hold a closing node for the whole
// timeout (found by review).
func (m *Mux) dial(shard uint32, address raft.ServerAddress, timeout time.Duration, stop <-chan struct{}) (net.Conn, error) {
	select {
	case <-m.closeCh:
		return nil, ErrMuxClosed
	default:
	}
	target := string(address)
	if rewritten, ok := m.dialRewrite[target]; ok {
		target = rewritten
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-m.closeCh:
		case <-stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	d := net.Dialer{Timeout: timeout}
	raw, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = m.headerTimeout
	}
	c := raw
	_ = raw.SetDeadline(time.Now().Add(timeout))
	if m.clientTLS != nil {
		cfg := m.clientTLS.Clone()
		if host, _, err := net.SplitHostPort(string(address)); err == nil && cfg.ServerName == "" {
			cfg.ServerName = host
		}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = raw.Close()
			return nil, fmt.Errorf("transport: tls handshake with %s: %w", target, err)
		}
		c = tc
	}
	h := [headerBytes]byte{headerMagic, headerVersion}
	binary.BigEndian.PutUint32(h[2:], shard)
	if _, err := c.Write(h[:]); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("transport: write header to %s: %w", target, err)
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// advertisedAddr is an address given as a string (it may name a host that
// does not resolve here).
type advertisedAddr string

func (a advertisedAddr) Network() string { return "tcp" }
func (a advertisedAddr) String() string  { return string(a) }
