package node

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tally-ledger/tally/ledger"
)

// TestCodeOfErr: the code label of the request and ops metrics names what
// the client was answered. Deadlines, cancellations and the domain errors
// DefineAsset wraps used to be labelled INTERNAL.
func TestCodeOfErr(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want ledger.Code
	}{
		{nil, ledger.CodeOK},
		{context.DeadlineExceeded, "DEADLINE_EXCEEDED"},
		{fmt.Errorf("propose: %w", context.Canceled), "CANCELLED"},
		{fmt.Errorf("shard 1: %w", errUnavailable("x")), ledger.CodeUnavailable},
		{fmt.Errorf("shard 1: %w", errNotLeader(1, "")), ledger.CodeNotLeader},
		{ledger.Errorf(ledger.CodeInvalidAmount, "bad"), ledger.CodeInvalidAmount},
		{errors.New("disk on fire"), ledger.CodeInternal},
	} {
		require.Equal(t, tc.want, codeOfErr(tc.err), "%v", tc.err)
	}
}
