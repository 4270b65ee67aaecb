package ledger

import "fmt"

// Limits. Each is enforced by Validate before an operation can reach the log.
const (
	// MaxBatchOps bounds one request so that one Raft entry stays well under
	// the transport's message size and one apply stays short.
	MaxBatchOps = 8000
	// MaxIDLen bounds program, member, idempotency key and hold key lengths:
	// they are stored inside Pebble keys and in every journal record.
	MaxIDLen = 128
	// MaxAssetCodeLen bounds asset codes ("POINTS", "CNY").
	MaxAssetCodeLen = 16
	// MaxScale is the largest number of decimal places an asset may have;
	// 10^18 still fits in int64.
	MaxScale = 18
	// MaxMemoLen bounds the free-text memo stored in the journal.
	MaxMemoLen = 256
	// MaxHoldTTLMs bounds a hold's lifetime (90 days); holds are for checkouts.
	MaxHoldTTLMs = 90 * 24 * 3600 * 1000
	// MaxExpiriesPerEntry bounds how many expired holds one log entry releases,
	// so a burst of expiries cannot make one apply arbitrarily long.
	MaxExpiriesPerEntry = 1000
)

// ControlMember is the reserved member name of a program's control account on
// each shard. Every posting moves value between a member account and the
// control account of the same (program, asset) on the same shard, so per shard
// and (program, asset) all balances sum to zero. Member names may not start
// with '$'.
const ControlMember = "$control"

// Asset is a kind of value a program keeps: points (scale 0), stored value in
// CNY (scale 2), growth value. Amounts of an asset are integers of minor units
// (10^-Scale of one unit). An asset, once defined, never changes.
type Asset struct {
	Program string
	Code    string
	Scale   uint8
}

// AccountKey names one account: a member's balance of one asset in one program.
type AccountKey struct {
	Program string
	Member  string
	Asset   string
}

func (k AccountKey) String() string { return k.Program + "/" + k.Member + "/" + k.Asset }

// AccountState is the lifecycle state of an account.
type AccountState uint8

const (
	StateUnknown AccountState = iota
	// StateActive accepts every operation.
	StateActive
	// StateFrozen (fraud, dispute) rejects credit, debit, hold and capture with
	// ACCOUNT_FROZEN; releases and expiries still run so held value returns.
	StateFrozen
	// StateLost (card reported lost) rejects debit, hold and capture with
	// ACCOUNT_LOST; credits (refunds) still land so no value is stranded.
	StateLost
	// StateClosed is final and rejects everything with ACCOUNT_CLOSED.
	StateClosed
)

var stateNames = [...]string{"UNKNOWN", "ACTIVE", "FROZEN", "LOST", "CLOSED"}

func (s AccountState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("AccountState(%d)", uint8(s))
}

// Account is one balance. Invariants (checked by CheckAccount):
// 0 <= HeldMinor <= PostedMinor; MaxBalanceMinor == 0 or PostedMinor <= MaxBalanceMinor.
type Account struct {
	Key             AccountKey
	State           AccountState
	PostedMinor     int64
	HeldMinor       int64
	MaxBalanceMinor int64 // 0 means no limit
	OpenedAtMs      int64 // log time of OpenAccount
	UpdatedAtMs     int64 // log time of the last change
}

// AvailableMinor is what a debit or a new hold may take.
func (a Account) AvailableMinor() int64 { return a.PostedMinor - a.HeldMinor }

// HoldState is the lifecycle state of a hold.
type HoldState uint8

const (
	HoldUnknown HoldState = iota
	HoldOpen
	HoldCaptured
	HoldReleased
	HoldExpired
)

var holdStateNames = [...]string{"UNKNOWN", "OPEN", "CAPTURED", "RELEASED", "EXPIRED"}

func (s HoldState) String() string {
	if int(s) < len(holdStateNames) {
		return holdStateNames[s]
	}
	return fmt.Sprintf("HoldState(%d)", uint8(s))
}

// Hold reserves part of an account's available balance for a checkout
// (try-confirm-cancel). A hold is named by the idempotency key of the Hold
// operation that created it, unique per program.
type Hold struct {
	Program     string
	Member      string
	Key         string // idempotency key of the Hold operation
	Asset       string
	AmountMinor int64
	State       HoldState
	CreatedAtMs int64
	ExpiresAtMs int64 // log time at which the hold expires: an entry at that log time or later releases it (ExpireHolds)
}

// OpKind is the kind of a mutating operation.
type OpKind uint8

