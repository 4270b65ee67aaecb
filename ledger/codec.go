package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Binary codec of the ledger's values, for the Raft log (Command) and for
// storage (Record, Account, Hold, Asset).
//
// Format: a top-level encoding (AppendX) is one version byte (codecVersion)
// and the value's body; nested values are bodies without a version byte.
// Integers are varints (unsigned: uvarint; signed: zigzag varint), strings are
// a uvarint length and the bytes, enums are one byte. Fields are written in a
// fixed order with no tags: a new field needs a new codec version.
//
// Decoding is strict, so encoding is canonical: DecodeX accepts exactly the
// bytes AppendX produces for some value (no trailing bytes, no over-long
// varints, no unknown flag bits), and AppendX(DecodeX(b)) == b. It never
// panics, and bounds what garbage can make it allocate: strings are at most
// maxDecodeStringLen bytes, requests at most MaxBatchOps ops, commands at
// most maxCommandRequests requests, and no count may exceed what the
// remaining input could hold.
//
// Decoded strings share one copy of the input (one allocation per DecodeX),
// so a decoded value keeps that copy alive; values are small or short-lived.

// codecVersion is the first byte of every top-level encoding.
const codecVersion byte = 1

const (
	// maxDecodeStringLen bounds any decoded string: identifiers and memos are
	// far shorter (MaxIDLen, MaxMemoLen); result messages quote a few of them.
	maxDecodeStringLen = 4096
	// maxCommandRequests bounds the requests one command may carry.
	maxCommandRequests = 1 << 20

	// Smallest encodings, used to reject counts the input cannot hold before
	// allocating for them.
	minOpBodyLen      = 11 // 11 fields of at least one byte each
	minRequestBodyLen = 2  // flags, op count
)

// ErrCorrupt is wrapped by every decoding error.
var ErrCorrupt = errors.New("ledger: corrupt encoding")

// codeTable maps Codes to the byte that encodes them. It is part of the
// format: append only, never reorder. Index 0 means "a string follows" and
// carries codes this table does not know.
var codeTable = [...]Code{
	0:  "",
	1:  CodeOK,
	2:  CodeInvalidArgument,
	3:  CodeInvalidAmount,
	4:  CodeScaleMismatch,
	5:  CodeOverflow,
	6:  CodeUnknownAsset,
	7:  CodeAssetExists,
	8:  CodeAccountNotFound,
	9:  CodeAccountExists,
	10: CodeAccountFrozen,
	11: CodeAccountLost,
	12: CodeAccountClosed,
	13: CodeInvalidState,
	14: CodeBalanceNotZero,
	15: CodeInsufficientFunds,
	16: CodeHoldNotFound,
	17: CodeHoldExpired,
	18: CodeHoldClosed,
	19: CodeLimitExceeded,
	20: CodeIdempotencyKeyReused,
	21: CodeLinkedFailed,
	22: CodeNotLeader,
	23: CodeUnavailable,
	24: CodeInternal,
	25: CodeWrongShard,
	26: CodePermissionDenied,
}

func codeIndex(c Code) byte {
	for i := 1; i < len(codeTable); i++ {
		if codeTable[i] == c {
			return byte(i)
		}
	}
	return 0
}

// Flag bits.
const (
	requestLinked = 1 << 0

	resultHasAccount = 1 << 0
	resultHasHold    = 1 << 1
)

// ---- encoding ----

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendOpBody(dst []byte, op *Op) []byte {
	dst = append(dst, byte(op.Kind))
	dst = appendString(dst, op.Program)
	dst = appendString(dst, op.Member)
	dst = appendString(dst, op.Asset)
	dst = appendString(dst, op.IdempotencyKey)
	dst = binary.AppendVarint(dst, op.AmountMinor)
	dst = append(dst, op.Scale)
	dst = appendString(dst, op.HoldKey)
	dst = binary.AppendVarint(dst, op.HoldTTLMs)
	dst = binary.AppendVarint(dst, op.MaxBalanceMinor)
	return appendString(dst, op.Memo)
}

