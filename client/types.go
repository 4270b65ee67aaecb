package client

import (
	"fmt"
	"time"

	"github.com/shopspring/decimal"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// Op is one mutating operation. Field use by kind is as in ledger.Op, with
// decimal amounts:
//   - OpenAccount: Program, Member, Asset, MaxBalance (nil = no limit).
//   - Credit, Debit: Program, Member, Asset, Amount, Memo.
//   - Hold: Program, Member, Asset, Amount, HoldTTL; the hold is named by
//     this op's IdempotencyKey.
//   - CaptureHold: Program, Member, HoldKey, Amount (zero = the whole hold;
//     the CaptureHold method refuses zero, CaptureHoldAll sends it).
//   - ReleaseHold: Program, Member, HoldKey.
//   - Freeze, Unfreeze, ReportLost, ReportFound, Close: Program, Member, Asset.
//
// DefineAsset is not an Op of Submit (it applies on every shard): use
// Client.DefineAsset.
type Op struct {
	Kind           ledger.OpKind
	Program        string
	Member         string
	Asset          string
	IdempotencyKey string
	Amount         decimal.Decimal
	HoldKey        string
	HoldTTL        time.Duration
	MaxBalance     *decimal.Decimal
	Memo           string
}

// Account is an account as the server reports it.
type Account struct {
	Program, Member, Asset string
	Scale                  uint8
	State                  string // ACTIVE, FROZEN, LOST, CLOSED
	Posted                 decimal.Decimal
	Held                   decimal.Decimal
	Available              decimal.Decimal
	MaxBalance             *decimal.Decimal // nil = no limit
	OpenedAtMs             int64
	UpdatedAtMs            int64
}

// Hold is a hold as the server reports it.
type Hold struct {
	Key         string // idempotency key of the Hold operation
	Asset       string
	Amount      decimal.Decimal
	State       string // OPEN, CAPTURED, RELEASED, EXPIRED
	CreatedAtMs int64
	ExpiresAtMs int64
}

// Result is the outcome of one operation.
type Result struct {
	Code     ledger.Code // CodeOK or a domain code such as INSUFFICIENT_FUNDS
	Message  string
	Replayed bool   // served from the dedup record: nothing changed now
	Seq      uint64 // shard-wide journal sequence
	TimeMs   int64  // log time the operation applied at
	Shard    uint32
	Account  *Account // the account after the operation, if any
	Hold     *Hold    // the hold after Hold, CaptureHold, ReleaseHold
	Captured decimal.Decimal
	Released decimal.Decimal
	// Indeterminate marks an op whose outcome is unknown: it may have
	// applied. Either its Submit part failed with an indeterminate error
	// (IsIndeterminate), and Code is that error's, not the op's outcome; or
	// the op was answered UNAVAILABLE, unrecorded (or, linked, its request
	// was), after an earlier attempt of the same request whose outcome is
	// unknown and which may still apply, since the unrecorded answer leaves
	// its key free; or the answer recorded nothing (not applied by this
	// call) while an earlier call of this Client left the key indeterminate
	// (or the record of such keys overflowed; see the package doc). Re-send it with the same key until an answer
	// the ledger recorded comes back.
	Indeterminate bool
}

// OK reports whether the operation succeeded.
func (r Result) OK() bool { return r.Code == ledger.CodeOK }

// Err returns nil for OK and a *ledger.Error with the result's code
// otherwise, so errors.Is(r.Err(), ledger.ErrInsufficientFunds) works. An
// Indeterminate result's error is an *Error with that code instead, so that
// IsIndeterminate sees it (errors.Is matches the code all the same): a
// caller that checks only the error must not take it for a refusal.
func (r Result) Err() error {
	switch {
	case r.Code == ledger.CodeOK:
		return nil
	case r.Indeterminate:
		return &Error{Code: r.Code, Message: r.Message, Shard: int(r.Shard), OpIndex: -1, Indeterminate: true}
	}
	return ledger.Errorf(r.Code, r.Message)
}

// JournalEntry is one stored operation with its outcome.
type JournalEntry struct {
	Seq    uint64
	Op     Op
	Result Result
}

// Node is one node of the cluster.
type Node struct {
	ID, GRPCAddr, RaftAddr string
}

// ShardLeader is where a shard's leader is, as the answering node sees it.
// LeaderAddr is "" while the shard has no known leader (an election).
type ShardLeader struct {
	Shard      uint32
	LeaderID   string
	LeaderAddr string
}

// ClusterInfo is one node's view of the cluster.
type ClusterInfo struct {
	NodeID  string // the answering node
	Shards  int
	Nodes   []Node
	Leaders []ShardLeader
}

// ShardState is one node's local view of one shard (not linearizable).
type ShardState struct {
	Shard             uint32
	AppliedIndex      uint64
	StateHash         []byte
	ConservationOK    bool
	ConservationError string
	Leader            bool
	LastTimeMs        int64
	// Version is the rules version the shard applies on that node, and
	// MaxVersion the newest that node allows (0: it predates versions).
	Version    uint32
	MaxVersion uint32
	// VoteGuarded is set while that replica refuses to vote or run for
	// leader because it may lack entries it acknowledged (wiped data, a
	// repaired log tail) and has not caught up yet.
	VoteGuarded bool
	// Misconfigured is set while that node refuses every request because
	// a majority of its cluster is not known to run its shard count, or
	// its clock is known to be off from a majority's.
	Misconfigured bool
	// NodeID is the answering node's ID ("" from a binary before it).
	NodeID string
	// RaftLastIndex is the index of that replica's last Raft entry, in its
	// log or its snapshot (0 from a binary before it).
	RaftLastIndex uint64
	// CheckIndex, CheckHash and CheckError are that replica's newest
	// consistency check: its state hash right after applying entry
	// CheckIndex (0: none yet), which every replica computes at the same
	// indexes. CheckError says the walk failed or the state breaks
	// conservation.
	CheckIndex uint64
	CheckHash  []byte
	CheckError string
	// ReplicaChecks, from the shard's leader, are its newest comparisons
	// of its checks with the other replicas'.
	ReplicaChecks []ReplicaCheck
}

// ReplicaCheck is a leader's comparison of its consistency check with
// another replica's: Match is false when that replica's state hash
// differed after the same log entries, or its walk failed.
type ReplicaCheck struct {
	NodeID string
	Index  uint64
	Match  bool
	// Error is set when that replica's walk failed (Match is then false).
	Error string
}

// opToProto converts an op for the wire. Amounts that an op kind does not
// carry are sent as "" when zero; Credit, Debit and Hold always send theirs,
// so a zero amount is rejected by the server as INVALID_AMOUNT rather than
// read as missing.
func opToProto(op Op) *tallypb.Op {
	p := &tallypb.Op{
		Kind:           tallypb.OpKind(op.Kind),
		Program:        op.Program,
		Member:         op.Member,
		Asset:          op.Asset,
		IdempotencyKey: op.IdempotencyKey,
		HoldKey:        op.HoldKey,
		HoldTtlMs:      op.HoldTTL.Milliseconds(),
		Memo:           op.Memo,
	}
	switch {
	case op.Kind == ledger.OpCredit, op.Kind == ledger.OpDebit, op.Kind == ledger.OpHold:
		p.Amount = op.Amount.String()
	case !op.Amount.IsZero():
		p.Amount = op.Amount.String()
	}
	if op.MaxBalance != nil {
		p.MaxBalance = op.MaxBalance.String()
	}
	return p
}

// opFromProto converts an op read back from the journal.
func opFromProto(p *tallypb.Op) (Op, error) {
	op := Op{
		Kind:           ledger.OpKind(p.GetKind()),
		Program:        p.GetProgram(),
		Member:         p.GetMember(),
		Asset:          p.GetAsset(),
		IdempotencyKey: p.GetIdempotencyKey(),
		HoldKey:        p.GetHoldKey(),
		HoldTTL:        time.Duration(p.GetHoldTtlMs()) * time.Millisecond,
		Memo:           p.GetMemo(),
	}
	var err error
	if op.Amount, err = parseDecimal("amount", p.GetAmount()); err != nil {
		return Op{}, err
	}
	if op.MaxBalance, err = parseOptionalDecimal("max_balance", p.GetMaxBalance()); err != nil {
		return Op{}, err
	}
	return op, nil
}

func resultFromProto(p *tallypb.OpResult) (Result, error) {
	r := Result{
		Code:     ledger.Code(p.GetCode()),
		Message:  p.GetMessage(),
		Replayed: p.GetReplayed(),
		Seq:      p.GetSeq(),
		TimeMs:   p.GetTimeMs(),
		Shard:    p.GetShard(),
	}
	if r.Code == "" {
		return Result{}, fmt.Errorf("result without a code")
	}
	var err error
	if r.Account, err = accountFromProto(p.GetAccount()); err != nil {
		return Result{}, err
	}
	if r.Hold, err = holdFromProto(p.GetHold()); err != nil {
		return Result{}, err
	}
	if r.Captured, err = parseDecimal("captured", p.GetCaptured()); err != nil {
		return Result{}, err
	}
	if r.Released, err = parseDecimal("released", p.GetReleased()); err != nil {
		return Result{}, err
	}
	return r, nil
}

// accountFromProto returns nil for a missing account.
func accountFromProto(p *tallypb.Account) (*Account, error) {
	if p == nil {
		return nil, nil
	}
	if p.GetScale() > ledger.MaxScale {
		return nil, fmt.Errorf("account scale %d above %d", p.GetScale(), ledger.MaxScale)
	}
	a := &Account{
		Program:     p.GetProgram(),
		Member:      p.GetMember(),
		Asset:       p.GetAsset(),
		Scale:       uint8(p.GetScale()),
		State:       p.GetState(),
		OpenedAtMs:  p.GetOpenedAtMs(),
		UpdatedAtMs: p.GetUpdatedAtMs(),
	}
	var err error
	if a.Posted, err = parseDecimal("posted", p.GetPosted()); err != nil {
		return nil, err
	}
	if a.Held, err = parseDecimal("held", p.GetHeld()); err != nil {
		return nil, err
	}
	if a.Available, err = parseDecimal("available", p.GetAvailable()); err != nil {
		return nil, err
	}
	if a.MaxBalance, err = parseOptionalDecimal("max_balance", p.GetMaxBalance()); err != nil {
		return nil, err
	}
	return a, nil
}

// holdFromProto returns nil for a missing hold.
func holdFromProto(p *tallypb.Hold) (*Hold, error) {
	if p == nil {
		return nil, nil
	}
	amount, err := parseDecimal("hold amount", p.GetAmount())
	if err != nil {
		return nil, err
	}
	return &Hold{
		Key:         p.GetKey(),
		Asset:       p.GetAsset(),
		Amount:      amount,
		State:       p.GetState(),
		CreatedAtMs: p.GetCreatedAtMs(),
		ExpiresAtMs: p.GetExpiresAtMs(),
	}, nil
}

func journalEntryFromProto(p *tallypb.JournalEntry) (JournalEntry, error) {
	if p == nil {
		return JournalEntry{}, fmt.Errorf("missing journal entry")
	}
	op, err := opFromProto(p.GetOp())
	if err != nil {
		return JournalEntry{}, err
	}
	res, err := resultFromProto(p.GetResult())
	if err != nil {
		return JournalEntry{}, err
	}
	return JournalEntry{Seq: p.GetSeq(), Op: op, Result: res}, nil
}

func clusterInfoFromProto(p *tallypb.ClusterInfoResponse) ClusterInfo {
	info := ClusterInfo{NodeID: p.GetNodeId(), Shards: int(p.GetShards())}
	for _, n := range p.GetNodes() {
		info.Nodes = append(info.Nodes, Node{ID: n.GetId(), GRPCAddr: n.GetGrpcAddr(), RaftAddr: n.GetRaftAddr()})
	}
	for _, l := range p.GetLeaders() {
		info.Leaders = append(info.Leaders, ShardLeader{Shard: l.GetShard(), LeaderID: l.GetLeaderId(), LeaderAddr: l.GetLeaderGrpcAddr()})
	}
	return info
}

// parseDecimal parses a decimal from the server; "" is zero.
func parseDecimal(field, s string) (decimal.Decimal, error) {
	if s == "" {
		return decimal.Zero, nil
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return decimal.Zero, fmt.Errorf("%s: %q is not a decimal: %w", field, s, err)
	}
	return d, nil
}

// parseOptionalDecimal parses a decimal from the server; "" is nil.
func parseOptionalDecimal(field, s string) (*decimal.Decimal, error) {
	if s == "" {
		return nil, nil
	}
	d, err := parseDecimal(field, s)
	if err != nil {
		return nil, err
	}
	return &d, nil
}
