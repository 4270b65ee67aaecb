package client

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tally-ledger/tally/ledger"
)

// errorDomain is the ErrorInfo domain of Tally's request-level errors.
const errorDomain = "tally"

// ErrClosed is the cause of errors from a Client after Close.
var ErrClosed = errors.New("tally client: closed")

// Error is a request-level failure: the request as a whole was rejected or
// could not be completed, as opposed to one operation's outcome (Result.Code).
//
// errors.Is(err, ledger.ErrInvalidAmount) and friends match on Code alone;
// errors.Is(err, context.DeadlineExceeded) matches when the caller's context
// ended the call.
type Error struct {
	// Code is the stable ledger code: NOT_LEADER, UNAVAILABLE,
	// INVALID_ARGUMENT, INVALID_AMOUNT, ... Transport failures without a
	// Tally ErrorInfo map to UNAVAILABLE (retryable kinds) or INTERNAL.
	Code    ledger.Code
	Message string
	// Leader is the leader's gRPC address hinted by a NOT_LEADER answer, "" if
	// none.
	Leader string
	// Shard is the shard the request was routed to, -1 if none.
	Shard int
	// OpIndex is the index, in the caller's slice of operations, of the
	// operation the server blamed; -1 when the request as a whole is at fault.
	OpIndex int
	// Indeterminate is set when an attempt may have reached a server before
	// the call gave up: the operations may or may not have applied.
	Indeterminate bool
	// GRPCCode is the gRPC status code of the last attempt: codes.OK when the
	// error arose in the client, codes.Unavailable for a call given up (its
	// context ended or the client closed) whatever its last attempt got.
	GRPCCode codes.Code
	// Err is the underlying cause (a context error, ErrClosed or a gRPC
	// status error), if any.
	Err error

	// notProposed: the server said it refused the request before proposing
	// it (a leader's full queue, its shutdown, a deadline before proposal),
	// so nothing of it applied although the code is retryable.
	notProposed bool
	// overloaded: that refusal came from a live leader's queue bound; the
	// leader stays the one to ask after the backoff.
	overloaded bool
}

func (e *Error) Error() string {
	s := string(e.Code)
	if e.Indeterminate {
		s = "indeterminate outcome (re-send with the same key to settle it): " + s
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.Leader != "" {
		s += " (leader " + e.Leader + ")"
	}
	if e.OpIndex >= 0 {
		s += " (op " + strconv.Itoa(e.OpIndex) + ")"
	}
	if e.Err != nil && !isStatusError(e.Err) {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is matches a *ledger.Error or an *Error with the same code.
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case *ledger.Error:
		return t.Code == e.Code
	case *Error:
		return t.Code == e.Code
	}
	return false
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// IsIndeterminate reports whether err (or any error it wraps or joins) says
// that mutating operations may or may not have applied. Settle it by
// re-sending the same operations with the same idempotency keys: each
// applies once or replays its stored result. Only an answer the ledger
// recorded settles it; false for a re-send's error is final only within
// this Client's record of open keys (see the package doc). (GetOperation's
// "found" is final; its "not found" is not, while an attempt may still
// apply.)
func IsIndeterminate(err error) bool {
	switch e := err.(type) {
	case nil:
		return false
	case *Error:
		if e.Indeterminate {
			return true
		}
		return IsIndeterminate(e.Err)
	case interface{ Unwrap() []error }:
		for _, inner := range e.Unwrap() {
			if IsIndeterminate(inner) {
				return true
			}
		}
		return false
	case interface{ Unwrap() error }:
		return IsIndeterminate(e.Unwrap())
	}
	return false
}

// CodeOf returns the stable code of err: CodeOK for nil, the code of an
// *Error or *ledger.Error it wraps, CodeInternal otherwise.
func CodeOf(err error) ledger.Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ledger.CodeOf(err)
}

// newError builds a client-side *Error (no gRPC status).
func newError(code ledger.Code, shard int, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Shard: shard, OpIndex: -1}
}

func isStatusError(err error) bool {
	_, ok := err.(interface{ GRPCStatus() *status.Status })
	return ok
}