const (
	OpUnknown OpKind = iota
	OpDefineAsset
	OpOpenAccount
	OpCredit
	OpDebit
	OpHold
	OpCaptureHold
	OpReleaseHold
	OpFreeze
	OpUnfreeze
	OpReportLost
	OpReportFound
	OpClose
	// OpExpireHold is written by the ledger, never sent: from Version3,
	// the journal entry of a hold's expiry (ExpiryKey).
	OpExpireHold
	opKindEnd
)

var opKindNames = [...]string{"UNKNOWN", "DEFINE_ASSET", "OPEN_ACCOUNT", "CREDIT", "DEBIT", "HOLD",
	"CAPTURE_HOLD", "RELEASE_HOLD", "FREEZE", "UNFREEZE", "REPORT_LOST", "REPORT_FOUND", "CLOSE", "EXPIRE_HOLD"}

func (k OpKind) String() string {
	if int(k) < len(opKindNames) {
		return opKindNames[k]
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Op is one mutating operation as it travels in the log. Amounts are already
// minor units: decimals are converted at the API edge (ParseAmount).
//
// Field use by kind:
//   - DefineAsset: Program, Asset, Scale (Member empty).
//   - OpenAccount: Program, Member, Asset, MaxBalanceMinor (0 = no limit).
//   - Credit, Debit: Program, Member, Asset, AmountMinor, Memo.
//   - Hold: Program, Member, Asset, AmountMinor, HoldTTLMs. The hold is named
//     by this op's IdempotencyKey.
//   - CaptureHold: Program, Member, HoldKey, AmountMinor (0 = the whole hold);
//     the rest of the hold is released.
//   - ReleaseHold: Program, Member, HoldKey.
//   - Freeze, Unfreeze, ReportLost, ReportFound, Close: Program, Member, Asset.
//   - ExpireHold (written by the ledger, refused from clients): Program,
//     Member, Asset, HoldKey, AmountMinor and Scale (what returned to the
//     account); IdempotencyKey is ExpiryKey(HoldKey).
//
// Scale, for every kind that carries an amount, is the scale the API edge used
// to convert the amount; apply rejects the op with SCALE_MISMATCH if it is not
// the asset's scale (defence in depth: assets never change).
type Op struct {
	Kind            OpKind
	Program         string
	Member          string
	Asset           string
	IdempotencyKey  string
	AmountMinor     int64
	Scale           uint8
	HoldKey         string
	HoldTTLMs       int64
	MaxBalanceMinor int64
	Memo            string
}

// Request is what one client call asks for: a batch of operations applied in
// order. If Linked, all operations must be on one (program, member) and they
// apply all or none.
type Request struct {
	Linked bool
	Ops    []Op
}

// Command is the payload of one Raft log entry. The leader packs concurrent
// requests of one shard into one command and stamps it with its clock; apply
// uses max(TimeMs, last applied time) so log time never goes backwards. A
// command with no requests is a tick: it only advances time and expires holds.
type Command struct {
	TimeMs   int64
	Requests []Request
	// SetVersion, when above the shard's version, raises it before the
	// requests apply (see Version1). A command that carries it is encoded
	// in command codec version 2, which binaries that predate versions
	// refuse to decode, so they stop instead of applying it.
	SetVersion uint32
}

// Result is the outcome of one operation. It is stored, with the fingerprint
// of the op, as the operation's dedup record; a retry with the same key and
// the same op returns it with Replayed set.
type Result struct {
	Code     Code
	Message  string
	Replayed bool   // set when served from the dedup record; never stored
	Seq      uint64 // shard-wide journal sequence of this operation's record
	TimeMs   int64  // log time the operation applied at
	// Account after the operation (zero for DefineAsset and failures before
	// the account was found).
	Account Account
	// Hold after the operation, for Hold, CaptureHold and ReleaseHold.
	Hold Hold
	// CapturedMinor and ReleasedMinor are set by CaptureHold and ReleaseHold.
	CapturedMinor int64
	ReleasedMinor int64
}

// OK reports whether the operation succeeded.
func (r Result) OK() bool { return r.Code == CodeOK }

// Record is the dedup record and journal entry of one operation, stored under
// (program, idempotency key). It lives as long as the journal.
type Record struct {
	Seq         uint64
	Op          Op
	Fingerprint [16]byte // Fingerprint(Op); a retry must match it
	Result      Result
}

// HoldRef names a hold in the expiry index.
type HoldRef struct {
	Program     string
	Member      string
	Key         string
	ExpiresAtMs int64
}
