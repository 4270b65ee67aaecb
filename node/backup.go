package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	"golang.org/x/sys/unix"

	"github.com/tally-ledger/tally/api/tallypb"
	"github.com/tally-ledger/tally/fsm"
	"github.com/tally-ledger/tally/ledger"
)

// Backups and restores go through hashicorp/raft's own user snapshots:
// Backup asks the shard's leader for a snapshot (raft.Snapshot, or the
// newest one stored when raft takes none and that one is current) and
// streams it; Restore hands a backup to raft.Restore on the leader, which
// writes it as a snapshot past the end of the log and restores the
// leader's FSM from it, so every follower installs it as it would any
// snapshot that passed it by. Raft panics when the FSM refuses a snapshot
// it restores for a user, so the backup is spooled to disk and checked
// whole (SHA-256, header, key order, meta, CRC, state hash, rules version
// against the members', free space) before raft sees it.

// restoreSpoolPattern names the file a restore is spooled to in the data
// directory; removeRestoreSpools deletes those a crash left at start.
const restoreSpoolPattern = "restore-*.tmp"

func removeRestoreSpools(dataDir string) {
	left, _ := filepath.Glob(filepath.Join(dataDir, restoreSpoolPattern))
	for _, p := range left {
		_ = os.Remove(p)
	}
}

// beforeRaftRestore, when a test sets it, runs in Restore just before the
// backup is handed to raft.
var beforeRaftRestore func(*shard)

// restoreCopies is how many times a backup's size a restore needs free on
// the leader's data disk (see Restore).
const restoreCopies = 3

// diskFree is freeBytes; a test stands in a full disk.
var diskFree = freeBytes

