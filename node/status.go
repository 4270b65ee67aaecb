package node

import (
	"context"
	"errors"
	"maps"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tally-ledger/tally/ledger"
)

// errorDomain is the ErrorInfo domain of every Tally error.
const errorDomain = "tally"

// grpcCode is the one place that maps domain codes to gRPC status codes.
func grpcCode(c ledger.Code) codes.Code {
	switch c {
	case ledger.CodeOK:
		return codes.OK
	case ledger.CodeInvalidArgument, ledger.CodeInvalidAmount, ledger.CodeScaleMismatch,
		ledger.CodeOverflow, ledger.CodeWrongShard, ledger.CodeIdempotencyKeyReused:
		return codes.InvalidArgument
	case ledger.CodeUnknownAsset, ledger.CodeAccountNotFound, ledger.CodeHoldNotFound:
		return codes.NotFound
	case ledger.CodeAssetExists, ledger.CodeAccountExists:
		return codes.AlreadyExists
	case ledger.CodeNotLeader, ledger.CodeAccountFrozen, ledger.CodeAccountLost, ledger.CodeAccountClosed,
		ledger.CodeInvalidState, ledger.CodeBalanceNotZero, ledger.CodeInsufficientFunds,
		ledger.CodeHoldExpired, ledger.CodeHoldClosed, ledger.CodeLimitExceeded, ledger.CodeLinkedFailed:
		return codes.FailedPrecondition
	case ledger.CodeUnavailable:
		return codes.Unavailable
	case ledger.CodePermissionDenied:
		return codes.PermissionDenied
	}
	return codes.Internal
}

// domainError is a request-level failure with a stable code and metadata
// (leader, shard, op_index) carried to the client in an ErrorInfo.
type domainError struct {
	code ledger.Code
	msg  string
	meta map[string]string
}

func (e *domainError) Error() string { return string(e.code) + ": " + e.msg }

func (e *domainError) GRPCStatus() *status.Status {
	st := status.New(grpcCode(e.code), e.Error())
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: string(e.code), Domain: errorDomain, Metadata: e.meta}); err == nil {
		return withInfo
	}
	return st
}

func newError(code ledger.Code, msg string) *domainError { return &domainError{code: code, msg: msg} }

func errNotLeader(shard uint32, leaderAddr string) error {
	e := newError(ledger.CodeNotLeader, "this node does not lead shard "+strconv.Itoa(int(shard)))
	e.meta = map[string]string{"shard": strconv.Itoa(int(shard))}
	if leaderAddr != "" {
		e.meta["leader"] = leaderAddr
		e.msg += "; leader is " + leaderAddr
	}
	return e
}

func errUnavailable(msg string) error { return newError(ledger.CodeUnavailable, msg) }

// Metadata keys of a refusal before proposal (notProposed): the request
// certainly applied nothing, so a client may report its operations as not
// applied rather than unknown (UNAVAILABLE alone means "may have applied").
const (
	metaNotApplied = "not_applied" // "true": nothing of the request was proposed
	metaOverloaded = "overloaded"  // "true": refused by the leader's queue bound; the leader is alive
)

// notProposed marks err, a failure before the request reached the
// proposer, as certainly not applied. A context error becomes UNAVAILABLE
// (marked) too: the deadline passed before anything was proposed.
func notProposed(err error) error {
	if err == nil {
		return nil
	}
	var de *domainError
	var le *ledger.Error
	switch {
	case errors.As(err, &de):
		de = &domainError{code: de.code, msg: de.msg, meta: maps.Clone(de.meta)}
	case errors.As(err, &le):
		de = &domainError{code: le.Code, msg: le.Msg}
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		de = &domainError{code: ledger.CodeUnavailable, msg: "before proposing: " + err.Error()}
	default:
		de = &domainError{code: ledger.CodeInternal, msg: err.Error()}
	}
	if de.meta == nil {
		de.meta = map[string]string{}
	}
	de.meta[metaNotApplied] = "true"
	return de
}

func errInternal(msg string) error { return newError(ledger.CodeInternal, msg) }

// opError is a request rejected because of one of its operations.
func opError(index int, err error) error {
	code := ledger.CodeOf(err)
	e := newError(code, "op "+strconv.Itoa(index)+": "+err.Error())
	e.meta = map[string]string{"op_index": strconv.Itoa(index)}
	return e
}

// blameOp is opError for a ledger error whose message already names the op
// (ledger.ValidateRequest's): it adds the op_index only.
func blameOp(index int, err error) error {
	var le *ledger.Error
	if !errors.As(err, &le) {
		return opError(index, err)
	}
	e := newError(le.Code, le.Msg)
	e.meta = map[string]string{"op_index": strconv.Itoa(index)}
	return e
}

// toStatus turns any error a handler returns into a gRPC status error.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var de *domainError
	if errors.As(err, &de) {
		return de.GRPCStatus().Err()
	}
	var le *ledger.Error
	if errors.As(err, &le) {
		return (&domainError{code: le.Code, msg: le.Msg}).GRPCStatus().Err()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return (&domainError{code: ledger.CodeInternal, msg: err.Error()}).GRPCStatus().Err()
}
