package linearizability

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// LinkMode is what a proxy does with the traffic of its link.
type LinkMode uint8

const (
	// LinkPass forwards traffic (after the link's delay, if any).
	LinkPass LinkMode = iota
	// LinkDrop closes the link's connections and refuses new ones: the
	// sender sees connection errors at once.
	LinkDrop
	// LinkBlackhole accepts connections but moves no byte in either
	// direction until the link heals: the sender sees silence until its own
	// timeouts fire, and connections that survive resume intact.
	LinkBlackhole
)

func (m LinkMode) String() string {
	switch m {
	case LinkPass:
		return "pass"
	case LinkDrop:
		return "drop"
	case LinkBlackhole:
		return "blackhole"
	}
	return "?"
}

// Limits of a proxy.
const (
	// proxyChunkBytes is the read size of a pump; Raft messages larger than
	// it are forwarded in several chunks, in order.
	proxyChunkBytes = 64 << 10
	// proxyQueueChunks bounds chunks in flight per direction of a delayed
	// connection; a full queue blocks the reader, which is what a slow link
	// does to its sender.
	proxyQueueChunks = 256
)

// Proxy forwards one directed link: from node A's dialer to node B's Raft
// listener, or from the workers' clients to a node's gRPC listener. Both
// directions of each TCP connection pass through it (requests and their
// responses), so cutting a link A->B silences every RPC that A sends to B;
// B's RPCs to A use the proxy B->A.
type Proxy struct {
	name   string
	target string
	lis    net.Listener

	mu      sync.Mutex
	mode    LinkMode
	delay   time.Duration
	conns   map[net.Conn]struct{}
	changed chan struct{} // closed and replaced on every mode change
	closed  bool
	wg      sync.WaitGroup

	// forwarded counts bytes delivered; hindered counts what a fault did
	// to the traffic: connections cut or refused (drop), reads held back
	// (blackhole), chunks delayed. A fault that hinders nothing proves
	// nothing, so the nemesis checks these moved.
	forwarded atomic.Int64
	hindered  atomic.Int64
}

// Forwarded is how many bytes the link delivered.
func (p *Proxy) Forwarded() int64 { return p.forwarded.Load() }

// Hindered is how many times a fault cut, refused, held back or delayed
// the link's traffic.
func (p *Proxy) Hindered() int64 { return p.hindered.Load() }

// NewProxy listens on a fresh 127.0.0.1 port and forwards to target.
func NewProxy(name, target string) (*Proxy, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{name: name, target: target, lis: lis, conns: map[net.Conn]struct{}{}, changed: make(chan struct{})}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr is the address the link's sender dials.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Set changes the link's mode and delay. Drop closes the link's
// connections now.
func (p *Proxy) Set(mode LinkMode, delay time.Duration) {
	p.mu.Lock()
	p.mode, p.delay = mode, delay
	close(p.changed)
	p.changed = make(chan struct{})
	var drop []net.Conn
	if mode == LinkDrop {
		for c := range p.conns {
			drop = append(drop, c)
		}
	}
	p.mu.Unlock()
	p.hindered.Add(int64(len(drop)))
	for _, c := range drop {
		_ = c.Close()
	}
}

func (p *Proxy) state() (LinkMode, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode, p.delay
}

// Close stops the proxy and closes its connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	var all []net.Conn
	for c := range p.conns {
		all = append(all, c)
	}
	p.mu.Unlock()
	_ = p.lis.Close()
	for _, c := range all {
		_ = c.Close()
	}
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		in, err := p.lis.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if mode, _ := p.state(); mode == LinkDrop {
			p.hindered.Add(1)
			_ = in.Close()
			continue
		}
		p.wg.Add(1)
		go p.serve(in)
	}
}

func (p *Proxy) serve(in net.Conn) {
	defer p.wg.Done()
	if !p.track(in) {
		_ = in.Close()
		return
	}
	defer p.untrack(in)
	defer in.Close()
	out, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return // the sender sees the connection close: as if the node were down
	}
	if !p.track(out) {
		_ = out.Close()
		return
	}
	defer p.untrack(out)
	defer out.Close()
	done := make(chan struct{}, 2)
	go func() { p.pump(in, out); done <- struct{}{} }()
	go func() { p.pump(out, in); done <- struct{}{} }()
	<-done
	// One direction ended: end the other too.
	_ = in.Close()
	_ = out.Close()
	<-done
}

type chunk struct {
	data []byte
	at   time.Time // when it may be delivered
}

// waitFlowing blocks while the link is blackholed and returns the mode it
// then has (LinkDrop once the proxy is closed).
func (p *Proxy) waitFlowing() (LinkMode, time.Duration) {
	for held := false; ; held = true {
		p.mu.Lock()
		mode, delay, changed, closed := p.mode, p.delay, p.changed, p.closed
		p.mu.Unlock()
		if closed {
			return LinkDrop, 0
		}
		if mode != LinkBlackhole {
			return mode, delay
		}
		if !held {
			p.hindered.Add(1)
		}
		select {
		case <-changed:
		case <-time.After(time.Second): // re-check closed
		}
	}
}

// pump copies src to dst. A blackholed link stalls: nothing is read or
// delivered, so TCP back-pressure reaches the sender as it would through a
// silent network, and no byte is lost (a TCP stream is never corrupted,
// only late) when the link heals. Delay is applied to every chunk when it
// is read, and a writer goroutine delivers chunks in order at their due
// time, so a delay adds latency without serialising on it.
func (p *Proxy) pump(src, dst net.Conn) {
	q := make(chan chunk, proxyQueueChunks)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for c := range q {
			if d := time.Until(c.at); d > 0 {
				p.hindered.Add(1)
				time.Sleep(d)
			}
			mode, _ := p.waitFlowing()
			if mode == LinkDrop {
				break
			}
			n, err := dst.Write(c.data)
			p.forwarded.Add(int64(n))
			if err != nil {
				break
			}
		}
		_ = src.Close()
		_ = dst.Close()
		for range q { // drain so the reader never blocks on a full queue
		}
	}()
	buf := make([]byte, proxyChunkBytes)
	for {
		if mode, _ := p.waitFlowing(); mode == LinkDrop {
			break
		}
		n, err := src.Read(buf)
		if n > 0 {
			mode, delay := p.waitFlowing()
			if mode == LinkDrop {
				break
			}
			q <- chunk{data: append([]byte(nil), buf[:n]...), at: time.Now().Add(delay)}
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-writerDone
}
