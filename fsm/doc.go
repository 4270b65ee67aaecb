// Package fsm is the deterministic state machine of one shard: it turns
// committed Raft log entries into Pebble writes by calling ledger's rules.
//
// One Pebble DB per node holds the state of all its shards, each under its
// own key prefix. Every Raft batch is applied as one Pebble batch (several,
// of whole entries, past maxApplyOps operations) that also records the shard's applied index, log time and journal sequence, so the
// durable state and the index it corresponds to can never disagree. Batches
// are committed without fsync: the Raft log is the durable record, and on
// start the node either replays the log above the durable applied index or,
// if that index is behind the newest snapshot (an unsynced write lost in a
// crash), restores the snapshot first (see NeedsRestore).
//
// Determinism: apply reads no clock (time comes from the entry, clamped so
// it never goes backwards), no randomness, and iterates only in key order.
package fsm
