package ledger

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// validOps has one valid op of every kind.
func validOps() map[OpKind]Op {
	base := func(k OpKind) Op {
		return Op{Kind: k, Program: "shop", Member: "alice", Asset: "POINTS", IdempotencyKey: "key-1"}
	}
	ops := map[OpKind]Op{}
	ops[OpDefineAsset] = Op{Kind: OpDefineAsset, Program: "shop", Asset: "CNY", IdempotencyKey: "key-1", Scale: 2}
	o := base(OpOpenAccount)
	o.MaxBalanceMinor = 1000
	ops[OpOpenAccount] = o
	for _, k := range []OpKind{OpCredit, OpDebit} {
		o := base(k)
		o.AmountMinor, o.Scale, o.Memo = 5, 2, "coffee ☕"
		ops[k] = o
	}
	o = base(OpHold)
	o.AmountMinor, o.HoldTTLMs = 5, 60_000
	ops[OpHold] = o
	ops[OpCaptureHold] = Op{Kind: OpCaptureHold, Program: "shop", Member: "alice", IdempotencyKey: "key-1", HoldKey: "h", AmountMinor: 3, Scale: 2}
	ops[OpReleaseHold] = Op{Kind: OpReleaseHold, Program: "shop", Member: "alice", IdempotencyKey: "key-1", HoldKey: "h"}
	for _, k := range []OpKind{OpFreeze, OpUnfreeze, OpReportLost, OpReportFound, OpClose} {
		ops[k] = base(k)
	}
	return ops
}

func TestValidateAcceptsEveryKind(t *testing.T) {
	ops := validOps()
	require.Len(t, ops, int(opKindEnd)-2, "every kind a client sends (not UNKNOWN, not EXPIRE_HOLD)")
	for k, op := range ops {
		require.NoError(t, Validate(op), k.String())
	}
	// Edge values that are still valid.
	edge := []Op{
		func() Op { o := ops[OpCaptureHold]; o.AmountMinor, o.Scale = 0, 0; return o }(),
		func() Op { o := ops[OpHold]; o.HoldTTLMs = MaxHoldTTLMs; return o }(),
		func() Op { o := ops[OpCredit]; o.Memo = strings.Repeat("m", MaxMemoLen); return o }(),
		func() Op { o := ops[OpCredit]; o.Scale = MaxScale; return o }(),
		func() Op { o := ops[OpCredit]; o.Program = strings.Repeat("p", MaxIDLen); return o }(),
		func() Op { o := ops[OpCredit]; o.Member = "用户-42/x"; return o }(),
		func() Op { o := ops[OpCredit]; o.Asset = strings.Repeat("A", MaxAssetCodeLen); return o }(),
		func() Op { o := ops[OpCredit]; o.Asset = "GROWTH_2"; return o }(),
		func() Op { o := ops[OpOpenAccount]; o.MaxBalanceMinor = 0; return o }(),
		func() Op { o := ops[OpCredit]; o.Member = "a$"; return o }(),
	}
	for i, op := range edge {
		require.NoError(t, Validate(op), "edge %d", i)
	}
}

