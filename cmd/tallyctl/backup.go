package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/tally-ledger/tally/client"
	"github.com/tally-ledger/tally/fsm"
	"github.com/tally-ledger/tally/internal/atomicfile"
)

// A backup directory holds one file per shard (shardFile) and
// manifest.json, written last: a directory without it is not a backup.
const (
	manifestName   = "manifest.json"
	manifestFormat = 1
	// backupTimeout bounds backup and restore without --timeout: each
	// moves whole shards.
	backupTimeout = 30 * time.Minute
)

type backupManifest struct {
	Format  int                   `json:"format"`
	TakenAt string                `json:"taken_at"` // RFC 3339, when the backup began
	Shards  uint32                `json:"shards"`   // the cluster's shard count
	Backups []client.BackupHeader `json:"backups"`
}

func shardFile(shard uint32) string { return fmt.Sprintf("shard-%03d.snap", shard) }

// selectedShards is every shard of n, or only one (shard >= 0).
func selectedShards(n, shard int) ([]int, error) {
	if shard < 0 {
		all := make([]int, n)
		for i := range all {
			all[i] = i
		}
		return all, nil
	}
	if shard >= n {
		return nil, usageErr("--shard %d: the cluster has %d shards", shard, n)
	}
	return []int{shard}, nil
}

func backupCommand() command {
	var dir string
	shard := -1
	return command{
		name:     "backup",
		synopsis: "write a backup of every shard (or --shard N) into a new directory: a snapshot file per shard, taken by its leader, and manifest.json",
		flags: func(fs *flag.FlagSet, a *args) {
			fs.StringVar(&dir, "dir", "", "directory to create (or an empty one) for the backup")
			fs.IntVar(&shard, "shard", -1, "back up only this shard")
		},
		required: []string{"dir"},
		timeout:  backupTimeout,
		do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
			shards, err := selectedShards(c.Shards(), shard)
			if err != nil {
				return nil, err
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, err
			}
			if entries, err := os.ReadDir(dir); err != nil {
				return nil, err
			} else if len(entries) > 0 {
				return nil, usageErr("--dir %s is not empty: a backup goes into a new directory", dir)
			}
			m := backupManifest{Format: manifestFormat, TakenAt: time.Now().UTC().Format(time.RFC3339), Shards: uint32(c.Shards())}
			for _, s := range shards {
				h, err := backupShard(ctx, c, s, filepath.Join(dir, shardFile(uint32(s))))
				if err != nil {
					return nil, fmt.Errorf("shard %d: %w", s, err)
				}
				m.Backups = append(m.Backups, h)
			}
			b, err := json.MarshalIndent(m, "", "  ")
			if err != nil {
				return nil, err
			}
			if err := atomicfile.Write(filepath.Join(dir, manifestName), func(w io.Writer) error {
				_, err := w.Write(append(b, '\n'))
				return err
			}); err != nil {
				return nil, err
			}
			for _, h := range m.Backups {
				if !h.ConservationOK {
					// Kept, and said: the operator decides what a copy of a
					// broken state is worth.
					return backupView{Dir: dir, Manifest: m}, fmt.Errorf("shard %d: the state backed up breaks conservation (the node's log says how); the backup is written all the same", h.Shard)
				}
			}
			return backupView{Dir: dir, Manifest: m}, nil
		},
	}
}

func verifyBackupCommand() command {
	var dir string
	return command{
		name:     "verify-backup",
		synopsis: "check a backup directory without a cluster: every shard file's size and SHA-256, its snapshot's framing, order and checksum, its state hash and conservation",
		flags: func(fs *flag.FlagSet, a *args) {
			fs.StringVar(&dir, "dir", "", "backup directory (written by backup)")
		},
		required: []string{"dir"},
		local: func(a *args) (view, error) {
			m, err := readManifest(dir)
			if err != nil {
				return nil, err
			}
			v := verifyView{Dir: dir}
			var failed []string
			for _, h := range m.Backups {
				r := verifiedShard{Shard: h.Shard, AppliedIndex: h.AppliedIndex, StateHash: h.StateHash}
				if err := verifyBackupFile(filepath.Join(dir, shardFile(h.Shard)), h); err != nil {
					r.Error = err.Error()
					failed = append(failed, fmt.Sprintf("shard %d", h.Shard))
				}
				v.Shards = append(v.Shards, r)
			}
			if len(failed) > 0 {
				return v, fmt.Errorf("%d of %d shards fail: %v", len(failed), len(m.Backups), failed)
			}
			return v, nil
		},
	}
}