func appendRequestBody(dst []byte, r *Request) []byte {
	var flags byte
	if r.Linked {
		flags |= requestLinked
	}
	dst = append(dst, flags)
	dst = binary.AppendUvarint(dst, uint64(len(r.Ops)))
	for i := range r.Ops {
		dst = appendOpBody(dst, &r.Ops[i])
	}
	return dst
}

func appendCommandBody(dst []byte, c *Command) []byte {
	dst = binary.AppendVarint(dst, c.TimeMs)
	dst = binary.AppendUvarint(dst, uint64(len(c.Requests)))
	for i := range c.Requests {
		dst = appendRequestBody(dst, &c.Requests[i])
	}
	return dst
}

func appendAccountBody(dst []byte, a *Account) []byte {
	dst = appendString(dst, a.Key.Program)
	dst = appendString(dst, a.Key.Member)
	dst = appendString(dst, a.Key.Asset)
	dst = append(dst, byte(a.State))
	dst = binary.AppendVarint(dst, a.PostedMinor)
	dst = binary.AppendVarint(dst, a.HeldMinor)
	dst = binary.AppendVarint(dst, a.MaxBalanceMinor)
	dst = binary.AppendVarint(dst, a.OpenedAtMs)
	return binary.AppendVarint(dst, a.UpdatedAtMs)
}

func appendHoldBody(dst []byte, h *Hold) []byte {
	dst = appendString(dst, h.Program)
	dst = appendString(dst, h.Member)
	dst = appendString(dst, h.Key)
	dst = appendString(dst, h.Asset)
	dst = binary.AppendVarint(dst, h.AmountMinor)
	dst = append(dst, byte(h.State))
	dst = binary.AppendVarint(dst, h.CreatedAtMs)
	return binary.AppendVarint(dst, h.ExpiresAtMs)
}

func appendAssetBody(dst []byte, a *Asset) []byte {
	dst = appendString(dst, a.Program)
	dst = appendString(dst, a.Code)
	return append(dst, a.Scale)
}

// appendResultBody encodes r except Replayed, which describes how a result
// was served, not what happened.
func appendResultBody(dst []byte, r *Result) []byte {
	ci := codeIndex(r.Code)
	dst = append(dst, ci)
	if ci == 0 {
		dst = appendString(dst, string(r.Code))
	}
	dst = appendString(dst, r.Message)
	dst = binary.AppendUvarint(dst, r.Seq)
	dst = binary.AppendVarint(dst, r.TimeMs)
	var flags byte
	if r.Account != (Account{}) {
		flags |= resultHasAccount
	}
	if r.Hold != (Hold{}) {
		flags |= resultHasHold
	}
	dst = append(dst, flags)
	if flags&resultHasAccount != 0 {
		dst = appendAccountBody(dst, &r.Account)
	}
	if flags&resultHasHold != 0 {
		dst = appendHoldBody(dst, &r.Hold)
	}
	dst = binary.AppendVarint(dst, r.CapturedMinor)
	return binary.AppendVarint(dst, r.ReleasedMinor)
}

func appendRecordBody(dst []byte, r *Record) []byte {
	dst = binary.AppendUvarint(dst, r.Seq)
	dst = appendOpBody(dst, &r.Op)
	dst = append(dst, r.Fingerprint[:]...)
	return appendResultBody(dst, &r.Result)
}

// AppendOp appends the encoding of op to dst.
func AppendOp(dst []byte, op Op) []byte { return appendOpBody(append(dst, codecVersion), &op) }

// AppendRequest appends the encoding of r to dst.
func AppendRequest(dst []byte, r Request) []byte {
	return appendRequestBody(append(dst, codecVersion), &r)
}

