package ledger

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// Validate runs the static checks of one operation: everything that can be
// decided without state. The API edge calls it before an op reaches the log,
// and Apply calls it again (defence in depth: an invalid op in the log must
// not corrupt state).
//
// A field that the op's kind does not use must be zero: an op has exactly one
// encoding, so its fingerprint is canonical and a retry that differs only in
// an ignored field is not mistaken for the same op.
//
// The error is an *Error: CodeInvalidAmount for a bad amount,
// CodeInvalidArgument for anything else, with a message naming the field.
func Validate(op Op) error {
	if e := validateOp(op); e != nil {
		return e
	}
	return nil
}

// ValidateAccountKey checks an account's identifiers by the rules an
// operation on it must pass: what a read of the account is checked against.
func ValidateAccountKey(k AccountKey) error {
	return Validate(Op{Kind: OpFreeze, Program: k.Program, Member: k.Member, Asset: k.Asset, IdempotencyKey: "read"})
}

// validateOp returns a typed nil-able *Error so callers avoid the interface
// nil trap.
func validateOp(op Op) *Error {
	k := op.Kind
	if k <= OpUnknown || k >= opKindEnd {
		return invalidArg("kind: unknown operation kind %d", uint8(k))
	}
	if k == OpExpireHold {
		return invalidArg("kind: %s is written by the ledger when a hold expires; it cannot be sent", k)
	}
	if e := checkID("program", op.Program); e != nil {
		return e
	}

	if k == OpDefineAsset {
		if op.Member != "" {
			return unused(k, "member")
		}
	} else {
		if e := checkID("member", op.Member); e != nil {
			return e
		}
		if op.Member[0] == '$' {
			return invalidArg("member: %q starts with '$', which is reserved for control accounts", op.Member)
		}
	}

	if k == OpCaptureHold || k == OpReleaseHold {
		if op.Asset != "" {
			return unused(k, "asset")
		}
	} else if e := checkAssetCode(op.Asset); e != nil {
		return e
	}

	if e := checkID("idempotency_key", op.IdempotencyKey); e != nil {
		return e
	}

	switch k {
	case OpCredit, OpDebit, OpHold:
		if op.AmountMinor <= 0 {
			return Errorf(CodeInvalidAmount, fmt.Sprintf("amount_minor: %s needs a positive amount, got %d", k, op.AmountMinor))
		}
	case OpCaptureHold:
		if op.AmountMinor < 0 {
			return Errorf(CodeInvalidAmount, fmt.Sprintf("amount_minor: %s needs an amount >= 0 (0 captures the whole hold), got %d", k, op.AmountMinor))
		}
	default:
		if op.AmountMinor != 0 {
			return unused(k, "amount_minor")
		}
	}

	if op.Scale > MaxScale {
		return invalidArg("scale: %d is above the maximum %d", op.Scale, MaxScale)
	}
	if op.Scale != 0 && !usesScale(k) {
		return unused(k, "scale")
	}

	if k == OpCaptureHold || k == OpReleaseHold {
		if e := checkID("hold_key", op.HoldKey); e != nil {
			return e
		}
	} else if op.HoldKey != "" {
		return unused(k, "hold_key")
	}

	if k == OpHold {
		if op.HoldTTLMs <= 0 || op.HoldTTLMs > MaxHoldTTLMs {
			return invalidArg("hold_ttl_ms: %d is outside (0, %d]", op.HoldTTLMs, int64(MaxHoldTTLMs))
		}
	} else if op.HoldTTLMs != 0 {
		return unused(k, "hold_ttl_ms")
	}

	if k == OpOpenAccount {
		if op.MaxBalanceMinor < 0 {
			return Errorf(CodeInvalidAmount, fmt.Sprintf("max_balance_minor: must be >= 0 (0 = no limit), got %d", op.MaxBalanceMinor))
		}
	} else if op.MaxBalanceMinor != 0 {
		return unused(k, "max_balance_minor")
	}

	switch k {
	case OpCredit, OpDebit, OpHold:
		if len(op.Memo) > MaxMemoLen {
			return invalidArg("memo: %d bytes is above the maximum %d", len(op.Memo), MaxMemoLen)
		}
		if !utf8.ValidString(op.Memo) {
			return invalidArg("memo: not valid UTF-8")
		}
	default:
		if op.Memo != "" {
			return unused(k, "memo")
		}
	}
	return nil
}