// fromRPC decodes the error of one RPC attempt. This is the one place where
// gRPC statuses become ledger codes on the client side.
func fromRPC(err error, shard int) *Error {
	st := status.Convert(err)
	e := &Error{
		Code:     codeOfGRPC(st.Code()),
		Message:  st.Message(),
		Shard:    shard,
		OpIndex:  -1,
		GRPCCode: st.Code(),
		Err:      err,
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != errorDomain || info.GetReason() == "" {
			continue
		}
		e.Code = ledger.Code(info.GetReason())
		// The server's message repeats the code; Error() adds it back.
		e.Message = strings.TrimPrefix(e.Message, string(e.Code)+": ")
		md := info.GetMetadata()
		e.Leader = md["leader"]
		e.notProposed = md["not_applied"] == "true"
		e.overloaded = md["overloaded"] == "true"
		if s, err := strconv.Atoi(md["shard"]); err == nil && s >= 0 {
			e.Shard = s
		}
		if i, err := strconv.Atoi(md["op_index"]); err == nil && i >= 0 {
			e.OpIndex = i
			// The index in the message ("op 7: CODE: ...") is the
			// request's, which coalescing and splitting change; Error()
			// shows the caller's instead.
			e.Message = strings.TrimPrefix(e.Message, "op "+md["op_index"]+": ")
			e.Message = strings.TrimPrefix(e.Message, string(e.Code)+": ")
		}
		break
	}
	return e
}

// codeOfGRPC maps a gRPC code without a Tally ErrorInfo (a transport or
// framework error) to a ledger code.
func codeOfGRPC(c codes.Code) ledger.Code {
	switch c {
	case codes.OK:
		return ledger.CodeOK
	case codes.InvalidArgument, codes.OutOfRange:
		return ledger.CodeInvalidArgument
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.ResourceExhausted:
		return ledger.CodeUnavailable
	case codes.PermissionDenied, codes.Unauthenticated:
		return ledger.CodePermissionDenied
	}
	return ledger.CodeInternal
}

// retryable reports whether a failed attempt should be tried again (to the
// same or another node): the request was not rejected on its merits.
func (e *Error) retryable() bool {
	if e.Code == ledger.CodeNotLeader || e.Code == ledger.CodeUnavailable {
		return e.GRPCCode != codes.InvalidArgument
	}
	switch e.GRPCCode {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.ResourceExhausted:
		return true
	}
	return false
}

// rejected reports whether the server rejected the request on its merits
// (a bad or unknown argument, a failed precondition): re-sending it cannot
// help, and nothing of it applied.
func (e *Error) rejected() bool {
	return e.Code != ledger.CodeNotLeader && meritCode(e.GRPCCode)
}

// meritCode reports whether a gRPC code says the server refused the
// request on its merits (nothing of it applied).
func meritCode(c codes.Code) bool {
	switch c {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange, codes.NotFound,
		codes.AlreadyExists, codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented:
		return true
	}
	return false
}

// definitelyNotApplied reports whether the failed attempt certainly did not
// apply anything: NOT_LEADER (a node answers it before proposing), a
// refusal the server marked as before proposal (not_applied), and
// rejections of the request on its merits. Any other failure after the
// request left the client (a timeout, a broken connection, UNAVAILABLE from a
// leader that stepped down mid-commit, an internal error) may hide an applied
// operation.
func (e *Error) definitelyNotApplied() bool {
	return e.Code == ledger.CodeNotLeader || e.notProposed || meritCode(e.GRPCCode)
}

// giveUpError is the error of a call that its context (cause: the context's
// error) or Close (cause: ErrClosed) ended; last is the last attempt's error,
// nil if no attempt was answered.
//
// Its GRPCCode is Unavailable, never the last attempt's: a give-up after
// NOT_LEADER (FailedPrecondition) would otherwise read as rejected(), a
// refusal on the merits, and a coalesced batch would isolate its callers as
// if one op were bad.
func giveUpError(cause error, shard int, last *Error, indeterminate bool) *Error {
	e := &Error{Code: ledger.CodeUnavailable, Shard: shard, OpIndex: -1, Indeterminate: indeterminate,
		GRPCCode: codes.Unavailable, Err: cause}
	switch {
	case last != nil:
		e.Message = "gave up after: " + last.Error()
		e.Leader = last.Leader
	case indeterminate:
		e.Message = "gave up with an attempt in flight"
	default:
		e.Message = "gave up before any attempt"
	}
	return e
}