// commandCodecVersion2 starts the encoding of a command that carries
// SetVersion: the version-1 body, then SetVersion as a uvarint (never 0).
// Commands without it keep version 1, so a cluster writes entries that every
// binary decodes until one of its shards raises its version.
const commandCodecVersion2 byte = 2

// AppendCommand appends the encoding of c, a Raft log entry's payload, to dst.
func AppendCommand(dst []byte, c Command) []byte {
	if c.SetVersion == 0 {
		return appendCommandBody(append(dst, codecVersion), &c)
	}
	dst = appendCommandBody(append(dst, commandCodecVersion2), &c)
	return binary.AppendUvarint(dst, uint64(c.SetVersion))
}

// AppendResult appends the encoding of r to dst. Replayed is not encoded.
func AppendResult(dst []byte, r Result) []byte {
	return appendResultBody(append(dst, codecVersion), &r)
}

// AppendRecord appends the encoding of r to dst. Result.Replayed is not
// encoded.
func AppendRecord(dst []byte, r Record) []byte {
	return appendRecordBody(append(dst, codecVersion), &r)
}

// AppendAccount appends the encoding of a to dst.
func AppendAccount(dst []byte, a Account) []byte {
	return appendAccountBody(append(dst, codecVersion), &a)
}

// AppendHold appends the encoding of h to dst.
func AppendHold(dst []byte, h Hold) []byte { return appendHoldBody(append(dst, codecVersion), &h) }

// AppendAsset appends the encoding of a to dst.
func AppendAsset(dst []byte, a Asset) []byte {
	return appendAssetBody(append(dst, codecVersion), &a)
}

// fingerprintTag starts the fingerprinted bytes. The fingerprint is stored in
// dedup records and must stay stable across codec versions: if the op
// encoding ever changes, Fingerprint keeps hashing this (version 1) layout.
const fingerprintTag byte = 'F'

// Fingerprint identifies an op for deduplication: the first 16 bytes of the
// SHA-256 of its canonical encoding, every field included (the idempotency
// key too). A retry must carry the same op to be served the first result.
// It is the fingerprint of state machine version 1 (fingerprintFor).
func Fingerprint(op Op) [16]byte { return taggedFingerprint(fingerprintTag, &op) }

func taggedFingerprint(tag byte, op *Op) [16]byte {
	var buf [512]byte
	b := append(buf[:0], tag)
	b = appendOpBody(b, op)
	sum := sha256.Sum256(b)
	var fp [16]byte
	copy(fp[:], sum[:16])
	return fp
}

// ---- decoding ----

// decoder reads from s, one string copy of the input, so decoded strings are
// substrings of it and cost no allocation. The first error sticks; reads after
// it return zero values.
type decoder struct {
	s   string
	off int
	err error
}

// init starts decoding b, a top-level encoding: version byte first.
func (d *decoder) init(b []byte, what string) {
	*d = decoder{s: string(b)}
	if len(b) == 0 {
		d.fail("%s: empty input", what)
		return
	}
	if b[0] != codecVersion {
		d.fail("%s: unknown codec version %d", what, b[0])
		return
	}
	d.off = 1
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) finish(what string) error {
	if d.err == nil && d.off != len(d.s) {
		d.fail("%s: %d trailing bytes", what, len(d.s)-d.off)
	}
	return d.err
}

func (d *decoder) remaining() int { return len(d.s) - d.off }

func (d *decoder) byte1() byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.s) {
		d.fail("truncated at byte %d", d.off)
		return 0
	}
	c := d.s[d.off]
	d.off++
	return c
}

// uvarint reads a minimal-length uvarint.
func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	var x uint64
	var shift uint
	for i := 0; i < binary.MaxVarintLen64; i++ {
		if d.off >= len(d.s) {
			d.fail("truncated varint at byte %d", d.off)
			return 0
		}
		c := d.s[d.off]
		d.off++
		if c < 0x80 {
			if i == binary.MaxVarintLen64-1 && c > 1 {
				break
			}
			if c == 0 && i > 0 {
				d.fail("non-minimal varint at byte %d", d.off-1)
				return 0
			}
			return x | uint64(c)<<shift
		}
		x |= uint64(c&0x7f) << shift
		shift += 7
	}
	d.fail("varint overflows 64 bits at byte %d", d.off)
	return 0
}

