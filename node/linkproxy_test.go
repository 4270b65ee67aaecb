package node

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// linkProxy forwards one directed Raft link (dialer -> target) and can cut
// it: a partition of one pair of nodes, in one direction, through
// Config.DialRewrite.
type linkProxy struct {
	lis    net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

func newLinkProxy(t *testing.T, target string) *linkProxy {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &linkProxy{lis: lis, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { _ = lis.Close(); p.setCut(true) })
	go p.serve()
	return p
}

func (p *linkProxy) addr() string { return p.lis.Addr().String() }

func (p *linkProxy) serve() {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.mu.Unlock()
		go func() {
			d, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				_ = c.Close()
				_ = d.Close()
				return
			}
			p.conns[c], p.conns[d] = struct{}{}, struct{}{}
			p.mu.Unlock()
			go func() { _, _ = io.Copy(d, c); _ = d.Close(); _ = c.Close() }()
			_, _ = io.Copy(c, d)
			_ = d.Close()
			_ = c.Close()
		}()
	}
}

func (p *linkProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			_ = c.Close()
		}
		p.conns = map[net.Conn]struct{}{}
	}
}
