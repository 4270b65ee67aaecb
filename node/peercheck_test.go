package node

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

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

// ShardState answers as node p.id, which allows the newest rules version.
func (p peerWithShards) ShardState(_ context.Context, req *tallypb.ShardStateRequest) (*tallypb.ShardStateResponse, error) {
	return &tallypb.ShardStateResponse{Shard: req.GetShard(), MaxVersion: ledger.MaxVersion, NodeId: p.id}, nil
}

// fakePeer serves peerWithShards on 127.0.0.1 and returns its Peer and
// shard count (which the test may change).
func fakePeer(t *testing.T, id string, shards uint32) (Peer, *atomic.Uint32) {
	t.Helper()
	p, n, _ := stoppablePeer(t, id, shards)
	return p, n
}

// stoppablePeer is fakePeer with a function that stops it.
func stoppablePeer(t *testing.T, id string, shards uint32) (Peer, *atomic.Uint32, func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	n := new(atomic.Uint32)
	n.Store(shards)
	srv := grpc.NewServer()
	tallypb.RegisterLedgerServer(srv, peerWithShards{id: id, shards: n})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return Peer{ID: id, RaftAddr: freeAddr(t), GRPCAddr: lis.Addr().String()}, n, srv.Stop
}

// refusal is n's refusal message ("" while it serves).
func refusal(n *Node) string {
	if m := n.refusal(); m != nil {
		return *m
	}
	return ""
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
	require.Eventually(t, func() bool { return strings.HasPrefix(refusal(n), "cluster misconfigured") }, 10*time.Second, 20*time.Millisecond)

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
	got, decided := n.checkPeerShardCounts(ctx, "")
	require.Equal(t, "", got)
	require.True(t, decided)
}

// TestShardCountIgnoresImpostors: an answer from a process that is not the
// peer it was asked as (another cluster on its address) proves nothing:
// it neither confirms this node's count nor shows it wrong.
func TestShardCountIgnoresImpostors(t *testing.T) {
	for _, shards := range []uint32{2, 3} {
		t.Run(fmt.Sprintf("impostors run %d shards", shards), func(t *testing.T) {
			p2, _ := fakePeer(t, "someone-else", shards)
			p3, _ := fakePeer(t, "another", shards)
			p2.ID, p3.ID = "n2", "n3"
			peers := []Peer{{ID: "n1", RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)}, p2, p3}
			n, err := Start(Config{ID: "n1", DataDir: t.TempDir(), Peers: peers, Shards: 2, Bootstrap: true, LogOutput: io.Discard, BalanceInterval: -1})
			require.NoError(t, err)
			defer n.Close()
			got, decided := n.checkPeerShardCounts(context.Background(), "")
			require.Contains(t, refusal(n), "shard count not yet confirmed", "the refusal a node starts with stays")
			require.Equal(t, "", got)
			require.False(t, decided)
		})
	}
}

// TestShardCountStartsRefused: a node serves nothing until a majority of
// its cluster (itself included) is known to run its count, so one started
// with the wrong --shards before its peers answer does not serve meanwhile
// (found by review: it served until its first check heard a disagreement).
// It answers UNAVAILABLE, marked not applied, saying why. A one-node
// cluster is its own majority and serves at once.
func TestShardCountStartsRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int // nodes in the cluster; the others never start
		refused bool
	}{
		{"alone", 1, false},
		{"peers silent", 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var peers []Peer
			for i := 0; i < tc.size; i++ {
				peers = append(peers, Peer{ID: fmt.Sprintf("n%d", i+1), RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)})
			}
			n, err := Start(Config{ID: "n1", DataDir: t.TempDir(), GRPCAddr: peers[0].GRPCAddr, RaftAddr: peers[0].RaftAddr, Peers: peers,
				Shards: 2, Bootstrap: true, LogOutput: io.Discard, BalanceInterval: -1})
			require.NoError(t, err)
			defer n.Close()
			require.Equal(t, tc.refused, n.misconfigured.Load() != nil, "as Start returns")
			if !tc.refused {
				return
			}
			// Silent peers prove nothing: the refusal stays.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, decided := n.checkPeerShardCounts(ctx, "")
			require.Contains(t, refusal(n), "shard count not yet confirmed")
			require.False(t, decided)
			cc, err := grpc.NewClient(peers[0].GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			require.NoError(t, err)
			defer cc.Close()
			for name, call := range map[string]func() error{
				"Submit": func() error {
					_, err := tallypb.NewLedgerClient(cc).Submit(ctx, &tallypb.SubmitRequest{Ops: []*tallypb.Op{{Kind: tallypb.OpKind_CREDIT,
						Program: "p", Member: "m", Asset: "PTS", Amount: "1", IdempotencyKey: "k"}}})
					return err
				},
				"DefineAsset": func() error {
					_, err := tallypb.NewLedgerClient(cc).DefineAsset(ctx, &tallypb.DefineAssetRequest{Program: "p", Asset: "PTS", Scale: 2, IdempotencyKey: "d"})
					return err
				},
			} {
				err := call()
				require.Equal(t, codes.Unavailable, status.Code(err), "%s: %v", name, err)
				require.ErrorContains(t, err, "shard count not yet confirmed", name)
				require.Equal(t, "true", errorMeta(err)[metaNotApplied], "%s: %v", name, err)
			}
		})
	}
}

