package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// peerConns keeps one gRPC connection per peer for node-to-node calls (the
// DefineAsset fan-out and leadership balancing).
type peerConns struct {
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool // a handler still running after close must not dial anew
}

func newPeerConns() *peerConns { return &peerConns{conns: map[string]*grpc.ClientConn{}} }

func (p *peerConns) get(addr string) (tallypb.LedgerClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errUnavailable("node is shutting down")
	}
	if c, ok := p.conns[addr]; ok {
		return tallypb.NewLedgerClient(c), nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	p.conns[addr] = c
	return tallypb.NewLedgerClient(c), nil
}

func (p *peerConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = map[string]*grpc.ClientConn{}
	p.closed = true
}

// forwardDefine sends one shard's DEFINE_ASSET op to that shard's leader,
// retrying while the leader is unknown or moving, until ctx ends.
func (n *Node) forwardDefine(ctx context.Context, s *shard, req *tallypb.DefineAssetRequest) (*tallypb.OpResult, error) {
	shardID := s.id
	sub := &tallypb.SubmitRequest{
		Ops: []*tallypb.Op{{Kind: tallypb.OpKind_DEFINE_ASSET, Program: req.GetProgram(), Asset: req.GetAsset(),
			IdempotencyKey: req.GetIdempotencyKey(), Scale: req.GetScale()}},
		Shard: &shardID,
	}
	backoff := 10 * time.Millisecond
	for {
		_, leaderID := s.raft.LeaderWithID()
		if p, ok := n.cfg.peerByID(string(leaderID)); ok && p.ID != n.cfg.ID {
			c, err := n.peers.get(p.GRPCAddr)
			if err == nil {
				actx, cancel := context.WithTimeout(ctx, 5*time.Second)
				resp, err := c.Submit(actx, sub)
				cancel()
				if err == nil && len(resp.GetResults()) == 1 {
					return resp.GetResults()[0], nil
				}
			}
		} else if ok && p.ID == n.cfg.ID {
			rs, err := s.propose(ctx, ledger.Request{Ops: []ledger.Op{defineAssetOp(req.GetProgram(), req.GetAsset(),
				req.GetIdempotencyKey(), uint8(req.GetScale()))}})
			if err == nil {
				cv := n.pb(s)
				if res := cv.result(rs[0]); cv.err == nil {
					return res, nil
				}
				// Applied but not answerable: try again; the retry
				// replays the definition.
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("shard %d: %w", shardID, errUnavailable("define asset: "+ctx.Err().Error()))
		case <-time.After(backoff):
		}
		if backoff < 500*time.Millisecond {
			backoff *= 2
		}
	}
}
