package node

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/tally-ledger/tally/api/tallypb"
)

const (
	// peerCheckInterval is how often a node compares its shard count with
	// its peers' once a check has reached a verdict.
	peerCheckInterval = 5 * time.Second
	// peerCheckRetry is how often it asks until the first verdict: a node
	// starts refused, and one whose peers come up just after it should
	// serve within a moment of them, not a whole interval later.
	peerCheckRetry = 250 * time.Millisecond
)

// shardCountLoop compares, at start and every peerCheckInterval, this node's
// shard count with its peers' (ClusterInfo). The count is pinned per data
// directory but nothing else compares it across nodes. A node started with
// another --shards maps members to shards differently: what it proposes for
// a member goes to another shard than the others would pick, whose dedup
// does not know the keys there, so one key could apply on two shards. The
// node in the minority is the wrong one, and it cannot tell itself apart
// from the others until they answer: so a node serves only while a majority
// of the whole cluster (itself included) is known to share its count. It
// starts refusing every operation and read (refuseUntilAgreed) and serves
// once a check hears that majority; it refuses again when a check finds
// that no majority can share its count any more (enough peers answer with
// another); a node in the majority only warns. A peer that does not
// answer, or answers as another node, proves nothing either way: a check
// that hears too little to decide keeps the previous verdict, so silence
// neither lifts a refusal nor imposes one (found by review: one silent
// round made a node shown misconfigured serve again). Until the first
// verdict (and the node's clock is confirmed: judgeClock) the check
// repeats every peerCheckRetry, then every peerCheckInterval, so fixing
// the wrong node ends the refusals within one interval.
func (n *Node) shardCountLoop() {
	defer n.wg.Done()
	ctx, cancel := untilClosed(n.stop)
	defer cancel()
	t := time.NewTimer(0)
	defer t.Stop()
	var last string // the last disagreement logged, so a lasting one is logged once
	decided := false
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		var conclusive bool
		last, conclusive = n.checkPeerShardCounts(ctx, last)
		decided = decided || conclusive
		// Until its clock is confirmed too (refuseUntilAgreed).
		if decided && (n.clockUnconfirmed == nil || n.clockSkewed.Load() != n.clockUnconfirmed) {
			t.Reset(peerCheckInterval)
		} else {
			t.Reset(peerCheckRetry)
		}
	}
}

// refuseUntilAgreed sets the refusal a node starts with, before it serves:
// until a majority of its cluster is known to run its shard count, it may
// be the one started with the wrong --shards (found by review: a node
// served until its first check had heard a disagreement). A one-node
// cluster is its own majority.
func (n *Node) refuseUntilAgreed() {
	peers := len(n.cfg.Peers)
	if peers < 2 {
		return
	}
	msg := fmt.Sprintf("shard count not yet confirmed: this node (%s) runs %d shards and has not yet heard %d of the cluster's %d nodes (itself included) run the same; it refuses every request until it does (every node must be started with the same --shards)",
		n.cfg.ID, n.cfg.Shards, peers/2+1, peers)
	n.misconfigured.Store(&msg)
	if n.cfg.MaxClockOffset >= 0 {
		// The clock too: heard by one peer of two, a node whose clock
		// disagrees cannot be told from one whose peer's does (found by
		// review: it served, stamping ten minutes ahead).
		clock := fmt.Sprintf("clock not yet confirmed: this node (%s) has not yet heard %d of the cluster's %d nodes (itself included) agree with its clock; it refuses every request until it does",
			n.cfg.ID, peers/2+1, peers)
		n.clockUnconfirmed = &clock
		n.clockSkewed.Store(&clock)
	}
}