// TestShardCountSilenceKeepsVerdict: a check that hears from too few peers
// to decide keeps the previous verdict. Found by review: a node shown
// misconfigured served again after one round in which its peers did not
// answer (their restart, a network blip).
func TestShardCountSilenceKeepsVerdict(t *testing.T) {
	for _, tc := range []struct {
		name   string
		shards uint32 // the peers'; this node runs 2
		want   string // the refusal's start, "" for none
	}{
		{"shown misconfigured", 3, "cluster misconfigured"},
		{"confirmed", 2, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p2, _, stop2 := stoppablePeer(t, "n2", tc.shards)
			p3, _, stop3 := stoppablePeer(t, "n3", tc.shards)
			peers := []Peer{{ID: "n1", RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)}, p2, p3}
			n, err := Start(Config{ID: "n1", DataDir: t.TempDir(), Peers: peers, Shards: 2, Bootstrap: true, LogOutput: io.Discard, BalanceInterval: -1})
			require.NoError(t, err)
			defer n.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, decided := n.checkPeerShardCounts(ctx, "")
			require.True(t, decided)
			require.True(t, strings.HasPrefix(refusal(n), tc.want), "refusal %q", refusal(n))

			stop2()
			stop3()
			_, decided = n.checkPeerShardCounts(ctx, "")
			require.True(t, strings.HasPrefix(refusal(n), tc.want), "after a silent round: refusal %q", refusal(n))
			require.False(t, decided)
		})
	}
}

