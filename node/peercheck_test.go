package node

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// peerWithShards answers ClusterInfo as node id running shards shards, as a
// node started with that --shards would.
type peerWithShards struct {
	tallypb.UnimplementedLedgerServer
	id     string
	shards *atomic.Uint32
}

func (p peerWithShards) ClusterInfo(context.Context, *tallypb.ClusterInfoRequest) (*tallypb.ClusterInfoResponse, error) {
	return &tallypb.ClusterInfoResponse{Shards: p.shards.Load(), NodeId: p.id}, nil
}

// fakePeer serves peerWithShards on 127.0.0.1 and returns its Peer and
// shard count (which the test may change).
func fakePeer(t *testing.T, id string, shards uint32) (Peer, *atomic.Uint32) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	n := new(atomic.Uint32)
	n.Store(shards)
	srv := grpc.NewServer()
	tallypb.RegisterLedgerServer(srv, peerWithShards{id: id, shards: n})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return Peer{ID: id, RaftAddr: freeAddr(t), GRPCAddr: lis.Addr().String()}, n
}

// TestShardCountMismatchRefusesRequests: a node whose shard count the
// majority of its cluster does not share refuses every operation and read,
// saying why, instead of routing members unlike the others (which could
// apply one key on two shards); once the cluster agrees again it serves.
// Found by review: nothing compared the counts across nodes.
func TestShardCountMismatchRefusesRequests(t *testing.T) {
	p2, n2 := fakePeer(t, "n2", 3)
	p3, n3 := fakePeer(t, "n3", 3)
	peers := []Peer{{ID: "n1", RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)}, p2, p3}
	n, err := Start(Config{ID: "n1", DataDir: t.TempDir(), Peers: peers, Shards: 2, Bootstrap: true, LogOutput: io.Discard, BalanceInterval: -1})
	require.NoError(t, err)
	defer n.Close()
	require.Eventually(t, func() bool { return n.misconfigured.Load() != nil }, 10*time.Second, 20*time.Millisecond)

	cc, err := grpc.NewClient(peers[0].GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = tallypb.NewLedgerClient(cc).GetAccount(ctx, &tallypb.GetAccountRequest{Program: "p", Member: "m", Asset: "PTS"})
	require.ErrorContains(t, err, "cluster misconfigured: node n2 runs 3 shards, node n3 runs 3 shards and this node (n1) 2")
	credit := ledger.Request{Ops: []ledger.Op{{Kind: ledger.OpCredit, Program: "p", Member: "m", Asset: "PTS", AmountMinor: 1, IdempotencyKey: "k"}}}
	for _, s := range n.shards {
		_, err := s.propose(ctx, credit)
		require.ErrorContains(t, err, "cluster misconfigured")
	}

	// One peer fixed: this node is in the majority, and serves (the
	// remaining odd one out refuses on its side).
	n2.Store(2)
	n.checkPeerShardCounts(ctx, "")
	require.Nil(t, n.misconfigured.Load())
	n2.Store(3)
	n3.Store(2)
	n.checkPeerShardCounts(ctx, "")
	require.Nil(t, n.misconfigured.Load(), "n2 (3) and n3 (2): this node and n3 are the majority")
	// Every peer at this node's count again: no disagreement at all.
	n2.Store(2)
	require.Equal(t, "", n.checkPeerShardCounts(ctx, ""))
}

// TestShardCountIgnoresImpostors: an answer from a process that is not the
// peer it was asked as (another cluster on its address) proves nothing.
func TestShardCountIgnoresImpostors(t *testing.T) {
	p2, _ := fakePeer(t, "someone-else", 3)
	p3, _ := fakePeer(t, "another", 3)
	p2.ID, p3.ID = "n2", "n3"
	peers := []Peer{{ID: "n1", RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)}, p2, p3}
	n, err := Start(Config{ID: "n1", DataDir: t.TempDir(), Peers: peers, Shards: 2, Bootstrap: true, LogOutput: io.Discard, BalanceInterval: -1})
	require.NoError(t, err)
	defer n.Close()
	require.Equal(t, "", n.checkPeerShardCounts(context.Background(), ""))
	require.Nil(t, n.misconfigured.Load())
}