// verifyBackupFile checks a shard's file as a restore would, and its
// state against the manifest's hash and the conservation check.
func verifyBackupFile(path string, h client.BackupHeader) error {
	if err := checkBackupFile(path, h); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := fsm.CheckSnapshot(f, h.Shard)
	switch {
	case err != nil:
		return err
	case hex.EncodeToString(info.Hash) != h.StateHash:
		return fmt.Errorf("state hash %x, the manifest says %s", info.Hash, h.StateHash)
	case info.AppliedIndex != h.AppliedIndex:
		return fmt.Errorf("applied index %d, the manifest says %d", info.AppliedIndex, h.AppliedIndex)
	case info.Version != h.Version:
		return fmt.Errorf("rules version %d, the manifest says %d", info.Version, h.Version)
	case info.Conservation != nil:
		return info.Conservation
	case !h.ConservationOK:
		return errors.New("the manifest says conservation failed, the file's state passes it: the manifest is not this file's")
	}
	return nil
}

// backupShard writes shard's backup to path, whole or not at all.
func backupShard(ctx context.Context, c *client.Client, shard int, path string) (client.BackupHeader, error) {
	var h client.BackupHeader
	err := atomicfile.Write(path, func(w io.Writer) error {
		var err error
		h, err = c.Backup(ctx, shard, w)
		return err
	})
	return h, err
}

func restoreCommand() command {
	var (
		dir     string
		confirm bool
	)
	shard := -1
	return command{
		name: "restore",
		synopsis: "replace the state of every shard in a backup (or --shard N), on every replica, with the backup's; " +
			"every operation applied since the backup is discarded (--confirm)",
		flags: func(fs *flag.FlagSet, a *args) {
			fs.StringVar(&dir, "dir", "", "backup directory (written by backup)")
			fs.IntVar(&shard, "shard", -1, "restore only this shard")
			fs.BoolVar(&confirm, "confirm", false, "confirm that operations applied since the backup are discarded")
		},
		required: []string{"dir"},
		timeout:  backupTimeout,
		prepare: func(a *args) error {
			if !confirm {
				return usageErr("a restore discards every operation applied since the backup: pass --confirm")
			}
			return nil
		},
		do: func(ctx context.Context, c *client.Client, a *args) (view, error) {
			m, err := readManifest(dir)
			if err != nil {
				return nil, err
			}
			if int(m.Shards) != c.Shards() {
				return nil, fmt.Errorf("the backup is of a cluster of %d shards, this one has %d: members map to other shards", m.Shards, c.Shards())
			}
			byShard := make(map[int]client.BackupHeader)
			for _, h := range m.Backups {
				byShard[int(h.Shard)] = h
			}
			shards := make([]int, 0, len(m.Backups))
			for _, h := range m.Backups {
				shards = append(shards, int(h.Shard))
			}
			if shard >= 0 {
				if _, ok := byShard[shard]; !ok {
					return nil, usageErr("--shard %d: the backup holds no such shard", shard)
				}
				shards = []int{shard}
			}
			// Check every file before changing any shard.
			for _, s := range shards {
				if err := checkBackupFile(filepath.Join(dir, shardFile(uint32(s))), byShard[s]); err != nil {
					return nil, err
				}
			}
			v := restoreView{Dir: dir}
			for _, s := range shards {
				res, err := restoreShard(ctx, c, filepath.Join(dir, shardFile(uint32(s))), byShard[s])
				if err != nil {
					return v, fmt.Errorf("shard %d: %w (shards before it in this list were restored: %v)", s, err, v.Restored)
				}
				v.Restored = append(v.Restored, restoredShard{Shard: s, RaftIndex: res.RaftIndex, AppliedIndex: res.AppliedIndex,
					Version: res.Version, StateHash: res.StateHash})
			}
			return v, nil
		},
	}
}