func (d *decoder) varint() int64 {
	ux := d.uvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}

func (d *decoder) str() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > maxDecodeStringLen {
		d.fail("string of %d bytes at byte %d is above the limit %d", n, d.off, maxDecodeStringLen)
		return ""
	}
	if int(n) > d.remaining() {
		d.fail("truncated string at byte %d", d.off)
		return ""
	}
	s := d.s[d.off : d.off+int(n)]
	d.off += int(n)
	return s
}

// count reads a collection length, bounded by limit and by what the rest of
// the input could hold at minLen bytes per element.
func (d *decoder) count(what string, limit, minLen int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(limit) {
		d.fail("%s count %d is above the limit %d", what, n, limit)
		return 0
	}
	if n > uint64(d.remaining()/minLen) {
		d.fail("%s count %d does not fit in the %d remaining bytes", what, n, d.remaining())
		return 0
	}
	return int(n)
}

func (d *decoder) op(op *Op) {
	op.Kind = OpKind(d.byte1())
	op.Program = d.str()
	op.Member = d.str()
	op.Asset = d.str()
	op.IdempotencyKey = d.str()
	op.AmountMinor = d.varint()
	op.Scale = d.byte1()
	op.HoldKey = d.str()
	op.HoldTTLMs = d.varint()
	op.MaxBalanceMinor = d.varint()
	op.Memo = d.str()
}

func (d *decoder) request(r *Request) {
	flags := d.byte1()
	if flags&^requestLinked != 0 {
		d.fail("unknown request flags %#x", flags)
		return
	}
	r.Linked = flags&requestLinked != 0
	n := d.count("op", MaxBatchOps, minOpBodyLen)
	if d.err != nil {
		return
	}
	if n > 0 {
		r.Ops = make([]Op, n)
		for i := range r.Ops {
			d.op(&r.Ops[i])
		}
	}
}

func (d *decoder) command(c *Command) {
	c.TimeMs = d.varint()
	n := d.count("request", maxCommandRequests, minRequestBodyLen)
	if d.err != nil {
		return
	}
	if n > 0 {
		c.Requests = make([]Request, n)
		for i := range c.Requests {
			d.request(&c.Requests[i])
		}
	}
}

func (d *decoder) account(a *Account) {
	a.Key.Program = d.str()
	a.Key.Member = d.str()
	a.Key.Asset = d.str()
	a.State = AccountState(d.byte1())
	a.PostedMinor = d.varint()
	a.HeldMinor = d.varint()
	a.MaxBalanceMinor = d.varint()
	a.OpenedAtMs = d.varint()
	a.UpdatedAtMs = d.varint()
}

func (d *decoder) hold(h *Hold) {
	h.Program = d.str()
	h.Member = d.str()
	h.Key = d.str()
	h.Asset = d.str()
	h.AmountMinor = d.varint()
	h.State = HoldState(d.byte1())
	h.CreatedAtMs = d.varint()
	h.ExpiresAtMs = d.varint()
}

func (d *decoder) asset(a *Asset) {
	a.Program = d.str()
	a.Code = d.str()
	a.Scale = d.byte1()
}

