package node

import (
	"context"
	"fmt"
	"time"

	"github.com/tally-ledger/tally/api/tallypb"
)

// peerCheckInterval is how often a node compares its shard count with its
// peers'.
const peerCheckInterval = 5 * time.Second

// shardCountLoop compares, at start and every peerCheckInterval, this node's
// shard count with every peer's (ClusterInfo). The count is pinned per data
// directory but nothing else compares it across nodes, and a node started
// with another --shards maps members to shards differently: two clients
// that learnt the count from different nodes would send one member's op,
// with one key, to two shards, where each shard's dedup would apply it.
// Once a peer disagrees, the node refuses every operation and read
// (misconfigured) until it is restarted with the cluster fixed; the peer
// finds the same and refuses too. A peer that does not answer proves
// nothing, so the check is repeated.
func (n *Node) shardCountLoop() {
	defer n.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		n.checkPeerShardCounts(ctx)
		t.Reset(peerCheckInterval)
	}
}

// checkPeerShardCounts asks every peer once; a disagreement sets
// n.misconfigured for good.
func (n *Node) checkPeerShardCounts(ctx context.Context) {
	for _, p := range n.cfg.Peers {
		if p.ID == n.cfg.ID {
			continue
		}
		c, err := n.peers.get(p.GRPCAddr)
		if err != nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := c.ClusterInfo(cctx, &tallypb.ClusterInfoRequest{})
		cancel()
		if err != nil {
			continue
		}
		if got := int(resp.GetShards()); got != len(n.shards) {
			msg := fmt.Sprintf("cluster misconfigured: node %s runs %d shards and this node (%s) %d; every node must be started with the same --shards, and this node refuses every request until it is restarted with that fixed",
				p.ID, got, n.cfg.ID, len(n.shards))
			if n.misconfigured.CompareAndSwap(nil, &msg) {
				n.logger.Error(msg)
			}
		}
	}
}

// refuseIfMisconfigured is the error every request gets once the shard
// counts disagree (nil before).
func (n *Node) refuseIfMisconfigured() error {
	if m := n.misconfigured.Load(); m != nil {
		return errUnavailable(*m)
	}
	return nil
}
