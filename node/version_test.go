package node

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// versions reports every running node's version of every shard.
func (c *testCluster) versions() [][]uint32 {
	c.t.Helper()
	var out [][]uint32
	for i, n := range c.nodes {
		if n == nil {
			continue
		}
		var vs []uint32
		for shard := 0; shard < c.cfgs[0].Shards; shard++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := c.client(c.cfgs[i].GRPCAddr).ShardState(ctx, &tallypb.ShardStateRequest{Shard: uint32(shard)})
			cancel()
			require.NoError(c.t, err)
			vs = append(vs, st.GetVersion())
		}
		out = append(out, vs)
	}
	return out
}

func allAt(vs [][]uint32, v uint32) bool {
	for _, node := range vs {
		for _, got := range node {
			if got != v {
				return false
			}
		}
	}
	return true
}

// A rolling upgrade: while one node allows only version 1 (as a binary that
// predates versions would), every shard stays at version 1 and keeps the old
// rules; once that node allows the newest, every shard is raised through its
// log, every replica at the same entry, and the new rules apply.
func TestShardsRaiseTheirVersionOnceEveryNodeMay(t *testing.T) {
	c := newTestCluster(t, 3, 2, func(cfg *Config) {
		if cfg.ID == "n3" {
			cfg.MaxVersion = ledger.Version1
		}
	})
	c.defineAsset("shop", "POINTS", 0)
	c.mustSubmit(op(tallypb.OpKind_OPEN_ACCOUNT, "open", "kim", "POINTS", ""))
	credit := op(tallypb.OpKind_CREDIT, "c1", "kim", "POINTS", "5")
	c.mustSubmit(credit)

	time.Sleep(3 * versionCheckInterval)
	require.True(t, allAt(c.versions(), ledger.Version1), "held back by n3: %v", c.versions())
	linked := func(ops ...*tallypb.Op) []*tallypb.OpResult {
		shard := ledger.ShardOf("shop", "kim", 2)
		resp, err := call(c, shard, func(ctx context.Context, cl tallypb.LedgerClient) (*tallypb.SubmitResponse, error) {
			return cl.Submit(ctx, &tallypb.SubmitRequest{Linked: true, Ops: ops})
		})
		require.NoError(t, err)
		return resp.GetResults()
	}
	// Version 1: the unlinked credit's key, resent in a linked request, replays.
	rs := linked(credit, op(tallypb.OpKind_CREDIT, "c2", "kim", "POINTS", "1"))
	require.Equal(t, "OK", rs[0].Code, rs[0].Message)
	require.True(t, rs[0].Replayed)

	// n3 is upgraded (restarted allowing the newest version). While it is
	// down it cannot say what it allows, so nothing is raised.
	c.stop(2)
	time.Sleep(2 * versionCheckInterval)
	require.True(t, allAt(c.versions(), ledger.Version1), "raised while n3 was down: %v", c.versions())
	c.cfgs[2].MaxVersion = 0
	c.start(2)
	deadline := time.Now().Add(30 * time.Second)
	for !allAt(c.versions(), ledger.MaxVersion) {
		require.True(t, time.Now().Before(deadline), "not raised: %v", c.versions())
		time.Sleep(200 * time.Millisecond)
	}

	// The new rules: an op's linkage is part of it.
	fresh := op(tallypb.OpKind_CREDIT, "c3", "kim", "POINTS", "2")
	c.mustSubmit(fresh)
	rs = linked(fresh, op(tallypb.OpKind_CREDIT, "c4", "kim", "POINTS", "1"))
	require.Equal(t, string(ledger.CodeIdempotencyKeyReused), rs[0].Code, rs[0].Message)
	require.Equal(t, string(ledger.CodeLinkedFailed), rs[1].Code)
	// ... while an op recorded under version 1 still replays either way.
	rs = linked(credit, op(tallypb.OpKind_CREDIT, "c5", "kim", "POINTS", "1"))
	require.Equal(t, "OK", rs[0].Code, rs[0].Message)
	require.True(t, rs[0].Replayed)
	// c4 was neither applied nor recorded: its key is free for the
	// corrected request.
	rs = c.mustSubmit(op(tallypb.OpKind_CREDIT, "c4", "kim", "POINTS", "1"))
	require.Equal(t, "OK", rs[0].Code, rs[0].Message)
	require.False(t, rs[0].Replayed)
	c.checkReplicas()
	a, err := c.account("shop", "kim", "POINTS")
	require.NoError(t, err)
	require.Equal(t, "10", a.GetPosted(), "5 + 1 (c2) + 2 (c3) + 1 (c5) + 1 (c4, resent)")

	// A raised shard never goes back: a node started with --max-version
	// below it is refused, not left to run on a promise it cannot keep.
	c.stop(2)
	c.cfgs[2].MaxVersion = ledger.Version1
	_, err = Start(c.cfgs[2])
	require.ErrorContains(t, err, "above --max-version 1")
	c.cfgs[2].MaxVersion = ledger.MaxVersion
	c.start(2)
}

// A node's --peers names the wrong gRPC address for n2: another node (n9)
// answers there, allowing the newest version, while n2 allows only version
// 1. The leader must not take n9's answer for n2's and raise the shard past
// what n2 allows (each ShardState answer names its node). n1 gets the wrong
// address on a restart: a new cluster's replicas lift their vote guards
// only once every node has answered (node/voteguard.go), and n1 would
// never hear n2.
func TestVersionLoopTakesOnlyTheAskedNodesAnswer(t *testing.T) {
	impostor, _ := fakePeer(t, "n9", 1)
	c := newTestCluster(t, 3, 1, func(cfg *Config) {
		if cfg.ID == "n2" {
			cfg.MaxVersion = ledger.Version1
		}
	})
	c.stop(0)
	c.cfgs[0].Peers = slices.Clone(c.cfgs[0].Peers)
	c.cfgs[0].Peers[1].GRPCAddr = impostor.GRPCAddr
	c.start(0)
	// Shard 0 prefers n1 (the balancer hands it over).
	deadline := time.Now().Add(20 * time.Second)
	for !c.nodes[0].IsLeader(0) {
		require.True(t, time.Now().Before(deadline), "n1 never led shard 0")
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(3 * versionCheckInterval)
	require.True(t, c.nodes[0].IsLeader(0), "n1 lost shard 0 during the test: inconclusive")
	require.True(t, allAt(c.versions(), ledger.Version1), "raised past n2's --max-version on n9's word: %v", c.versions())
}
