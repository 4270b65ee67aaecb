package ledger

import "errors"

// Code is a stable, machine-readable error code. Codes are part of the API:
// never rename one; add new ones at the end. The mapping to gRPC status codes
// lives in exactly one place (node.grpcCode).
type Code string

const (
	CodeOK                   Code = "OK"
	CodeInvalidArgument      Code = "INVALID_ARGUMENT"
	CodeInvalidAmount        Code = "INVALID_AMOUNT"
	CodeScaleMismatch        Code = "SCALE_MISMATCH"
	CodeOverflow             Code = "OVERFLOW"
	CodeUnknownAsset         Code = "UNKNOWN_ASSET"
	CodeAssetExists          Code = "ASSET_EXISTS" // same code, different scale
	CodeAccountNotFound      Code = "ACCOUNT_NOT_FOUND"
	CodeAccountExists        Code = "ACCOUNT_EXISTS"
	CodeAccountFrozen        Code = "ACCOUNT_FROZEN"
	CodeAccountLost          Code = "ACCOUNT_LOST"
	CodeAccountClosed        Code = "ACCOUNT_CLOSED"
	CodeInvalidState         Code = "INVALID_STATE" // e.g. ReportLost on a frozen account
	CodeBalanceNotZero       Code = "BALANCE_NOT_ZERO"
	CodeInsufficientFunds    Code = "INSUFFICIENT_FUNDS"
	CodeHoldNotFound         Code = "HOLD_NOT_FOUND"
	CodeHoldExpired          Code = "HOLD_EXPIRED"
	CodeHoldClosed           Code = "HOLD_CLOSED" // already captured or released
	CodeLimitExceeded        Code = "LIMIT_EXCEEDED"
	CodeIdempotencyKeyReused Code = "IDEMPOTENCY_KEY_REUSED"
	CodeLinkedFailed         Code = "LINKED_FAILED" // another op of a linked batch failed
	CodeNotLeader            Code = "NOT_LEADER"
	CodeUnavailable          Code = "UNAVAILABLE"
	CodeInternal             Code = "INTERNAL"
	CodeWrongShard           Code = "WRONG_SHARD" // a Submit whose ops span shards
	// CodePermissionDenied refuses a call the caller's certificate does not
	// allow (over TLS, a backup or restore without a node's certificate).
	// A request-level code: no operation's result is ever this.
	CodePermissionDenied Code = "PERMISSION_DENIED"
)

// Error is a domain error: a stable code and a readable message.
type Error struct {
	Code Code
	Msg  string
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return string(e.Code)
	}
	return string(e.Code) + ": " + e.Msg
}

// Is matches on code alone, so errors.Is(err, ledger.ErrInsufficientFunds)
// holds for any message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Errorf builds an *Error with a message.
func Errorf(code Code, msg string) *Error { return &Error{Code: code, Msg: msg} }

// CodeOf returns the code of err: CodeOK for nil, the code of a wrapped
// *Error, CodeInternal otherwise.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// Sentinels for errors.Is.
var (
	ErrInvalidArgument      = &Error{Code: CodeInvalidArgument}
	ErrInvalidAmount        = &Error{Code: CodeInvalidAmount}
	ErrScaleMismatch        = &Error{Code: CodeScaleMismatch}
	ErrOverflow             = &Error{Code: CodeOverflow}
	ErrUnknownAsset         = &Error{Code: CodeUnknownAsset}
	ErrAccountNotFound      = &Error{Code: CodeAccountNotFound}
	ErrInsufficientFunds    = &Error{Code: CodeInsufficientFunds}
	ErrIdempotencyKeyReused = &Error{Code: CodeIdempotencyKeyReused}
	ErrNotLeader            = &Error{Code: CodeNotLeader}
)