func TestValidateRejects(t *testing.T) {
	ops := validOps()
	with := func(k OpKind, mut func(*Op)) Op {
		o := ops[k]
		mut(&o)
		return o
	}
	cases := []struct {
		name  string
		op    Op
		code  Code
		field string // the message must name it
	}{
		{"unknown kind", with(OpCredit, func(o *Op) { o.Kind = OpUnknown }), CodeInvalidArgument, "kind"},
		{"kind past end", with(OpCredit, func(o *Op) { o.Kind = opKindEnd }), CodeInvalidArgument, "kind"},
		{"no program", with(OpCredit, func(o *Op) { o.Program = "" }), CodeInvalidArgument, "program"},
		{"long program", with(OpCredit, func(o *Op) { o.Program = strings.Repeat("p", MaxIDLen+1) }), CodeInvalidArgument, "program"},
		{"NUL in program", with(OpCredit, func(o *Op) { o.Program = "a\x00b" }), CodeInvalidArgument, "program"},
		{"newline in program", with(OpCredit, func(o *Op) { o.Program = "a\nb" }), CodeInvalidArgument, "program"},
		{"DEL in program", with(OpCredit, func(o *Op) { o.Program = "a\x7fb" }), CodeInvalidArgument, "program"},
		{"C1 control in program", with(OpCredit, func(o *Op) { o.Program = "a\u0085b" }), CodeInvalidArgument, "program"},
		{"bad UTF-8 program", with(OpCredit, func(o *Op) { o.Program = "a\xffb" }), CodeInvalidArgument, "program"},
		{"no member", with(OpCredit, func(o *Op) { o.Member = "" }), CodeInvalidArgument, "member"},
		{"member on define", with(OpDefineAsset, func(o *Op) { o.Member = "alice" }), CodeInvalidArgument, "member"},
		{"reserved member", with(OpCredit, func(o *Op) { o.Member = ControlMember }), CodeInvalidArgument, "member"},
		{"dollar member", with(OpOpenAccount, func(o *Op) { o.Member = "$x" }), CodeInvalidArgument, "member"},
		{"long member", with(OpCredit, func(o *Op) { o.Member = strings.Repeat("m", MaxIDLen+1) }), CodeInvalidArgument, "member"},
		{"control char member", with(OpCredit, func(o *Op) { o.Member = "a\tb" }), CodeInvalidArgument, "member"},
		{"no asset", with(OpCredit, func(o *Op) { o.Asset = "" }), CodeInvalidArgument, "asset"},
		{"lower-case asset", with(OpCredit, func(o *Op) { o.Asset = "points" }), CodeInvalidArgument, "asset"},
		{"asset with dash", with(OpCredit, func(o *Op) { o.Asset = "A-B" }), CodeInvalidArgument, "asset"},
		{"long asset", with(OpCredit, func(o *Op) { o.Asset = strings.Repeat("A", MaxAssetCodeLen+1) }), CodeInvalidArgument, "asset"},
		{"asset on capture", with(OpCaptureHold, func(o *Op) { o.Asset = "POINTS" }), CodeInvalidArgument, "asset"},
		{"asset on release", with(OpReleaseHold, func(o *Op) { o.Asset = "POINTS" }), CodeInvalidArgument, "asset"},
		{"no key", with(OpCredit, func(o *Op) { o.IdempotencyKey = "" }), CodeInvalidArgument, "idempotency_key"},
		{"long key", with(OpCredit, func(o *Op) { o.IdempotencyKey = strings.Repeat("k", MaxIDLen+1) }), CodeInvalidArgument, "idempotency_key"},
		{"control char key", with(OpCredit, func(o *Op) { o.IdempotencyKey = "k\x01" }), CodeInvalidArgument, "idempotency_key"},
		{"zero credit", with(OpCredit, func(o *Op) { o.AmountMinor = 0 }), CodeInvalidAmount, "amount_minor"},
		{"negative debit", with(OpDebit, func(o *Op) { o.AmountMinor = -5 }), CodeInvalidAmount, "amount_minor"},
		{"zero hold", with(OpHold, func(o *Op) { o.AmountMinor = 0 }), CodeInvalidAmount, "amount_minor"},
		{"negative capture", with(OpCaptureHold, func(o *Op) { o.AmountMinor = -1 }), CodeInvalidAmount, "amount_minor"},
		{"amount on release", with(OpReleaseHold, func(o *Op) { o.AmountMinor = 1 }), CodeInvalidArgument, "amount_minor"},
		{"amount on freeze", with(OpFreeze, func(o *Op) { o.AmountMinor = 1 }), CodeInvalidArgument, "amount_minor"},
		{"amount on open", with(OpOpenAccount, func(o *Op) { o.AmountMinor = 1 }), CodeInvalidArgument, "amount_minor"},
		{"scale too big", with(OpCredit, func(o *Op) { o.Scale = MaxScale + 1 }), CodeInvalidArgument, "scale"},
		{"define scale too big", with(OpDefineAsset, func(o *Op) { o.Scale = MaxScale + 1 }), CodeInvalidArgument, "scale"},
		{"scale on freeze", with(OpFreeze, func(o *Op) { o.Scale = 2 }), CodeInvalidArgument, "scale"},
		{"scale on open", with(OpOpenAccount, func(o *Op) { o.Scale = 2 }), CodeInvalidArgument, "scale"},
		{"scale on release", with(OpReleaseHold, func(o *Op) { o.Scale = 2 }), CodeInvalidArgument, "scale"},
		{"no hold key on capture", with(OpCaptureHold, func(o *Op) { o.HoldKey = "" }), CodeInvalidArgument, "hold_key"},
		{"no hold key on release", with(OpReleaseHold, func(o *Op) { o.HoldKey = "" }), CodeInvalidArgument, "hold_key"},
		{"long hold key", with(OpReleaseHold, func(o *Op) { o.HoldKey = strings.Repeat("h", MaxIDLen+1) }), CodeInvalidArgument, "hold_key"},
		{"hold key on credit", with(OpCredit, func(o *Op) { o.HoldKey = "h" }), CodeInvalidArgument, "hold_key"},
		{"hold key on hold", with(OpHold, func(o *Op) { o.HoldKey = "h" }), CodeInvalidArgument, "hold_key"},
		{"zero ttl", with(OpHold, func(o *Op) { o.HoldTTLMs = 0 }), CodeInvalidArgument, "hold_ttl_ms"},
		{"negative ttl", with(OpHold, func(o *Op) { o.HoldTTLMs = -1 }), CodeInvalidArgument, "hold_ttl_ms"},
		{"long ttl", with(OpHold, func(o *Op) { o.HoldTTLMs = MaxHoldTTLMs + 1 }), CodeInvalidArgument, "hold_ttl_ms"},
		{"ttl on credit", with(OpCredit, func(o *Op) { o.HoldTTLMs = 5 }), CodeInvalidArgument, "hold_ttl_ms"},
		{"negative max balance", with(OpOpenAccount, func(o *Op) { o.MaxBalanceMinor = -1 }), CodeInvalidAmount, "max_balance_minor"},
		{"max balance on credit", with(OpCredit, func(o *Op) { o.MaxBalanceMinor = 5 }), CodeInvalidArgument, "max_balance_minor"},
		{"long memo", with(OpCredit, func(o *Op) { o.Memo = strings.Repeat("m", MaxMemoLen+1) }), CodeInvalidArgument, "memo"},
		{"bad UTF-8 memo", with(OpDebit, func(o *Op) { o.Memo = "\xc3" }), CodeInvalidArgument, "memo"},
		{"memo on freeze", with(OpFreeze, func(o *Op) { o.Memo = "why" }), CodeInvalidArgument, "memo"},
		{"memo on capture", with(OpCaptureHold, func(o *Op) { o.Memo = "why" }), CodeInvalidArgument, "memo"},
		{"memo on define", with(OpDefineAsset, func(o *Op) { o.Memo = "why" }), CodeInvalidArgument, "memo"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.op)
			require.Error(t, err)
			require.Equal(t, tc.code, CodeOf(err), err.Error())
			var e *Error
			require.ErrorAs(t, err, &e)
			require.True(t, strings.HasPrefix(e.Msg, tc.field+":"), "message %q names %s", e.Msg, tc.field)
		})
	}
}

