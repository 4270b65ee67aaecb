package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"hash/crc32"
	"net"
	"sort"
	"strconv"
	"sync"
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

// fakeLedger is a one-node, in-memory stand-in for a Tally cluster that
// leads every shard. Every asset has scale 2.
type fakeLedger struct {
	tallypb.UnimplementedLedgerServer
	addr   string
	shards int
	// election makes ClusterInfo report no leader for shard 1.
	election bool
	// hang makes Submit never answer (until the caller gives up).
	hang bool
	// compared is what ShardState reports as the leader's comparisons of
	// its consistency check (at index 40) with other replicas'.
	compared []*tallypb.ReplicaCheck

	mu       sync.Mutex
	submits  []*tallypb.SubmitRequest
	defines  []*tallypb.DefineAssetRequest
	balances map[string]decimal.Decimal
	records  map[string]*tallypb.JournalEntry
	journal  []*tallypb.JournalEntry
	seq      uint64
	restored map[uint32][]byte // Restore's data by shard
	// brokenBackup makes Backup report a state that breaks conservation.
	brokenBackup bool
}

// emptyStateHash is an empty shard's state hash: SHA-256 of nothing.
var emptyStateHash = sha256.Sum256(nil)

func startFake(t *testing.T) *fakeLedger {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeLedger{addr: lis.Addr().String(), shards: 2,
		balances: make(map[string]decimal.Decimal), records: make(map[string]*tallypb.JournalEntry)}
	srv := grpc.NewServer()
	tallypb.RegisterLedgerServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return f
}

func (f *fakeLedger) lastSubmit() *tallypb.SubmitRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.submits) == 0 {
		return nil
	}
	return f.submits[len(f.submits)-1]
}

func tallyErr(code codes.Code, reason ledger.Code, msg string, md map[string]string) error {
	st, err := status.New(code, string(reason)+": "+msg).WithDetails(&errdetails.ErrorInfo{Domain: "tally", Reason: string(reason), Metadata: md})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func (f *fakeLedger) ClusterInfo(context.Context, *tallypb.ClusterInfoRequest) (*tallypb.ClusterInfoResponse, error) {
	resp := &tallypb.ClusterInfoResponse{Shards: uint32(f.shards), NodeId: "n1",
		Nodes: []*tallypb.NodeInfo{{Id: "n1", GrpcAddr: f.addr, RaftAddr: "127.0.0.1:7201"}}}
	for s := range f.shards {
		resp.Leaders = append(resp.Leaders, &tallypb.ShardLeader{Shard: uint32(s), LeaderId: "n1", LeaderGrpcAddr: f.addr})
	}
	if f.election {
		resp.Leaders[1].LeaderId, resp.Leaders[1].LeaderGrpcAddr = "", ""
	}
	return resp, nil
}

func (f *fakeLedger) Submit(ctx context.Context, req *tallypb.SubmitRequest) (*tallypb.SubmitResponse, error) {
	if f.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.submits = append(f.submits, proto.Clone(req).(*tallypb.SubmitRequest))
	for i, op := range req.Ops {
		if op.Amount != "" {
			if d, err := decimal.NewFromString(op.Amount); err != nil || d.Sign() <= 0 {
				return nil, tallyErr(codes.InvalidArgument, ledger.CodeInvalidAmount, "op "+strconv.Itoa(i)+": amount must be > 0",
					map[string]string{"op_index": strconv.Itoa(i)})
			}
		}
	}
	resp := &tallypb.SubmitResponse{}
	for _, op := range req.Ops {
		resp.Results = append(resp.Results, f.applyLocked(op))
	}
	return resp, nil
}

func (f *fakeLedger) applyLocked(op *tallypb.Op) *tallypb.OpResult {
	if rec, ok := f.records[op.IdempotencyKey]; ok {
		r := proto.Clone(rec.Result).(*tallypb.OpResult)
		r.Replayed = true
		return r
	}
	acct := op.Program + "/" + op.Member + "/" + op.Asset
	amount, _ := decimal.NewFromString(op.Amount)
	bal := f.balances[acct]
	res := &tallypb.OpResult{Code: "OK", TimeMs: 1700000000000,
		Shard: uint32(ledger.ShardOf(op.Program, op.Member, f.shards))}
	switch op.Kind {
	case tallypb.OpKind_CREDIT:
		bal = bal.Add(amount)
	case tallypb.OpKind_DEBIT:
		if bal.LessThan(amount) {
			res.Code, res.Message = string(ledger.CodeInsufficientFunds), "available "+bal.StringFixed(2)
		} else {
			bal = bal.Sub(amount)
		}
	case tallypb.OpKind_HOLD:
		res.Hold = &tallypb.Hold{Key: op.IdempotencyKey, Asset: op.Asset, Amount: amount.StringFixed(2), State: "OPEN",
			CreatedAtMs: res.TimeMs, ExpiresAtMs: res.TimeMs + op.HoldTtlMs}
	case tallypb.OpKind_CAPTURE_HOLD:
		res.Captured, res.Released = "5.00", "0.00"
	}
	f.balances[acct] = bal
	res.Account = &tallypb.Account{Program: op.Program, Member: op.Member, Asset: op.Asset, Scale: 2, State: "ACTIVE",
		Posted: bal.StringFixed(2), Held: "0.00", Available: bal.StringFixed(2), MaxBalance: op.MaxBalance,
		OpenedAtMs: 1700000000000, UpdatedAtMs: res.TimeMs}
	if res.Code == "OK" {
		f.seq++
		res.Seq = f.seq
		e := &tallypb.JournalEntry{Seq: f.seq, Op: proto.Clone(op).(*tallypb.Op), Result: res}
		f.records[op.IdempotencyKey] = e
		f.journal = append(f.journal, e)
	}
	return res
}

func (f *fakeLedger) DefineAsset(_ context.Context, req *tallypb.DefineAssetRequest) (*tallypb.DefineAssetResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.defines = append(f.defines, proto.Clone(req).(*tallypb.DefineAssetRequest))
	return &tallypb.DefineAssetResponse{Result: &tallypb.OpResult{Code: "OK", Seq: 1, TimeMs: 1700000000000}}, nil
}

func (f *fakeLedger) GetAccount(_ context.Context, req *tallypb.GetAccountRequest) (*tallypb.GetAccountResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	bal, ok := f.balances[req.Program+"/"+req.Member+"/"+req.Asset]
	if !ok {
		return nil, tallyErr(codes.NotFound, ledger.CodeAccountNotFound, "no account", nil)
	}
	return &tallypb.GetAccountResponse{Account: &tallypb.Account{Program: req.Program, Member: req.Member, Asset: req.Asset,
		Scale: 2, State: "ACTIVE", Posted: bal.StringFixed(2), Held: "0.00", Available: bal.StringFixed(2),
		MaxBalance: "1000.00", OpenedAtMs: 1700000000000, UpdatedAtMs: 1700000000000}}, nil
}

func (f *fakeLedger) GetOperation(_ context.Context, req *tallypb.GetOperationRequest) (*tallypb.GetOperationResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.records[req.IdempotencyKey]; ok {
		return &tallypb.GetOperationResponse{Found: true, Entry: e}, nil
	}
	return &tallypb.GetOperationResponse{}, nil
}

func (f *fakeLedger) ListJournal(_ context.Context, req *tallypb.ListJournalRequest) (*tallypb.ListJournalResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var mine []*tallypb.JournalEntry
	for _, e := range f.journal {
		if e.Op.Member == req.Member && (req.BeforeSeq == 0 || e.Seq < req.BeforeSeq) {
			mine = append(mine, e)
		}
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].Seq > mine[j].Seq })
	resp := &tallypb.ListJournalResponse{}
	if n := int(req.PageSize); len(mine) > n {
		mine = mine[:n]
		resp.NextBeforeSeq = mine[n-1].Seq
	}
	resp.Entries = mine
	return resp, nil
}

