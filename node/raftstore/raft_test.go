package raftstore

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/internal/diskprobe"
)

// counterFSM sums the uint64 commands applied to it. The tests send strictly
// increasing values, but an Apply that failed with "leadership lost" may
// still have committed and is then sent again, so a value not above the last
// one applied is a repeat and is ignored (deterministically, and surviving
// snapshots, unlike a set of values seen).
type counterFSM struct {
	mu      sync.Mutex
	sum     uint64
	last    uint64
	repeats int // ignored repeats; at most the retries the test made
}

func (f *counterFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v := binary.BigEndian.Uint64(l.Data); v > f.last {
		f.sum += v
		f.last = v
	} else {
		f.repeats++
	}
	return f.sum
}

func (f *counterFSM) value() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sum
}

func (f *counterFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return counterSnapshot{f.sum, f.last}, nil
}

func (f *counterFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var b [16]byte
	if _, err := io.ReadFull(rc, b[:]); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sum = binary.BigEndian.Uint64(b[:8])
	f.last = binary.BigEndian.Uint64(b[8:])
	return nil
}

type counterSnapshot struct{ sum, last uint64 }

func (s counterSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, s.sum), s.last)); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s counterSnapshot) Release() {}

// noPipeline turns off pipelined replication, as node/transport does in
// production: raft's pipeline can wedge (hashicorp/raft #612).
type noPipeline struct{ *raft.InmemTransport }

func (noPipeline) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

// testNode is one member of a test cluster: a Raft group on a GroupStore.
type testNode struct {
	id    raft.ServerID
	dir   string
	db    *DB
	fsm   *counterFSM
	trans *raft.InmemTransport
	raft  *raft.Raft
}

// slowDisk probes the disk under the test's data once.
var slowDisk = sync.OnceValue(func() bool {
	p, err := diskprobe.Probe(os.TempDir(), diskprobe.DefaultSyncs)
	return err == nil && p.Slow()
})

func testRaftConfig(id raft.ServerID) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = id
	c.HeartbeatTimeout = 100 * time.Millisecond
	c.ElectionTimeout = 100 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	if slowDisk() {
		// Elections would never finish (internal/diskprobe).
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout =
			diskprobe.SlowHeartbeatTimeout, diskprobe.SlowElectionTimeout, diskprobe.SlowLeaseTimeout
	}
	// Snapshot often so log compaction (DeleteRange) and snapshot install run.
	c.SnapshotThreshold = 64
	c.SnapshotInterval = 50 * time.Millisecond
	c.TrailingLogs = 32
	c.Logger = hclog.New(&hclog.LoggerOptions{Name: string(id), Output: io.Discard})
	return c
}

const testShard = 5

// start opens the node's DB and Raft. A restart reuses dir.
func (n *testNode) start(t *testing.T) {
	t.Helper()
	n.db = openTest(t, filepath.Join(n.dir, "raft"))
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(n.dir, "snaps"), 2, hclog.NewNullLogger())
	require.NoError(t, err)
	n.fsm = &counterFSM{}
	_, n.trans = raft.NewInmemTransport(raft.ServerAddress(n.id))
	g := n.db.Group(testShard)
	n.raft, err = raft.NewRaft(testRaftConfig(n.id), n.fsm, g, g, snaps, noPipeline{n.trans})
	require.NoError(t, err)
}

func (n *testNode) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, n.raft.Shutdown().Error())
	require.NoError(t, n.trans.Close())
	require.NoError(t, n.db.Close())
}

func connectAll(nodes []*testNode) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.trans.Connect(b.trans.LocalAddr(), b.trans)
			}
		}
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func leaderOf(nodes []*testNode) *testNode {
	for _, n := range nodes {
		if n.raft != nil && n.raft.State() == raft.Leader {
			return n
		}
	}
	return nil
}

// applyN applies count values from start and returns their sum and how
// many applies failed and were retried.
func applyN(t *testing.T, nodes []*testNode, count int, start uint64) (want uint64, retries int) {
	t.Helper()
	for i := 0; i < count; i++ {
		v := start + uint64(i)
		for attempt := 0; ; attempt++ {
			var leader *testNode
			waitFor(t, 20*time.Second, "a leader", func() bool { leader = leaderOf(nodes); return leader != nil })
			err := leader.raft.Apply(binary.BigEndian.AppendUint64(nil, v), 2*time.Second).Error()
			if err == nil {
				break
			}
			require.Less(t, attempt, 10, "apply %d: %v", v, err)
			retries++
		}
		want += v
	}
	return want, retries
}

// TestRaftClusterOnGroupStores runs a real 3-node hashicorp/raft cluster on
// GroupStores, restarts a follower from its DB and checks it catches up.
func TestRaftClusterOnGroupStores(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	var nodes []*testNode
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, &testNode{id: raft.ServerID(fmt.Sprintf("n%d", i)), dir: t.TempDir()})
	}
	for _, n := range nodes {
		n.start(t)
	}
	connectAll(nodes)
	defer func() {
		for _, n := range nodes {
			if n.raft != nil {
				n.stop(t)
			}
		}
	}()
	var servers []raft.Server
	for _, n := range nodes {
		servers = append(servers, raft.Server{ID: n.id, Address: n.trans.LocalAddr()})
	}
	require.NoError(t, nodes[0].raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error())

	want, retries := applyN(t, nodes, 300, 1)
	for _, n := range nodes {
		waitFor(t, 30*time.Second, fmt.Sprintf("%s to apply everything", n.id), func() bool { return n.fsm.value() == want })
	}

	// Restart a follower from the same directory while the others go on.
	var follower *testNode
	for _, n := range nodes {
		if n.raft.State() != raft.Leader {
			follower = n
			break
		}
	}
	require.NotNil(t, follower)
	lastBefore, err := follower.db.Group(testShard).LastIndex()
	require.NoError(t, err)
	require.Positive(t, lastBefore)
	follower.stop(t)
	follower.raft = nil

	w, r := applyN(t, nodes, 200, 1000)
	want, retries = want+w, retries+r

	follower.start(t)
	// The reopened store still has the log it had before the restart.
	reopenedLast, err := follower.db.Group(testShard).LastIndex()
	require.NoError(t, err)
	require.GreaterOrEqual(t, reopenedLast, lastBefore)
	term, err := follower.db.Group(testShard).GetUint64([]byte("CurrentTerm"))
	require.NoError(t, err)
	require.Positive(t, term)
	connectAll(nodes)

	w, r = applyN(t, nodes, 50, 5000)
	want, retries = want+w, retries+r
	for _, n := range nodes {
		waitFor(t, 30*time.Second, fmt.Sprintf("%s to catch up", n.id), func() bool { return n.fsm.value() == want })
		n.fsm.mu.Lock()
		repeats := n.fsm.repeats
		n.fsm.mu.Unlock()
		require.LessOrEqual(t, repeats, retries, "%s applied an entry twice", n.id)
	}

	// Log compaction ran: every log lost its prefix. A follower that caught
	// up by installing a snapshot may have an empty log (IsMonotonic makes raft
	// delete the whole old log after a restore), which also counts.
	for _, n := range nodes {
		g := n.db.Group(testShard)
		waitFor(t, 30*time.Second, fmt.Sprintf("%s to compact its log", n.id), func() bool {
			first, err := g.FirstIndex()
			return err == nil && first != 1
		})
	}
	compacted := 0
	for _, n := range nodes {
		if first, _ := n.db.Group(testShard).FirstIndex(); first > 1 {
			compacted++
		}
	}
	require.Positive(t, compacted, "no node holds a compacted, non-empty log")
}
