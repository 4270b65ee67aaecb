package node

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/metadata"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/fsm"
	"github.com/tally-ledger/tally/ledger"
)

// Page sizes of ListJournal.
const (
	defaultJournalPage = 50
	maxJournalPage     = 1000
)

// Placeholders for validateRead when a read names no asset or no key.
const (
	anyAsset = "X"
	noKey    = "read"
)

// validateRead checks a read's identifiers with the very rules writes use
// (ledger.Validate on a probe op), so a malformed program, member, asset or
// key gets the same code whether it is read or written.
func validateRead(program, member, asset, key string) error {
	return ledger.Validate(ledger.Op{Kind: ledger.OpFreeze, Program: program, Member: member, Asset: asset, IdempotencyKey: key})
}

// server implements the gRPC API on top of the node's shards.
type server struct {
	tallypb.UnimplementedLedgerServer
	n *Node
}

func (sv *server) shardFor(program, member string) *shard {
	return sv.n.shards[ledger.ShardOf(program, member, len(sv.n.shards))]
}

func (sv *server) observe(rpc string, start time.Time, err error) {
	sv.n.metrics.requestLatency.WithLabelValues(rpc, string(codeOfErr(err))).Observe(time.Since(start).Seconds())
}

func codeOfErr(err error) ledger.Code {
	if err == nil {
		return ledger.CodeOK
	}
	var de *domainError
	if errors.As(err, &de) { // DefineAsset wraps them ("shard %d: %w")
		return de.code
	}
	// As toStatus answers them: not INTERNAL.
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "DEADLINE_EXCEEDED"
	case errors.Is(err, context.Canceled):
		return "CANCELLED"
	}
	return ledger.CodeOf(err)
}

// Submit validates a batch at the edge, proposes it to its shard and returns
// one result per op.
func (sv *server) Submit(ctx context.Context, req *tallypb.SubmitRequest) (_ *tallypb.SubmitResponse, err error) {
	start := time.Now()
	counted := false
	defer func() {
		sv.observe("Submit", start, err)
		// Refused or failed before apply. A request over MaxBatchOps is
		// not counted op by op: a 16 MiB one holds millions of empty ops.
		if err != nil && !counted && len(req.GetOps()) <= ledger.MaxBatchOps {
			sv.n.metrics.countFailed(req.GetOps(), codeOfErr(err))
		}
		err = toStatus(err)
	}()

	s, lr, err := sv.prepare(ctx, req)
	if err != nil {
		// Nothing was proposed: say so, so that a client can tell this
		// from an outcome it does not know.
		return nil, notProposed(err)
	}
	results, err := s.propose(ctx, lr)
	if err != nil {
		return nil, err
	}
	resp := &tallypb.SubmitResponse{Results: make([]*tallypb.OpResult, len(results))}
	cv := sv.n.pb(s)
	counted = true
	for i, r := range results {
		resp.Results[i] = cv.result(r)
		sv.n.metrics.countResult(lr.Ops[i].Kind, r)
	}
	if cv.err != nil {
		// Applied, but not answerable: the client takes INTERNAL after
		// a send as unknown, and a re-send replays the results.
		return nil, cv.err
	}
	return resp, nil
}