func (f *fakeLedger) ShardState(_ context.Context, req *tallypb.ShardStateRequest) (*tallypb.ShardStateResponse, error) {
	resp := &tallypb.ShardStateResponse{Shard: req.Shard, AppliedIndex: 42, Leader: true, LastTimeMs: 1700000000000, Version: 2, MaxVersion: 2,
		NodeId: "n1", CheckIndex: 40, CheckHash: []byte{0xc0, 0xff, 0xee}, ReplicaChecks: f.compared}
	if req.Full {
		resp.StateHash, resp.ConservationOk = []byte{0xde, 0xad, 0xbe, 0xef}, true
	}
	return resp, nil
}

// fakeBackup is shard's backup as the fake streams it: for shard 0 an
// empty shard's snapshot in fsm's format (header, end tag, record count
// and CRC-32C), which verify-backup accepts; for the others bytes that
// are no snapshot, big enough to take several chunks.
func fakeBackup(shard uint32) []byte {
	if shard != 0 {
		return bytes.Repeat([]byte{'a' + byte(shard)}, 600<<10)
	}
	b := binary.BigEndian.AppendUint32(append([]byte("TALLYSNP"), 1), shard)
	b = append(b, 0)
	sum := crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))
	b = binary.BigEndian.AppendUint64(b, 0)
	return binary.BigEndian.AppendUint32(b, sum)
}

func (f *fakeLedger) Backup(req *tallypb.BackupRequest, stream tallypb.Ledger_BackupServer) error {
	data := fakeBackup(req.GetShard())
	if err := stream.Send(&tallypb.BackupChunk{Header: &tallypb.BackupHeader{Shard: req.GetShard(), Shards: uint32(f.shards),
		RaftIndex: 10, RaftTerm: 2, SnapshotVersion: 1, Size: int64(len(data)), StateHash: emptyStateHash[:],
		ConservationOk: !f.brokenBackup, Version: 1}}); err != nil {
		return err
	}
	for len(data) > 0 {
		n := min(len(data), 256<<10)
		if err := stream.Send(&tallypb.BackupChunk{Data: data[:n]}); err != nil {
			return err
		}
		data = data[n:]
	}
	sum := sha256.Sum256(fakeBackup(req.GetShard()))
	return stream.Send(&tallypb.BackupChunk{Sha256: sum[:]})
}

// Restore records what it was sent, whole, per shard.
func (f *fakeLedger) Restore(stream tallypb.Ledger_RestoreServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	var data []byte
	for {
		c, err := stream.Recv()
		if err != nil {
			return err
		}
		if c.GetSha256() != nil {
			sum := sha256.Sum256(data)
			if !first.GetConfirm() || !bytes.Equal(sum[:], c.GetSha256()) || int64(len(data)) != first.GetHeader().GetSize() {
				return tallyErr(codes.InvalidArgument, ledger.CodeInvalidArgument, "bad restore stream", nil)
			}
			break
		}
		data = append(data, c.GetData()...)
	}
	f.mu.Lock()
	if f.restored == nil {
		f.restored = make(map[uint32][]byte)
	}
	f.restored[first.GetHeader().GetShard()] = data
	f.mu.Unlock()
	return stream.SendAndClose(&tallypb.RestoreResponse{RaftIndex: 20, AppliedIndex: first.GetHeader().GetAppliedIndex(), Version: 4})
}
