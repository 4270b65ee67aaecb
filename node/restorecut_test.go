package node

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/ledger"
)

// TestRestoreCutShortLeavesAReplicaBehind: a leader cut off from the
// others after raft restored a backup into its own state, but before any
// follower installed it, answers UNAVAILABLE ("may or may not have taken
// effect"). It keeps the backup's state, and applies none of the new
// leader's entries: hashicorp/raft deleted its whole log for the restore
// (the log store is monotonic: raftstore), and the new leader's
// AppendEntries fail for want of the entries before theirs, so it stays
// behind (its applied index shows it) while the others go on with the
// state from before the restore. Restoring again, through the new
// leader, gives every replica the backup's state. (The notes had said the
// ex-leader would apply the new entries over the backup and diverge
// silently; this is what hashicorp/raft v1.8.0 does.)
func TestRestoreCutShortLeavesAReplicaBehind(t *testing.T) {
	c, cut := newPartitionableCluster(t, 1, func(cfg *Config) {
		cfg.BalanceInterval = -1
		cfg.CheckEvery = 4
		cfg.checkInterval = 50 * time.Millisecond
	})
	c.makeLeader(0, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c.defineAsset("shop", "POINTS", 0)
	c.mustSubmit(op(tallypb.OpKind_OPEN_ACCOUNT, "o", "ann", "POINTS", ""))
	c.mustSubmit(op(tallypb.OpKind_CREDIT, "c1", "ann", "POINTS", "10"))
	hdr, backup := backupShard0(ctx, t, c)
	c.mustSubmit(op(tallypb.OpKind_CREDIT, "c2", "ann", "POINTS", "5"))

	// n1 is cut off just before raft takes the backup.
	cutDone := false
	beforeRaftRestore = func(s *shard) {
		if cutDone {
			return
		}
		cutDone = true
		cut("n1", "n2", true)
		cut("n1", "n3", true)
	}
	defer func() { beforeRaftRestore = nil }()
	restore := func(i int) error {
		_, err := c.dial(ctx, i).Restore(ctx, hdr, bytes.NewReader(backup.Bytes()))
		return err
	}
	err := restore(0)
	require.Error(t, err)
	require.Equal(t, ledger.CodeUnavailable, client.CodeOf(err), "%v", err)
	require.Contains(t, err.Error(), "may or may not have taken effect")

	// n2 and n3 elect a leader and go on: 12 credits, 3 check indexes.
	b := c.leaderAmong(0, 20*time.Second, 1, 2)
	for i := range 12 {
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := c.client(c.cfgs[b].GRPCAddr).Submit(sctx, &tallypb.SubmitRequest{Ops: []*tallypb.Op{
			op(tallypb.OpKind_CREDIT, fmt.Sprintf("d%d", i), "ann", "POINTS", "1")}})
		scancel()
		require.NoError(t, err)
		require.Equal(t, "OK", resp.GetResults()[0].GetCode())
	}
	cut("n1", "n2", false)
	cut("n1", "n3", false)

	state := func(i int) *tallypb.ShardStateResponse {
		st, err := c.client(c.cfgs[i].GRPCAddr).ShardState(ctx, &tallypb.ShardStateRequest{Shard: 0, Full: true})
		require.NoError(t, err)
		return st
	}
	// n1 hears from the new leader (it takes its term)...
	other := state(b)
	require.Eventually(t, func() bool { return state(0).GetRaftTerm() == other.GetRaftTerm() }, 20*time.Second, 20*time.Millisecond,
		"n1 never heard from the new leader")
	// ... but holds the backup's state and stays there; the others have
	// the state from before the restore and everything after it.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		st := state(0)
		require.Equal(t, hdr.AppliedIndex, st.GetAppliedIndex(), "n1 applied entries past the backup")
		require.Equal(t, hdr.StateHash, hex.EncodeToString(st.GetStateHash()))
		require.False(t, st.GetLeader())
		time.Sleep(100 * time.Millisecond)
	}
	require.Greater(t, other.GetAppliedIndex(), hdr.AppliedIndex)
	require.NotEqual(t, hdr.StateHash, hex.EncodeToString(other.GetStateHash()))

	// Restoring again, through the new leader, heals it.
	require.NoError(t, restore(b))
	c.checkReplicas()
	require.Equal(t, hdr.StateHash, hex.EncodeToString(state(0).GetStateHash()))
}