// prepare finds a Submit's shard and converts and validates its ops at the
// edge: everything before the proposal.
func (sv *server) prepare(ctx context.Context, req *tallypb.SubmitRequest) (*shard, ledger.Request, error) {
	ops := req.GetOps()
	if len(ops) == 0 || len(ops) > ledger.MaxBatchOps {
		return nil, ledger.Request{}, ledger.Errorf(ledger.CodeInvalidArgument,
			fmt.Sprintf("a batch has 1..%d ops, got %d", ledger.MaxBatchOps, len(ops)))
	}
	s, err := sv.submitShard(req)
	if err != nil {
		return nil, ledger.Request{}, err
	}
	lr := ledger.Request{Linked: req.GetLinked(), Ops: make([]ledger.Op, len(ops))}
	if ops[0].GetKind() == tallypb.OpKind_DEFINE_ASSET {
		// Only the DefineAsset fan-out sends these, one per shard, marked
		// (defineFanoutMD): by hand, a caller could define an asset on one
		// shard at a scale the others do not have. With TLS the mark counts
		// only from a node's certificate (fromPeer).
		if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(defineFanoutMD)) == 0 || !sv.n.fromPeer(ctx) {
			return nil, ledger.Request{}, opError(0, ledger.Errorf(ledger.CodeInvalidArgument, "define assets with the DefineAsset call"))
		}
		if len(ops) != 1 || req.GetLinked() {
			return nil, ledger.Request{}, ledger.Errorf(ledger.CodeInvalidArgument, "a DEFINE_ASSET submit carries exactly one op")
		}
		if p := ops[0]; p.GetMember() != "" || p.GetAmount() != "" || p.GetHoldKey() != "" || p.GetHoldTtlMs() != 0 ||
			p.GetMaxBalance() != "" || p.GetMemo() != "" {
			return nil, ledger.Request{}, opError(0, ledger.Errorf(ledger.CodeInvalidArgument, "DEFINE_ASSET uses only program, asset, idempotency_key and scale"))
		}
		if ops[0].GetScale() > ledger.MaxScale {
			return nil, ledger.Request{}, opError(0, ledger.Errorf(ledger.CodeInvalidArgument, "scale above maximum"))
		}
		lr.Ops[0] = defineAssetOp(ops[0].GetProgram(), ops[0].GetAsset(), ops[0].GetIdempotencyKey(), uint8(ops[0].GetScale()))
	} else {
		var opened requestHolds
		for i, p := range ops {
			op, err := sv.n.toLedgerOp(ctx, s, p, opened)
			if err != nil {
				// Failures of the request (NOT_LEADER, UNAVAILABLE, the
				// caller's deadline during a leadership check) blame no op.
				if _, ok := err.(*domainError); ok || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
					return nil, ledger.Request{}, err
				}
				return nil, ledger.Request{}, opError(i, err)
			}
			lr.Ops[i] = op
			if i+1 < len(ops) { // the last op's hold serves no later op
				opened.add(&lr.Ops[i])
			}
		}
	}
	if i, err := ledger.ValidateRequest(lr); err != nil {
		if i >= 0 {
			return nil, ledger.Request{}, blameOp(i, err)
		}
		return nil, ledger.Request{}, err
	}
	return s, lr, nil
}

// submitShard finds the one shard a batch belongs to.
func (sv *server) submitShard(req *tallypb.SubmitRequest) (*shard, error) {
	ops := req.GetOps()
	shards := len(sv.n.shards)
	target := -1
	if req.Shard != nil {
		if int(req.GetShard()) >= shards {
			return nil, ledger.Errorf(ledger.CodeInvalidArgument, fmt.Sprintf("shard %d: cluster has %d shards", req.GetShard(), shards))
		}
		target = int(req.GetShard())
	}
	for i, p := range ops {
		if p.GetKind() == tallypb.OpKind_DEFINE_ASSET {
			if target < 0 {
				return nil, opError(i, ledger.Errorf(ledger.CodeInvalidArgument, "DEFINE_ASSET needs the shard field"))
			}
			continue
		}
		sh := ledger.ShardOf(p.GetProgram(), p.GetMember(), shards)
		if target < 0 {
			target = sh
		} else if sh != target {
			return nil, opError(i, ledger.Errorf(ledger.CodeWrongShard,
				fmt.Sprintf("op is on shard %d, batch on shard %d: split batches by shard", sh, target)))
		}
	}
	return sv.n.shards[target], nil
}

// defineAssetOp builds the op the DefineAsset fan-out proposes on every shard.
func defineAssetOp(program, code, key string, scale uint8) ledger.Op {
	return ledger.Op{Kind: ledger.OpDefineAsset, Program: program, Asset: code, IdempotencyKey: key, Scale: scale}
}

