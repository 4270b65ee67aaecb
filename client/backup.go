package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/ledger"
)

// BackupHeader describes one shard's backup: what Backup returns and
// Restore needs beside the bytes. tallyctl keeps one per shard in a
// backup's manifest.
type BackupHeader struct {
	Shard  uint32 `json:"shard"`
	Shards uint32 `json:"shards"` // the cluster's shard count
	// The snapshot's Raft index and term, and hashicorp/raft's snapshot
	// format version.
	RaftIndex       uint64 `json:"raft_index"`
	RaftTerm        uint64 `json:"raft_term"`
	SnapshotVersion int32  `json:"snapshot_version"`
	Size            int64  `json:"size"`   // bytes of the backup
	SHA256          string `json:"sha256"` // of those bytes, hex
	// The applied index, rules version and hash (hex; what ShardState
	// reports at that applied index) of the state it holds, and whether
	// its balances pass the conservation check.
	AppliedIndex   uint64 `json:"applied_index"`
	Version        uint32 `json:"version"`
	StateHash      string `json:"state_hash"`
	ConservationOK bool   `json:"conservation_ok"`
}

func (h BackupHeader) proto() (*tallypb.BackupHeader, error) {
	stateHash, err := hex.DecodeString(h.StateHash)
	if err != nil {
		return nil, newError(ledger.CodeInvalidArgument, int(h.Shard), "restore: the header's state hash %q is not hex", h.StateHash)
	}
	return &tallypb.BackupHeader{Shard: h.Shard, Shards: h.Shards, RaftIndex: h.RaftIndex, RaftTerm: h.RaftTerm,
		SnapshotVersion: h.SnapshotVersion, Size: h.Size, AppliedIndex: h.AppliedIndex, Version: h.Version,
		StateHash: stateHash, ConservationOk: h.ConservationOK}, nil
}

// RestoreResult is what a shard's leader answers a Restore with.
type RestoreResult struct {
	RaftIndex    uint64 // the Raft index the restored state took
	AppliedIndex uint64 // of the restored state
	Version      uint32 // its rules version
	StateHash    string // its hash, hex
}

// Backup writes a backup of shard to w: a snapshot its leader takes for it
// (every operation acknowledged before the call is in it), checked by the
// leader before it sends a byte, and by its SHA-256 here. On an error w
// may hold part of it: start again with a fresh writer.
func (c *Client) Backup(ctx context.Context, shard int, w io.Writer) (BackupHeader, error) {
	var hdr BackupHeader
	e := c.leaderStream(ctx, shard, func(ctx context.Context, lc tallypb.LedgerClient) (bool, error) {
		stream, err := lc.Backup(ctx, &tallypb.BackupRequest{Shard: uint32(shard)})
		if err != nil {
			return false, err
		}
		first, err := stream.Recv()
		if err != nil {
			return false, err
		}
		ph := first.GetHeader()
		if ph == nil || ph.GetShard() != uint32(shard) {
			return true, newError(ledger.CodeInternal, shard, "backup: the first message is not the shard's header")
		}
		hdr = BackupHeader{Shard: ph.GetShard(), Shards: ph.GetShards(), RaftIndex: ph.GetRaftIndex(), RaftTerm: ph.GetRaftTerm(),
			SnapshotVersion: ph.GetSnapshotVersion(), Size: ph.GetSize(), AppliedIndex: ph.GetAppliedIndex(), Version: ph.GetVersion(),
			StateHash: hex.EncodeToString(ph.GetStateHash()), ConservationOK: ph.GetConservationOk()}
		h := sha256.New()
		var got int64
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				return true, newError(ledger.CodeUnavailable, shard, "backup: the stream ended without its SHA-256")
			}
			if err != nil {
				return true, err
			}
			if sum := m.GetSha256(); sum != nil {
				if got != hdr.Size || !bytes.Equal(sum, h.Sum(nil)) {
					return true, newError(ledger.CodeInternal, shard, "backup: %d bytes received of %d, or their SHA-256 does not match", got, hdr.Size)
				}
				hdr.SHA256 = hex.EncodeToString(sum)
				return true, nil
			}
			d := m.GetData()
			got += int64(len(d))
			if got > hdr.Size {
				return true, newError(ledger.CodeInternal, shard, "backup: more than the %d bytes the header says", hdr.Size)
			}
			h.Write(d)
			if _, err := w.Write(d); err != nil {
				return true, err
			}
		}
	})
	if e != nil {
		return BackupHeader{}, e
	}
	return hdr, nil
}

