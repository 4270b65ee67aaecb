package node

import (
	"context"
	"fmt"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/tap"

	"github.com/tally-ledger/tally/api/tallypb"
)

// Node-wide bounds on the client API. maxStreamsPerConn bounds one
// connection; these bound them all, so that many connections cannot make
// the node hold without limit the requests gRPC reads whole before a
// handler runs.
const (
	// maxClientConns bounds open client connections (a connection past it
	// waits in the listen backlog until one closes).
	maxClientConns = 4096
	// maxActiveRPCs bounds the calls in progress on the node; one more is
	// refused before its message is read.
	maxActiveRPCs = 8192
	// maxFullStates bounds the full ShardState walks (a whole shard each)
	// running at once on the node.
	maxFullStates = 2
	// peerReserve admits calls of the methods nodes ask each other
	// (ClusterInfo, ShardState) up to this many past maxActiveRPCs: under a
	// flood of client calls, peers' shard-count and clock checks, vote
	// guard polls, balancer and version loop must still be answered, or a
	// node restarted meanwhile stays refused until the flood ends (it
	// serves only once a majority has confirmed its shard count and clock).
	// Both are cheap but for a full ShardState, which maxFullStates bounds.
	peerReserve = 256
)

// admission refuses new calls while maxActiveRPCs handlers run. Its tap
// runs when a call's headers arrive, before gRPC reads the message, and
// refuses it; its interceptor counts the handlers running. (Calls between
// the two, their messages being read, are not counted, so the bound may be
// passed by those; a stats handler would count them too, at several
// allocations per call.)
type admission struct {
	limit  int64
	active atomic.Int64
	// refused counts calls refused (tally_admission_refused_total).
	refused atomic.Int64
}

func newAdmission(limit int64) *admission { return &admission{limit: limit} }

// tap is a grpc.InTapHandle.
func (a *admission) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	limit := a.limit
	if info != nil && (info.FullMethodName == tallypb.Ledger_ClusterInfo_FullMethodName ||
		info.FullMethodName == tallypb.Ledger_ShardState_FullMethodName) {
		limit += peerReserve
	}
	if a.active.Load() >= limit {
		a.refused.Add(1)
		// Refused before the request was read: nothing of it can apply.
		err := notProposed(errUnavailable(fmt.Sprintf("node is overloaded: %d calls in progress; retry later with the same keys", a.limit)))
		err.(*domainError).meta[metaOverloaded] = "true"
		return nil, toStatus(err)
	}
	return ctx, nil
}

// intercept is a grpc.UnaryServerInterceptor.
func (a *admission) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	a.active.Add(1)
	defer a.active.Add(-1)
	return handler(ctx, req)
}