// DefineAsset defines an asset on every shard: locally where this node
// leads, forwarded to the leader elsewhere. Every shard gets the same
// idempotency key, so a retry after a partial failure completes the rest.
func (sv *server) DefineAsset(ctx context.Context, req *tallypb.DefineAssetRequest) (_ *tallypb.DefineAssetResponse, err error) {
	start := time.Now()
	reached := 0 // the shard being defined; those before it have the asset
	defer func() {
		if err != nil && reached > 0 {
			// Whatever refused shard reached (a full queue, a deadline, a
			// leader's refusal) says nothing of the shards before it, which
			// have the asset: not "not applied", nor a refusal on the
			// merits, but unknown, which a retry with the key completes
			// (found by review: a full queue on shard 1 answered
			// not_applied after shard 0 had applied).
			err = errUnavailable(fmt.Sprintf("%v (shards 0..%d have the asset: call DefineAsset again with the same key to finish)", err, reached-1))
		}
		sv.observe("DefineAsset", start, err)
		err = toStatus(err)
	}()
	// Checked here, not only by propose: shards this node does not lead are
	// forwarded, and a node with the wrong count would define the asset on
	// its shards only and answer OK (found by review).
	if err := sv.n.refuseIfMisconfigured(); err != nil {
		return nil, notProposed(err)
	}
	if req.GetScale() > ledger.MaxScale {
		return nil, ledger.Errorf(ledger.CodeInvalidArgument, fmt.Sprintf("scale %d is above %d", req.GetScale(), ledger.MaxScale))
	}
	op := defineAssetOp(req.GetProgram(), req.GetAsset(), req.GetIdempotencyKey(), uint8(req.GetScale()))
	if err := ledger.Validate(op); err != nil {
		return nil, err
	}
	var first *tallypb.OpResult
	for i, s := range sv.n.shards {
		reached = i
		var res *tallypb.OpResult
		if s.raft.State() == raft.Leader {
			rs, err := s.propose(ctx, ledger.Request{Ops: []ledger.Op{op}})
			switch {
			case err == nil:
				sv.n.metrics.countResult(op.Kind, rs[0]) // as the leaders' Submit counts forwarded ones
				cv := sv.n.pb(s)
				if res = cv.result(rs[0]); cv.err != nil {
					return nil, cv.err
				}
			case codeOfErr(err) == ledger.CodeNotLeader:
				// Leadership moved since the check. Answering NOT_LEADER
				// would tell the client nothing applied, and shards before
				// this one may have: follow the new leader instead.
				if res, err = sv.n.forwardDefine(ctx, s, req); err != nil {
					return nil, err
				}
			default:
				return nil, fmt.Errorf("shard %d: %w", i, err)
			}
		} else {
			res, err = sv.n.forwardDefine(ctx, s, req)
			if err != nil {
				return nil, err
			}
		}
		if res.GetCode() != string(ledger.CodeOK) {
			return &tallypb.DefineAssetResponse{Result: res}, nil
		}
		if first == nil {
			first = res
		}
	}
	return &tallypb.DefineAssetResponse{Result: first}, nil
}

// GetAccount is a linearizable read at the shard leader.
func (sv *server) GetAccount(ctx context.Context, req *tallypb.GetAccountRequest) (_ *tallypb.GetAccountResponse, err error) {
	start := time.Now()
	defer func() { sv.observe("GetAccount", start, err); err = toStatus(err) }()
	if err := validateRead(req.GetProgram(), req.GetMember(), req.GetAsset(), noKey); err != nil {
		return nil, err
	}
	s := sv.shardFor(req.GetProgram(), req.GetMember())
	if err := s.linearizable(ctx); err != nil {
		return nil, err
	}
	// Accounts, not Account: it returns the applied index of the view it
	// read, where reading the index first could name an older one.
	as, founds, applied, err := s.fsm.Accounts([]ledger.AccountKey{{Program: req.GetProgram(), Member: req.GetMember(), Asset: req.GetAsset()}})
	if err != nil {
		return nil, errInternal(err.Error())
	}
	a, found := as[0], founds[0]
	if !found {
		return nil, ledger.Errorf(ledger.CodeAccountNotFound, "no account "+req.GetProgram()+"/"+req.GetMember()+"/"+req.GetAsset())
	}
	cv := sv.n.pb(s)
	pa := cv.account(a)
	if cv.err != nil {
		return nil, cv.err
	}
	return &tallypb.GetAccountResponse{Account: pa, AppliedIndex: applied}, nil
}

