package node

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// peerWithShards answers ClusterInfo with its own shard count, as a node
// started with another --shards would.
type peerWithShards struct {
	tallypb.UnimplementedLedgerServer
	shards uint32
}

func (p peerWithShards) ClusterInfo(context.Context, *tallypb.ClusterInfoRequest) (*tallypb.ClusterInfoResponse, error) {
	return &tallypb.ClusterInfoResponse{Shards: p.shards, NodeId: "n2"}, nil
}

// TestShardCountMismatchRefusesRequests: a node whose peer runs another
// shard count refuses every operation and read, saying why, instead of
// mapping members to shards unlike the peer (which could apply one key on
// two shards). Found by review: nothing compared the counts across nodes.
func TestShardCountMismatchRefusesRequests(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	tallypb.RegisterLedgerServer(srv, peerWithShards{shards: 3})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	peers := []Peer{{ID: "n1", RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)}, {ID: "n2", RaftAddr: freeAddr(t), GRPCAddr: lis.Addr().String()}}
	n, err := Start(Config{ID: "n1", DataDir: t.TempDir(), Peers: peers, Shards: 2, Bootstrap: true, LogOutput: io.Discard, BalanceInterval: -1})
	require.NoError(t, err)
	defer n.Close()
	require.Eventually(t, func() bool { return n.misconfigured.Load() != nil }, 10*time.Second, 20*time.Millisecond)

	cc, err := grpc.NewClient(peers[0].GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer cc.Close()
	lc := tallypb.NewLedgerClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = lc.GetAccount(ctx, &tallypb.GetAccountRequest{Program: "p", Member: "m", Asset: "PTS"})
	require.ErrorContains(t, err, "cluster misconfigured: node n2 runs 3 shards and this node (n1) 2")
	for _, s := range n.shards {
		_, err := s.propose(ctx, ledger.Request{Ops: []ledger.Op{{Kind: ledger.OpCredit, Program: "p", Member: "m", Asset: "PTS",
			AmountMinor: 1, IdempotencyKey: "k"}}})
		require.ErrorContains(t, err, "cluster misconfigured")
	}
}
