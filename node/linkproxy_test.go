package node

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

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

// newPartitionableCluster is newTestCluster of three nodes whose Raft links
// each run through a linkProxy (tune, if set, runs first); cut(a, b, on)
// cuts, or heals, both directions between the nodes with IDs a and b.
func newPartitionableCluster(t *testing.T, shards int, tune func(*Config)) (c *testCluster, cut func(a, b string, on bool)) {
	proxies := map[[2]string]*linkProxy{}
	c = newTestCluster(t, 3, shards, func(cfg *Config) {
		if tune != nil {
			tune(cfg)
		}
		cfg.DialRewrite = map[string]string{}
		for _, p := range cfg.Peers {
			if p.ID == cfg.ID {
				continue
			}
			px := newLinkProxy(t, p.RaftAddr)
			proxies[[2]string{cfg.ID, p.ID}] = px
			cfg.DialRewrite[p.RaftAddr] = px.addr()
		}
	})
	return c, func(a, b string, on bool) {
		proxies[[2]string{a, b}].setCut(on)
		proxies[[2]string{b, a}].setCut(on)
	}
}

// makeLeader moves the leadership of shard to node i.
func (c *testCluster) makeLeader(shard, i int) {
	for !c.nodes[i].IsLeader(shard) {
		if l := c.leaderOf(shard); l != i {
			_ = c.nodes[l].shards[shard].raft.LeadershipTransferToServer(raft.ServerID(c.cfgs[i].ID), raft.ServerAddress(c.cfgs[i].RaftAddr)).Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// leaderAmong waits, at most d, until one of nodes leads shard, and
// returns it.
func (c *testCluster) leaderAmong(shard int, d time.Duration, nodes ...int) int {
	c.t.Helper()
	b := -1
	require.Eventually(c.t, func() bool {
		for _, i := range nodes {
			if c.nodes[i].IsLeader(shard) {
				b = i
				return true
			}
		}
		return false
	}, d, 10*time.Millisecond, "none of nodes %v leads shard %d", nodes, shard)
	return b
}