// GetAccounts reads many accounts of one shard at one linearizable point.
func (sv *server) GetAccounts(ctx context.Context, req *tallypb.GetAccountsRequest) (_ *tallypb.GetAccountsResponse, err error) {
	start := time.Now()
	defer func() { sv.observe("GetAccounts", start, err); err = toStatus(err) }()
	refs := req.GetAccounts()
	if len(refs) == 0 || len(refs) > ledger.MaxBatchOps {
		return nil, ledger.Errorf(ledger.CodeInvalidArgument,
			fmt.Sprintf("a read batch has 1..%d accounts, got %d", ledger.MaxBatchOps, len(refs)))
	}
	shards := len(sv.n.shards)
	target := -1
	for i, r := range refs {
		if err := validateRead(r.GetProgram(), r.GetMember(), r.GetAsset(), noKey); err != nil {
			return nil, opError(i, err)
		}
		sh := ledger.ShardOf(r.GetProgram(), r.GetMember(), shards)
		if target < 0 {
			target = sh
		} else if sh != target {
			return nil, opError(i, ledger.Errorf(ledger.CodeWrongShard,
				fmt.Sprintf("account is on shard %d, batch on shard %d: split reads by shard", sh, target)))
		}
	}
	s := sv.n.shards[target]
	if err := s.linearizable(ctx); err != nil {
		return nil, err
	}
	keys := make([]ledger.AccountKey, len(refs))
	for i, r := range refs {
		keys[i] = ledger.AccountKey{Program: r.GetProgram(), Member: r.GetMember(), Asset: r.GetAsset()}
	}
	// One point-in-time view for the whole batch, and its applied index.
	accounts, found, applied, err := s.fsm.Accounts(keys)
	if err != nil {
		return nil, errInternal(err.Error())
	}
	resp := &tallypb.GetAccountsResponse{AppliedIndex: applied, Results: make([]*tallypb.AccountRead, len(refs))}
	cv := sv.n.pb(s)
	for i := range refs {
		if !found[i] {
			resp.Results[i] = &tallypb.AccountRead{Code: string(ledger.CodeAccountNotFound)}
			continue
		}
		resp.Results[i] = &tallypb.AccountRead{Code: string(ledger.CodeOK), Account: cv.account(accounts[i])}
	}
	if cv.err != nil {
		return nil, cv.err
	}
	return resp, nil
}

// ListJournal lists a member's operations newest first (linearizable).
func (sv *server) ListJournal(ctx context.Context, req *tallypb.ListJournalRequest) (_ *tallypb.ListJournalResponse, err error) {
	start := time.Now()
	defer func() { sv.observe("ListJournal", start, err); err = toStatus(err) }()
	// The asset filter is optional; one that is given must be a valid code.
	filter := anyAsset
	if req.GetAsset() != "" {
		filter = req.GetAsset()
	}
	if err := validateRead(req.GetProgram(), req.GetMember(), filter, noKey); err != nil {
		return nil, err
	}
	limit := int(req.GetPageSize())
	if limit == 0 {
		limit = defaultJournalPage
	}
	if limit > maxJournalPage {
		return nil, ledger.Errorf(ledger.CodeInvalidArgument, "page_size: at most "+strconv.Itoa(maxJournalPage))
	}
	s := sv.shardFor(req.GetProgram(), req.GetMember())
	if err := s.linearizable(ctx); err != nil {
		return nil, err
	}
	recs, next, err := s.fsm.Journal(req.GetProgram(), req.GetMember(), req.GetAsset(), req.GetBeforeSeq(), limit)
	if err != nil {
		return nil, errInternal(err.Error())
	}
	resp := &tallypb.ListJournalResponse{NextBeforeSeq: next}
	cv := sv.n.pb(s)
	for _, rec := range recs {
		resp.Entries = append(resp.Entries, cv.record(rec))
	}
	if cv.err != nil {
		return nil, cv.err
	}
	return resp, nil
}