func TestValidateRequest(t *testing.T) {
	ops := validOps()
	credit := func(key string) Op { o := ops[OpCredit]; o.IdempotencyKey = key; return o }
	many := make([]Op, MaxBatchOps+1)
	for i := range many {
		many[i] = credit(fmt.Sprint(i))
	}
	cases := []struct {
		name string
		r    Request
		code Code
		msg  string
		op   int // the op blamed, -1 for none
	}{
		{"one op", Request{Ops: []Op{credit("a")}}, CodeOK, "", -1},
		{"max ops", Request{Ops: many[:MaxBatchOps]}, CodeOK, "", -1},
		{"linked one member", Request{Linked: true, Ops: []Op{credit("a"), ops[OpHold], func() Op {
			o := ops[OpCaptureHold]
			o.IdempotencyKey = "c"
			return o
		}()}}, CodeOK, "", -1},
		{"unlinked many members", Request{Ops: []Op{credit("a"), func() Op { o := credit("b"); o.Member = "bob"; return o }()}}, CodeOK, "", -1},
		{"empty", Request{}, CodeInvalidArgument, "ops:", -1},
		{"too many", Request{Ops: many}, CodeInvalidArgument, "ops:", -1},
		{"invalid op", Request{Ops: []Op{credit("a"), func() Op { o := credit("b"); o.AmountMinor = 0; return o }()}},
			CodeInvalidAmount, "op 1: amount_minor", 1},
		{"duplicate key", Request{Ops: []Op{credit("a"), credit("b"), credit("a")}}, CodeInvalidArgument, "op 2: idempotency_key", 2},
		{"linked two members", Request{Linked: true, Ops: []Op{credit("a"), func() Op { o := credit("b"); o.Member = "bob"; return o }()}},
			CodeInvalidArgument, "op 1:", 1},
		{"linked two programs", Request{Linked: true, Ops: []Op{credit("a"), func() Op { o := credit("b"); o.Program = "other"; return o }()}},
			CodeInvalidArgument, "op 1:", 1},
		{"linked define", Request{Linked: true, Ops: []Op{credit("a"), func() Op { o := ops[OpDefineAsset]; o.IdempotencyKey = "d"; return o }()}},
			CodeInvalidArgument, "op 1: DEFINE_ASSET", 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			op, err := ValidateRequest(tc.r)
			require.Equal(t, tc.code, CodeOf(err))
			require.Equal(t, tc.op, op, "blamed op")
			if tc.code != CodeOK {
				var e *Error
				require.ErrorAs(t, err, &e)
				require.True(t, strings.HasPrefix(e.Msg, tc.msg), "message %q starts with %q", e.Msg, tc.msg)
			}
		})
	}
}
