package client

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/shopspring/decimal"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// fakeCluster is an in-process stand-in for a Tally cluster: nodes are gRPC
// servers on 127.0.0.1:0 sharing one in-memory state, with a configurable
// leader per shard and a configurable (possibly stale) ClusterInfo view.
type fakeCluster struct {
	t      *testing.T
	shards int
	nodes  []*fakeNode

	mu       sync.Mutex
	leader   []int // shard -> node index, -1 = none
	reported []int // shard -> node index ClusterInfo reports, -1 = none
	hint     bool  // NOT_LEADER carries the leader's address
	records  map[string]*tallypb.JournalEntry
	journal  []*tallypb.JournalEntry
	balances map[string]decimal.Decimal
	seq      uint64
	// submitHook, if set, runs before the node's own handling; handled=true
	// makes its answer final.
	submitHook func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (resp *tallypb.SubmitResponse, err error, handled bool)
	// getAccounts makes nodes serve GetAccounts (else Unimplemented, as a
	// server from before it); a ref naming badReadMember is rejected there
	// with its index, as the node rejects a ref it finds invalid.
	getAccounts   bool
	badReadMember string
	// readHook, if set, runs before GetAccounts; an error is its answer.
	readHook func(req *tallypb.GetAccountsRequest) error
	// defineHook, if set, runs before DefineAsset; handled=true makes its
	// answer final.
	defineHook func(ctx context.Context) (resp *tallypb.DefineAssetResponse, err error, handled bool)
}

type fakeNode struct {
	tallypb.UnimplementedLedgerServer
	c    *fakeCluster
	idx  int
	addr string
	srv  *grpc.Server

	mu           sync.Mutex
	submits      []*tallypb.SubmitRequest
	clusterInfos atomic.Int32
	reads        atomic.Int32
	inflight     atomic.Int32
	maxInflight  atomic.Int32
}

func newFakeCluster(t *testing.T, nodes, shards int) *fakeCluster {
	t.Helper()
	c := &fakeCluster{
		t: t, shards: shards, hint: true,
		leader: make([]int, shards), reported: make([]int, shards),
		records: make(map[string]*tallypb.JournalEntry), balances: make(map[string]decimal.Decimal),
	}
	for s := range shards {
		c.leader[s] = s % nodes
		c.reported[s] = s % nodes
	}
	for i := range nodes {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		n := &fakeNode{c: c, idx: i, addr: lis.Addr().String(), srv: grpc.NewServer()}
		tallypb.RegisterLedgerServer(n.srv, n)
		go func() { _ = n.srv.Serve(lis) }()
		t.Cleanup(n.srv.Stop)
		c.nodes = append(c.nodes, n)
	}
	return c
}

func (c *fakeCluster) addrs() []string {
	var a []string
	for _, n := range c.nodes {
		a = append(a, n.addr)
	}
	return a
}

// setLeader moves shard's leader; reported too unless stale is set.
func (c *fakeCluster) setLeader(shard, node int, stale bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leader[shard] = node
	if !stale {
		c.reported[shard] = node
	}
}

func (c *fakeCluster) setHook(h func(n *fakeNode, req *tallypb.SubmitRequest, ctx context.Context) (*tallypb.SubmitResponse, error, bool)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.submitHook = h
}

func (c *fakeCluster) totalClusterInfos() int {
	total := 0
	for _, n := range c.nodes {
		total += int(n.clusterInfos.Load())
	}
	return total
}

func (n *fakeNode) recorded() []*tallypb.SubmitRequest {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*tallypb.SubmitRequest(nil), n.submits...)
}