// checkPeerShardCounts asks every peer once. It clears n.misconfigured when
// a majority of the cluster (this node included) answered with this node's
// count, and sets it when so many answered with another that no majority
// can share it; otherwise (too many silent) it leaves it as it was. It
// logs a disagreement when it differs from last, and returns the one to
// remember ("" when none) and whether the check reached a verdict.
func (n *Node) checkPeerShardCounts(ctx context.Context, last string) (string, bool) {
	agree := 1 // this node
	var others []string
	// A refusing node asks on new connections: the shared one to a peer
	// that was down when it was first used waits out gRPC's reconnect
	// backoff (1 s, growing), and a node started just before its peers
	// would refuse that much longer than needed.
	fresh := n.misconfigured.Load() != nil
	clocks := clockVotes{start: n.readClock(), prev: n.clockSkewed.Load()}
	for _, p := range n.cfg.Peers {
		if p.ID == n.cfg.ID {
			continue
		}
		sent := n.cfg.Clock()
		resp, err := n.clusterInfo(ctx, p, fresh)
		got := n.cfg.Clock()
		if err != nil || resp.GetNodeId() != p.ID {
			continue
		}
		clocks.answered++
		clocks.add(p.ID, resp.GetNowMs(), sent, got, n.cfg.MaxClockOffset)
		if got := int(resp.GetShards()); got == len(n.shards) {
			agree++
		} else {
			others = append(others, fmt.Sprintf("node %s runs %d shards", p.ID, got))
		}
	}
	// The clock's verdict first: a node starts refused for its shard
	// count, and must not serve for a moment between the two.
	n.judgeClock(clocks)
	cluster := len(n.cfg.Peers)
	disagreement := ""
	if len(others) > 0 {
		disagreement = fmt.Sprintf("%s and this node (%s) %d", strings.Join(others, ", "), n.cfg.ID, len(n.shards))
	}
	switch {
	case 2*agree > cluster:
		n.misconfigured.Store(nil)
		if disagreement != "" && disagreement != last {
			n.logger.Warn("cluster misconfigured: " + disagreement + "; every node must be started with the same --shards (the others refuse requests until they are)")
		}
		return disagreement, true
	case 2*(cluster-len(others)) <= cluster:
		// Even if every silent peer ran this node's count, this node and
		// they would not be a majority.
		msg := "cluster misconfigured: " + disagreement + "; every node must be started with the same --shards, and this node refuses every request until a majority of the cluster runs its count"
		n.misconfigured.Store(&msg)
		if disagreement != last {
			n.logger.Error(msg)
		}
		return disagreement, true
	}
	return last, false
}

// clockVotes counts, over one round of ClusterInfo calls, the peers whose
// clocks agree with this node's and describes those that do not.
type clockVotes struct {
	// start is this node's clock when the round began, and prev its clock
	// refusal then (judgeClock).
	start clockReading
	prev  *string
	// answered counts the peers that answered as themselves; agree and
	// others those of them that reported their clock.
	answered int
	agree    int
	others   []string
}

// add compares peer id's clock, read as nowMs by an answer to a call sent
// at sent and answered at got (this node's clock), with this node's. The
// peer read its clock somewhere in [sent, got]: it agrees when it lies
// within maxOffset of that interval. A peer that does not report its clock
// (a binary before it, nowMs 0) is not counted.
func (v *clockVotes) add(id string, nowMs int64, sent, got time.Time, maxOffset time.Duration) {
	if nowMs == 0 {
		return
	}
	lo, hi := sent.Add(-maxOffset).UnixMilli(), got.Add(maxOffset).UnixMilli()
	if nowMs >= lo && nowMs <= hi {
		v.agree++
		return
	}
	off := time.Duration(nowMs-sent.Add(got.Sub(sent)/2).UnixMilli()) * time.Millisecond
	v.others = append(v.others, fmt.Sprintf("%s's clock is %s from this node's", id, off.Round(time.Millisecond)))
}

// judgeClock sets or clears n.clockSkewed from one round's votes, as the
// shard-count check judges counts: a node whose clock agrees with a
// majority of its cluster (itself included) serves; one that so many
// peers disagree with that no majority can agree with it refuses every
// request, and hands its shards to peers that serve (balanceLoop), since
// a leader stamps log time from its clock (a clock ahead would expire
// holds early and move the shard's log time, which never goes back, into
// the future); too little heard keeps the verdict. In a three-node
// cluster with one node down the two left cannot tell which clock is
// wrong and keep theirs. A node starts refused until its clock is
// confirmed (refuseUntilAgreed), unless enough peers answer and none
// reports a clock (binaries before the check), when it cannot be checked.
// A negative MaxClockOffset disables the check.
//
// A round during which the wall clock stepped judged some peers against
// the clock before the step and some after it (and a call across the step
// agrees with either): it decides nothing. A refusal set during the round
// (stampMs saw a step) is not lifted by it either; the round's votes may
// predate the step (found by review: such a round lifted the refusal and
// took the stepped clock for its reference).
func (n *Node) judgeClock(v clockVotes) {
	if n.cfg.MaxClockOffset < 0 {
		return
	}
	if n.stepSince(v.start).Abs() > n.cfg.MaxClockOffset {
		return
	}
	cluster := len(n.cfg.Peers)
	disagreement := strings.Join(v.others, ", ")
	switch {
	case 2*(1+v.agree) > cluster:
		n.clockRef.Store(&v.start)
		if v.prev != nil && n.clockSkewed.CompareAndSwap(v.prev, nil) {
			n.logger.Info("this node's clock agrees with a majority of its cluster; it serves")
		}
		if disagreement != "" && disagreement != n.clockLogged {
			n.logger.Warn("clocks disagree: " + disagreement + fmt.Sprintf(" (more than --max-clock-offset %s); that node refuses requests", n.cfg.MaxClockOffset))
		}
	case 2*(cluster-len(v.others)) <= cluster:
		msg := fmt.Sprintf("clock skewed: %s (more than --max-clock-offset %s), and no majority of the cluster can agree with it; this node refuses every request until its clock is corrected (it would stamp log time that expires holds at the wrong time)",
			disagreement, n.cfg.MaxClockOffset)
		n.clockSkewed.Store(&msg)
		if disagreement != n.clockLogged {
			n.logger.Error(msg)
		}
	default:
		if v.prev != nil && v.prev == n.clockUnconfirmed && len(v.others) == 0 && v.agree == 0 && 2*(1+v.answered) > cluster &&
			n.clockSkewed.CompareAndSwap(v.prev, nil) {
			n.logger.Warn("no peer reports its clock (binaries before the clock check): this node's clock is not checked")
		}
		return
	}
	n.clockLogged = disagreement
}

