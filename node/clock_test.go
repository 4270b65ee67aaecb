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

	"github.com/tally-ledger/tally/api/tallypb"
)

// clockPeer answers ClusterInfo as node id with the true clock, running
// one shard; onCall runs first (nil: nothing).
type clockPeer struct {
	tallypb.UnimplementedLedgerServer
	id     string
	onCall *atomic.Pointer[func()]
}

func (p clockPeer) ClusterInfo(context.Context, *tallypb.ClusterInfoRequest) (*tallypb.ClusterInfoResponse, error) {
	if f := p.onCall.Swap(nil); f != nil {
		(*f)()
	}
	return &tallypb.ClusterInfoResponse{Shards: 1, NodeId: p.id, NowMs: time.Now().UnixMilli()}, nil
}

func serveClockPeer(t *testing.T, id string) (Peer, *atomic.Pointer[func()]) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hook := new(atomic.Pointer[func()])
	srv := grpc.NewServer()
	tallypb.RegisterLedgerServer(srv, clockPeer{id: id, onCall: hook})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return Peer{ID: id, RaftAddr: freeAddr(t), GRPCAddr: lis.Addr().String()}, hook
}

// TestClockStepDuringARoundIsNotForgiven: n1's wall clock steps ten
// minutes ahead while a peer check round is in flight (here: while its
// second peer is slow to answer). Found by review: the round's earlier
// answer (taken before the step) made judgeClock find a majority, store the
// stepped clock as the new reference and clear the refusal stampMs had
// set, and stampMs then handed out times ten minutes ahead until the next
// round. Now the round decides nothing, and the next finds the clock off.
func TestClockStepDuringARoundIsNotForgiven(t *testing.T) {
	var offset atomic.Int64
	p2, _ := serveClockPeer(t, "n2")
	p3, hook := serveClockPeer(t, "n3")
	peers := []Peer{{ID: "n1", RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)}, p2, p3}
	n, err := Start(Config{ID: "n1", DataDir: t.TempDir(), Peers: peers, Shards: 1, Bootstrap: true, LogOutput: io.Discard, BalanceInterval: -1,
		Clock: func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }})
	require.NoError(t, err)
	defer n.Close()
	require.Eventually(t, func() bool { return refusal(n) == "" && n.clockRef.Load() != nil }, 10*time.Second, 20*time.Millisecond)

	stepped := make(chan struct{})
	step := func() {
		offset.Store(int64(10 * time.Minute)) // the step, mid-round
		close(stepped)
		time.Sleep(300 * time.Millisecond) // a slow peer
	}
	hook.Store(&step)
	<-stepped
	sawRefusal := false
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		ms, err := n.stampMs()
		if err != nil {
			sawRefusal = true
		} else if off := time.Since(time.UnixMilli(ms)); off.Abs() > time.Second {
			t.Fatalf("stampMs handed out a time %s off the real clock (refusal seen before: %v; refusal now: %q)", off.Round(time.Second), sawRefusal, refusal(n))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// oldPeer answers as a binary of 73ec689 does: ShardState with raft_term
// and raft_last_index but no node_id.
type oldPeer struct {
	tallypb.UnimplementedLedgerServer
	id string
}

func (p oldPeer) ClusterInfo(context.Context, *tallypb.ClusterInfoRequest) (*tallypb.ClusterInfoResponse, error) {
	return &tallypb.ClusterInfoResponse{Shards: 1, NodeId: p.id}, nil
}

func (p oldPeer) ShardState(_ context.Context, req *tallypb.ShardStateRequest) (*tallypb.ShardStateResponse, error) {
	last, term := uint64(500), uint64(7)
	return &tallypb.ShardStateResponse{Shard: req.GetShard(), AppliedIndex: 500, RaftLastIndex: &last, RaftTerm: &term}, nil
}

// TestGuardTakesThePreviousReleasesTerms: a replica restarted on this
// binary with its raft folder lost (guarded) while both peers still run the
// previous release, whose answers name no node: their terms count (found
// by review: they did not, and the append gate could not open until the
// peers were upgraded).
func TestGuardTakesThePreviousReleasesTerms(t *testing.T) {
	var peers []Peer
	peers = append(peers, Peer{ID: "n1", RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)})
	for _, id := range []string{"n2", "n3"} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		srv := grpc.NewServer()
		tallypb.RegisterLedgerServer(srv, oldPeer{id: id})
		go func() { _ = srv.Serve(lis) }()
		t.Cleanup(srv.Stop)
		peers = append(peers, Peer{ID: id, RaftAddr: freeAddr(t), GRPCAddr: lis.Addr().String()})
	}
	n, err := Start(Config{ID: "n1", DataDir: t.TempDir(), Peers: peers, Shards: 1, LogOutput: io.Discard, BalanceInterval: -1})
	require.NoError(t, err)
	defer n.Close()
	s := n.shards[0]
	require.NotNil(t, s.trans.guard)
	_, seasoned, terms := s.pollPeers(s.trans.guard)
	require.Len(t, terms, 2, "previous-release peers' terms (seasoned=%d)", seasoned)
}

// TestSkewedNodeRefusesWithOnePeerDown: n1 starts ten minutes ahead
// while n2 (true clock) answers and n3 is not up yet (a fresh cluster's
// staggered start, a rolling restart). Found by review: the shard-count
// verdict lifted the start-up refusal while the clock verdict was "keep"
// (none), so n1 served and stamped ten minutes ahead. A node now starts
// refused for its clock too.
func TestSkewedNodeRefusesWithOnePeerDown(t *testing.T) {
	p2, _ := serveClockPeer(t, "n2")
	peers := []Peer{{ID: "n1", RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)}, p2, {ID: "n3", RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)}}
	n, err := Start(Config{ID: "n1", DataDir: t.TempDir(), Peers: peers, Shards: 1, Bootstrap: true, LogOutput: io.Discard, BalanceInterval: -1,
		Clock: func() time.Time { return time.Now().Add(10 * time.Minute) }})
	require.NoError(t, err)
	defer n.Close()
	time.Sleep(2 * time.Second)
	ms, err := n.stampMs()
	require.Error(t, err, "n1 serves (refusal %q) and stamps %s ahead", refusal(n), time.Until(time.UnixMilli(ms)).Round(time.Second))
}
