package node

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// TestAdmissionBoundsCallsInProgress: while limit handlers run, a new call
// is refused at the tap, before its message is read, as UNAVAILABLE that
// says nothing applied and the node is overloaded; once one ends, calls
// are admitted again.
func TestAdmissionBoundsCallsInProgress(t *testing.T) {
	a := newAdmission(2)
	release := make(chan struct{})
	running := make(chan struct{})
	done := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := a.intercept(context.Background(), nil, &grpc.UnaryServerInfo{}, func(context.Context, any) (any, error) {
				running <- struct{}{}
				<-release
				return nil, nil
			})
			done <- err
		}()
	}
	<-running
	<-running

	_, err := a.tap(context.Background(), nil)
	st, ok := status.FromError(err)
	require.True(t, ok, "%v", err)
	require.Equal(t, codes.Unavailable, st.Code())
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	require.NotNil(t, info)
	require.Equal(t, string(ledger.CodeUnavailable), info.GetReason())
	require.Equal(t, map[string]string{metaNotApplied: "true", metaOverloaded: "true"}, info.GetMetadata())
	require.EqualValues(t, 1, a.refused.Load())

	// The calls nodes make to each other get a reserve past the limit.
	for _, m := range []string{tallypb.Ledger_ClusterInfo_FullMethodName, tallypb.Ledger_ShardState_FullMethodName} {
		_, err = a.tap(context.Background(), &tap.Info{FullMethodName: m})
		require.NoError(t, err, m)
	}
	a.active.Add(peerReserve)
	_, err = a.tap(context.Background(), &tap.Info{FullMethodName: tallypb.Ledger_ClusterInfo_FullMethodName})
	require.Error(t, err, "past the reserve too")
	_, err = a.tap(context.Background(), &tap.Info{FullMethodName: tallypb.Ledger_Submit_FullMethodName})
	require.Error(t, err)
	a.active.Add(-peerReserve)

	release <- struct{}{}
	require.NoError(t, <-done)
	_, err = a.tap(context.Background(), nil)
	require.NoError(t, err, "a place came free")
	close(release)
	require.NoError(t, <-done)
	require.Zero(t, a.active.Load())
}

// TestCloseWaitsForRunningHandlers: Close must not close the state DB
// under a handler still running (a full ShardState walk after the gRPC
// server's forced stop), and must not wait for ever on one that hangs.
func TestCloseWaitsForRunningHandlers(t *testing.T) {
	n := &Node{admission: newAdmission(maxActiveRPCs), logger: hclog.NewNullLogger()}
	n.admission.active.Add(1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		n.admission.active.Add(-1)
	}()
	start := time.Now()
	n.waitHandlers(10 * time.Second)
	require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond, "returned with a handler running")
	require.Zero(t, n.admission.active.Load())

	n.admission.active.Add(1) // one that never ends
	start = time.Now()
	n.waitHandlers(50 * time.Millisecond)
	require.Less(t, time.Since(start), 5*time.Second)
}