// readClock reads the wall and the monotonic clocks together.
func (n *Node) readClock() clockReading {
	return clockReading{wallMs: n.cfg.Clock().UnixMilli(), mono: time.Now()}
}

// stepSince is how far the wall clock has moved against the monotonic
// clock since r.
func (n *Node) stepSince(r clockReading) time.Duration {
	return time.Duration(n.cfg.Clock().UnixMilli()-r.wallMs)*time.Millisecond - time.Since(r.mono)
}

// clockReading is a wall-clock reading with a monotonic one taken with it.
type clockReading struct {
	wallMs int64
	mono   time.Time
}

// stampMs is the log time this node stamps an entry with now: its wall
// clock. It fails while the node refuses requests (refusal), and when the
// wall clock has stepped by more than MaxClockOffset against the monotonic
// clock since a check last found it agreeing with the majority's (an NTP
// step, an operator's date, a VM resumed): the peer check runs every 5 s,
// and until its next round the step would go into the log unchecked. The
// node then refuses as one whose clock is off, until a round finds it
// agreeing again. Every entry a node proposes takes its time from here.
func (n *Node) stampMs() (int64, error) {
	if m := n.refusal(); m != nil {
		return 0, errUnavailable(*m)
	}
	if ref := n.clockRef.Load(); ref != nil && n.cfg.MaxClockOffset > 0 {
		if step := n.stepSince(*ref); step.Abs() > n.cfg.MaxClockOffset {
			msg := fmt.Sprintf("clock skewed: this node's wall clock stepped %s since its last check against its peers (more than --max-clock-offset %s); it refuses every request until a check finds its clock agreeing with a majority of the cluster's",
				step.Round(time.Millisecond), n.cfg.MaxClockOffset)
			if n.clockSkewed.CompareAndSwap(nil, &msg) {
				n.logger.Error(msg)
			}
			return 0, errUnavailable(msg)
		}
	}
	return n.cfg.Clock().UnixMilli(), nil
}

// clusterInfo asks peer p for its ClusterInfo, on a new connection if
// fresh, else on the node's shared one.
func (n *Node) clusterInfo(ctx context.Context, p Peer, fresh bool) (*tallypb.ClusterInfoResponse, error) {
	var c tallypb.LedgerClient
	if fresh {
		cc, err := grpc.NewClient(p.GRPCAddr, grpc.WithTransportCredentials(n.peerCreds()))
		if err != nil {
			return nil, err
		}
		defer cc.Close()
		c = tallypb.NewLedgerClient(cc)
	} else {
		var err error
		if c, err = n.peers.get(p.GRPCAddr); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return c.ClusterInfo(ctx, &tallypb.ClusterInfoRequest{})
}

// refusal says why this node refuses every request: its shard count is not
// known to be its cluster's majority's, or its clock is known to be off
// from the majority's (nil while it serves).
func (n *Node) refusal() *string {
	if m := n.misconfigured.Load(); m != nil {
		return m
	}
	return n.clockSkewed.Load()
}

// refuseIfMisconfigured is the error every request gets while this node
// refuses them (refusal; nil otherwise).
func (n *Node) refuseIfMisconfigured() error {
	if m := n.refusal(); m != nil {
		return errUnavailable(*m)
	}
	return nil
}
