package node

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tally-ledger/tally/api/tallypb"
)

// peerCheckInterval is how often a node compares its shard count with its
// peers'.
const peerCheckInterval = 5 * time.Second

// shardCountLoop compares, at start and every peerCheckInterval, this node's
// shard count with its peers' (ClusterInfo). The count is pinned per data
// directory but nothing else compares it across nodes. A node started with
// another --shards maps members to shards differently: what it proposes for
// a member goes to another shard than the others would pick, whose dedup
// does not know the keys there, so one key could apply on two shards. The
// node in the minority is the wrong one: a node whose count a majority of
// the cluster (itself included) does not share refuses every operation and
// read (misconfigured) until a check finds it in one again; a node in the
// majority only warns. A peer that does not answer, or answers as another
// node, proves nothing; the check repeats, so fixing the wrong node ends
// the refusals within one interval.
func (n *Node) shardCountLoop() {
	defer n.wg.Done()
	ctx, cancel := untilClosed(n.stop)
	defer cancel()
	t := time.NewTimer(0)
	defer t.Stop()
	var last string // the last disagreement logged, so a lasting one is logged once
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		last = n.checkPeerShardCounts(ctx, last)
		t.Reset(peerCheckInterval)
	}
}

// checkPeerShardCounts asks every peer once and sets or clears
// n.misconfigured; it logs a disagreement when it differs from last, and
// returns it ("" when none).
func (n *Node) checkPeerShardCounts(ctx context.Context, last string) string {
	agree := 1 // this node
	var others []string
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
		if err != nil || resp.GetNodeId() != p.ID {
			continue
		}
		if got := int(resp.GetShards()); got == len(n.shards) {
			agree++
		} else {
			others = append(others, fmt.Sprintf("node %s runs %d shards", p.ID, got))
		}
	}
	if len(others) == 0 {
		n.misconfigured.Store(nil)
		return ""
	}
	disagreement := fmt.Sprintf("%s and this node (%s) %d", strings.Join(others, ", "), n.cfg.ID, len(n.shards))
	if 2*agree > len(n.cfg.Peers) {
		n.misconfigured.Store(nil)
		if disagreement != last {
			n.logger.Warn("cluster misconfigured: " + disagreement + "; every node must be started with the same --shards (the others refuse requests until they are)")
		}
		return disagreement
	}
	msg := "cluster misconfigured: " + disagreement + "; every node must be started with the same --shards, and this node refuses every request until a majority of the cluster runs its count"
	n.misconfigured.Store(&msg)
	if disagreement != last {
		n.logger.Error(msg)
	}
	return disagreement
}

// refuseIfMisconfigured is the error every request gets while this node's
// shard count is not its cluster's majority's (nil otherwise).
func (n *Node) refuseIfMisconfigured() error {
	if m := n.misconfigured.Load(); m != nil {
		return errUnavailable(*m)
	}
	return nil
}
