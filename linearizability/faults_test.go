package linearizability

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/tally-ledger/tally/api/tallypb"
)

func TestWipeIsOptIn(t *testing.T) {
	assert.NotContains(t, AllFaults, FaultWipe, "the CI profile wants every kind of AllFaults")
	for _, k := range AllFaults {
		assert.Contains(t, KnownFaults, k)
	}
	assert.Contains(t, KnownFaults, FaultWipe)
	assert.NotContains(t, KnownFaults, FaultWipeSkipped, "a skip cannot be asked for")
}

// A skipped wipe is in the timeline but counts as no wipe: a run asked for
// wipes whose every wipe was held back fails the floor.
func TestSkippedWipeIsNoWipe(t *testing.T) {
	cfg := Config{Faults: []FaultKind{FaultKill, FaultWipe}, FaultRounds: 1}
	kill := TimelineEvent{Kind: FaultKill, What: "kill -9 n1"}
	wipe := TimelineEvent{Kind: FaultWipe, What: "kill -9 n2, wipe"}
	skipped := TimelineEvent{Kind: FaultWipeSkipped, What: "wipe n3 skipped: shard 0 on n2 is vote guarded"}
	assert.True(t, checkFaults(cfg, []TimelineEvent{kill, wipe, skipped}, nil).OK)
	assert.False(t, checkFaults(cfg, []TimelineEvent{kill, skipped}, nil).OK, "only a skipped wipe")
	notRejoined := wipe
	notRejoined.Err = "n2: still vote guarded"
	assert.False(t, checkFaults(cfg, []TimelineEvent{kill, wipe, notRejoined}, nil).OK, "a wiped node that did not rejoin")

	var tl Timeline
	tl.add(skipped)
	assert.Contains(t, tl.String(), "(not injected)")
	assert.Equal(t, 0, tl.Counts()[FaultWipe])
}

// fakeCluster is a Cluster of three slots whose processes "run" (an
// unstarted Cmd and an open exited channel) under dir.
func fakeCluster(t *testing.T) *Cluster {
	dir := t.TempDir()
	c := &Cluster{cfg: ClusterConfig{Dir: dir}}
	for i := 0; i < ClusterSize; i++ {
		id := fmt.Sprintf("n%d", i+1)
		c.nodes = append(c.nodes, &procNode{id: id, dataDir: filepath.Join(dir, id), logPath: filepath.Join(dir, id+".log"),
			cmd: &exec.Cmd{}, exited: make(chan struct{})})
	}
	return c
}

func TestClusterWipe(t *testing.T) {
	c := fakeCluster(t)
	n := c.nodes[1]
	require.NoError(t, os.MkdirAll(filepath.Join(n.dataDir, "raft"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(n.dataDir, "SHARDS"), []byte("3\n"), 0o644))
	require.NoError(t, os.WriteFile(n.logPath, []byte("old log\n"), 0o644))

	require.Error(t, c.Wipe(1), "a running node's data must not go")
	assert.DirExists(t, n.dataDir)

	n.cmd, n.exited = nil, nil // killed
	require.NoError(t, c.Wipe(1))
	assert.NoDirExists(t, n.dataDir)
	log, err := os.ReadFile(n.logPath)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(log), "old log\n"), "the log stays")
	assert.Contains(t, string(log), "wiped data directory")
	assert.DirExists(t, c.cfg.Dir, "nothing else removed")
	require.NoError(t, c.Wipe(1), "wiping an absent directory is no error")
}

// fakeLedger answers ShardState from a table; a missing entry is an error.
type fakeLedger struct {
	tallypb.LedgerClient
	states map[uint32]*tallypb.ShardStateResponse
}

func (f fakeLedger) ShardState(_ context.Context, req *tallypb.ShardStateRequest, _ ...grpc.CallOption) (*tallypb.ShardStateResponse, error) {
	if st, ok := f.states[req.GetShard()]; ok {
		return st, nil
	}
	return nil, errors.New("unavailable")
}

func TestWipeRule(t *testing.T) {
	const shards = 2
	healthy := func() []fakeLedger {
		var out []fakeLedger
		for i := 0; i < ClusterSize; i++ {
			f := fakeLedger{states: map[uint32]*tallypb.ShardStateResponse{}}
			for s := uint32(0); s < shards; s++ {
				f.states[s] = &tallypb.ShardStateResponse{Shard: s, Leader: int(s) == i}
			}
			out = append(out, f)
		}
		return out
	}
	nem := func(c *Cluster, ls []fakeLedger) *nemesis {
		n := &nemesis{c: c, shards: shards}
		for _, l := range ls {
			n.direct = append(n.direct, l)
		}
		return n
	}
	ctx := context.Background()

	why, leads := nem(fakeCluster(t), healthy()).wipeBlocked(ctx, 1)
	assert.Empty(t, why)
	assert.Equal(t, []int{1}, leads)

	ls := healthy()
	ls[2].states[1].VoteGuarded = true
	why, _ = nem(fakeCluster(t), ls).wipeBlocked(ctx, 0)
	assert.Contains(t, why, "shard 1 on n3 is vote guarded", "a guarded replica on another node blocks")

	ls = healthy()
	ls[0].states[0].VoteGuarded = true
	why, _ = nem(fakeCluster(t), ls).wipeBlocked(ctx, 0)
	assert.Contains(t, why, "vote guarded", "a guarded replica on the target blocks")

	ls = healthy()
	delete(ls[1].states, 1)
	why, _ = nem(fakeCluster(t), ls).wipeBlocked(ctx, 0)
	assert.Contains(t, why, "n2 did not answer", "unknown counts as guarded")

	ls = healthy()
	ls[2].states[0].Misconfigured = true
	why, _ = nem(fakeCluster(t), ls).wipeBlocked(ctx, 0)
	assert.Contains(t, why, "n3 has not confirmed")

	c := fakeCluster(t)
	c.nodes[2].cmd = nil
	why, _ = nem(c, healthy()).wipeBlocked(ctx, 0)
	assert.Equal(t, "n3 is down", why)

	c = fakeCluster(t)
	c.nodes[1].paused = true
	why, _ = nem(c, healthy()).wipeBlocked(ctx, 0)
	assert.Equal(t, "n2 is paused", why)
}

// A wipe the rule blocks is skipped, not injected: no node is killed.
// (With the context ended it gives up at once instead of after wipeWait.)
func TestWipeSkippedWhenBlocked(t *testing.T) {
	c := fakeCluster(t)
	c.nodes[2].cmd = nil // down
	n := &nemesis{c: c, shards: 1, rng: rand.New(rand.NewPCG(1, 0)), hist: NewHistory()}
	for i := 0; i < ClusterSize; i++ {
		n.direct = append(n.direct, fakeLedger{states: map[uint32]*tallypb.ShardStateResponse{0: {}}})
	}
	ev := TimelineEvent{Kind: FaultWipe}
	var errs []error
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n.wipe(ctx, 0, &ev, func(err error) { errs = append(errs, err) })
	assert.Equal(t, FaultWipeSkipped, ev.Kind)
	assert.Contains(t, ev.What, "n3 is down")
	assert.Empty(t, errs)
	assert.False(t, slices.ContainsFunc(c.nodes[:2], func(p *procNode) bool { return p.cmd == nil }), "a node was killed")
}
