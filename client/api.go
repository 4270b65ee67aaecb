package client

import (
	"context"
	"time"

	"github.com/shopspring/decimal"
	"google.golang.org/grpc/codes"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// Convenience methods apply one operation each (coalesced with other callers'
// when Config.Coalesce is set). They return one of:
//   - a request-level failure: an *Error and a zero Result;
//   - the op's own outcome, a failure: its Result and the op's code as a
//     *ledger.Error, so that errors.Is(err, ledger.ErrInsufficientFunds)
//     works;
//   - an op answered with something the ledger did not record (UNAVAILABLE,
//     say: not applied by this call) while an attempt of unknown outcome may
//     still apply it (Result.Indeterminate): its Result and an *Error of
//     that code that satisfies IsIndeterminate;
//   - success: the Result and nil.
//
// Whatever the case, errors.Is matches the code, and IsIndeterminate tells
// whether the op may have applied as far as this Client knows: it remembers
// the keys of its own indeterminate calls, each for a window that every
// unrecorded answer for it renews (see the package doc). A key left
// indeterminate by another process (another Client, a tallyctl run), or
// re-sent only after the window, is not known here: there a "not applied"
// answer does not settle it, and the caller must keep re-sending until a
// recorded answer comes. A replayed result (same key, same op) is OK with
// Replayed set.

// Apply submits one op; the convenience methods below are built on it.
func (c *Client) Apply(ctx context.Context, op Op) (Result, error) {
	res, err := c.Submit(ctx, []Op{op}, false)
	if err != nil {
		return Result{}, err
	}
	return res[0], res[0].Err()
}

// DefineAsset defines an asset of a program on every shard (scale = decimal
// places of its amounts). It is idempotent per key; defining an existing
// asset with another scale fails with ASSET_EXISTS. The request goes to the
// leader of shard 0, which applies it on every shard; NOT_LEADER redirects
// are followed, to another shard's leader if the answer names one. The
// shards apply it one after another, and a non-OK result (the key used by
// another op on some shard, say) can come after earlier shards defined it:
// defining an asset again with its scale is a no-op, so calling DefineAsset
// again, with a fresh key if the key was the trouble, completes it.
func (c *Client) DefineAsset(ctx context.Context, program, asset string, scale uint8, key string) (Result, error) {
	req := &tallypb.DefineAssetRequest{Program: program, Asset: asset, Scale: uint32(scale), IdempotencyKey: key}
	// It does not go through Submit, so it applies the rule of open keys
	// (openkeys.go) itself.
	open := openKey{program: program, key: key, shard: defineAssetShard}
	fl := c.open.inflight.take(c.open.inflight.add(make([]flightHold, 0, 1), open))
	defer fl.end()
	var resp *tallypb.DefineAssetResponse
	if e := c.invoke(ctx, 0, true, true, func(actx context.Context, lc tallypb.LedgerClient) error {
		r, err := lc.DefineAsset(actx, req)
		if err != nil {
			return err
		}
		resp = r
		return nil
	}); e != nil {
		if e.Indeterminate {
			c.open.answer(open, answerUnknown)
		} else if c.open.answer(open, answerUnrecorded) || fl.overlapped(open) {
			e = stillOpen(e)
		}
		return Result{}, e
	}
	r, err := resultFromProto(resp.GetResult())
	if err != nil {
		// The server answered, so the definition may have applied.
		e := newError(ledger.CodeInternal, -1, "define asset: bad result from server: %v", err)
		e.Indeterminate = true
		c.open.answer(open, answerUnknown)
		return Result{}, e
	}
	a := answerRecorded
	if !recordsAnswer(resp.GetResult()) {
		a = answerUnrecorded
	}
	if c.open.answer(open, a) || (a == answerUnrecorded && fl.overlapped(open)) {
		r.Indeterminate = true
	}
	return r, r.Err()
}

// OpenAccount opens a member's account of an asset; maxBalance (nil = none)
// caps its posted balance.
func (c *Client) OpenAccount(ctx context.Context, program, member, asset string, maxBalance *decimal.Decimal, key string) (Result, error) {
	return c.Apply(ctx, Op{Kind: ledger.OpOpenAccount, Program: program, Member: member, Asset: asset, MaxBalance: maxBalance, IdempotencyKey: key})
}

// Credit adds amount to an account (earn, top-up, refund).
func (c *Client) Credit(ctx context.Context, program, member, asset string, amount decimal.Decimal, key, memo string) (Result, error) {
	return c.Apply(ctx, Op{Kind: ledger.OpCredit, Program: program, Member: member, Asset: asset, Amount: amount, IdempotencyKey: key, Memo: memo})
}

// Debit takes amount from an account's available balance (redeem, pay).
func (c *Client) Debit(ctx context.Context, program, member, asset string, amount decimal.Decimal, key, memo string) (Result, error) {
	return c.Apply(ctx, Op{Kind: ledger.OpDebit, Program: program, Member: member, Asset: asset, Amount: amount, IdempotencyKey: key, Memo: memo})
}

// Hold reserves amount of an account's available balance for ttl; the hold
// is named by key (pass it to CaptureHold or ReleaseHold).
func (c *Client) Hold(ctx context.Context, program, member, asset string, amount decimal.Decimal, ttl time.Duration, key string) (Result, error) {
	return c.Apply(ctx, Op{Kind: ledger.OpHold, Program: program, Member: member, Asset: asset, Amount: amount, HoldTTL: ttl, IdempotencyKey: key})
}

// CaptureHold debits amount of the hold named holdKey and releases the
// rest. amount must be positive: a zero is INVALID_AMOUNT here, not "the
// whole hold" (a computed amount that came out zero must not take it all);
// use CaptureHoldAll for that.
func (c *Client) CaptureHold(ctx context.Context, program, member, holdKey string, amount decimal.Decimal, key string) (Result, error) {
	op := Op{Kind: ledger.OpCaptureHold, Program: program, Member: member, HoldKey: holdKey, Amount: amount, IdempotencyKey: key}
	if !amount.IsPositive() {
		// Indeterminate if the key is open, as Submit's own refusals are.
		return Result{}, c.refusedLocally(newError(ledger.CodeInvalidAmount, -1,
			"capture: amount %s is not positive (CaptureHoldAll captures the whole hold)", amount), []Op{op}, c.Shards())
	}
	return c.Apply(ctx, op)
}

// CaptureHoldAll debits the whole hold named holdKey.
func (c *Client) CaptureHoldAll(ctx context.Context, program, member, holdKey, key string) (Result, error) {
	return c.Apply(ctx, Op{Kind: ledger.OpCaptureHold, Program: program, Member: member, HoldKey: holdKey, IdempotencyKey: key})
}

// ReleaseHold releases the hold named holdKey.
func (c *Client) ReleaseHold(ctx context.Context, program, member, holdKey, key string) (Result, error) {
	return c.Apply(ctx, Op{Kind: ledger.OpReleaseHold, Program: program, Member: member, HoldKey: holdKey, IdempotencyKey: key})
}

// Freeze freezes an account (fraud, dispute).
func (c *Client) Freeze(ctx context.Context, program, member, asset, key string) (Result, error) {
	return c.stateOp(ctx, ledger.OpFreeze, program, member, asset, key)
}

// Unfreeze makes a frozen account active again.
func (c *Client) Unfreeze(ctx context.Context, program, member, asset, key string) (Result, error) {
	return c.stateOp(ctx, ledger.OpUnfreeze, program, member, asset, key)
}

// ReportLost marks an account's card lost: debits, holds and captures are
// refused (ACCOUNT_LOST) until it is found; credits and releases still apply.
func (c *Client) ReportLost(ctx context.Context, program, member, asset, key string) (Result, error) {
	return c.stateOp(ctx, ledger.OpReportLost, program, member, asset, key)
}

// ReportFound makes a lost account active again.
func (c *Client) ReportFound(ctx context.Context, program, member, asset, key string) (Result, error) {
	return c.stateOp(ctx, ledger.OpReportFound, program, member, asset, key)
}

// CloseAccount closes an account for good (its balance must be zero).
func (c *Client) CloseAccount(ctx context.Context, program, member, asset, key string) (Result, error) {
	return c.stateOp(ctx, ledger.OpClose, program, member, asset, key)
}

func (c *Client) stateOp(ctx context.Context, kind ledger.OpKind, program, member, asset, key string) (Result, error) {
	return c.Apply(ctx, Op{Kind: kind, Program: program, Member: member, Asset: asset, IdempotencyKey: key})
}

// GetAccount reads an account from its shard's leader (linearizable).
func (c *Client) GetAccount(ctx context.Context, program, member, asset string) (Account, error) {
	shard := c.ShardOf(program, member)
	if c.cfg.Coalesce && !c.noGetAccounts.Load() {
		// Checked before it shares a request with other callers' reads, by
		// the rules the server applies, so a bad read fails only its caller.
		if err := ledger.ValidateAccountKey(ledger.AccountKey{Program: program, Member: member, Asset: asset}); err != nil {
			return Account{}, newError(ledger.CodeOf(err), shard, "get account: %v", err)
		}
		q, e := c.readQueueFor(shard)
		if e != nil {
			return Account{}, e
		}
		r, e := q.read(ctx, &tallypb.AccountRef{Program: program, Member: member, Asset: asset})
		if e != nil && e.GRPCCode == codes.Unimplemented {
			// A server from before GetAccounts: read one by one from now on.
			c.noGetAccounts.Store(true)
			return c.GetAccount(ctx, program, member, asset)
		}
		if e != nil {
			return Account{}, e
		}
		if r.GetCode() == string(ledger.CodeAccountNotFound) {
			return Account{}, newError(ledger.CodeAccountNotFound, shard, "no account %s/%s/%s", program, member, asset)
		}
		read, e := accountReadFromProto(r, shard)
		if e != nil {
			return Account{}, e
		}
		return read.Account, nil
	}
	req := &tallypb.GetAccountRequest{Program: program, Member: member, Asset: asset}
	var resp *tallypb.GetAccountResponse
	if e := c.invoke(ctx, shard, false, false, func(actx context.Context, lc tallypb.LedgerClient) error {
		r, err := lc.GetAccount(actx, req)
		if err != nil {
			return err
		}
		resp = r
		return nil
	}); e != nil {
		return Account{}, e
	}
	a, err := accountFromProto(resp.GetAccount())
	if err != nil {
		return Account{}, newError(ledger.CodeInternal, shard, "get account: bad answer from server: %v", err)
	}
	if a == nil {
		return Account{}, newError(ledger.CodeInternal, shard, "get account: answer without an account")
	}
	return *a, nil
}

// GetOperation returns the stored outcome of the operation with idempotency
// key of program (member routes the read to the member's shard).
// found=false means it had not applied when the read was served; it does
// not settle an indeterminate call, because an attempt of that call may
// still be queued at the leader or in a Raft entry not yet committed (even
// across an election) and apply afterwards. Settle one by re-sending the
// same operation with the same key: that returns its stored result, or
// applies it once.
func (c *Client) GetOperation(ctx context.Context, program, member, key string) (bool, JournalEntry, error) {
	shard := c.ShardOf(program, member)
	req := &tallypb.GetOperationRequest{Program: program, Member: member, IdempotencyKey: key}
	var resp *tallypb.GetOperationResponse
	if e := c.invoke(ctx, shard, false, false, func(actx context.Context, lc tallypb.LedgerClient) error {
		r, err := lc.GetOperation(actx, req)
		if err != nil {
			return err
		}
		resp = r
		return nil
	}); e != nil {
		return false, JournalEntry{}, e
	}
	if !resp.GetFound() {
		return false, JournalEntry{}, nil
	}
	entry, err := journalEntryFromProto(resp.GetEntry())
	if err != nil {
		return false, JournalEntry{}, newError(ledger.CodeInternal, shard, "get operation: bad answer from server: %v", err)
	}
	entry.Result.Shard = uint32(shard)
	return true, entry, nil
}

// ListJournal lists a member's successful operations, newest first: up to
// pageSize (0 = the server's default) with seq < beforeSeq (0 = from the
// newest). nextBeforeSeq is the beforeSeq of the next page, 0 at the end.
// asset "" lists every asset. A server looks at a bounded number of entries
// per page, so with an asset filter a page may be short, or empty, and not
// the last: page on until nextBeforeSeq is 0.
func (c *Client) ListJournal(ctx context.Context, program, member, asset string, pageSize int, beforeSeq uint64) ([]JournalEntry, uint64, error) {
	if pageSize < 0 {
		return nil, 0, newError(ledger.CodeInvalidArgument, -1, "list journal: negative page size %d", pageSize)
	}
	shard := c.ShardOf(program, member)
	req := &tallypb.ListJournalRequest{Program: program, Member: member, Asset: asset, PageSize: uint32(min(pageSize, 1<<31)), BeforeSeq: beforeSeq}
	var resp *tallypb.ListJournalResponse
	if e := c.invoke(ctx, shard, false, false, func(actx context.Context, lc tallypb.LedgerClient) error {
		r, err := lc.ListJournal(actx, req)
		if err != nil {
			return err
		}
		resp = r
		return nil
	}); e != nil {
		return nil, 0, e
	}
	entries := make([]JournalEntry, 0, len(resp.GetEntries()))
	for _, p := range resp.GetEntries() {
		entry, err := journalEntryFromProto(p)
		if err != nil {
			return nil, 0, newError(ledger.CodeInternal, shard, "list journal: bad answer from server: %v", err)
		}
		entry.Result.Shard = uint32(shard)
		entries = append(entries, entry)
	}
	return entries, resp.GetNextBeforeSeq(), nil
}

// ClusterInfo asks the known nodes, in turn, for their view of the cluster
// and returns the first answer; the client's routing cache is refreshed with
// it.
func (c *Client) ClusterInfo(ctx context.Context) (ClusterInfo, error) {
	c.mu.Lock()
	addrs := append([]string(nil), c.nodeAddrs...)
	c.mu.Unlock()
	var last *Error
	for _, addr := range addrs {
		info, e := c.clusterInfoFrom(ctx, addr, min(c.cfg.RequestTimeout, maxClusterInfoTimeout))
		if e == nil && info.Shards > 0 {
			c.applyClusterInfo(info)
			return info, nil
		}
		if e != nil {
			last = e
		}
		if ctx.Err() != nil {
			break
		}
	}
	if last == nil {
		last = newError(ledger.CodeUnavailable, -1, "no node answered ClusterInfo")
	}
	return ClusterInfo{}, last
}

// ShardState asks the node at addr (which need not be a leader) for its local
// view of shard, in one attempt: operators and the fault harness compare
// replicas, so the answer must come from that node. It asks for the full
// state: the state hash and the conservation check scan the whole shard.
func (c *Client) ShardState(ctx context.Context, addr string, shard uint32) (ShardState, error) {
	return c.shardState(ctx, addr, shard, true)
}

// ShardSummary is ShardState without the scan: StateHash is empty and
// ConservationOK false, the rest (applied index, consistency checks, ...)
// as ShardState reports it. It costs the node nothing.
func (c *Client) ShardSummary(ctx context.Context, addr string, shard uint32) (ShardState, error) {
	return c.shardState(ctx, addr, shard, false)
}

func (c *Client) shardState(ctx context.Context, addr string, shard uint32, full bool) (ShardState, error) {
	lc, err := c.ledgerClient(addr)
	if err != nil {
		return ShardState{}, giveUpError(err, int(shard), nil, false)
	}
	actx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	resp, err := lc.ShardState(actx, &tallypb.ShardStateRequest{Shard: shard, Full: full})
	if err != nil {
		return ShardState{}, fromRPC(err, int(shard))
	}
	var checks []ReplicaCheck
	for _, r := range resp.GetReplicaChecks() {
		checks = append(checks, ReplicaCheck{NodeID: r.GetNodeId(), Index: r.GetIndex(), Match: r.GetMatch(), Error: r.GetError()})
	}
	return ShardState{
		CheckIndex:        resp.GetCheckIndex(),
		CheckHash:         resp.GetCheckHash(),
		CheckError:        resp.GetCheckError(),
		ReplicaChecks:     checks,
		Shard:             resp.GetShard(),
		AppliedIndex:      resp.GetAppliedIndex(),
		StateHash:         resp.GetStateHash(),
		ConservationOK:    resp.GetConservationOk(),
		ConservationError: resp.GetConservationError(),
		Leader:            resp.GetLeader(),
		LastTimeMs:        resp.GetLastTimeMs(),
		Version:           resp.GetVersion(),
		MaxVersion:        resp.GetMaxVersion(),
		VoteGuarded:       resp.GetVoteGuarded(),
		RaftLastIndex:     resp.GetRaftLastIndex(),
		Misconfigured:     resp.GetMisconfigured(),
		NodeID:            resp.GetNodeId(),
	}, nil
}
