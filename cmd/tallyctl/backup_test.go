package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBackupAndRestoreFiles: backup writes every shard's file and a
// manifest that restore reads back, sending each shard its own bytes; a
// restore without --confirm, into a non-empty directory, or from a
// damaged file is refused before any shard changes.
func TestBackupAndRestoreFiles(t *testing.T) {
	f := startFake(t)
	dir := filepath.Join(t.TempDir(), "b1")
	code, out, errOut := tallyctl(t, f, "backup", "--dir", dir)
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, "backup of 2 of 2 shards")
	var m backupManifest
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &m))
	require.Len(t, m.Backups, 2)
	for s := range uint32(2) {
		got, err := os.ReadFile(filepath.Join(dir, shardFile(s)))
		require.NoError(t, err)
		require.Equal(t, fakeBackup(s), got)
		require.EqualValues(t, len(got), m.Backups[s].Size)
	}
	code, _, errOut = tallyctl(t, f, "backup", "--dir", dir)
	require.Equal(t, exitUsage, code, "a second backup into the same directory")
	require.Contains(t, errOut, "not empty")

	// Shard 0's file is an empty shard's snapshot; shard 1's is no
	// snapshot at all.
	code, out, errOut = tallyctl(t, nil, "verify-backup", "--dir", dir)
	require.Equal(t, exitError, code)
	require.Contains(t, out, "shard 0: applied index 0, state hash "+m.Backups[0].StateHash+": ok")
	require.Contains(t, out, "shard 1: applied index 0")
	require.Contains(t, out, "not a tally snapshot")
	require.Contains(t, errOut, "1 of 2 shards fail")
	raw0, err := os.ReadFile(filepath.Join(dir, shardFile(0)))
	require.NoError(t, err)
	raw0[len(raw0)-1] ^= 1 // the snapshot's CRC; the manifest's SHA-256 then fails first
	require.NoError(t, os.WriteFile(filepath.Join(dir, shardFile(0)), raw0, 0o644))
	code, out, _ = tallyctl(t, nil, "verify-backup", "--dir", dir)
	require.Equal(t, exitError, code)
	require.Contains(t, out, "shard 0: applied index 0, state hash "+m.Backups[0].StateHash+": FAILS")
	raw0[len(raw0)-1] ^= 1
	require.NoError(t, os.WriteFile(filepath.Join(dir, shardFile(0)), raw0, 0o644))

	f.brokenBackup = true
	code, _, errOut = tallyctl(t, f, "backup", "--dir", filepath.Join(t.TempDir(), "b2"))
	require.Equal(t, exitError, code, "a backup of a state that breaks conservation is written, and said")
	require.Contains(t, errOut, "breaks conservation")
	f.brokenBackup = false

	code, _, errOut = tallyctl(t, f, "restore", "--dir", dir)
	require.Equal(t, exitUsage, code)
	require.Contains(t, errOut, "--confirm")
	require.Empty(t, f.restored)

	code, out, errOut = tallyctl(t, f, "restore", "--dir", dir, "--shard", "1", "--confirm")
	require.Equal(t, exitOK, code, errOut)
	require.Contains(t, out, "restored 1 shards")
	require.Equal(t, fakeBackup(1), f.restored[1])
	require.NotContains(t, f.restored, uint32(0))

	damaged := filepath.Join(dir, shardFile(1))
	raw, err := os.ReadFile(damaged)
	require.NoError(t, err)
	raw[100] ^= 1
	require.NoError(t, os.WriteFile(damaged, raw, 0o644))
	delete(f.restored, 1)
	code, _, errOut = tallyctl(t, f, "restore", "--dir", dir, "--confirm")
	require.Equal(t, exitError, code)
	require.Contains(t, errOut, "damaged")
	require.Empty(t, f.restored, "shard 0 was restored although shard 1's file is damaged")
}
