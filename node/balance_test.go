package node

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
)

// startNodes starts one node per peer on 127.0.0.1, all with a 100 ms
// balancing interval, tune (if any) adjusting node i's config, and closes
// them when the test ends.
func startNodes(t *testing.T, peers []Peer, shards int, tune func(i int, c *Config)) []*Node {
	t.Helper()
	var dirs []string // made first: TempDir's removal must run after the nodes close
	for range peers {
		dirs = append(dirs, t.TempDir())
	}
	var nodes []*Node
	t.Cleanup(func() {
		for _, n := range nodes {
			_ = n.Close()
		}
	})
	for i, p := range peers {
		cfg := Config{ID: p.ID, DataDir: dirs[i], GRPCAddr: p.GRPCAddr, RaftAddr: p.RaftAddr, Peers: peers,
			Shards: shards, Bootstrap: true, LogOutput: io.Discard, BalanceInterval: 100 * time.Millisecond}
		if tune != nil {
			tune(i, &cfg)
		}
		n, err := Start(cfg)
		require.NoError(t, err)
		nodes = append(nodes, n)
	}
	return nodes
}

func testPeers(t *testing.T, size int) []Peer {
	t.Helper()
	var peers []Peer
	for i := 0; i < size; i++ {
		peers = append(peers, Peer{ID: fmt.Sprintf("n%d", i+1), RaftAddr: freeAddr(t), GRPCAddr: freeAddr(t)})
	}
	return peers
}

func TestPeersByID(t *testing.T) {
	a, b, c := Peer{ID: "a"}, Peer{ID: "b"}, Peer{ID: "c"}
	for _, tc := range []struct {
		name  string
		peers []Peer
	}{
		{"sorted", []Peer{a, b, c}},
		{"reversed", []Peer{c, b, a}},
		{"mixed", []Peer{b, a, c}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			given := append([]Peer(nil), tc.peers...)
			require.Equal(t, []Peer{a, b, c}, peersByID(tc.peers))
			require.Equal(t, given, tc.peers, "the configured order is left alone")
		})
	}
}

// TestBalancerPeerOrderMismatch: nodes that list --peers in different
// orders agree on every shard's preferred node. Found by review: the
// preference was Peers[i mod N] in each node's own order, so with n1
// listing n1,n2,n3 and n2 listing n2,n1,n3 each handed shard 1 to the
// other whenever its backoff (15 rounds) ended, for ever.
func TestBalancerPeerOrderMismatch(t *testing.T) {
	peers := testPeers(t, 3)
	orders := [][]Peer{
		{peers[0], peers[1], peers[2]},
		{peers[1], peers[0], peers[2]},
		{peers[2], peers[1], peers[0]},
	}
	nodes := startNodes(t, peers, 2, func(i int, c *Config) { c.Peers = orders[i] })
	leader := func() string {
		for _, n := range nodes {
			if n.IsLeader(1) {
				return n.ID()
			}
		}
		return ""
	}
	// Shard 1 prefers n2 (the second ID) on every node: it gets there and
	// stays. Before the fix it changed hands every 1.5 s (15 rounds).
	require.Eventually(t, func() bool { return leader() == "n2" }, 10*time.Second, 20*time.Millisecond)
	changes, last := 0, "n2"
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if l := leader(); l != "" && l != last {
			changes++
			last = l
		}
	}
	require.LessOrEqual(t, changes, 1, "shard 1 changed leader %d times in 5 s", changes)
}

// TestBalancerAvoidsMisconfiguredNode: no node hands a shard to a node that
// refuses every request (misconfigured), and such a node hands a shard it
// leads to one that serves. Found by review: n3, started with the wrong
// --shards, was handed shard 2 (its preferred node) and kept it, so shard 2
// refused every request though n1 and n2 could serve it.
func TestBalancerAvoidsMisconfiguredNode(t *testing.T) {
	peers := testPeers(t, 3)
	nodes := startNodes(t, peers, 3, func(i int, c *Config) {
		if i == 2 {
			// n3 runs the wrong count, and balances slowly enough that the
			// test sees it lead shard 2 before it hands the shard on.
			c.Shards, c.BalanceInterval = 4, time.Second
		}
		// Leaders change here only by transfer. A misconfigured node still
		// runs for leader when a heartbeat is late (refusing requests does
		// not take it out of Raft): make test once saw shard 2 back on n3
		// within the second below, most likely by such an election, since
		// the balancers fail closed (caughtUp).
		c.Raft.HeartbeatTimeout, c.Raft.ElectionTimeout, c.Raft.LeaderLeaseTimeout = 3*time.Second, 3*time.Second, 3*time.Second
	})
	n3 := nodes[2]
	require.Eventually(t, func() bool { return strings.HasPrefix(refusal(n3), "cluster misconfigured") }, 10*time.Second, 20*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leaderOf2 := func() *Node {
		for _, n := range nodes {
			if n.IsLeader(2) {
				return n
			}
		}
		return nil
	}
	// Give shard 2 to n3, as the balancers of n1 and n2 did before the fix.
	require.Eventually(t, func() bool {
		l := leaderOf2()
		if l == nil || l == n3 {
			return l == n3
		}
		_ = l.shards[2].raft.LeadershipTransferToServer(raft.ServerID("n3"), raft.ServerAddress(peers[2].RaftAddr)).Error()
		return false
	}, 10*time.Second, 20*time.Millisecond)

	// n3 hands it on within a round or two, and no one gives it back.
	require.Eventually(t, func() bool { l := leaderOf2(); return l != nil && l != n3 }, 5*time.Second, 20*time.Millisecond,
		"the misconfigured node keeps shard 2")
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		require.False(t, n3.IsLeader(2), "shard 2 was handed back to the misconfigured node")
	}
	credit := ledger.Request{Ops: []ledger.Op{{Kind: ledger.OpCredit, Program: "p", Member: "m", Asset: "PTS", AmountMinor: 1, IdempotencyKey: "k"}}}
	_, err := leaderOf2().shards[2].propose(ctx, credit)
	require.NotContains(t, fmt.Sprint(err), "misconfigured", "shard 2's leader serves")
}