// freeBytes is the space left to unprivileged writers on dir's disk.
func freeBytes(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// backupChunkBytes is the data carried by one BackupChunk or RestoreChunk.
const backupChunkBytes = 256 << 10

// restoreTimeout bounds raft.Restore: the wait to reach the leader loop
// and then for the no-op entry after it, which commits once a majority
// holds the restored state.
const restoreTimeout = 5 * time.Minute

// operatorOnly refuses a backup or restore over TLS from a certificate
// that is not a node's (fromPeer): a restore rolls a shard back, and a
// backup copies every account, which the order and payment services that
// hold client certificates have no business doing. Operators run tallyctl
// with a node's certificate. Without TLS there is no identity to check.
func (sv *server) operatorOnly(ctx context.Context, what string) error {
	if sv.n.fromPeer(ctx) {
		return nil
	}
	return newError(ledger.CodePermissionDenied, what+" needs a node's certificate (run tallyctl with --tls-cert and --tls-key of a node)")
}

func (sv *server) shardByID(id uint32) (*shard, error) {
	if int(id) >= len(sv.n.shards) {
		return nil, newError(ledger.CodeInvalidArgument, fmt.Sprintf("shard %d: the cluster has %d shards", id, len(sv.n.shards)))
	}
	return sv.n.shards[id], nil
}

// leadShard takes the node's one backup or restore slot (each reads or
// writes a whole shard, and an operator's script gone wrong should not run
// many at once) and returns shard id once this node leads it, checked as
// a linearizable read checks it. The caller calls release when done.
func (sv *server) leadShard(ctx context.Context, id uint32) (s *shard, release func(), err error) {
	if s, err = sv.shardByID(id); err != nil {
		return nil, nil, err
	}
	if !sv.n.backupMu.TryLock() {
		return nil, nil, errUnavailable("another backup or restore is running on this node")
	}
	if err := s.linearizable(ctx); err != nil {
		sv.n.backupMu.Unlock()
		return nil, nil, err
	}
	return s, sv.n.backupMu.Unlock, nil
}

// Backup streams a snapshot of one shard from its leader (see above).
func (sv *server) Backup(req *tallypb.BackupRequest, stream tallypb.Ledger_BackupServer) (err error) {
	start := time.Now()
	defer func() { sv.observe("Backup", start, err); err = toStatus(err) }()
	if err := sv.operatorOnly(stream.Context(), "a backup"); err != nil {
		return err
	}
	// Every operation acknowledged before the call is applied here once
	// the leader's read check passed (the leader applies before it
	// acknowledges), so the snapshot taken after it holds them all.
	s, release, err := sv.leadShard(stream.Context(), req.GetShard())
	if err != nil {
		return err
	}
	defer release()
	meta, info, err := s.backupSnapshot(s.fsm.AppliedIndex())
	if err != nil {
		return err
	}
	// Read it twice (backupSnapshot checked it), so a backup that arrives
	// whole is one that Restore will take.
	_, rc, err := s.snaps.Open(meta.ID)
	if err != nil {
		return errUnavailable(fmt.Sprintf("open snapshot %s: %v", meta.ID, err))
	}
	defer rc.Close()
	hdr := &tallypb.BackupHeader{
		Shard: s.id, Shards: uint32(len(sv.n.shards)), RaftIndex: meta.Index, RaftTerm: meta.Term,
		SnapshotVersion: int32(meta.Version), Size: meta.Size, AppliedIndex: info.AppliedIndex, Version: info.Version,
		StateHash: info.Hash, ConservationOk: info.Conservation == nil,
	}
	if info.Conservation != nil {
		// Sent all the same: the operator decides what a copy of a broken
		// state is worth, and tallyctl backup exits non-zero on it.
		sv.n.logger.Error("backup of a state that breaks conservation", "shard", s.id, "applied_index", info.AppliedIndex, "error", info.Conservation)
	}
	if err := stream.Send(&tallypb.BackupChunk{Header: hdr}); err != nil {
		return err
	}
	h := sha256.New()
	buf := make([]byte, backupChunkBytes)
	var sent int64
	for {
		n, rerr := io.ReadFull(rc, buf)
		if n > 0 {
			h.Write(buf[:n])
			sent += int64(n)
			if err := stream.Send(&tallypb.BackupChunk{Data: buf[:n]}); err != nil {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return errUnavailable(fmt.Sprintf("read snapshot %s: %v", meta.ID, rerr))
		}
	}
	if sent != meta.Size {
		return errInternal(fmt.Sprintf("snapshot %s: read %d bytes, its meta says %d", meta.ID, sent, meta.Size))
	}
	return stream.Send(&tallypb.BackupChunk{Sha256: h.Sum(nil)})
}

// backupSnapshot takes a snapshot of the shard for a backup and checks
// it. When raft takes none (nothing new since the last one, or the FSM
// refuses while it has been handed no entry since a restart: a quiet
// shard), the newest stored snapshot serves if its state is applied to at
// least applied, the FSM's applied index once the backup's read check
// passed: it then holds every operation acknowledged before the call.
func (s *shard) backupSnapshot(applied uint64) (*raft.SnapshotMeta, fsm.SnapshotInfo, error) {
	var meta *raft.SnapshotMeta
	fut := s.raft.Snapshot()
	took := fut.Error()
	if took == nil {
		m, rc, err := fut.Open()
		if err != nil {
			return nil, fsm.SnapshotInfo{}, errUnavailable(fmt.Sprintf("open the snapshot taken: %v", err))
		}
		_ = rc.Close()
		meta = m
	} else {
		list, err := s.snaps.List()
		if err != nil || len(list) == 0 {
			return nil, fsm.SnapshotInfo{}, errUnavailable(fmt.Sprintf("take a snapshot: %v; and no stored one (%v)", took, err))
		}
		meta = list[0] // newest first
	}
	_, rc, err := s.snaps.Open(meta.ID)
	if err != nil {
		return nil, fsm.SnapshotInfo{}, errUnavailable(fmt.Sprintf("open snapshot %s: %v", meta.ID, err))
	}
	info, err := fsm.CheckSnapshot(rc, s.id)
	_ = rc.Close()
	if err != nil {
		return nil, fsm.SnapshotInfo{}, errInternal(fmt.Sprintf("snapshot %s fails its check: %v", meta.ID, err))
	}
	if took != nil && info.AppliedIndex < applied {
		return nil, fsm.SnapshotInfo{}, errUnavailable(fmt.Sprintf("take a snapshot: %v; the newest stored one is applied to %d, the shard to %d", took, info.AppliedIndex, applied))
	}
	return meta, info, nil
}

// Restore replaces one shard's state with a backup's (see above).
func (sv *server) Restore(stream tallypb.Ledger_RestoreServer) (err error) {
	start := time.Now()
	defer func() { sv.observe("Restore", start, err); err = toStatus(err) }()
	if err := sv.operatorOnly(stream.Context(), "a restore"); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hdr := first.GetHeader()
	switch {
	case hdr == nil:
		return newError(ledger.CodeInvalidArgument, "restore: the first message must carry the backup's header")
	case !first.GetConfirm():
		return newError(ledger.CodeInvalidArgument, "restore: confirm must be set: every operation applied since the backup is discarded")
	case hdr.GetShards() != uint32(len(sv.n.shards)):
		return newError(ledger.CodeInvalidArgument, fmt.Sprintf("restore: a backup of a cluster of %d shards cannot restore into one of %d: members map to other shards",
			hdr.GetShards(), len(sv.n.shards)))
	case hdr.GetSize() < 0:
		return newError(ledger.CodeInvalidArgument, fmt.Sprintf("restore: size %d", hdr.GetSize()))
	case raft.SnapshotVersion(hdr.GetSnapshotVersion()) < raft.SnapshotVersionMin || raft.SnapshotVersion(hdr.GetSnapshotVersion()) > raft.SnapshotVersionMax:
		return newError(ledger.CodeInvalidArgument, fmt.Sprintf("restore: raft snapshot version %d", hdr.GetSnapshotVersion()))
	}
	s, release, err := sv.leadShard(stream.Context(), hdr.GetShard())
	if err != nil {
		return err
	}
	defer release()
	// Three copies of the backup lie on the data disk at once: the spool,
	// raft's snapshot of it, and the FSM's tables to ingest. Out of space
	// on the last, the FSM's restore fails and raft panics the leader.
	if free, err := diskFree(sv.n.cfg.DataDir); err == nil && free/restoreCopies < uint64(hdr.GetSize()) {
		return errUnavailable(fmt.Sprintf("restore: %d bytes free on the data disk; a %d-byte backup needs %d times that",
			free, hdr.GetSize(), restoreCopies))
	}
	f, err := os.CreateTemp(sv.n.cfg.DataDir, restoreSpoolPattern)
	if err != nil {
		return errUnavailable(fmt.Sprintf("restore: spool file: %v", err))
	}
	defer func() {
		_ = f.Close()
		_ = os.Remove(f.Name())
	}()
	if err := spoolBackup(stream, f, hdr.GetSize()); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return errUnavailable(fmt.Sprintf("restore: %v", err))
	}
	info, err := fsm.CheckSnapshot(f, s.id)
	if err != nil {
		return newError(ledger.CodeInvalidArgument, fmt.Sprintf("restore: the backup fails its check: %v", err))
	}
	if h := hdr.GetStateHash(); len(h) > 0 && !bytes.Equal(h, info.Hash) {
		return newError(ledger.CodeInvalidArgument, "restore: the backup's state hash differs from its header's")
	}
	// Every replica installs the backup, so every one must apply its
	// rules: up to the version the shard is at (raised only once every
	// member allowed it), or what every member allows now (a member that
	// does not answer counts as one allowing version 1, as for a raise;
	// --max-version and older binaries count). A replica that cannot
	// restore it would never catch up, and one held back by --max-version
	// would not start again.
	if allowed := max(s.fsm.Version(), s.membersMaxVersion(stream.Context())); info.Version > allowed {
		return newError(ledger.CodeInvalidArgument, fmt.Sprintf("restore: the backup is at rules version %d; the shard is at %d, and not every member allows more "+
			"(one does not answer, runs an older binary, or is held back by --max-version)", info.Version, s.fsm.Version()))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return errUnavailable(fmt.Sprintf("restore: %v", err))
	}
	// raft labels the restored snapshot max(Index, its last index) + 1, and
	// the FSM refuses (raft then panics) a snapshot whose state is applied
	// past its label. The header's Raft index is the client's word, which
	// the backup's SHA-256 does not cover: too low, the label fell below
	// the state; near the top of uint64, the + 1 wrapped to 0 (both found
	// by review). The state's applied index, checked above, serves.
	meta := &raft.SnapshotMeta{
		Version: raft.SnapshotVersion(hdr.GetSnapshotVersion()), Index: info.AppliedIndex,
		Term: hdr.GetRaftTerm(), Size: hdr.GetSize(),
	}
	sv.n.logger.Warn("restoring a shard from a backup: operations applied since it are discarded",
		"shard", s.id, "backup_raft_index", meta.Index, "backup_applied_index", info.AppliedIndex, "version", info.Version)
	restoresBefore := s.restores.Load()
	if h := beforeRaftRestore; h != nil {
		h(s)
	}
	if err := s.raft.Restore(meta, f, restoreTimeout); err != nil {
		// NOT_LEADER, which a client takes for "nothing done" and sends
		// elsewhere, only when raft refused before it restored this
		// node's state (it does that first, and panics if it fails):
		// after, it may have failed only on the no-op that follows
		// (leadership lost, a timeout), and a leader that lost it before
		// a majority held the restore can keep it while the others do
		// not. The operator checks.
		if errors.Is(err, raft.ErrNotLeader) && s.restores.Load() == restoresBefore {
			return s.notLeader()
		}
		return errUnavailable(fmt.Sprintf("restore: %v: the restore may or may not have taken effect; compare every replica's state (tallyctl state --node ADDR --shard %d) and run it again if they differ or miss it", err, s.id))
	}
	sv.n.logger.Warn("shard restored from a backup", "shard", s.id, "raft_index", s.raft.LastIndex())
	return stream.SendAndClose(&tallypb.RestoreResponse{
		RaftIndex: s.raft.LastIndex(), AppliedIndex: info.AppliedIndex, Version: info.Version, StateHash: info.Hash,
	})
}

// spoolBackup writes a restore's data chunks to f, checking that they are
// size bytes whose SHA-256 the last message carries.
func spoolBackup(stream tallypb.Ledger_RestoreServer, f *os.File, size int64) error {
	h := sha256.New()
	var got int64
	for {
		c, err := stream.Recv()
		if err == io.EOF {
			return newError(ledger.CodeInvalidArgument, "restore: the stream ended without the backup's SHA-256")
		}
		if err != nil {
			return err
		}
		if c.GetHeader() != nil {
			return newError(ledger.CodeInvalidArgument, "restore: a second header")
		}
		if sum := c.GetSha256(); sum != nil {
			if len(c.GetData()) > 0 {
				return newError(ledger.CodeInvalidArgument, "restore: data in the SHA-256 message")
			}
			if got != size {
				return newError(ledger.CodeInvalidArgument, fmt.Sprintf("restore: %d bytes received, the header says %d", got, size))
			}
			if !bytes.Equal(sum, h.Sum(nil)) {
				return newError(ledger.CodeInvalidArgument, "restore: SHA-256 mismatch: the backup was damaged on its way")
			}
			return nil
		}
		d := c.GetData()
		if got+int64(len(d)) > size {
			return newError(ledger.CodeInvalidArgument, fmt.Sprintf("restore: more than the %d bytes the header says", size))
		}
		h.Write(d)
		if _, err := f.Write(d); err != nil {
			return errUnavailable(fmt.Sprintf("restore: spool: %v", err))
		}
		got += int64(len(d))
	}
}