// TestMisconfiguredNodeRefusesDefineAsset: DefineAsset is refused like
// every other request on a node with the wrong count. Found by review: n3,
// run with 2 shards beside n1 and n2 with 3, forwarded the definition to
// the leaders of its shards 0 and 1 and answered OK; shard 2 never got the
// asset.
func TestMisconfiguredNodeRefusesDefineAsset(t *testing.T) {
	var peers []Peer
	for i := 0; i < 3; i++ {
		peers = append(peers, Peer{ID: fmt.Sprintf("n%d", i+1), RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)})
	}
	var nodes []*Node
	defer func() {
		for _, n := range nodes {
			_ = n.Close()
		}
	}()
	for _, p := range peers {
		shards := 3
		if p.ID == "n3" {
			shards = 2
		}
		n, err := Start(Config{ID: p.ID, DataDir: t.TempDir(), GRPCAddr: p.GRPCAddr, RaftAddr: p.RaftAddr, Peers: peers,
			Shards: shards, Bootstrap: true, LogOutput: io.Discard, BalanceInterval: 100 * time.Millisecond})
		require.NoError(t, err)
		nodes = append(nodes, n)
	}
	n1, n3 := nodes[0], nodes[2]
	require.Eventually(t, func() bool { return strings.HasPrefix(refusal(n3), "cluster misconfigured") }, 10*time.Second, 20*time.Millisecond)
	// Shards 0 and 1 are led by n1 and n2 (the balancers see to it), so a
	// DefineAsset that got past the refusal would be forwarded to them and
	// answered; none reaches propose on n3, which refuses.
	require.Eventually(t, func() bool {
		addr0, _ := n3.shards[0].raft.LeaderWithID()
		addr1, _ := n3.shards[1].raft.LeaderWithID()
		return addr0 != "" && addr1 != "" && !n3.IsLeader(0) && !n3.IsLeader(1)
	}, 20*time.Second, 20*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	cc, err := grpc.NewClient(peers[2].GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer cc.Close()
	_, err = tallypb.NewLedgerClient(cc).DefineAsset(ctx, &tallypb.DefineAssetRequest{Program: "shop", Asset: "PTS", Scale: 2, IdempotencyKey: "d1"})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.ErrorContains(t, err, "cluster misconfigured")
	require.Equal(t, "true", errorMeta(err)[metaNotApplied], "%v", err)
	for i := 0; i < 2; i++ {
		_, defined, err := n1.shards[i].fsm.Asset("shop", "PTS")
		require.NoError(t, err)
		require.False(t, defined, "shard %d", i)
	}
}

// TestSkewedClockRefusesAndStampsNothing: a node whose clock is ten minutes
// ahead of its peers' refuses every request and leads nothing that stamps
// log time, though shard 0 prefers it: without the check it led shard 0
// and stamped every entry ten minutes ahead, expiring holds early and
// moving the shard's log time into the future for good.
func TestSkewedClockRefusesAndStampsNothing(t *testing.T) {
	const skew = 10 * time.Minute
	c := newTestCluster(t, 3, 1, func(cfg *Config) {
		if cfg.ID == "n1" {
			cfg.Clock = func() time.Time { return time.Now().Add(skew) }
		}
	})
	require.Eventually(t, func() bool { return strings.Contains(refusal(c.nodes[0]), "clock skewed") }, 10*time.Second, 50*time.Millisecond)
	assert.Empty(t, refusal(c.nodes[1]))
	assert.Empty(t, refusal(c.nodes[2]))

	// (c.defineAsset asks n1, which refuses.)
	_, err := call(c, 0, func(ctx context.Context, _ tallypb.LedgerClient) (*tallypb.DefineAssetResponse, error) {
		return c.client(c.cfgs[1].GRPCAddr).DefineAsset(ctx, &tallypb.DefineAssetRequest{Program: "shop", Asset: "POINTS", IdempotencyKey: "define"})
	})
	require.NoError(t, err)
	var results []*tallypb.OpResult
	results = append(results, c.mustSubmit(op(tallypb.OpKind_OPEN_ACCOUNT, "open", "kim", "POINTS", ""))...)
	results = append(results, c.mustSubmit(op(tallypb.OpKind_CREDIT, "c1", "kim", "POINTS", "50"))...)
	hold := op(tallypb.OpKind_HOLD, "h1", "kim", "POINTS", "20")
	hold.HoldTtlMs = 60_000
	results = append(results, c.mustSubmit(hold)...)
	// Balancing rounds (500 ms here) in which n1 would take shard 0 back.
	time.Sleep(2 * time.Second)
	results = append(results, c.mustSubmit(op(tallypb.OpKind_CREDIT, "c2", "kim", "POINTS", "1"))...)
	for _, r := range results {
		require.Equal(t, "OK", r.GetCode(), r.GetMessage())
		off := time.Since(time.UnixMilli(r.GetTimeMs()))
		require.Less(t, off.Abs(), 5*time.Second, "an entry stamped %s off the real clock", off)
	}
	require.False(t, c.nodes[0].IsLeader(0), "a node that refuses requests kept the shard")
	a, err := c.account("shop", "kim", "POINTS")
	require.NoError(t, err)
	require.Equal(t, "20", a.GetHeld(), "the hold expired early")
	_, err = c.client(c.cfgs[0].GRPCAddr).GetAccount(context.Background(), &tallypb.GetAccountRequest{Program: "shop", Member: "kim", Asset: "POINTS"})
	require.ErrorContains(t, err, "clock skewed")
}

// TestClockVotes: a peer's clock agrees when it lies within the offset of
// the interval the call took; a peer that reports no clock is not counted.
func TestClockVotes(t *testing.T) {
	sent := time.UnixMilli(1_000_000)
	got := sent.Add(40 * time.Millisecond)
	const maxOffset = 500 * time.Millisecond
	for _, tc := range []struct {
		name  string
		nowMs int64
		agree int
		other bool
	}{
		{"mid-call", sent.Add(20 * time.Millisecond).UnixMilli(), 1, false},
		{"just within, behind", sent.Add(-maxOffset).UnixMilli(), 1, false},
		{"just within, ahead", got.Add(maxOffset).UnixMilli(), 1, false},
		{"behind", sent.Add(-maxOffset - time.Millisecond).UnixMilli(), 0, true},
		{"ahead", got.Add(maxOffset + time.Millisecond).UnixMilli(), 0, true},
		{"an old binary", 0, 0, false},
	} {
		var v clockVotes
		v.add("n2", tc.nowMs, sent, got, maxOffset)
		assert.Equal(t, tc.agree, v.agree, tc.name)
		assert.Equal(t, tc.other, len(v.others) == 1, tc.name)
	}
	var v clockVotes
	v.add("n2", got.Add(10*time.Minute).UnixMilli(), sent, got, maxOffset)
	assert.Contains(t, v.others[0], "n2's clock is 10m0.02s from this node's")
}

// TestSteppedClockStampsNothing: a leader whose wall clock steps ten
// minutes ahead between two peer checks stamps no entry with it: without
// the step check every write until the next round (up to 5 s) was stamped
// ten minutes ahead.
func TestSteppedClockStampsNothing(t *testing.T) {
	var offset atomic.Int64
	c := newTestCluster(t, 3, 1, func(cfg *Config) {
		if cfg.ID == "n1" {
			cfg.Clock = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
		}
	})
	// Shard 0 prefers n1.
	require.Eventually(t, func() bool { return c.nodes[0].IsLeader(0) && refusal(c.nodes[0]) == "" }, 20*time.Second, 50*time.Millisecond)
	c.defineAsset("shop", "POINTS", 0)
	c.mustSubmit(op(tallypb.OpKind_OPEN_ACCOUNT, "open", "kim", "POINTS", ""))
	offset.Store(int64(10 * time.Minute))
	for i := range 5 {
		for _, r := range c.mustSubmit(op(tallypb.OpKind_CREDIT, fmt.Sprintf("c%d", i), "kim", "POINTS", "1")) {
			require.Equal(t, "OK", r.GetCode(), r.GetMessage())
			off := time.Since(time.UnixMilli(r.GetTimeMs()))
			require.Less(t, off.Abs(), 5*time.Second, "an entry stamped %s off the real clock", off)
		}
	}
	require.Contains(t, refusal(c.nodes[0]), "clock skewed")
}
