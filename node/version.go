package node

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// versionCheckInterval is how often the leader of a shard below the newest
// rules version asks the other nodes whether they may apply it.
const versionCheckInterval = 2 * time.Second

// maxVersion is the newest rules version this node lets its shards be raised
// to: its binary's newest, or less if Config.MaxVersion holds it back.
func (n *Node) maxVersion() uint32 {
	if n.cfg.MaxVersion != 0 {
		return min(n.cfg.MaxVersion, ledger.MaxVersion)
	}
	return ledger.MaxVersion
}

// versionLoop raises the shard's rules version (ledger.Version1) to the
// newest one every member of the shard may apply. Only the leader proposes,
// and the raise is an entry of the log like any other, so every replica
// switches rules at the same index; until every member reports a binary that
// applies the new rules, the shard keeps the old ones, so a rolling upgrade
// never has replicas disagree about an entry. A member that does not answer
// counts as one that cannot, since it may run an old binary. The loop runs
// for the node's life, idle while the shard is at this node's newest
// version: a restore from a backup can take the shard back to an older one
// (tally_shard_version is read from the FSM at scrape time, not from here).
func (s *shard) versionLoop() {
	defer s.wg.Done()
	ctx, cancel := untilClosed(s.stop)
	defer cancel()
	t := time.NewTicker(versionCheckInterval)
	defer t.Stop()
	fails := 0
	for {
		running, leads := s.leaderTick(t)
		if !running {
			return
		}
		if !leads || s.fsm.Version() >= s.n.maxVersion() {
			fails = 0
			continue
		}
		from, target := s.fsm.Version(), s.membersMaxVersion(ctx)
		if target <= from {
			fails = 0
			continue
		}
		nowMs, err := s.n.stampMs()
		if err != nil {
			continue // it refuses requests, perhaps for its clock: it stamps nothing
		}
		c := ledger.AppendCommand(nil, ledger.Command{TimeMs: nowMs, SetVersion: target})
		err = s.await(s.raft.Apply(c, applyTimeout))
		switch {
		case err == nil:
			s.n.logger.Info("raised the shard's rules version", "shard", s.id, "from", from, "to", target)
		case errors.Is(err, raft.ErrRaftShutdown) || ctx.Err() != nil:
			return
		default:
			// A lost leadership fails one attempt; one that keeps failing
			// is worth an operator's look, once in a while.
			fails++
			level := hclog.Debug
			if fails%10 == 0 {
				level = hclog.Warn
			}
			s.n.logger.Log(level, "raising the shard's rules version failed; will retry", "shard", s.id, "to", target,
				"failures", fails, "error", err)
		}
	}
}

// membersMaxVersion is the newest rules version every member of the shard's
// Raft configuration may apply: the least of their maxVersion, and version 1
// if any member is unknown, does not answer, answers as another node (its
// address in --peers is wrong: answersAs), or predates versions (it
// reports 0).
func (s *shard) membersMaxVersion(ctx context.Context) uint32 {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return ledger.Version1
	}
	grpcAddr := make(map[raft.ServerID]string, len(s.n.cfg.Peers))
	for _, p := range s.n.cfg.Peers {
		grpcAddr[raft.ServerID(p.ID)] = p.GRPCAddr
	}
	v := s.n.maxVersion()
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == s.n.cfg.ID {
			continue
		}
		addr, ok := grpcAddr[srv.ID]
		if !ok {
			return ledger.Version1
		}
		c, err := s.n.peers.get(addr)
		if err != nil {
			return ledger.Version1
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := c.ShardState(rctx, &tallypb.ShardStateRequest{Shard: s.id})
		cancel()
		if err != nil || !answersAs(st.GetNodeId(), string(srv.ID)) {
			return ledger.Version1
		}
		v = min(v, max(st.GetMaxVersion(), ledger.Version1))
	}
	return v
}

// answersAs reports whether a ShardState answer naming node got may be
// taken for peer want's: it names want, or nothing (a binary before
// node_id, whose answers were taken as before: refusing them stalled a
// guarded replica beside peers on the previous release, found by review).
// An answer naming another node is that node's, reached at the address
// --peers wrongly gives for want: it would count that node twice.
func answersAs(got, want string) bool { return got == "" || got == want }

// untilClosed returns a context that ends when stop is closed (or cancel is
// called): what a node's background loop passes to the RPCs it makes, so
// that closing the node cuts them short.
func untilClosed(stop <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