func readManifest(dir string) (backupManifest, error) {
	var m backupManifest
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		return m, fmt.Errorf("%s is not a backup: %w", dir, err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", manifestName, err)
	}
	if m.Format != manifestFormat {
		return m, fmt.Errorf("%s: format %d, this tallyctl reads %d", manifestName, m.Format, manifestFormat)
	}
	if len(m.Backups) == 0 {
		return m, fmt.Errorf("%s lists no shard", manifestName)
	}
	for _, h := range m.Backups {
		if h.Shards != m.Shards || h.Shard >= m.Shards {
			return m, fmt.Errorf("%s: shard %d of %d in a backup of %d shards", manifestName, h.Shard, h.Shards, m.Shards)
		}
	}
	return m, nil
}

// checkBackupFile checks a shard's file against its manifest entry: size
// and SHA-256 (the leader checks the rest before it changes anything).
func checkBackupFile(path string, h client.BackupHeader) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sum := sha256.New()
	n, err := io.Copy(sum, f)
	if err != nil {
		return err
	}
	if n != h.Size || hex.EncodeToString(sum.Sum(nil)) != h.SHA256 {
		return errors.New(path + ": size or SHA-256 differs from the manifest's: the file is damaged")
	}
	return nil
}

func restoreShard(ctx context.Context, c *client.Client, path string, h client.BackupHeader) (client.RestoreResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return client.RestoreResult{}, err
	}
	defer f.Close()
	return c.Restore(ctx, h, f)
}

type backupView struct {
	Dir      string         `json:"dir"`
	Manifest backupManifest `json:"manifest"`
}

func (v backupView) jsonValue() any { return v }

func (v backupView) text(w io.Writer) {
	fmt.Fprintf(w, "backup of %d of %d shards in %s (taken %s)\n", len(v.Manifest.Backups), v.Manifest.Shards, v.Dir, v.Manifest.TakenAt)
	for _, h := range v.Manifest.Backups {
		fmt.Fprintf(w, "  shard %d: %d bytes, applied index %d, rules version %d, state hash %s, conservation ok %v\n",
			h.Shard, h.Size, h.AppliedIndex, h.Version, h.StateHash, h.ConservationOK)
	}
}

type verifiedShard struct {
	Shard        uint32 `json:"shard"`
	AppliedIndex uint64 `json:"applied_index"`
	StateHash    string `json:"state_hash"`
	Error        string `json:"error,omitempty"`
}

type verifyView struct {
	Dir    string          `json:"dir"`
	Shards []verifiedShard `json:"shards"`
}

func (v verifyView) jsonValue() any { return v }

func (v verifyView) text(w io.Writer) {
	fmt.Fprintf(w, "backup %s: %d shards\n", v.Dir, len(v.Shards))
	for _, s := range v.Shards {
		status := "ok"
		if s.Error != "" {
			status = "FAILS: " + s.Error
		}
		fmt.Fprintf(w, "  shard %d: applied index %d, state hash %s: %s\n", s.Shard, s.AppliedIndex, s.StateHash, status)
	}
}

type restoredShard struct {
	Shard        int    `json:"shard"`
	RaftIndex    uint64 `json:"raft_index"`
	AppliedIndex uint64 `json:"applied_index"`
	Version      uint32 `json:"version"`
	StateHash    string `json:"state_hash"`
}

type restoreView struct {
	Dir      string          `json:"dir"`
	Restored []restoredShard `json:"restored"`
}

func (v restoreView) jsonValue() any { return v }

func (v restoreView) text(w io.Writer) {
	fmt.Fprintf(w, "restored %d shards from %s\n", len(v.Restored), v.Dir)
	for _, r := range v.Restored {
		fmt.Fprintf(w, "  shard %d: applied index %d, rules version %d, state hash %s, now at raft index %d\n",
			r.Shard, r.AppliedIndex, r.Version, r.StateHash, r.RaftIndex)
	}
}