// usesScale reports whether op.Scale is meaningful for kind k: the scale of a
// new asset, or the scale the API edge converted an amount with.
func usesScale(k OpKind) bool {
	switch k {
	case OpDefineAsset, OpCredit, OpDebit, OpHold, OpCaptureHold:
		return true
	}
	return false
}

// ValidateRequest validates every op of r and the rules across ops: 1 to
// MaxBatchOps ops, no idempotency key twice (ops of one request must be
// distinguishable on retry), and for a linked request one (program, member)
// and no DefineAsset (all-or-none is only offered within one shard's member).
// An op's error is prefixed with its index, and op is that index: the op a
// refusal is about (the later of two with one key), or -1 when it is about
// the request as a whole. The API edge passes op on to clients, so a client
// that packed several callers' ops into one request can fail only the
// caller whose op it was.
func ValidateRequest(r Request) (op int, err error) {
	if i, e := validateRequest(r); e != nil {
		return i, e
	}
	return -1, nil
}

func validateRequest(r Request) (int, *Error) {
	n := len(r.Ops)
	if n == 0 {
		return -1, invalidArg("ops: a request needs at least one operation")
	}
	if n > MaxBatchOps {
		return -1, invalidArg("ops: %d operations is above the maximum %d", n, MaxBatchOps)
	}
	for i := range r.Ops {
		if e := validateOp(r.Ops[i]); e != nil {
			return i, &Error{Code: e.Code, Msg: fmt.Sprintf("op %d: %s", i, e.Msg)}
		}
	}
	if n > 1 {
		// Only membership is asked of the map, so its order does not matter;
		// ops are visited in order, so the reported duplicate is deterministic.
		seen := make(map[string]int, n)
		for i := range r.Ops {
			key := r.Ops[i].IdempotencyKey
			if j, dup := seen[key]; dup {
				return i, invalidArg("op %d: idempotency_key %q is also used by op %d", i, key, j)
			}
			seen[key] = i
		}
	}
	if r.Linked {
		first := r.Ops[0]
		for i := range r.Ops {
			op := &r.Ops[i]
			if op.Kind == OpDefineAsset {
				return i, invalidArg("op %d: DEFINE_ASSET cannot be part of a linked request", i)
			}
			if op.Program != first.Program || op.Member != first.Member {
				return i, invalidArg("op %d: a linked request must be on one program and member (%q/%q), got %q/%q",
					i, first.Program, first.Member, op.Program, op.Member)
			}
		}
	}
	return -1, nil
}

// checkID checks an identifier (program, member, idempotency key, hold key):
// required, at most MaxIDLen bytes, valid UTF-8, no control characters. The
// last rule lets the storage layer separate identifiers with NUL.
func checkID(field, v string) *Error {
	if v == "" {
		return invalidArg("%s: required", field)
	}
	if len(v) > MaxIDLen {
		return invalidArg("%s: %d bytes is above the maximum %d", field, len(v), MaxIDLen)
	}
	ascii := true
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < 0x20 || c == 0x7f {
			return invalidArg("%s: contains control character %U", field, rune(c))
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	if ascii {
		return nil
	}
	if !utf8.ValidString(v) {
		return invalidArg("%s: not valid UTF-8", field)
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return invalidArg("%s: contains control character %U", field, r)
		}
	}
	return nil
}

// checkAssetCode checks an asset code: 1 to MaxAssetCodeLen of [A-Z0-9_].
func checkAssetCode(v string) *Error {
	if v == "" {
		return invalidArg("asset: required")
	}
	if len(v) > MaxAssetCodeLen {
		return invalidArg("asset: %q is %d characters, above the maximum %d", v, len(v), MaxAssetCodeLen)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return invalidArg("asset: %q may only contain A-Z, 0-9 and '_'", v)
		}
	}
	return nil
}

func invalidArg(format string, args ...any) *Error {
	return &Error{Code: CodeInvalidArgument, Msg: fmt.Sprintf(format, args...)}
}

func unused(k OpKind, field string) *Error {
	return invalidArg("%s: not used by %s; must be empty or zero", field, k)
}