func (d *decoder) result(r *Result) {
	ci := d.byte1()
	switch {
	case d.err != nil:
		return
	case ci == 0:
		c := Code(d.str())
		if d.err == nil && codeIndex(c) != 0 {
			d.fail("code %q spelled out instead of its byte", c)
			return
		}
		r.Code = c
	case int(ci) < len(codeTable):
		r.Code = codeTable[ci]
	default:
		d.fail("unknown code byte %d", ci)
		return
	}
	r.Message = d.str()
	r.Seq = d.uvarint()
	r.TimeMs = d.varint()
	flags := d.byte1()
	if flags&^(resultHasAccount|resultHasHold) != 0 {
		d.fail("unknown result flags %#x", flags)
		return
	}
	if flags&resultHasAccount != 0 {
		d.account(&r.Account)
		if d.err == nil && r.Account == (Account{}) {
			d.fail("result flags an account but it is zero")
			return
		}
	}
	if flags&resultHasHold != 0 {
		d.hold(&r.Hold)
		if d.err == nil && r.Hold == (Hold{}) {
			d.fail("result flags a hold but it is zero")
			return
		}
	}
	r.CapturedMinor = d.varint()
	r.ReleasedMinor = d.varint()
}

func (d *decoder) record(r *Record) {
	r.Seq = d.uvarint()
	d.op(&r.Op)
	if d.err != nil {
		return
	}
	if d.remaining() < len(r.Fingerprint) {
		d.fail("truncated fingerprint at byte %d", d.off)
		return
	}
	copy(r.Fingerprint[:], d.s[d.off:])
	d.off += len(r.Fingerprint)
	d.result(&r.Result)
}

// DecodeOp decodes an AppendOp encoding.
func DecodeOp(b []byte) (Op, error) {
	var op Op
	var d decoder
	d.init(b, "op")
	d.op(&op)
	if err := d.finish("op"); err != nil {
		return Op{}, err
	}
	return op, nil
}

// DecodeRequest decodes an AppendRequest encoding.
func DecodeRequest(b []byte) (Request, error) {
	var r Request
	var d decoder
	d.init(b, "request")
	d.request(&r)
	if err := d.finish("request"); err != nil {
		return Request{}, err
	}
	return r, nil
}

// DecodeCommand decodes an AppendCommand encoding.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	var d decoder
	v2 := len(b) > 0 && b[0] == commandCodecVersion2
	if v2 {
		d = decoder{s: string(b), off: 1}
	} else {
		d.init(b, "command")
	}
	d.command(&c)
	if v2 {
		sv := d.uvarint()
		if d.err == nil && (sv == 0 || sv > math.MaxUint32) {
			d.fail("command: set version %d out of range", sv)
		}
		c.SetVersion = uint32(sv)
	}
	if err := d.finish("command"); err != nil {
		return Command{}, err
	}
	return c, nil
}

// DecodeResult decodes an AppendResult encoding; Replayed is false.
func DecodeResult(b []byte) (Result, error) {
	var r Result
	var d decoder
	d.init(b, "result")
	d.result(&r)
	if err := d.finish("result"); err != nil {
		return Result{}, err
	}
	return r, nil
}

// DecodeRecord decodes an AppendRecord encoding.
func DecodeRecord(b []byte) (Record, error) {
	var r Record
	var d decoder
	d.init(b, "record")
	d.record(&r)
	if err := d.finish("record"); err != nil {
		return Record{}, err
	}
	return r, nil
}

// DecodeAccount decodes an AppendAccount encoding.
func DecodeAccount(b []byte) (Account, error) {
	var a Account
	var d decoder
	d.init(b, "account")
	d.account(&a)
	if err := d.finish("account"); err != nil {
		return Account{}, err
	}
	return a, nil
}

// DecodeHold decodes an AppendHold encoding.
func DecodeHold(b []byte) (Hold, error) {
	var h Hold
	var d decoder
	d.init(b, "hold")
	d.hold(&h)
	if err := d.finish("hold"); err != nil {
		return Hold{}, err
	}
	return h, nil
}

// DecodeAsset decodes an AppendAsset encoding.
func DecodeAsset(b []byte) (Asset, error) {
	var a Asset
	var d decoder
	d.init(b, "asset")
	d.asset(&a)
	if err := d.finish("asset"); err != nil {
		return Asset{}, err
	}
	return a, nil
}
