// Package raftstore keeps the Raft logs and stable stores of every Raft group
// (shard) of a node in one Pebble database.
//
// Sharing one database means sharing one write-ahead log: the synced commits
// of all groups are coalesced by Pebble's commit pipeline into as few fsyncs
// as the disk allows (group commit), instead of one fsync stream per group.
//
// Invariants:
//   - Every write (StoreLogs, DeleteRange, Set, SetUint64) is one Pebble batch
//     committed with pebble.Sync, so a write that returned nil is durable; a
//     failed synced commit panics (see commitSync).
//   - Open refuses a log whose last entries fail verification unless told to
//     repair it (Options.RepairTail), and never deletes an entry in an
//     unknown codec version.
//   - A log entry is returned by GetLog only if it verifies; a corrupt entry
//     is an error, never data. Verifying means its CRC32-C checksum matches
//     and the shard and index stored in the value are those of its key, so a
//     value copied or misdirected to another key is corrupt too.
//   - FirstIndex and LastIndex are cached per group and, between writes,
//     equal the smallest and largest log index stored for that group (0 when
//     empty). The two are separate atomics, so a reader racing a write may
//     see one updated and not the other; Raft's readers tolerate that.
//   - Groups never see each other's keys: every key starts with a kind byte
//     and the shard as 4-byte big-endian.
//
// Log entry format (codec.go has the field layout): a version byte, the
// fields, then a 4-byte CRC32-C of every preceding byte. Every version keeps
// that frame, so a build can tell an intact entry of a newer version (never
// deleted) from damage. This build writes version 2, whose value stores the
// shard and the index of its key. Version 1 (older builds) stores only the
// index and is still read: of its misplacements only a wrong index is
// detected, not a wrong shard at the same index.
package raftstore
