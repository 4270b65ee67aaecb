package node

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// TestUnknownWireKindIsRejected: the wire kind is an int32 and the ledger's
// a uint8. Kinds outside the enum used to wrap into real ones (264 became
// FREEZE, 259 CREDIT) and reach the log.
func TestUnknownWireKindIsRejected(t *testing.T) {
	n := &Node{}
	for _, k := range []int32{0, -1, 13, 256 + int32(tallypb.OpKind_CREDIT), 256 + int32(tallypb.OpKind_FREEZE), -248, 1 << 30} {
		_, err := n.toLedgerOp(context.Background(), nil, &tallypb.Op{
			Kind: tallypb.OpKind(k), Program: "p", Member: "m", Asset: "USD", IdempotencyKey: "k1", Amount: "1",
		}, nil)
		require.Error(t, err, "wire kind %d", k)
		require.Equal(t, ledger.CodeInvalidArgument, ledger.CodeOf(err), "wire kind %d", k)
	}
}