// Restore replaces the state of shard hdr.Shard, on every replica, with
// the backup that r holds from its start (hdr as Backup returned it).
// Every operation applied to the shard since the backup is discarded, its
// idempotency key with it: a retry of one applies it again. The leader
// checks the backup whole before it changes anything.
func (c *Client) Restore(ctx context.Context, hdr BackupHeader, r io.ReadSeeker) (RestoreResult, error) {
	shard := int(hdr.Shard)
	sum, err := hex.DecodeString(hdr.SHA256)
	if err != nil || len(sum) != sha256.Size {
		return RestoreResult{}, newError(ledger.CodeInvalidArgument, shard, "restore: the header's SHA-256 %q is not one", hdr.SHA256)
	}
	ph, err := hdr.proto()
	if err != nil {
		return RestoreResult{}, err
	}
	var res RestoreResult
	e := c.leaderStream(ctx, shard, func(ctx context.Context, lc tallypb.LedgerClient) (bool, error) {
		if _, err := r.Seek(0, io.SeekStart); err != nil {
			return true, err
		}
		stream, err := lc.Restore(ctx)
		if err != nil {
			return false, err
		}
		// A refusal (NOT_LEADER, a bad header) ends the stream: Send then
		// says io.EOF, and CloseAndRecv has the server's answer.
		send := func(m *tallypb.RestoreChunk) bool { return stream.Send(m) == nil }
		ok := send(&tallypb.RestoreChunk{Header: ph, Confirm: true})
		buf := make([]byte, 256<<10)
		for ok {
			n, rerr := io.ReadFull(r, buf)
			if n > 0 {
				ok = send(&tallypb.RestoreChunk{Data: buf[:n]})
			}
			if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
				break
			}
			if rerr != nil {
				return true, rerr
			}
		}
		if ok {
			send(&tallypb.RestoreChunk{Sha256: sum})
		}
		resp, err := stream.CloseAndRecv()
		if err != nil {
			// leaderStream sends it again elsewhere on NOT_LEADER alone,
			// which a node answers only while it has restored nothing
			// (any later failure is UNAVAILABLE: the restore may have
			// taken effect).
			return false, err
		}
		res = RestoreResult{RaftIndex: resp.GetRaftIndex(), AppliedIndex: resp.GetAppliedIndex(), Version: resp.GetVersion(),
			StateHash: hex.EncodeToString(resp.GetStateHash())}
		return true, nil
	})
	if e != nil {
		return RestoreResult{}, e
	}
	return res, nil
}

// leaderStream runs a streaming call against shard's leader. It tries
// again elsewhere only on NOT_LEADER (or no known leader), and only when
// the attempt says it had not started (nothing reached the caller's
// writer): a stream's attempts are not bounded by Config.RequestTimeout,
// only by ctx.
func (c *Client) leaderStream(ctx context.Context, shard int, attempt func(context.Context, tallypb.LedgerClient) (started bool, err error)) *Error {
	if shard < 0 || shard >= c.Shards() {
		return newError(ledger.CodeInvalidArgument, shard, "shard %d: the cluster has %d", shard, c.Shards())
	}
	backoff := c.cfg.BackoffMin
	var (
		last      *Error
		redirects int
	)
	for {
		if ctx.Err() != nil || c.isClosed() {
			cause := ctx.Err()
			if cause == nil {
				cause = ErrClosed
			}
			return giveUpError(cause, shard, last, false)
		}
		addr := c.leader(shard)
		if addr == "" {
			c.refresh(ctx, shard)
			addr = c.leader(shard)
		}
		if addr != "" {
			lc, err := c.ledgerClient(addr)
			if err != nil {
				return &Error{Code: ledger.CodeUnavailable, Message: "node " + addr, Shard: shard, OpIndex: -1, Err: err}
			}
			// Its own context, ended with it: a stream the attempt gives
			// up on (a local read or write error) must end at the server
			// too, or its handler waits, holding the node's one backup or
			// restore slot, until ctx ends.
			actx, cancel := context.WithCancel(ctx)
			started, err := attempt(actx, lc)
			cancel()
			if err == nil {
				return nil
			}
			var ce *Error
			if !errors.As(err, &ce) {
				ce = fromRPC(err, shard)
			}
			if started || ce.Code != ledger.CodeNotLeader {
				return ce
			}
			last = ce
			c.forgetLeader(shard, addr)
			if ce.Leader != "" && ce.Leader != addr && redirects < maxImmediateRedirects {
				c.setLeader(shard, ce.Leader)
				redirects++
				continue
			}
		}
		if !c.sleep(ctx, backoff) {
			continue // ctx ended: reported above
		}
		backoff, redirects = c.nextBackoff(backoff), 0
	}
}