// GetOperation returns the stored outcome of an operation (linearizable).
func (sv *server) GetOperation(ctx context.Context, req *tallypb.GetOperationRequest) (_ *tallypb.GetOperationResponse, err error) {
	start := time.Now()
	defer func() { sv.observe("GetOperation", start, err); err = toStatus(err) }()
	if err := validateRead(req.GetProgram(), req.GetMember(), anyAsset, req.GetIdempotencyKey()); err != nil {
		return nil, err
	}
	s := sv.shardFor(req.GetProgram(), req.GetMember())
	if err := s.linearizable(ctx); err != nil {
		return nil, err
	}
	rec, found, err := s.fsm.Record(req.GetProgram(), req.GetIdempotencyKey())
	if err != nil {
		return nil, errInternal(err.Error())
	}
	if !found {
		return &tallypb.GetOperationResponse{}, nil
	}
	cv := sv.n.pb(s)
	entry := cv.record(rec)
	if cv.err != nil {
		return nil, cv.err
	}
	return &tallypb.GetOperationResponse{Found: true, Entry: entry}, nil
}

// ClusterInfo reports the nodes and each shard's leader as this node sees it.
func (sv *server) ClusterInfo(ctx context.Context, _ *tallypb.ClusterInfoRequest) (*tallypb.ClusterInfoResponse, error) {
	n := sv.n
	resp := &tallypb.ClusterInfoResponse{Shards: uint32(len(n.shards)), NodeId: n.cfg.ID, NowMs: n.cfg.Clock().UnixMilli()}
	for _, p := range n.cfg.Peers {
		resp.Nodes = append(resp.Nodes, &tallypb.NodeInfo{Id: p.ID, GrpcAddr: p.GRPCAddr, RaftAddr: p.RaftAddr})
	}
	for _, s := range n.shards {
		_, id := s.raft.LeaderWithID()
		l := &tallypb.ShardLeader{Shard: s.id, LeaderId: string(id)}
		if p, ok := n.cfg.peerByID(string(id)); ok {
			l.LeaderGrpcAddr = p.GRPCAddr
		}
		resp.Leaders = append(resp.Leaders, l)
	}
	return resp, nil
}

// ShardState reports this node's local view of a shard.
func (sv *server) ShardState(ctx context.Context, req *tallypb.ShardStateRequest) (_ *tallypb.ShardStateResponse, err error) {
	defer func() { err = toStatus(err) }()
	if int(req.GetShard()) >= len(sv.n.shards) {
		return nil, ledger.Errorf(ledger.CodeInvalidArgument, fmt.Sprintf("shard %d: cluster has %d shards", req.GetShard(), len(sv.n.shards)))
	}
	s := sv.n.shards[req.GetShard()]
	resp := &tallypb.ShardStateResponse{
		Shard:        s.id,
		AppliedIndex: s.fsm.AppliedIndex(),
		Leader:       s.raft.State() == raft.Leader,
		LastTimeMs:   s.fsm.LastTimeMs(),
		Version:      s.fsm.Version(),
		MaxVersion:   sv.n.maxVersion(),
		VoteGuarded:  s.trans != nil && s.trans.guard != nil && s.trans.guard.on.Load(),
		// Peers' balancers hand no shard to a node that refuses requests.
		Misconfigured: sv.n.refusal() != nil,
		NodeId:        sv.n.cfg.ID,
	}
	last, term := s.raft.LastIndex(), s.raft.CurrentTerm()
	resp.RaftLastIndex, resp.RaftTerm = &last, &term
	var check fsm.Check
	var ok bool
	if req.CheckIndex != nil {
		check, ok = s.fsm.CheckAt(req.GetCheckIndex())
	} else {
		check, ok = s.fsm.LastCheck()
	}
	if ok {
		resp.CheckIndex, resp.CheckHash = check.Index, check.Hash
		if err := errors.Join(check.Err, check.Conservation); err != nil {
			resp.CheckError = err.Error()
		}
	}
	resp.ReplicaChecks = s.checks.list()
	if !req.GetFull() {
		return resp, nil
	}
	// One per shard, and at most maxFullStates on the node: each walks a
	// whole shard, and any client may ask.
	select {
	case s.fullState <- struct{}{}:
		defer func() { <-s.fullState }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case sv.n.fullStates <- struct{}{}:
		defer func() { <-sv.n.fullStates }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	info, err := s.fsm.State()
	if err != nil {
		return nil, errInternal(err.Error())
	}
	resp.AppliedIndex, resp.LastTimeMs = info.AppliedIndex, info.LastTimeMs
	resp.StateHash, resp.ConservationOk = info.Hash, info.Conservation == nil
	if info.Conservation != nil {
		resp.ConservationError = info.Conservation.Error()
	}
	return resp, nil
}