func tallyErr(code codes.Code, reason ledger.Code, msg string, md map[string]string) error {
	st, err := status.New(code, string(reason)+": "+msg).WithDetails(&errdetails.ErrorInfo{Domain: "tally", Reason: string(reason), Metadata: md})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// notLeader checks that n leads shard; callers hold c.mu.
func (n *fakeNode) notLeaderLocked(shard int) error {
	c := n.c
	if c.leader[shard] == n.idx {
		return nil
	}
	md := map[string]string{"shard": strconv.Itoa(shard)}
	if c.hint && c.leader[shard] >= 0 {
		md["leader"] = c.nodes[c.leader[shard]].addr
	}
	return tallyErr(codes.FailedPrecondition, ledger.CodeNotLeader, "not the leader", md)
}

func (n *fakeNode) ClusterInfo(ctx context.Context, _ *tallypb.ClusterInfoRequest) (*tallypb.ClusterInfoResponse, error) {
	n.clusterInfos.Add(1)
	c := n.c
	c.mu.Lock()
	defer c.mu.Unlock()
	resp := &tallypb.ClusterInfoResponse{Shards: uint32(c.shards), NodeId: fmt.Sprintf("n%d", n.idx)}
	for _, m := range c.nodes {
		resp.Nodes = append(resp.Nodes, &tallypb.NodeInfo{Id: fmt.Sprintf("n%d", m.idx), GrpcAddr: m.addr, RaftAddr: "raft-" + m.addr})
	}
	for s := range c.shards {
		l := &tallypb.ShardLeader{Shard: uint32(s)}
		if r := c.reported[s]; r >= 0 {
			l.LeaderId = fmt.Sprintf("n%d", r)
			l.LeaderGrpcAddr = c.nodes[r].addr
		}
		resp.Leaders = append(resp.Leaders, l)
	}
	return resp, nil
}

func (n *fakeNode) Submit(ctx context.Context, req *tallypb.SubmitRequest) (*tallypb.SubmitResponse, error) {
	cur := n.inflight.Add(1)
	defer n.inflight.Add(-1)
	for {
		m := n.maxInflight.Load()
		if cur <= m || n.maxInflight.CompareAndSwap(m, cur) {
			break
		}
	}
	n.mu.Lock()
	n.submits = append(n.submits, proto.Clone(req).(*tallypb.SubmitRequest))
	n.mu.Unlock()
	n.c.mu.Lock()
	hook := n.c.submitHook
	n.c.mu.Unlock()
	if hook != nil {
		if resp, err, handled := hook(n, req, ctx); handled {
			return resp, err
		}
	}
	return n.apply(req)
}

// apply is the fake's ledger: validate the request, then apply each op with
// dedup by idempotency key.
func (n *fakeNode) apply(req *tallypb.SubmitRequest) (*tallypb.SubmitResponse, error) {
	c := n.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(req.Ops) == 0 {
		return nil, tallyErr(codes.InvalidArgument, ledger.CodeInvalidArgument, "no ops", nil)
	}
	shard := ledger.ShardOf(req.Ops[0].Program, req.Ops[0].Member, c.shards)
	keys := map[string]int{}
	for i, op := range req.Ops {
		// As ledger.ValidateRequest: one key twice blames the later op.
		if j, dup := keys[op.IdempotencyKey]; dup {
			return nil, tallyErr(codes.InvalidArgument, ledger.CodeInvalidArgument,
				fmt.Sprintf("op %d: idempotency_key %q is also used by op %d", i, op.IdempotencyKey, j), map[string]string{"op_index": strconv.Itoa(i)})
		}
		keys[op.IdempotencyKey] = i
		if ledger.ShardOf(op.Program, op.Member, c.shards) != shard {
			return nil, tallyErr(codes.InvalidArgument, ledger.Code("WRONG_SHARD"), "ops of several shards", map[string]string{"op_index": strconv.Itoa(i)})
		}
		if op.Asset == "NOPE" {
			return nil, tallyErr(codes.NotFound, ledger.CodeUnknownAsset, "op "+strconv.Itoa(i)+": UNKNOWN_ASSET: no asset NOPE", map[string]string{"op_index": strconv.Itoa(i)})
		}
		switch op.Kind {
		case tallypb.OpKind_CREDIT, tallypb.OpKind_DEBIT, tallypb.OpKind_HOLD:
			d, err := decimal.NewFromString(op.Amount)
			if err != nil || d.Sign() <= 0 {
				return nil, tallyErr(codes.InvalidArgument, ledger.CodeInvalidAmount, "bad amount "+op.Amount, map[string]string{"op_index": strconv.Itoa(i)})
			}
		}
	}
	if err := n.notLeaderLocked(shard); err != nil {
		return nil, err
	}
	resp := &tallypb.SubmitResponse{}
	for _, op := range req.Ops {
		resp.Results = append(resp.Results, c.applyOpLocked(op, shard))
	}
	return resp, nil
}

func (c *fakeCluster) applyOpLocked(op *tallypb.Op, shard int) *tallypb.OpResult {
	if rec, ok := c.records[op.IdempotencyKey]; ok {
		r := proto.Clone(rec.Result).(*tallypb.OpResult)
		r.Replayed = true
		return r
	}
	acct := op.Program + "/" + op.Member + "/" + op.Asset
	amount, _ := decimal.NewFromString(op.Amount)
	bal := c.balances[acct]
	res := &tallypb.OpResult{Code: string(ledger.CodeOK), Message: op.IdempotencyKey, Shard: uint32(shard), TimeMs: 1000}
	switch op.Kind {
	case tallypb.OpKind_CREDIT:
		bal = bal.Add(amount)
	case tallypb.OpKind_DEBIT:
		if bal.LessThan(amount) {
			res.Code = string(ledger.CodeInsufficientFunds)
			res.Message = "available " + bal.StringFixed(2)
		} else {
			bal = bal.Sub(amount)
		}
	case tallypb.OpKind_HOLD:
		res.Hold = &tallypb.Hold{Key: op.IdempotencyKey, Asset: op.Asset, Amount: amount.StringFixed(2), State: "OPEN",
			CreatedAtMs: 1000, ExpiresAtMs: 1000 + op.HoldTtlMs}
	}
	c.balances[acct] = bal
	res.Account = &tallypb.Account{Program: op.Program, Member: op.Member, Asset: op.Asset, Scale: 2, State: "ACTIVE",
		Posted: bal.StringFixed(2), Held: "0.00", Available: bal.StringFixed(2), MaxBalance: op.MaxBalance,
		OpenedAtMs: 1000, UpdatedAtMs: 1000}
	// As the ledger, every outcome is recorded with a sequence number, a
	// refusal too; the journal lists successes.
	c.seq++
	res.Seq = c.seq
	entry := &tallypb.JournalEntry{Seq: c.seq, Op: proto.Clone(op).(*tallypb.Op), Result: res}
	c.records[op.IdempotencyKey] = entry
	if res.Code == string(ledger.CodeOK) {
		c.journal = append(c.journal, entry)
	}
	return res
}

func (n *fakeNode) DefineAsset(ctx context.Context, req *tallypb.DefineAssetRequest) (*tallypb.DefineAssetResponse, error) {
	c := n.c
	c.mu.Lock()
	hook := c.defineHook
	c.mu.Unlock()
	if hook != nil {
		if resp, err, handled := hook(ctx); handled {
			return resp, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := n.notLeaderLocked(0); err != nil {
		return nil, err
	}
	c.seq++
	return &tallypb.DefineAssetResponse{Result: &tallypb.OpResult{Code: "OK", Message: req.Asset + "/" + strconv.Itoa(int(req.Scale)), Seq: c.seq}}, nil
}

func (n *fakeNode) GetAccount(ctx context.Context, req *tallypb.GetAccountRequest) (*tallypb.GetAccountResponse, error) {
	n.reads.Add(1)
	c := n.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := n.notLeaderLocked(ledger.ShardOf(req.Program, req.Member, c.shards)); err != nil {
		return nil, err
	}
	bal, ok := c.balances[req.Program+"/"+req.Member+"/"+req.Asset]
	if !ok {
		return nil, tallyErr(codes.NotFound, ledger.CodeAccountNotFound, "no such account", nil)
	}
	return &tallypb.GetAccountResponse{Account: &tallypb.Account{Program: req.Program, Member: req.Member, Asset: req.Asset,
		Scale: 2, State: "ACTIVE", Posted: bal.StringFixed(2), Held: "0.00", Available: bal.StringFixed(2)}, AppliedIndex: 7}, nil
}

func (n *fakeNode) GetAccounts(ctx context.Context, req *tallypb.GetAccountsRequest) (*tallypb.GetAccountsResponse, error) {
	n.reads.Add(1)
	c := n.c
	c.mu.Lock()
	hook := c.readHook
	c.mu.Unlock()
	if hook != nil {
		if err := hook(req); err != nil {
			return nil, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.getAccounts {
		return nil, status.Error(codes.Unimplemented, "no GetAccounts")
	}
	resp := &tallypb.GetAccountsResponse{AppliedIndex: 7}
	for i, r := range req.Accounts {
		if err := n.notLeaderLocked(ledger.ShardOf(r.Program, r.Member, c.shards)); err != nil {
			return nil, err
		}
		if err := ledger.ValidateAccountKey(ledger.AccountKey{Program: r.Program, Member: r.Member, Asset: r.Asset}); err != nil || r.Member == c.badReadMember {
			return nil, tallyErr(codes.InvalidArgument, ledger.CodeInvalidArgument, fmt.Sprintf("op %d: bad account", i),
				map[string]string{"op_index": strconv.Itoa(i)})
		}
		bal, ok := c.balances[r.Program+"/"+r.Member+"/"+r.Asset]
		if !ok {
			resp.Results = append(resp.Results, &tallypb.AccountRead{Code: string(ledger.CodeAccountNotFound)})
			continue
		}
		resp.Results = append(resp.Results, &tallypb.AccountRead{Code: string(ledger.CodeOK), Account: &tallypb.Account{Program: r.Program,
			Member: r.Member, Asset: r.Asset, Scale: 2, State: "ACTIVE", Posted: bal.StringFixed(2), Held: "0.00", Available: bal.StringFixed(2)}})
	}
	return resp, nil
}

func (n *fakeNode) GetOperation(ctx context.Context, req *tallypb.GetOperationRequest) (*tallypb.GetOperationResponse, error) {
	n.reads.Add(1)
	c := n.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := n.notLeaderLocked(ledger.ShardOf(req.Program, req.Member, c.shards)); err != nil {
		return nil, err
	}
	rec, ok := c.records[req.IdempotencyKey]
	if !ok {
		return &tallypb.GetOperationResponse{}, nil
	}
	return &tallypb.GetOperationResponse{Found: true, Entry: rec}, nil
}

func (n *fakeNode) ListJournal(ctx context.Context, req *tallypb.ListJournalRequest) (*tallypb.ListJournalResponse, error) {
	n.reads.Add(1)
	c := n.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := n.notLeaderLocked(ledger.ShardOf(req.Program, req.Member, c.shards)); err != nil {
		return nil, err
	}
	var mine []*tallypb.JournalEntry
	for _, e := range c.journal {
		if e.Op.Program == req.Program && e.Op.Member == req.Member && (req.Asset == "" || e.Op.Asset == req.Asset) &&
			(req.BeforeSeq == 0 || e.Seq < req.BeforeSeq) {
			mine = append(mine, e)
		}
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].Seq > mine[j].Seq })
	size := int(req.PageSize)
	if size == 0 {
		size = 50
	}
	resp := &tallypb.ListJournalResponse{}
	if len(mine) > size {
		mine = mine[:size]
		resp.NextBeforeSeq = mine[size-1].Seq
	}
	resp.Entries = mine
	return resp, nil
}

func (n *fakeNode) ShardState(ctx context.Context, req *tallypb.ShardStateRequest) (*tallypb.ShardStateResponse, error) {
	c := n.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if int(req.Shard) >= c.shards {
		return nil, tallyErr(codes.InvalidArgument, ledger.CodeInvalidArgument, "no such shard", nil)
	}
	return &tallypb.ShardStateResponse{Shard: req.Shard, AppliedIndex: 42, StateHash: []byte{0xab, 0xcd},
		ConservationOk: true, Leader: c.leader[req.Shard] == n.idx, LastTimeMs: 1000, Version: 2, MaxVersion: 3}, nil
}

// memberOn returns the i-th member name (m0, m1, ...) of program on shard.
func memberOn(program string, shard, shards, i int) string {
	for k := 0; ; k++ {
		m := "m" + strconv.Itoa(k)
		if ledger.ShardOf(program, m, shards) == shard {
			if i == 0 {
				return m
			}
			i--
		}
	}
}
